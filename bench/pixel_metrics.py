"""Pixel metrics of a whole test set, accumulated range by range over a ``PixelStream``.

The definitions are ``anobench.metrics``' (which stays the reference for arrays held in memory): ROC, average
precision and F1-max over all pixels; PRO over 8-connected defect regions; AUPIMO over the normal images'
shared FPR. Each accumulator sees the distinct scores from the highest down, with exact cumulative sums at
each, and carries its last point from one range to the next, so the value is the one a single sort of every
pixel would give (up to float rounding of the sums). A subset of images (one defect type with the good
images, say) is a choice of per-class weights: scores where none of its pixels lie add points at which its
curve does not move, which change no area, precision sum or maximum.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from anobench.metrics import polyline_area
from anobench.pixelstream import PixelStream, Range, ceil_key, key_floats
from anobench.statistics import NORMAL_TAIL_FPR, NORMAL_TAIL_MAX, BinnedCounts

CURVE_SAMPLES = 4096  # points kept of a curve for figures (downsampled again when written)


@dataclass
class Vertices:
    """A range's part of a curve: its vertices after the curve's last point, and which are a score's point."""

    x: np.ndarray
    y: np.ndarray
    at_score: np.ndarray  # indices of the vertices that close a score where y moved
    keys: np.ndarray  # those scores' keys


class CountCurve:
    """A curve from the highest score down: x counts the pixels of ``x_member`` classes, y sums ``y_weight``,
    which only special pixels carry. Its vertices are, for each score where y moves, the point before that
    score (y not yet moved) and the point after it, then the range's end: every other score adds a point on
    the straight line between them, so areas and maxima need only these, and a range costs in proportion
    to its special pixels."""

    def __init__(self, stream: PixelStream, x_member: np.ndarray, y_weight: np.ndarray):
        self.x_member, self.y_weight = x_member.astype(bool), y_weight.astype(np.float64)
        self.x_total, self.y_total = stream.total(self.x_member.astype(np.float64)), stream.total(self.y_weight)
        self.x = self.y = 0.0

    def vertices(self, r: Range) -> Vertices:
        if r.counts is not None:  # one score: one point
            x = self.x + r.total(self.x_member.astype(np.float64))
            y = self.y + r.total(self.y_weight)
            moved = np.array([0]) if y != self.y else np.array([], dtype=np.int64)
            return Vertices(np.array([x]), np.array([y]), moved, r.keys[:1][moved])
        positions, weights = r.weighted(self.y_weight)
        key_index = r.key_index(positions)
        last = np.r_[key_index[1:] != key_index[:-1], True] if positions.size else np.zeros(0, dtype=bool)
        scores = key_index[last]
        y_after = self.y + np.cumsum(weights)[last]
        y_before = np.r_[self.y, y_after[:-1]]
        starts = np.where(scores > 0, r.ends[scores - 1], 0)
        bounds = r.count_before(np.r_[starts, r.ends[scores], r.size], self.x_member) + self.x
        n = scores.size
        x = np.empty(2 * n + 1)
        y = np.empty(2 * n + 1)
        x[0:2 * n:2], x[1:2 * n:2], x[-1] = bounds[:n], bounds[n:2 * n], bounds[-1]
        y[0:2 * n:2], y[1:2 * n:2], y[-1] = y_before, y_after, y_after[-1] if n else self.y
        return Vertices(x, y, np.arange(1, 2 * n, 2), r.keys[scores])

    def advance(self, v: Vertices) -> tuple[np.ndarray, np.ndarray]:
        """The segments' starts (the previous point, then each vertex but the last), and moves to the end."""
        x0, y0 = np.r_[self.x, v.x[:-1]], np.r_[self.y, v.y[:-1]]
        self.x, self.y = float(v.x[-1]), float(v.y[-1])
        return x0, y0


class RocAccumulator:
    """ROC area and, with ``full``, average precision, F1-max (and its threshold) and a sample of the curve;
    positives are weighted pixels of special classes, negatives the pixels of ``negative`` classes."""

    def __init__(self, stream: PixelStream, positive: np.ndarray, negative: np.ndarray, full: bool = False):
        self.curve = CountCurve(stream, negative, positive)
        self.total_positive, self.total_negative = self.curve.y_total, self.curve.x_total
        self.full = full
        self.area = self.precision_sum = 0.0
        self.best_f1, self.best_key = -1.0, None
        self.points: list[np.ndarray] = [np.zeros((2, 1))]

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
        self.points.append(np.stack([v.x[::step], v.y[::step]]))

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
        fp, tp = np.concatenate(self.points, axis=1)
        return np.stack([np.r_[fp / self.total_negative, 1.0], np.r_[tp / self.total_positive, 1.0]])


class OverlapAccumulator:
    """Area under a per-region overlap curve (PRO, or LOCO's sPRO) up to each FPR limit, divided by it:
    FPR is the share of ``negative`` pixels counted, overlap the ``overlap`` weight summed over ``regions``."""

    def __init__(self, stream: PixelStream, negative: np.ndarray, overlap: np.ndarray, regions: float,
                 limits: Sequence[float]):
        self.curve = CountCurve(stream, negative, overlap)
        self.regions, self.total_negative = regions, self.curve.x_total
        self.limits = sorted(set(limits))
        self.areas = dict.fromkeys(self.limits, 0.0)
        self.points: list[np.ndarray] = [np.zeros((2, 1))]

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
        self.points.append(np.stack([x1[kept][::step], y1[kept][::step]]))

    def area(self, limit: float) -> float:
        return self.areas[limit] / limit if self.defined else float("nan")

    def curve_points(self) -> np.ndarray:
        return np.concatenate(self.points, axis=1)


@dataclass
class SharedFprWindow:
    """AUPIMO's part of the normal images' shared-FPR curve: the points from the last one at or below the
    lower bound to the first one at or above the upper bound (a curve point per distinct normal score)."""

    normal: np.ndarray  # per class: True for pixels of normal images
    weight: np.ndarray  # per class: 1 / (pixels of its image × normal images)
    bounds: tuple[float, float]
    fpr: np.ndarray = field(default_factory=lambda: np.zeros(0))
    keys: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint32))
    first_fpr: float | None = None
    shared: float = 0.0
    complete: bool = False

    def update(self, r: Range) -> None:
        if self.complete:
            return
        if r.counts is not None:
            fpr, keys = np.array([self.shared + r.total(self.weight)]), r.keys[:1]
            if not r.total(self.normal.astype(np.float64)):
                return
        else:
            positions = r.member_positions(self.normal)
            if not positions.size:
                return
            key_index = r.key_index(positions)
            last = np.r_[key_index[1:] != key_index[:-1], True]
            fpr = self.shared + np.cumsum(self.weight[r.classes[positions]])[last]
            keys = r.keys[key_index[last]]
        if self.first_fpr is None:
            self.first_fpr = float(fpr[0])
        self.shared = float(fpr[-1])
        lower, upper = self.bounds
        fpr, keys = np.r_[self.fpr, fpr], np.r_[self.keys, keys]
        from_last_below = max(int(np.searchsorted(fpr, lower, side="right")) - 1, 0)
        reached = int(np.searchsorted(fpr, upper, side="left"))
        self.fpr, self.keys = fpr[from_last_below:reached + 1], keys[from_last_below:reached + 1]
        self.complete = reached < fpr.size


def per_image_aupimo(stream: PixelStream, window: SharedFprWindow, normal_images: np.ndarray,
                     bounds: tuple[float, float]) -> tuple[np.ndarray, str | None]:
    """Each image's AUPIMO (nan for images without defect) as ``metrics.per_image_aupimo`` defines it, and
    the reason where it is undefined for every image."""
    result = np.full(stream.n_images, np.nan)
    if not normal_images.any() or normal_images.all():
        return result, "AUPIMO is undefined without both normal (empty mask) and anomalous images"
    lower, upper = bounds
    if window.first_fpr is not None and window.first_fpr > lower:
        return result, (f"AUPIMO is undefined here: the normal images have too few pixels to resolve a shared FPR "
                        f"of {lower:g} (the smallest non-zero one is {window.first_fpr:.3g})")
    shared_fpr, thresholds = window.fpr.copy(), window.keys
    if not window.complete:  # the curve's last point: every pixel of every normal image, without rounding
        shared_fpr[-1] = 1.0
    first = int(np.searchsorted(shared_fpr, lower, side="right"))
    last = int(np.searchsorted(shared_fpr, upper, side="left"))
    segments = np.arange(max(first, 1), min(last, shared_fpr.size - 1) + 1)
    x0, x1 = np.log(shared_fpr[segments - 1]), np.log(shared_fpr[segments])
    log_lower, log_upper = np.log(lower), np.log(upper)
    start, end = np.maximum(x0, log_lower), np.minimum(x1, log_upper)
    width = np.clip(end - start, 0, None)
    middle = ((start + end) / 2 - x0) / (x1 - x0)
    weight_above, weight_at = width * (1 - middle), width * middle
    keys = thresholds[segments].astype(np.uint64)
    edges = np.unique(np.r_[keys, keys + 1])  # at or above a key, and above it (at or above the next key)
    defect = stream.column("defect").astype(np.float64)
    at_or_above = stream.counts_at_or_above(edges, {"defect": defect})["defect"]
    n_defect = np.bincount(stream.column("image"), weights=defect * stream.column("pixels"),
                           minlength=stream.n_images)
    anomalous = np.flatnonzero(~normal_images)
    overlap_at = at_or_above[anomalous][:, np.searchsorted(edges, keys)] / n_defect[anomalous, None]
    overlap_above = at_or_above[anomalous][:, np.searchsorted(edges, keys + 1)] / n_defect[anomalous, None]
    result[anomalous] = (overlap_above @ weight_above + overlap_at @ weight_at) / (log_upper - log_lower)
    return np.clip(result, 0.0, 1.0), None


class OrderStatistics:
    """Scores at given ascending positions among the pixels of ``member`` classes (quantiles for a grid)."""

    def __init__(self, stream: PixelStream, member: np.ndarray, positions: np.ndarray):
        self.member = member.astype(bool)
        self.size = int(round(stream.total(self.member.astype(np.float64))))
        self.descending = self.size - 1 - np.asarray(positions, dtype=np.int64)
        self.values = np.full(self.descending.size, np.nan, dtype=np.float32)
        self.seen = 0

    def update(self, r: Range) -> None:
        if self.seen >= self.size or self.descending.min(initial=self.size) >= self.size:
            return
        pending = np.flatnonzero(self.descending >= self.seen)
        keys, count = r.member_ranks(self.member, self.descending[pending] - self.seen)
        inside = self.descending[pending] - self.seen < count
        self.values[pending[inside]] = key_floats(keys[inside])
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
    """``statistics.pixel_grid``'s thresholds (see there) from order statistics of the stream."""

    def __init__(self, stream: PixelStream, normal_images: np.ndarray, tail_fpr: float, tail_max: int):
        defect = stream.column("defect")
        of_normal_image = normal_images[stream.column("image")]
        exceedance = np.unique(np.r_[np.linspace(0, 1, 513), np.linspace(0, 0.4, 1025),
                                     np.geomspace(1e-7, 1e-2, 128)])
        self.parts: list[tuple[str, OrderStatistics]] = []
        for member, levels in ((~defect, 1 - exceedance), (defect, np.linspace(0, 1, 257))):
            size = int(round(stream.total(member.astype(np.float64))))
            if size:
                positions = (levels * (size - 1)).round().astype(np.int64)
                self.parts.append(("exact", OrderStatistics(stream, member, np.r_[0, positions])))
        pooled = int(round(stream.total(of_normal_image.astype(np.float64))))
        self.tail_quantiles = None
        if pooled:
            tail = min(tail_max, math.ceil(tail_fpr * pooled))
            if tail < tail_fpr * pooled:  # too many to take them all: log-spaced quantiles of the tail
                self.tail_quantiles = quantile_positions(pooled, 1 - np.geomspace(0.1 / pooled, tail_fpr, tail_max))
                positions = np.r_[self.tail_quantiles[0], self.tail_quantiles[1]]
            else:
                positions = np.arange(pooled - tail, pooled)
            self.parts.append(("tail", OrderStatistics(stream, of_normal_image, positions)))

    def update(self, r: Range) -> None:
        for _, part in self.parts:
            part.update(r)

    def edges(self) -> np.ndarray:
        """Ascending thresholds, as ``statistics.pixel_grid`` returns them (float64)."""
        values = []
        for kind, part in self.parts:
            if kind == "tail" and self.tail_quantiles is not None:
                half = part.values.size // 2
                values.append(interpolate(part.values[:half], part.values[half:], self.tail_quantiles[2]))
            else:
                values.append(part.values)
        lowest = min(part.values[0] for kind, part in self.parts if kind == "exact")
        return np.unique(np.concatenate([[lowest], *values]).astype(np.float64))


def binned_counts(stream: PixelStream, edges: np.ndarray | None = None) -> BinnedCounts:
    """Each image's pixels counted in the bins of ``edges`` (bin k is [edges[k], edges[k + 1]), columns from
    the highest bin); by default the bootstrap's grid (``PixelGrid``, from one more merge of the pixels)."""
    if edges is None:
        grid = PixelGrid(stream, np.asarray(stream.n_regions) == 0, NORMAL_TAIL_FPR, NORMAL_TAIL_MAX)
        for r in stream.ranges():
            grid.update(r)
        edges = grid.edges()
    keys = np.array([ceil_key(e) for e in edges], dtype=np.uint64)
    defect = stream.column("defect")
    at_or_above = stream.counts_at_or_above(keys, {"positive": defect.astype(np.float64),
                                                   "negative": (~defect).astype(np.float64),
                                                   "overlap": stream.column("overlap")})

    def per_bin(cumulative: np.ndarray) -> np.ndarray:
        bins = cumulative - np.hstack([cumulative[:, 1:], np.zeros((cumulative.shape[0], 1))])
        return bins[:, ::-1].astype(np.float32)

    pixels = np.bincount(stream.column("image"), weights=stream.column("pixels"), minlength=stream.n_images)
    return BinnedCounts(per_bin(at_or_above["positive"]), per_bin(at_or_above["negative"]),
                        per_bin(at_or_above["overlap"]), np.asarray(stream.n_regions, dtype=np.float64), pixels,
                        np.float32)


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


def _undefined(name: str) -> str:
    if name == "pixel_auroc":
        return "pixel AUROC is undefined when only one class is present"
    if name in ("pixel_ap", "pixel_f1_max"):
        return "average precision is undefined without positives" if name == "pixel_ap" else \
            "F1 is undefined without positives"
    return "AUPRO is undefined without anomalous regions and anomaly-free pixels"


def evaluate(stream: PixelStream, labels: np.ndarray, defect_types: Sequence[str], names: Sequence[str], *,
             per_defect: bool, aupro_limit, aupimo_bounds: tuple[float, float], bootstrap: bool = False
             ) -> PixelResult:
    """The pixel metrics ``names`` of the whole test set (and, with ``per_defect``, pixel AUROC and AUPRO@0.3
    of each defect type with the good images) from one merge of the stream's pixels. ``aupro_limit(name)``
    gives an AUPRO name's FPR limit; ``bootstrap`` asks for each image's counts in the bootstrap grid. Pixel
    metrics are left out where the images have no defect pixel."""
    defect, overlap = stream.column("defect"), stream.column("overlap")
    image = stream.column("image")
    positive, negative = defect.astype(np.float64), (~defect).astype(np.float64)
    regions = np.asarray(stream.n_regions, dtype=np.float64)
    normal_images = regions == 0
    limits = {name: aupro_limit(name) for name in names if aupro_limit(name) is not None}
    roc = RocAccumulator(stream, positive, negative, full=True)
    pro = OverlapAccumulator(stream, negative, overlap, float(regions.sum()), [*limits.values(), 0.3])
    consumers: list = [roc, pro]
    window = None
    if "aupimo" in names and normal_images.any() and not normal_images.all():
        pixels = np.bincount(image, weights=stream.column("pixels"), minlength=stream.n_images)
        weight = np.where(normal_images[image], 1.0 / (pixels[image] * normal_images.sum()), 0.0)
        window = SharedFprWindow(normal_images[image], weight, aupimo_bounds)
        consumers.append(window)
    types, labels = np.asarray(defect_types), np.asarray(labels)
    per_type = {}
    good = (labels == 0)[image]
    for defect_type in sorted(set(types[labels == 1])) if per_defect else []:
        of_type = ((types == defect_type) & (labels == 1))[image]
        chosen = of_type | good
        type_roc = RocAccumulator(stream, positive * of_type, negative * chosen)
        type_regions = float(regions[(types == defect_type) & (labels == 1)].sum())
        type_pro = OverlapAccumulator(stream, negative * chosen, overlap * of_type, type_regions, [0.3])
        per_type[defect_type] = (type_roc, type_pro)
        consumers += [type_roc, type_pro]
    grid = PixelGrid(stream, normal_images, NORMAL_TAIL_FPR, NORMAL_TAIL_MAX) if bootstrap else None
    if grid is not None:
        consumers.append(grid)
    for r in stream.ranges():
        for consumer in consumers:
            consumer.update(r)

    values: dict[str, float | None] = {}
    notes: dict[str, str] = {}
    f1, threshold = roc.f1_max()
    computed = {"pixel_auroc": roc.auroc(), "pixel_ap": roc.average_precision(), "pixel_f1_max": f1,
                **{name: pro.area(limit) for name, limit in limits.items()}}
    if "aupimo" in names:
        if window is None:
            aupimo, reason = np.full(stream.n_images, np.nan), ("AUPIMO is undefined without both normal (empty "
                                                                 "mask) and anomalous images")
        else:
            aupimo, reason = per_image_aupimo(stream, window, normal_images, aupimo_bounds)
        present = aupimo[~np.isnan(aupimo)]
        computed["aupimo"] = float(present.mean()) if present.size else float("nan")
        if reason:
            notes["aupimo"] = reason
    if roc.total_positive == 0:
        computed = {}
    for name in names:
        if name not in computed:
            continue
        value = computed[name]
        values[name] = value if np.isfinite(value) else None
        if values[name] is None and name not in notes:
            notes[name] = _undefined(name)
    by_type = {t: {"pixel_auroc": _finite(type_roc.auroc()), "aupro": _finite(type_pro.area(0.3))}
               for t, (type_roc, type_pro) in per_type.items() if type_roc.total_positive > 0}
    curves = {}
    if roc.defined:
        curves["pixel_roc"] = roc.roc_curve()
    if pro.defined:
        curves["pro_curve"] = pro.curve_points()
    counts = binned_counts(stream, grid.edges()) if grid is not None else None
    return PixelResult(values, notes, threshold if roc.total_positive > 0 else None, by_type, curves, counts)


def _finite(value: float) -> float | None:
    return value if np.isfinite(value) else None
