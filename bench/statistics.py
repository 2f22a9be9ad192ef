"""Uncertainty: bootstrap intervals of a cell's metrics, and the tests ``bench compare`` decides with.

Bootstrap. The test images are resampled with replacement, separately among the good and among the
defective ones (stratified: every resample keeps the test set's count of each), ``resamples`` times from a
random stream fixed by the recorded seed and the test set's fingerprint; an interval is the percentile
interval of the resampled values. Two cells scored on the same test images draw the same resamples, so
the difference of their values resample by resample is a paired bootstrap of A − B.

Fast path. A resample is a vector of counts, one per image, so every metric of a resample is a function
of count-weighted sums of per-image quantities:

- image metrics: images with tied scores form one bin; the weighted counts of defective and good images
  per bin give the exact ROC, precision-recall and F1 points, so these are exact;
- pixel metrics: each image's pixels are counted in bins of one shared grid of thresholds
  (``anobench.pixel_metrics.PixelGrid``, from the merged pixel stream: defect pixels,
  defect-free pixels, defect pixels weighted by 1/region size for PRO, and each image's pixel total for
  AUPIMO's per-image FPR); a resample's curves are the weighted sums of these histograms at the grid
  thresholds, joined by straight segments. The grid is dense where the curves are integrated: quantiles of
  the defect-free pixels (finer below an FPR of 0.4), quantiles of the defect pixels, and every score of
  the normal images above a shared FPR of 1e-3. Only the resamples use the grid: point estimates are
  computed exactly from all pixels (``anobench.pixel_metrics``).
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from anobench import metrics

IMAGE_METRICS = ("image_auroc", "image_ap", "image_f1_max")
PIXEL_METRICS = ("pixel_auroc", "pixel_ap", "pixel_f1_max", "aupimo")  # and every aupro@L
MAX_UNDEFINED = 0.01  # an interval needs at least 99% of its resamples defined
CHUNK_CELLS = 4_000_000  # resamples × bins handled at once (bounds memory to a few hundred MB)
NORMAL_TAIL_FPR = 1e-3  # every normal-image score above this shared FPR is a threshold of the grid...
NORMAL_TAIL_MAX = 4096  # ...up to this many scores (above it, quantiles spaced logarithmically)


def has_bootstrap(name: str) -> bool:
    """Whether resamples of metric ``name`` can be computed here."""
    return name in IMAGE_METRICS or name in PIXEL_METRICS or metrics.aupro_limit(name) is not None


# ----------------------------------------------------------------------------------------------------------
# resampling


def stream(seed: int, fingerprint: str, *salt: str) -> np.random.Generator:
    """The random stream of one test set (and purpose): same seed and same test images → same resamples."""
    return np.random.default_rng([seed, int(fingerprint[:15], 16), *(zlib.crc32(s.encode()) for s in salt)])


def stratified_counts(labels: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(resamples, n) counts: how often each image is drawn, good and defective images drawn separately."""
    labels = np.asarray(labels)
    counts = np.zeros((resamples, labels.size), dtype=np.float64)
    for stratum in (np.flatnonzero(labels == 0), np.flatnonzero(labels != 0)):
        m = stratum.size
        if m == 0:
            continue
        draws = rng.integers(0, m, size=(resamples, m))
        flat = np.bincount((draws + m * np.arange(resamples)[:, None]).ravel(), minlength=resamples * m)
        counts[:, stratum] = flat.reshape(resamples, m)
    return counts


def percentile_interval(values: np.ndarray, confidence: float) -> tuple[float, float] | None:
    """The percentile interval of the resampled values; None when more than 1% of them are undefined."""
    values = np.asarray(values, dtype=np.float64)
    defined = values[np.isfinite(values)]
    if values.size == 0 or defined.size < (1 - MAX_UNDEFINED) * values.size:
        return None
    tail = 100 * (1 - confidence) / 2
    lo, hi = np.percentile(defined, [tail, 100 - tail])
    return float(lo), float(hi)


# ----------------------------------------------------------------------------------------------------------
# per-image counts in shared bins (bins in descending order: a threshold at a bin counts it and those before)


@dataclass
class BinnedCounts:
    """Per-image counts per score bin, bins shared by every image and sorted from the highest threshold."""

    positive: np.ndarray  # (n, K) defect pixels, or 1 in its score's bin for a defective image
    negative: np.ndarray  # (n, K) defect-free pixels, or 1 for a good image
    overlap: np.ndarray | None = None  # (n, K) defect pixels weighted by 1 / their region's size (PRO)
    regions: np.ndarray | None = None  # (n,) defect regions per image
    pixels: np.ndarray | None = None  # (n,) pixels per image (AUPIMO's per-image FPR)
    dtype: type = np.float64  # of the resampled curves: float32 for pixel counts (exact up to 2^24 per bin)

    @property
    def bins(self) -> int:
        return self.positive.shape[1]

    def subset(self, rows: np.ndarray) -> BinnedCounts:
        return BinnedCounts(*(None if a is None else a[rows] for a in (self.positive, self.negative, self.overlap,
                                                                        self.regions, self.pixels)), self.dtype)


def image_counts(labels: np.ndarray, scores: np.ndarray) -> BinnedCounts:
    """One bin per distinct image score (sparse: one entry per image): resampled image metrics are exact."""
    from scipy import sparse

    labels = np.asarray(labels).astype(bool)
    distinct, index = np.unique(np.asarray(scores, dtype=np.float64), return_inverse=True)
    column = len(distinct) - 1 - index.ravel()  # highest score first
    shape = (labels.size, len(distinct))
    rows = np.arange(labels.size)
    return BinnedCounts(*(sparse.csr_array((np.ones(int(part.sum())), (rows[part], column[part])), shape=shape)
                          for part in (labels, ~labels)))


# ----------------------------------------------------------------------------------------------------------
# metrics of many resamples at once: rows are resamples, columns bins (cumulative from the highest)


def _at_or_above(per_bin) -> np.ndarray | None:
    """Per image, the counts at or above each bin's threshold, after a first column of zeros (the curve's
    origin: nothing scores at or above +inf). A resample's curve is then one matrix product away."""
    if per_bin is None:
        return None
    if hasattr(per_bin, "toarray"):  # image counts: sparse, one entry per image
        per_bin = per_bin.toarray()
    cumulative = np.cumsum(per_bin, axis=1)
    return np.hstack([np.zeros((cumulative.shape[0], 1), dtype=cumulative.dtype), cumulative])


def _auroc(tp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    tpr, fpr = tp / tp[:, -1:], fp / fp[:, -1:]
    return np.einsum("ij,ij->i", tpr[:, 1:] + tpr[:, :-1], np.diff(fpr, axis=1)) / 2


def _average_precision(tp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    predicted = tp[:, 1:] + fp[:, 1:]
    precision = np.divide(tp[:, 1:], predicted, out=np.zeros_like(predicted), where=predicted > 0)
    return np.einsum("ij,ij->i", np.diff(tp, axis=1), precision) / tp[:, -1]


def _f1_max(tp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    return (2 * tp / (tp + fp + tp[:, -1:])).max(axis=1)


def _columns_until(counts: np.ndarray, totals: np.ndarray, limit: float) -> int:
    """How many leading points any row needs to reach the rate ``limit`` (counts / totals); the rest lie
    beyond every row's limit."""
    return int(min(counts.shape[1], (counts < limit * totals[:, None]).sum(axis=1).max() + 1))


def _aupro(fp: np.ndarray, weights: np.ndarray, overlap: np.ndarray, regions: np.ndarray,
           limit: float) -> np.ndarray:
    """Area under PRO against FPR up to ``limit`` (linear at the limit), divided by it; as ``metrics.aupro``.
    Only the points up to the limit are accumulated (``overlap``: per image, at or above each threshold)."""
    used = _columns_until(fp, fp[:, -1], limit)
    x = fp[:, :used] / fp[:, -1:]
    y = np.minimum((weights @ overlap[:, :used]) / (weights @ regions)[:, None], 1.0)
    x0, x1, y0, y1 = x[:, :-1], x[:, 1:], y[:, :-1], y[:, 1:]
    end = np.minimum(x1, limit)
    width = np.clip(end - x0, 0, None)
    fraction = np.divide(width, x1 - x0, out=np.zeros_like(x0), where=x1 > x0)
    return np.einsum("ij,ij->i", width, y0 + (y1 - y0) * (fraction / 2)) / limit


def _aupimo(weights: np.ndarray, normal_fpr: np.ndarray, overlap: np.ndarray, normal: np.ndarray,
            bounds: tuple[float, float]) -> np.ndarray:
    """Mean AUPIMO over the drawn anomalous images, as ``metrics.aupimo`` on the grid's thresholds.
    ``normal_fpr``: each normal image's FPR at each point; ``overlap``: each anomalous image's TPR."""
    w_normal, w_anomalous = weights[:, normal], weights[:, ~normal]
    shared = (w_normal @ normal_fpr) / w_normal.sum(axis=1, keepdims=True)
    used = _columns_until(shared, np.ones(shared.shape[0]), bounds[1])
    log_lower, log_upper = np.log(bounds[0]), np.log(bounds[1])
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.log(shared[:, :used])
        x0, x1 = x[:, :-1], x[:, 1:]
        start, end = np.maximum(x0, log_lower), np.minimum(x1, log_upper)
        width = np.clip(end - start, 0, None)
        middle = np.where(width > 0, ((start + end) / 2 - x0) / (x1 - x0), 0.0)  # 0..1 along the segment
    unresolved = ((width > 0) & ~np.isfinite(x0)).any(axis=1)
    area = (width * (1 - middle)) @ overlap[:, :used - 1].T + (width * middle) @ overlap[:, 1:used].T
    result = (area * w_anomalous).sum(axis=1) / w_anomalous.sum(axis=1) / (log_upper - log_lower)
    result[unresolved] = np.nan
    return np.clip(result, 0.0, 1.0)


def resampled_metrics(names: Iterable[str], counts: BinnedCounts, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Each metric of each resample (rows of ``weights``: how often each image is drawn)."""
    names = list(names)
    out = {name: np.empty(weights.shape[0]) for name in names}
    positive, negative = _at_or_above(counts.positive), _at_or_above(counts.negative)
    overlap = _at_or_above(counts.overlap) if any(metrics.aupro_limit(n) for n in names) else None
    if "aupimo" in names:
        normal = positive[:, -1] == 0
        normal_fpr = negative[normal] / counts.pixels[normal, None]
        anomalous_overlap = positive[~normal] / positive[~normal, -1:]
    chunk = max(1, CHUNK_CELLS // max(counts.bins, 1))
    for start in range(0, weights.shape[0], chunk):
        w = weights[start:start + chunk]
        w_curves = w.astype(counts.dtype)
        tp, fp = w_curves @ positive, w_curves @ negative
        for name in names:
            if name.endswith("_auroc"):
                value = _auroc(tp, fp)
            elif name.endswith("_ap"):
                value = _average_precision(tp, fp)
            elif name.endswith("_f1_max"):
                value = _f1_max(tp, fp)
            elif name == "aupimo":
                value = (_aupimo(w, normal_fpr, anomalous_overlap, normal, metrics.AUPIMO_FPR_BOUNDS)
                         if normal.any() and not normal.all() else np.nan)
            else:
                value = _aupro(fp, w_curves, overlap, counts.regions, metrics.aupro_limit(name))
            out[name][start:start + chunk] = value
    return out


# ----------------------------------------------------------------------------------------------------------
# one cell


@dataclass
class Bootstrap:
    """The resampled values of a cell's metrics (and of each defect type's), and their intervals."""

    replicates: dict[str, np.ndarray]  # "metric" or "defect/<type>/<metric>" → (resamples,)
    intervals: dict[str, tuple[float, float] | None]
    pixel_bins: int
    undefined: dict[str, int]  # resamples where the metric is undefined (e.g. AUPIMO's bound not resolved)


def defect_key(defect_type: str, metric: str) -> str:
    return f"defect/{defect_type}/{metric}"


def bootstrap_cell(labels: np.ndarray, image_scores: np.ndarray, pixel_counts: BinnedCounts | None,
                   defect_types: Sequence[str], names: Sequence[str], defect_names: Sequence[str], *,
                   resamples: int, seed: int, fingerprint: str, confidence: float) -> Bootstrap:
    """Resample the test set for ``names`` and, per defect type (that type's images and the good ones,
    resampled within each), for ``defect_names``. ``pixel_counts``: each image's pixels in the grid
    (``anobench.pixel_metrics.binned_counts``), or None where the images have no defect pixel."""
    labels = np.asarray(labels).astype(int)
    image = image_counts(labels, image_scores)
    pixel = pixel_counts if pixel_counts is not None and pixel_counts.positive.sum() > 0 else None

    def run(chosen: Sequence[str], rows: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        weights = stratified_counts(labels[rows], resamples, rng)
        values = resampled_metrics([n for n in chosen if n in IMAGE_METRICS], image.subset(rows), weights)
        pixel_names = [n for n in chosen if n not in IMAGE_METRICS]
        if pixel is not None and pixel_names:
            values.update(resampled_metrics(pixel_names, pixel.subset(rows), weights))
        return values

    everything = np.arange(labels.size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # undefined resamples become nan, counted below
        replicates = run([n for n in names if has_bootstrap(n)], everything, stream(seed, fingerprint))
        defects = np.asarray(defect_types)
        for defect in sorted({d for d, label in zip(defect_types, labels, strict=True) if label}):
            rows = np.flatnonzero((labels == 0) | (defects == defect))
            values = run([n for n in defect_names if has_bootstrap(n)], rows, stream(seed, fingerprint, defect))
            replicates.update({defect_key(defect, n): v for n, v in values.items()})
    return Bootstrap(replicates, {k: percentile_interval(v, confidence) for k, v in replicates.items()},
                     pixel.bins if pixel is not None else 0,
                     {k: int((~np.isfinite(v)).sum()) for k, v in replicates.items() if not np.isfinite(v).all()})


# ----------------------------------------------------------------------------------------------------------
# reports and regression checks


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), (float(array.std(ddof=1)) if array.size > 1 else None)


def welch_drop_p(new: Sequence[float], baseline: Sequence[float]) -> float:
    """One-sided Welch t-test p-value that the new seeds' mean is below the baseline seeds' mean."""
    from scipy import stats

    new, baseline = np.asarray(new, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    if np.ptp(new) == 0 and np.ptp(baseline) == 0:  # no spread: any difference is real, none is noise
        return 0.0 if new.mean() < baseline.mean() else 1.0
    return float(stats.ttest_ind(new, baseline, equal_var=False, alternative="less").pvalue)


def slower_p(new: Sequence[float] | np.ndarray, baseline: Sequence[float] | np.ndarray) -> float:
    """One-sided Mann–Whitney U p-value that the new values are stochastically smaller than the baseline's
    (e.g. per-iteration throughput)."""
    from scipy import stats

    return float(stats.mannwhitneyu(new, baseline, alternative="less").pvalue)
