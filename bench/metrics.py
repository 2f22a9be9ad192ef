"""Detection and localization metrics as pure functions on numpy arrays, truth first (scikit-learn order).

Scores are used as they are: no sigmoid, no min-max normalization. A higher score means more anomalous.
Pixel metrics accept either an array of shape (n, H, W) or a sequence of 2-D arrays of differing sizes
(datasets whose images are evaluated at their original resolution).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

PixelArrays = np.ndarray | Sequence[np.ndarray]


@dataclass(frozen=True)
class MetricInfo:
    """What a report or a regression check needs to know about a metric.

    ``level`` says what a test-set metric is computed from ("image": one score per image, "pixel": the
    anomaly maps); measurements of cost (speed, size, memory) leave it empty.
    """

    display: str
    higher_is_better: bool
    unit: str = ""
    percent: bool = False  # stored as a fraction, shown ×100
    level: str = ""


METRIC_INFO: dict[str, MetricInfo] = {
    "image_auroc": MetricInfo("Image AUROC", True, "%", percent=True, level="image"),
    "image_ap": MetricInfo("Image AP", True, "%", percent=True, level="image"),
    "image_f1_max": MetricInfo("Image F1-max", True, "%", percent=True, level="image"),
    "pixel_auroc": MetricInfo("Pixel AUROC", True, "%", percent=True, level="pixel"),
    "pixel_ap": MetricInfo("Pixel AP", True, "%", percent=True, level="pixel"),
    "pixel_f1_max": MetricInfo("Pixel F1-max", True, "%", percent=True, level="pixel"),
    "aupro": MetricInfo("AUPRO@0.3", True, "%", percent=True, level="pixel"),
    "aupimo": MetricInfo("AUPIMO", True, "%", percent=True, level="pixel"),
    "fps": MetricInfo("fps", True, "1/s"),
    "latency_ms": MetricInfo("Latency", False, "ms"),
    "size_mb": MetricInfo("Model size", False, "MB"),
    "peak_rss_mb": MetricInfo("Peak host RSS", False, "MB"),
    "peak_gpu_mb": MetricInfo("Peak GPU memory", False, "MB"),
}
AUPRO_DEFAULT_LIMIT = 0.3
AUPIMO_FPR_BOUNDS = (1e-5, 1e-4)  # anomalib's default integration range of the shared FPR


def register_metric(name: str, info: MetricInfo) -> None:
    """Add a metric other modules compute (its name becomes valid in a suite's ``metrics``); names are unique."""
    if name in METRIC_INFO or aupro_limit(name) is not None:
        raise ValueError(f"metric {name!r} is already registered")
    METRIC_INFO[name] = info


def aupro_limit(name: str) -> float | None:
    """The integration limit of an AUPRO metric name: ``aupro`` is 0.3, ``aupro@0.05`` is 0.05; None otherwise."""
    if name == "aupro":
        return AUPRO_DEFAULT_LIMIT
    match = re.fullmatch(r"aupro@(0?\.\d+|1(\.0*)?)", name)
    if not match or not 0 < float(match.group(1)) <= 1:
        return None
    return float(match.group(1))


def aupro_name(limit: float) -> str:
    """The metric name of AUPRO integrated to ``limit`` (the default limit keeps the plain name)."""
    return "aupro" if limit == AUPRO_DEFAULT_LIMIT else f"aupro@{limit:g}"


def metric_info(name: str) -> MetricInfo | None:
    """The registered metric, or an AUPRO with any integration limit (``aupro@0.05``); None if unknown."""
    if name in METRIC_INFO:
        return METRIC_INFO[name]
    limit = aupro_limit(name)
    if limit is None:
        return None
    return MetricInfo(f"AUPRO@{limit:g}", True, "%", percent=True, level="pixel")


def cell_metric_names() -> list[str]:
    """The metric names a suite may ask every cell for (what the error for an unknown one lists)."""
    return [n for n, i in METRIC_INFO.items() if i.level] + ["aupro@<limit in (0, 1]>"]


# Metrics of particular datasets' protocols (computed in anobench.metrics_datasets, by anobench.protocols).
LOCO_FPR_LIMITS = (0.01, 0.05, 0.1, 0.3, 1.0)  # MVTec LOCO's evaluation integrates AU-sPRO up to each
LOCO_SUBSETS = ("logical", "structural")
METRIC_INFO.update({
    "seg_f1": MetricInfo("SegF1", True, "%", percent=True),
    "sample_auroc": MetricInfo("Sample AUROC", True, "%", percent=True),
    **{f"image_auroc_{subset}": MetricInfo(f"Image AUROC {subset}", True, "%", percent=True)
       for subset in LOCO_SUBSETS},
    **{f"au_spro{'_' + subset if subset else ''}@{limit:g}":
       MetricInfo(f"AU-sPRO@{limit:g}{' ' + subset if subset else ''}", True, "%", percent=True)
       for limit in LOCO_FPR_LIMITS for subset in ("", *LOCO_SUBSETS)},
})


# ----------------------------------------------------------------------------------------------------------
# input preamble


def _as_binary(truth: np.ndarray, what: str) -> np.ndarray:
    truth = np.asarray(truth)
    if truth.dtype != bool:
        if ((truth != 0) & (truth != 1)).any():
            raise ValueError(f"{what} must hold only 0 and 1 (or booleans), got values {np.unique(truth)[:5]}")
        truth = truth.astype(bool)
    return truth


def _as_scores(scores: np.ndarray, what: str) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64 if np.asarray(scores).dtype == np.float64 else np.float32)
    if not np.isfinite(scores).all():
        raise ValueError(f"{what} contain NaN or infinite values")
    return scores


def _check_vectors(truth, scores) -> tuple[np.ndarray, np.ndarray]:
    truth = _as_binary(np.ravel(truth), "labels")
    scores = _as_scores(np.ravel(scores), "scores")
    if truth.shape != scores.shape:
        raise ValueError(f"labels and scores differ in length: {truth.shape[0]} vs {scores.shape[0]}")
    return truth, scores


def checked_pair(index: int, mask: np.ndarray, amap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One image's mask as booleans and map as finite floats, of one 2-D shape (ValueError otherwise)."""
    mask = _as_binary(mask, "masks")
    amap = _as_scores(amap, "maps")
    if mask.shape != amap.shape or mask.ndim != 2:
        raise ValueError(f"image {index}: mask shape {mask.shape} and map shape {amap.shape} must be equal and 2-D")
    return mask, amap


def _pixel_pairs(masks: PixelArrays, maps: PixelArrays) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Check masks and maps image by image; returns lists of 2-D boolean masks and float maps."""
    if len(masks) != len(maps):
        raise ValueError(f"masks and maps differ in number: {len(masks)} vs {len(maps)}")
    pairs = [checked_pair(i, mask, amap) for i, (mask, amap) in enumerate(zip(masks, maps, strict=True))]
    return [mask for mask, _ in pairs], [amap for _, amap in pairs]


def _concat(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([a.ravel() for a in arrays]) if arrays else np.empty(0)


# ----------------------------------------------------------------------------------------------------------
# ROC and F1 from one sort


def _counts_at_thresholds(truth: np.ndarray, scores: np.ndarray):
    """Cumulative true and false positives at each distinct score, from the highest down (score >= t)."""
    order = np.argsort(scores)[::-1]
    sorted_scores = scores[order]
    sorted_truth = truth[order]
    last_of_tie = np.r_[np.diff(sorted_scores) != 0, True]
    tps = np.cumsum(sorted_truth, dtype=np.int64)[last_of_tie]
    fps = np.cumsum(~sorted_truth, dtype=np.int64)[last_of_tie]
    return sorted_scores[last_of_tie], tps, fps


def _one_class_nan(truth: np.ndarray, name: str) -> bool:
    if truth.all() or not truth.any():
        warnings.warn(f"{name} is undefined when only one class is present; returning nan", stacklevel=3)
        return True
    return False


def roc_curve(truth: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False and true positive rates at every distinct threshold, starting at (0, 0); truth first."""
    truth, scores = _check_vectors(truth, scores)
    thresholds, tps, fps = _counts_at_thresholds(truth, scores)
    tpr = np.r_[0.0, tps / max(tps[-1], 1)]
    fpr = np.r_[0.0, fps / max(fps[-1], 1)]
    return fpr, tpr, np.r_[np.inf, thresholds]


def _auroc(truth: np.ndarray, scores: np.ndarray, name: str) -> float:
    if _one_class_nan(truth, name):
        return float("nan")
    fpr, tpr, _ = roc_curve(truth, scores)
    return float(np.trapezoid(tpr, fpr))


def image_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of image-level anomaly scores.

    Parameters
    ----------
    labels : ndarray of shape (n,), 1 for anomalous images.
    scores : ndarray of shape (n,), higher means more anomalous.

    Returns nan (with a warning) when only one class is present.
    """
    truth, scores = _check_vectors(labels, scores)
    return _auroc(truth, scores, "image AUROC")


def pixel_auroc(masks: PixelArrays, maps: PixelArrays) -> float:
    """Area under the ROC curve over all pixels of all images (anomaly-free images included)."""
    mask_list, map_list = _pixel_pairs(masks, maps)
    return _auroc(_concat(mask_list).astype(bool), _concat(map_list), "pixel AUROC")


def _flat_pairs(truth, scores) -> tuple[np.ndarray, np.ndarray]:
    """Image labels with scores, or pixel masks with maps, as one flat pair of vectors."""
    if np.ndim(truth[0]) == 0:
        return _check_vectors(truth, scores)
    mask_list, map_list = _pixel_pairs(truth, scores)
    return _concat(mask_list).astype(bool), _concat(map_list)


def average_precision(truth: np.ndarray | PixelArrays, scores: np.ndarray | PixelArrays) -> float:
    """Average precision: the sum over distinct thresholds of precision × recall gained (scikit-learn's step
    definition, no interpolation; tied scores are one threshold).

    Works for image labels with scores, and for pixel masks with maps. Returns nan (with a warning)
    without positives.
    """
    flat_truth, flat_scores = _flat_pairs(truth, scores)
    if not flat_truth.any():
        warnings.warn("average precision is undefined without positives; returning nan", stacklevel=2)
        return float("nan")
    _, tps, fps = _counts_at_thresholds(flat_truth, flat_scores)
    recall_gained = np.diff(np.r_[0, tps]) / tps[-1]
    return float(np.sum(recall_gained * tps / (tps + fps)))


def f1_max(truth: np.ndarray | PixelArrays, scores: np.ndarray | PixelArrays) -> tuple[float, float]:
    """Best F1 over all thresholds (predict anomalous when score >= threshold) and that threshold.

    Works for image labels with scores, and for pixel masks with maps (same shapes, or equal-length
    sequences of 2-D arrays).
    """
    flat_truth, flat_scores = _flat_pairs(truth, scores)
    if not flat_truth.any():
        warnings.warn("F1 is undefined without positives; returning nan", stacklevel=2)
        return float("nan"), float("nan")
    thresholds, tps, fps = _counts_at_thresholds(flat_truth, flat_scores)
    positives = tps[-1]
    f1 = 2 * tps / (2 * tps + fps + (positives - tps))
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


# ----------------------------------------------------------------------------------------------------------
# PRO (MVTec definition)

_EIGHT_CONNECTED = np.ones((3, 3), dtype=int)


def label_regions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """The defect regions of one mask as MVTec AD defines them (8-connected components), labelled 1..n."""
    return ndimage.label(mask, structure=_EIGHT_CONNECTED)


def pro_curve(masks: PixelArrays, maps: PixelArrays, *, fpr_limit: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-region overlap against false positive rate, at every distinct score, per the MVTec AD definition.

    Regions are the 8-connected components of each image's mask. Over all pixels sorted by score
    (descending), an anomaly-free pixel adds 1 to the false positives and a region pixel adds
    1/(region size) to the overlap sum; runs of tied scores collapse to their last point. The curve starts
    at (0, 0) and ends at (1, 1). One sort, no relabelling per threshold.

    With ``fpr_limit`` < 1 the curve stops at its first point beyond the limit (enough to integrate up
    to it), and only the pixels scoring at least that point's threshold are sorted.
    """
    mask_list, map_list = _pixel_pairs(masks, maps)
    fp_weight, overlap_weight = [], []
    n_regions = 0
    for mask in mask_list:
        labelled, n = label_regions(mask)
        sizes = np.bincount(labelled.ravel(), minlength=n + 1).astype(np.float64)
        inverse_size = np.zeros(n + 1)
        inverse_size[1:] = 1.0 / sizes[1:]
        overlap_weight.append(inverse_size[labelled].ravel())
        fp_weight.append((labelled == 0).ravel())
        n_regions += n
    normal = _concat(fp_weight).astype(bool)
    overlap = _concat(overlap_weight)
    n_normal = int(normal.sum())
    if n_regions == 0 or n_normal == 0:
        raise ValueError("a PRO curve needs at least one anomalous region and one anomaly-free pixel")
    scores = _concat(map_list)
    first_past_limit = int(np.floor(fpr_limit * n_normal)) + 1  # false positives at the first point past it
    truncated = first_past_limit <= n_normal
    if truncated:
        normal_scores = scores[normal]
        threshold = np.partition(normal_scores, n_normal - first_past_limit)[n_normal - first_past_limit]
        needed = scores >= threshold
        scores, normal, overlap = scores[needed], normal[needed], overlap[needed]
    order = np.argsort(scores)[::-1]
    sorted_scores = scores[order]
    last_of_tie = np.r_[np.diff(sorted_scores) != 0, True]
    fpr = np.cumsum(normal[order], dtype=np.int64)[last_of_tie] / n_normal
    pro = np.cumsum(overlap[order])[last_of_tie] / n_regions
    np.clip(pro, None, 1.0, out=pro)  # cumulative float sums may overshoot 1 by rounding
    if truncated:
        return np.r_[0.0, fpr], np.r_[0.0, pro]
    return np.r_[0.0, fpr, 1.0], np.r_[0.0, pro, 1.0]


def _area_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoidal area under y(x) for x in [0, x_max], interpolating y linearly at x_max."""
    inside = x <= x_max
    area = float(np.trapezoid(y[inside], x[inside]))
    last = int(np.flatnonzero(inside)[-1])
    if x[last] < x_max and last + 1 < len(x):
        x0, x1, y0, y1 = x[last], x[last + 1], y[last], y[last + 1]
        y_at = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
        area += (x_max - x0) * (y0 + y_at) / 2
    return area


def polyline_area(x0: np.ndarray, y0: np.ndarray, x1: np.ndarray, y1: np.ndarray, limit: float | None = None) -> float:
    """Trapezoidal area of the segments (x0, y0)→(x1, y1), x increasing; with ``limit``, only up to it, the
    segment that passes it taken linearly up to it (as ``_area_to`` integrates a curve)."""
    if limit is None:
        return float(np.sum((x1 - x0) * (y0 + y1))) / 2
    inside = x1 <= limit
    area = float(np.sum(((x1 - x0) * (y0 + y1))[inside])) / 2
    crossing = np.flatnonzero(~inside & (x0 < limit))
    if crossing.size:
        k = crossing[0]
        y_at = y0[k] + (y1[k] - y0[k]) * (limit - x0[k]) / (x1[k] - x0[k])
        area += (limit - x0[k]) * (y0[k] + y_at) / 2
    return area


def aupro(masks: PixelArrays, maps: PixelArrays, fpr_limit: float = 0.3) -> float:
    """Area under the PRO curve up to ``fpr_limit``, divided by the limit (MVTec AD's AUPRO).

    Parameters
    ----------
    masks : ndarray of shape (n, H, W) or sequence of 2-D arrays; 1 marks defect pixels.
    maps : anomaly maps of the same shapes; higher means more anomalous.
    fpr_limit : float, default=0.3

    Returns nan (with a warning) when there is no anomalous region or no anomaly-free pixel.

    The area of ``pro_curve`` without walking it point by point: the overlap only rises at scores that
    defect pixels have, so the curve is a polyline through, for each distinct defect score, the point before
    it and the point at it (the FPR there is a count in the sorted defect-free scores); every other score's
    point lies on a flat segment between them and adds no area of its own.
    """
    if not 0 < fpr_limit <= 1:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    mask_list, map_list = _pixel_pairs(masks, maps)
    if not any(m.any() for m in mask_list) or all(m.all() for m in mask_list):
        warnings.warn("AUPRO is undefined without anomalous regions and anomaly-free pixels; returning nan",
                      stacklevel=2)
        return float("nan")
    overlap, n_regions = [], 0
    for mask in mask_list:
        labelled, n = label_regions(mask)
        sizes = np.bincount(labelled.ravel(), minlength=n + 1)
        overlap.append(1.0 / sizes[labelled[mask]])
        n_regions += n
    normal = np.sort(_concat([a[~m] for m, a in zip(mask_list, map_list, strict=True)]))
    defect = _concat([a[m] for m, a in zip(mask_list, map_list, strict=True)])
    order = np.argsort(defect)[::-1]
    scores = defect[order]
    last_of_tie = np.r_[scores[1:] != scores[:-1], True]
    keys = scores[last_of_tie]
    after = np.minimum(np.cumsum(_concat(overlap)[order])[last_of_tie] / n_regions, 1.0)
    before = np.r_[0.0, after[:-1]]
    at_or_above = (normal.size - np.searchsorted(normal, keys, side="left")) / normal.size
    above = (normal.size - np.searchsorted(normal, keys, side="right")) / normal.size
    x = np.r_[np.column_stack([above, at_or_above]).ravel(), 1.0]
    y = np.r_[np.column_stack([before, after]).ravel(), after[-1]]
    return polyline_area(np.r_[0.0, x[:-1]], np.r_[0.0, y[:-1]], x, y, fpr_limit) / fpr_limit


# ----------------------------------------------------------------------------------------------------------
# AUPIMO (anomalib's per-image overlap)


def per_image_aupimo(masks: PixelArrays, maps: PixelArrays,
                     fpr_bounds: tuple[float, float] = AUPIMO_FPR_BOUNDS) -> np.ndarray:
    """AUPIMO of each image: the area under its per-image overlap (PIMO) curve; nan for images without defect.

    Definition (anomalib's, from Bertoldo et al., "AUPIMO", BMVC 2024): normal images are those whose mask
    is empty. At a threshold t, the shared FPR is the mean over normal images of the fraction of their
    pixels scoring >= t, and an anomalous image's overlap is the fraction of its defect pixels scoring >= t.
    AUPIMO is the area under overlap against log(shared FPR) between the bounds, divided by
    log(upper / lower), so that it lies in [0, 1].

    Where this differs from anomalib's code: anomalib samples 300,000 thresholds spaced linearly between
    the normal images' lowest and highest score and snaps each bound to the nearest sampled FPR; here
    every distinct score of a normal image is a threshold (tied scores make one straight segment, as in
    ROC) and the bounds are interpolated linearly in log FPR: the limit of anomalib's number as its
    thresholds get finer.

    Parameters
    ----------
    masks : ndarray of shape (n, H, W) or sequence of 2-D arrays; 1 marks defect pixels.
    maps : anomaly maps of the same shapes; higher means more anomalous.
    fpr_bounds : (float, float), default=(1e-5, 1e-4)

    Returns an array of shape (n,); all nan (with a warning) without normal or anomalous images, or when
    the normal images have too few pixels to resolve the lower bound.
    """
    lower, upper = fpr_bounds
    if not 0 < lower < upper <= 1:
        raise ValueError(f"fpr_bounds must satisfy 0 < lower < upper <= 1, got {fpr_bounds}")
    mask_list, map_list = _pixel_pairs(masks, maps)
    result = np.full(len(mask_list), np.nan)
    normal_maps = [a for m, a in zip(mask_list, map_list, strict=True) if not m.any()]
    if not normal_maps or len(normal_maps) == len(mask_list):
        warnings.warn("AUPIMO is undefined without both normal (empty mask) and anomalous images; returning nan",
                      stacklevel=2)
        return result
    scores = _concat(normal_maps)
    weights = np.concatenate([np.full(a.size, 1.0 / (a.size * len(normal_maps))) for a in normal_maps])
    order = np.argsort(scores)[::-1]
    sorted_scores = scores[order]
    last_of_tie = np.r_[np.diff(sorted_scores) != 0, True]
    thresholds = sorted_scores[last_of_tie]
    shared_fpr = np.cumsum(weights[order])[last_of_tie]
    shared_fpr[-1] = 1.0  # every pixel of every normal image, without rounding
    if shared_fpr[0] > lower:
        warnings.warn(f"AUPIMO is undefined here: the normal images have too few pixels to resolve a shared FPR "
                      f"of {lower:g} (the smallest non-zero one is {shared_fpr[0]:.3g}); returning nan", stacklevel=2)
        return result
    # segment k runs from the point at the next higher threshold (shared_fpr[k - 1]) to the one at thresholds[k]
    first = int(np.searchsorted(shared_fpr, lower, side="right"))
    last = int(np.searchsorted(shared_fpr, upper, side="left"))
    segments = np.arange(first, last + 1)
    x0, x1 = np.log(shared_fpr[segments - 1]), np.log(shared_fpr[segments])
    log_lower, log_upper = np.log(lower), np.log(upper)
    start, end = np.maximum(x0, log_lower), np.minimum(x1, log_upper)
    width = np.clip(end - start, 0, None)
    middle = ((start + end) / 2 - x0) / (x1 - x0)  # where the segment's mean height is taken, 0..1
    weight_above, weight_at = width * (1 - middle), width * middle
    for i, (mask, amap) in enumerate(zip(mask_list, map_list, strict=True)):
        if not mask.any():
            continue
        defect_scores = np.sort(amap[mask])
        n = defect_scores.size
        overlap_above = (n - np.searchsorted(defect_scores, thresholds[segments], side="right")) / n
        overlap_at = (n - np.searchsorted(defect_scores, thresholds[segments], side="left")) / n
        result[i] = (weight_above @ overlap_above + weight_at @ overlap_at) / (log_upper - log_lower)
    return np.clip(result, 0.0, 1.0)


def aupimo(masks: PixelArrays, maps: PixelArrays, fpr_bounds: tuple[float, float] = AUPIMO_FPR_BOUNDS) -> float:
    """Mean AUPIMO over the anomalous images (``per_image_aupimo``), as anomalib's ``AUPIMO`` returns it."""
    values = per_image_aupimo(masks, maps, fpr_bounds)
    present = values[~np.isnan(values)]
    return float(present.mean()) if present.size else float("nan")


def downsample_curve(x: np.ndarray, y: np.ndarray, max_points: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Keep at most ``max_points`` points of a monotone curve (always its ends) for plots and artifacts."""
    if len(x) <= max_points:
        return x, y
    keep = np.unique(np.r_[np.linspace(0, len(x) - 1, max_points).round().astype(int)])
    return x[keep], y[keep]
