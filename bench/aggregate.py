"""Means over classes and seeds, and their uncertainty: the statistics a report's numbers are made of.

A cell's value of a quantity (``Sample``) is combined into a mean over classes of each class's mean over
seeds, with the standard deviation over seeds and a bootstrap interval averaged resample by resample
(``combine``); the same for paired differences. A row's speed or size is the median over its cells. The
resampling itself lives in ``anobench.statistics``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from anobench import statistics


@dataclass(frozen=True)
class Estimate:
    """A number with its uncertainty, in the table's unit: the mean over seeds (± their standard deviation
    where there are several) and the bootstrap interval [lo, hi] over test images where the records have it."""

    value: float
    std: float | None = None
    lo: float | None = None
    hi: float | None = None
    mark: str = ""  # e.g. "*" where a paired interval excludes 0

    def main_text(self, decimals: int) -> str:
        text = f"{self.value:.{decimals}f}"
        return text + (f" ± {self.std:.{decimals}f}" if self.std is not None else "")

    def interval_text(self, decimals: int) -> str:
        if self.lo is None or self.hi is None:
            return self.mark
        return f"[{self.lo:.{decimals}f}, {self.hi:.{decimals}f}]{self.mark}"

    def text(self, decimals: int) -> str:
        return " ".join(t for t in (self.main_text(decimals), self.interval_text(decimals)) if t)


def mean_or_none(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def median_over_cells(values: Iterable[float | None]) -> float | None:
    """A row's speed or size from its cells (classes, seeds): the median of the cells that have one. The one
    rule for these numbers in Table 6 and in every figure."""
    present = [v for v in values if v is not None]
    return float(np.median(present)) if present else None


@dataclass
class Sample:
    """One cell's value of one quantity, with what its interval is made of."""

    class_name: str
    seed: int
    value: float
    interval: Sequence[float] | None  # the record's, when this sample stands alone
    replicates: Callable[[], np.ndarray | None]  # its bootstrap resamples (from the artifacts), read on demand
    confidence: float | None


def combine(samples: list[Sample], scale: float = 100.0, mark_excluding_zero: bool = False) -> Estimate | None:
    """Mean over classes of each class's mean over seeds; ± the standard deviation over seeds of the class
    mean (seeds with every class); the interval of that mean from the resamples, averaged the same way
    resample by resample (cells of one class share their resamples, classes are resampled independently)."""
    if not samples:
        return None
    by_class: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_class[sample.class_name].append(sample)
    value = float(np.mean([np.mean([s.value for s in group]) for group in by_class.values()]))
    by_seed: dict[int, dict[str, float]] = defaultdict(dict)
    for sample in samples:
        by_seed[sample.seed][sample.class_name] = sample.value
    complete = [float(np.mean(list(v.values()))) for v in by_seed.values() if len(v) == len(by_class)]
    std = statistics.mean_std(complete)[1] if len(complete) > 1 else None
    interval: Sequence[float] | None = samples[0].interval if len(samples) == 1 else None
    confidences = {s.confidence for s in samples}
    confidence = confidences.pop() if len(confidences) == 1 else None
    if interval is None and confidence is not None:
        vectors = {c: [v for s in group if (v := s.replicates()) is not None] for c, group in by_class.items()}
        if all(len(vectors[c]) == len(group) for c, group in by_class.items()):
            mean = np.mean([np.mean(group, axis=0) for group in vectors.values()], axis=0)
            interval = statistics.percentile_interval(mean, confidence)
    lo, hi = (scale * interval[0], scale * interval[1]) if interval else (None, None)
    mark = "*" if mark_excluding_zero and interval and (interval[0] > 0 or interval[1] < 0) else ""
    return Estimate(scale * value, None if std is None else scale * std, lo, hi, mark)
