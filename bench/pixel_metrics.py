"""Pixel metrics of a whole test set from a ``PixelStream``, without holding its pixels.

The definitions are ``anobench.metrics``' (which stays the reference for arrays held in memory): ROC, average
precision and F1-max over all pixels; PRO over 8-connected defect regions; AUPIMO over the normal images'
shared FPR. A curve's y (true positives, region overlap) only moves at scores that special pixels have, so
each accumulator walks, range by range from the highest score down, the points just before and at those
scores, with x (false positives) counted in the sorted ordinary keys by binary search: every other score's
point lies on a flat segment between them, adding no area, precision term or F1 maximum. Values equal a
single sort of every pixel's (up to float rounding of the sums). A subset of images (one defect type with
the good ones) is a choice of image groups and class weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from anobench.metrics import polyline_area
from anobench.pixelstream import KEY_END, PixelStream, Range, ceil_key, key_floats, keys_at_ranks
from anobench.statistics import NORMAL_TAIL_FPR, NORMAL_TAIL_MAX, BinnedCounts

CURVE_SAMPLES = 4096  # points kept of a curve for figures (downsampled again when written)


class CurveSample:
    """At most about ``2 × CURVE_SAMPLES`` points of a curve, whatever its length (thinned as it grows)."""

    def __init__(self):
        self.points = np.zeros((2, 1))

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        self.points = np.hstack([self.points, np.stack([x, y])])
        while self.points.shape[1] > 2 * CURVE_SAMPLES:
            self.points = np.hstack([self.points[:, :-1:2], self.points[:, -1:]])


@dataclass
class Vertices:
    """A range's part of a curve: its vertices after the curve's last point, and which close a score."""

    x: np.ndarray
    y: np.ndarray
    at_score: np.ndarray  # indices of the vertices at a score where y moved
    keys: np.ndarray  # those scores' keys


class CountCurve:
    """A curve from the highest score down: x counts the ordinary pixels of ``x_groups`` (and the special
    pixels of ``x_special`` classes), y sums ``y_weight`` over special pixels. Its vertices are, for each
    score where y moves, the point before that score and the point at it, then the range's end."""

    def __init__(self, stream: PixelStream, x_groups: list[int], x_special: np.ndarray, y_weight: np.ndarray):
        self.x_groups, self.x_special = x_groups, x_special.astype(np.float64)
        self.y_weight = y_weight.astype(np.float64)
        ordinary = stream.ordinary_pixels()
        self.x_total = float(sum(ordinary[i] for i, g in enumerate(stream.groups) if g in set(x_groups)))
        self.x_total += stream.special_total(self.x_special)
        self.y_total = stream.special_total(self.y_weight)
        self.x = self.y = 0.0

    def vertices(self, r: Range) -> Vertices:
        if r.single:  # one score: one point
            x = self.x + r.ordinary_total(self.x_groups) + r.special_total(self.x_special)
            y = self.y + r.special_total(self.y_weight)
            moved = np.flatnonzero([y != self.y])
            return Vertices(np.array([x]), np.array([y]), moved, np.full(moved.size, r.low, dtype=np.uint32))
        keys = r.special_keys
        last = np.r_[keys[1:] != keys[:-1], True] if keys.size else np.zeros(0, dtype=bool)
        distinct = keys[last]
        y_at = self.y + np.cumsum(self.y_weight[r.special_classes])[last]
        special_x_at = np.cumsum(self.x_special[r.special_classes])[last]
        moved = np.flatnonzero(np.diff(np.r_[self.y, y_at]) != 0)
        scores = distinct[moved]
        y_after, y_before = y_at[moved], np.r_[self.y, y_at][moved]
        special_x_before = np.r_[0.0, special_x_at][moved]
        x_after = self.x + r.ordinary_at_or_above(self.x_groups, scores) + special_x_at[moved]
        x_before = self.x + r.ordinary_at_or_above(self.x_groups, scores, strictly=True) + special_x_before
        x_end = self.x + r.ordinary_total(self.x_groups) + (special_x_at[-1] if keys.size else 0.0)
        n = scores.size
        x, y = np.empty(2 * n + 1), np.empty(2 * n + 1)
        x[0:2 * n:2], x[1:2 * n:2], x[-1] = x_before, x_after, x_end
        y[0:2 * n:2], y[1:2 * n:2], y[-1] = y_before, y_after, (y_at[-1] if keys.size else self.y)
        return Vertices(x, y, np.arange(1, 2 * n, 2), scores)

    def advance(self, v: Vertices) -> tuple[np.ndarray, np.ndarray]:
        """The segments' starts (the previous point, then each vertex but the last); moves to the end."""
        x0, y0 = np.r_[self.x, v.x[:-1]], np.r_[self.y, v.y[:-1]]
        self.x, self.y = float(v.x[-1]), float(v.y[-1])
        return x0, y0


class RocAccumulator:
    """ROC area and, with ``full``, average precision, F1-max (and its threshold) and a sample of the curve."""

    def __init__(self, curve: CountCurve, full: bool = False):
        self.curve, self.full = curve, full
        self.total_positive, self.total_negative = curve.y_total, curve.x_total
        self.area = self.precision_sum = 0.0
        self.best_f1, self.best_key = -1.0, None
        self.sample = CurveSample()

    def update(self, r: Range) -> None:
        v = self.curve.vertices(r)
        x0, y0 = self.curve.advance(v)
        self.area += polyline_area(x0, y0, v.x, v.y)
        if not self.full or not v.at_score.size:
            return
        tp, fp = v.y[v.at_score], v.x[v.at_score]
        self.precision_sum += float(np.sum((tp - y0[v.at_score]) * tp / (tp + fp)))
        f1 = 2 * tp / (2 * tp + fp + (self.total_positive - tp))
        best = int(np.argmax(f1))
        if f1[best] > self.best_f1:
            self.best_f1, self.best_key = float(f1[best]), v.keys[best]
        step = max(1, v.x.size // CURVE_SAMPLES)
        self.sample.add(v.x[::step], v.y[::step])

    @property
    def defined(self) -> bool:
        return self.total_positive > 0 and self.total_negative > 0

    def auroc(self) -> float:
        return self.area / (self.total_positive * self.total_negative) if self.defined else float("nan")

    def average_precision(self) -> float:
        return self.precision_sum / self.total_positive if self.total_positive > 0 else float("nan")

    def f1_max(self) -> tuple[float, float | None]:
        if self.total_positive == 0 or self.best_key is None:
            return float("nan"), None
        return self.best_f1, float(key_floats(np.array([self.best_key]))[0])

    def roc_curve(self) -> np.ndarray:
        """(fpr, tpr) at a sample of the curve's vertices, from (0, 0) to (1, 1)."""
        fp, tp = self.sample.points
        return np.stack([np.r_[fp / self.total_negative, 1.0], np.r_[tp / self.total_positive, 1.0]])


class OverlapAccumulator:
    """Area under a per-region overlap curve (PRO, or LOCO's sPRO) up to each FPR limit, divided by it: the
    curve's x over its total is the FPR, its y over ``regions`` (at most 1) the overlap."""

    def __init__(self, curve: CountCurve, regions: float, limits: Sequence[float]):
        self.curve, self.regions, self.total_negative = curve, regions, curve.x_total
        self.limits = sorted(set(limits))
        self.areas = dict.fromkeys(self.limits, 0.0)
        self.sample = CurveSample()

    @property
    def defined(self) -> bool:
        return self.regions > 0 and self.total_negative > 0

    def update(self, r: Range) -> None:
        if not self.defined or self.curve.x > self.limits[-1] * self.total_negative:
            return
        v = self.curve.vertices(r)
        x0, y0 = self.curve.advance(v)
        x0, x1 = x0 / self.total_negative, v.x / self.total_negative
        y0, y1 = (np.minimum(y / self.regions, 1.0) for y in (y0, v.y))  # sums may overshoot 1 by rounding
        for limit in self.limits:
            self.areas[limit] += polyline_area(x0, y0, x1, y1, limit)
        kept = x1 <= self.limits[-1]
        step = max(1, int(kept.sum()) // CURVE_SAMPLES)
        self.sample.add(x1[kept][::step], y1[kept][::step])

    def area(self, limit: float) -> float:
        return float(self.areas[limit] / limit) if self.defined else float("nan")

    def curve_points(self) -> np.ndarray:
        return self.sample.points


# ----------------------------------------------------------------------------------------------------------
# AUPIMO


def shared_fpr_window(stream: PixelStream, normal: np.ndarray, bounds: tuple[float, float]
                      ) -> tuple[np.ndarray, np.ndarray, float]:
    """AUPIMO's part of the normal images' shared-FPR curve (a point per distinct score of a normal image,
    the FPR there the mean over normal images of their share of pixels at or above it): from the top down
    to the first point at or above the upper bound. Returns the points' FPRs and keys (descending score),
    and the highest point's FPR. The curve's last point (every pixel) counts as exactly 1."""
    images = np.flatnonzero(normal)
    weight = 1.0 / (stream.ordinary_pixels()[images] * images.size)
    lowest = min(stream.lowest_ordinary(int(i)) for i in images)

    def fpr_at(keys: np.ndarray) -> np.ndarray:  # image by image: memory of one row of keys
        return sum(w * stream.ordinary_at_or_above([i], keys)[0] for i, w in zip(images, weight, strict=True))

    # the highest score whose point reaches the upper bound (or the lowest score, where the curve ends)
    low, high = 0, KEY_END
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if middle <= lowest or fpr_at(np.array([middle]))[0] >= bounds[1] else (low, middle)
    keys = np.unique(np.concatenate([stream.ordinary_from(int(i), low) for i in images]))[::-1]
    fpr = fpr_at(keys.astype(np.int64))
    if keys[-1] == lowest:
        fpr[-1] = 1.0
    return fpr, keys, float(fpr[0])


def per_image_aupimo(stream: PixelStream, bounds: tuple[float, float]) -> tuple[np.ndarray, str | None]:
    """Each image's AUPIMO (nan for images without defect) as ``metrics.per_image_aupimo`` defines it, and
    the reason where it is undefined for every image."""
    normal = np.asarray(stream.n_regions) == 0
    result = np.full(stream.n_images, np.nan)
    if not normal.any() or normal.all():
        return result, "AUPIMO is undefined without both normal (empty mask) and anomalous images"
    lower, upper = bounds
    shared_fpr, thresholds, first_fpr = shared_fpr_window(stream, normal, bounds)
    if first_fpr > lower:
        return result, (f"AUPIMO is undefined here: the normal images have too few pixels to resolve a shared FPR "
                        f"of {lower:g} (the smallest non-zero one is {first_fpr:.3g})")
    first = int(np.searchsorted(shared_fpr, lower, side="right"))
    last = int(np.searchsorted(shared_fpr, upper, side="left"))
    segments = np.arange(first, min(last, shared_fpr.size - 1) + 1)
    x0, x1 = np.log(shared_fpr[segments - 1]), np.log(shared_fpr[segments])
    log_lower, log_upper = np.log(lower), np.log(upper)
    start, end = np.maximum(x0, log_lower), np.minimum(x1, log_upper)
    width = np.clip(end - start, 0, None)
    middle = ((start + end) / 2 - x0) / (x1 - x0)
    weight_above, weight_at = width * (1 - middle), width * middle
    keys = thresholds[segments].astype(np.int64)
    defect = stream.column("defect").astype(np.float64)
    for i in np.flatnonzero(~normal):  # image by image: memory of one row of thresholds
        counts = stream.special_at_or_above(np.r_[keys, keys + 1, 0], defect, np.array([i]))[0]
        at, above, total = counts[:keys.size], counts[keys.size:2 * keys.size], counts[-1]  # above: at or above the next
        result[i] = ((above / total) @ weight_above + (at / total) @ weight_at) / (log_upper - log_lower)
    return np.clip(result, 0.0, 1.0), None


# ----------------------------------------------------------------------------------------------------------
# the bootstrap's grid and per-image counts


class OrderStatistics:
    """Scores at given ranks (0: the highest) among the ordinary pixels of ``groups`` and, with ``special``,
    the special pixels too; collected range by range."""

    def __init__(self, groups: list[int], special: bool, ranks: np.ndarray):
        self.groups, self.special = groups, special
        self.ranks = np.asarray(ranks, dtype=np.int64)
        self.values = np.full(self.ranks.size, np.nan, dtype=np.float32)
        self.seen = 0

    def update(self, r: Range) -> None:
        if r.single:
            count = r.ordinary_total(self.groups) + (int(r.special_counts.sum()) if self.special else 0)
            inside = (self.ranks >= self.seen) & (self.ranks < self.seen + count)
            self.values[inside] = key_floats(np.array([r.low]))[0]
            self.seen += count
            return
        special = r.special_keys if self.special else np.empty(0, dtype=np.uint32)
        count = r.ordinary_total(self.groups) + special.size
        inside = np.flatnonzero((self.ranks >= self.seen) & (self.ranks < self.seen + count))
        if inside.size:
            def at_or_above(keys):
                return (r.ordinary_at_or_above(self.groups, keys)
                        + special.size - np.searchsorted(special[::-1], keys.astype(np.uint32), side="left"))
            self.values[inside] = key_floats(keys_at_ranks(at_or_above, self.ranks[inside] - self.seen))
        self.seen += count


def quantile_positions(size: int, levels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """numpy's linear quantiles of a sorted array of ``size`` values: lower and upper positions and weights."""
    virtual = np.asarray(levels, dtype=np.float64) * (size - 1)
    lower = np.floor(virtual).astype(np.int64)
    return lower, np.minimum(lower + 1, size - 1), virtual - lower


def interpolate(lower_values: np.ndarray, upper_values: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    """The quantiles from their two order statistics, with numpy's own interpolation (bit for bit)."""
    return np.array([np.quantile(np.array([a, b]), g) for a, b, g in zip(lower_values, upper_values, gamma,
                                                                         strict=True)], dtype=lower_values.dtype)


class PixelGrid:
    """The bootstrap's thresholds, dense where the curves are integrated: quantiles of the defect-free pixels
    (finer below an FPR of 0.4), quantiles of the defect pixels, and the normal images' highest scores
    (every one above a shared FPR of ``tail_fpr``, up to ``tail_max``; beyond that many, log-spaced
    quantiles of them)."""

    def __init__(self, stream: PixelStream, all_groups: list[int], normal_groups: list[int],
                 tail_fpr: float = NORMAL_TAIL_FPR, tail_max: int = NORMAL_TAIL_MAX):
        exceedance = np.unique(np.r_[np.linspace(0, 1, 513), np.linspace(0, 0.4, 1025),
                                     np.geomspace(1e-7, 1e-2, 128)])
        ordinary = stream.ordinary_pixels()
        sizes = {"normal": int(ordinary.sum()), "defect": int(round(stream.special_total(
            stream.column("defect").astype(np.float64))))}
        self.parts: list[tuple[str, OrderStatistics]] = []
        for kind, groups, special, levels in (("normal", all_groups, False, 1 - exceedance),
                                              ("defect", [], True, np.linspace(0, 1, 257))):
            size = sizes[kind]
            if size:
                ascending = np.r_[0, (levels * (size - 1)).round().astype(np.int64)]
                self.parts.append(("exact", OrderStatistics(groups, special, size - 1 - ascending)))
        pooled = int(sum(ordinary[i] for i, g in enumerate(stream.groups) if g in set(normal_groups)))
        self.tail_quantiles = None
        if pooled:
            tail = min(tail_max, math.ceil(tail_fpr * pooled))
            if tail < tail_fpr * pooled:  # too many to take them all: log-spaced quantiles of the tail
                self.tail_quantiles = quantile_positions(pooled, 1 - np.geomspace(0.1 / pooled, tail_fpr, tail_max))
                ascending = np.r_[self.tail_quantiles[0], self.tail_quantiles[1]]
            else:
                ascending = np.arange(pooled - tail, pooled)
            self.parts.append(("tail", OrderStatistics(normal_groups, False, pooled - 1 - ascending)))

    def update(self, r: Range) -> None:
        for _, part in self.parts:
            part.update(r)

    def edges(self) -> np.ndarray:
        """Ascending thresholds (float64)."""
        values = []
        for kind, part in self.parts:
            if kind == "tail" and self.tail_quantiles is not None:
                half = part.values.size // 2
                values.append(interpolate(part.values[:half], part.values[half:], self.tail_quantiles[2]))
            else:
                values.append(part.values)
        lowest = min(part.values[0] for kind, part in self.parts if kind == "exact")
        return np.unique(np.concatenate([[lowest], *values]).astype(np.float64))


def binned_counts(stream: PixelStream, edges: np.ndarray) -> BinnedCounts:
    """Each image's pixels counted in the bins of ``edges`` (bin k is [edges[k], edges[k + 1]), columns from
    the highest bin): defect pixels, defect-free pixels, and defect pixels weighted by 1 / region size."""
    keys = np.array([ceil_key(e) for e in edges], dtype=np.int64)
    defect = stream.column("defect").astype(np.float64)
    positive = stream.special_at_or_above(keys, defect)
    overlap = stream.special_at_or_above(keys, stream.column("overlap"))
    negative = (stream.ordinary_at_or_above(np.arange(stream.n_images), keys)
                + stream.special_at_or_above(keys, 1.0 - defect))

    def per_bin(at_or_above: np.ndarray) -> np.ndarray:
        bins = at_or_above - np.hstack([at_or_above[:, 1:], np.zeros((at_or_above.shape[0], 1))])
        return bins[:, ::-1].astype(np.float32)

    pixels = stream.ordinary_pixels() + np.bincount(stream.column("image"), weights=stream.column("pixels"),
                                                    minlength=stream.n_images)
    return BinnedCounts(per_bin(positive), per_bin(negative), per_bin(overlap),
                        np.asarray(stream.n_regions, dtype=np.float64), pixels, np.float32)


def bootstrap_counts(stream: PixelStream) -> BinnedCounts:
    """Each image's pixels in the bootstrap's grid (one more merge of the pixels, for the grid)."""
    grid = PixelGrid(stream, sorted(set(stream.groups)), stream.normal_groups())
    for r in stream.ranges():
        grid.update(r)
    return binned_counts(stream, grid.edges())


# ----------------------------------------------------------------------------------------------------------
# a test set's pixel metrics


@dataclass
class PixelResult:
    """What the pixel metrics of a test set give a cell: values, reasons, figures and bootstrap counts."""

    values: dict[str, float | None]
    notes: dict[str, str]
    threshold: float | None  # the pixel F1-max threshold (for figures, never a metric)
    per_defect: dict[str, dict[str, float | None]]
    curves: dict[str, np.ndarray]
    counts: BinnedCounts | None  # each image's pixels in the bootstrap grid, when asked for


UNDEFINED = {"pixel_auroc": "pixel AUROC is undefined when only one class is present",
             "pixel_ap": "average precision is undefined without positives",
             "pixel_f1_max": "F1 is undefined without positives"}


def evaluate(stream: PixelStream, subsets: dict[str, list[int]], names: Sequence[str], *, aupro_limit,
             aupimo_bounds: tuple[float, float], bootstrap: bool = False) -> PixelResult:
    """The pixel metrics ``names`` of the whole test set and pixel AUROC and AUPRO@0.3 of each subset in
    ``subsets`` (the stream's groups of a defect type's images and the good ones'), from one merge of the
    stream's pixels.
    ``aupro_limit(name)`` gives an AUPRO name's FPR limit; ``bootstrap`` asks for each image's counts in the
    bootstrap grid. Pixel metrics are left out where the images have no defect pixel."""
    defect, overlap = stream.column("defect"), stream.column("overlap")
    image = stream.column("image")
    groups = sorted(set(stream.groups))
    regions = np.asarray(stream.n_regions, dtype=np.float64)
    non_defect = ~defect
    limits = {name: aupro_limit(name) for name in names if aupro_limit(name) is not None}
    roc = RocAccumulator(CountCurve(stream, groups, non_defect, defect), full=True)
    pro = OverlapAccumulator(CountCurve(stream, groups, non_defect, overlap), float(regions.sum()),
                             [*limits.values(), 0.3])
    consumers: list = [roc, pro]
    per_subset = {}
    for name, subset_groups in subsets.items():
        of_subset = np.isin(np.asarray(stream.groups), subset_groups)
        in_subset = of_subset[image]
        subset_roc = RocAccumulator(CountCurve(stream, subset_groups, non_defect & in_subset, defect & in_subset))
        subset_pro = OverlapAccumulator(CountCurve(stream, subset_groups, non_defect & in_subset, overlap * in_subset),
                                        float(regions[of_subset].sum()), [0.3])
        per_subset[name] = (subset_roc, subset_pro)
        consumers += [subset_roc, subset_pro]
    grid = None
    if bootstrap:
        grid = PixelGrid(stream, groups, stream.normal_groups())
        consumers.append(grid)
    for r in stream.ranges():
        for consumer in consumers:
            consumer.update(r)

    computed: dict[str, float] = {}
    notes: dict[str, str] = {}
    if roc.total_positive > 0:
        f1, _ = roc.f1_max()
        computed = {"pixel_auroc": roc.auroc(), "pixel_ap": roc.average_precision(), "pixel_f1_max": f1,
                    **{name: pro.area(limit) for name, limit in limits.items()}}
        if "aupimo" in names:
            aupimo, reason = per_image_aupimo(stream, aupimo_bounds)
            present = aupimo[~np.isnan(aupimo)]
            computed["aupimo"] = float(present.mean()) if present.size else float("nan")
            if reason:
                notes["aupimo"] = reason
    values: dict[str, float | None] = {}
    for name in names:
        if name in computed:
            values[name] = computed[name] if np.isfinite(computed[name]) else None
            if values[name] is None and name not in notes:
                notes[name] = UNDEFINED.get(name, "AUPRO is undefined without anomalous regions and anomaly-free "
                                                  "pixels")
    by_subset = {name: {"pixel_auroc": _finite(subset_roc.auroc()), "aupro": _finite(subset_pro.area(0.3))}
                 for name, (subset_roc, subset_pro) in per_subset.items() if subset_roc.total_positive > 0}
    curves = {}
    if roc.defined:
        curves["pixel_roc"] = roc.roc_curve()
    if pro.defined:
        curves["pro_curve"] = pro.curve_points()
    counts = binned_counts(stream, grid.edges()) if grid is not None and roc.total_positive > 0 else None
    return PixelResult(values, notes, roc.f1_max()[1], by_subset, curves, counts)


def _finite(value: float) -> float | None:
    return value if np.isfinite(value) else None
