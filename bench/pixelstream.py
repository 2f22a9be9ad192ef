"""Exact pixel metrics over any number of test images in bounded memory.

Each pixel's float32 score becomes an order-preserving unsigned 32-bit key. A pixel is "ordinary" (a
defect-free pixel that no protocol weighs: most pixels) or "special" (a defect pixel, or one a protocol
weighs). An image's ordinary keys are sorted and written to disk as they are; its special pixels as 64-bit
words, key above a class id, where a class groups the pixels every metric weighs alike (one defect region,
with the same protocol weights). Curves are then accumulated from the highest score down over ranges of
whole scores, each range merging at most ``range_words`` pixels of every image (a range holding a single
score is counted instead): the special pixels in score order, and the ordinary keys of each group of
images (a group: the images that a subset such as one defect type takes or leaves alike). Everything else
(quantiles, per-image counts above thresholds) is read from the sorted per-image runs by binary search.
Memory: one range, the largest image being added, and a few numbers per image and per class.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anobench.metrics import label_regions

INDEX_STRIDE = 1024  # every this many keys of a run are kept in memory, to find a range's segment quickly
RANGE_WORDS = 8_000_000  # pixels merged at once
CLASS_BITS = np.uint64(32)
CLASS_MASK = np.uint64(0xFFFFFFFF)
KEY_END = 1 << 32  # one past the highest key
DTYPES = {"ordinary": np.dtype(np.uint32), "special": np.dtype(np.uint64)}
FEW_KEYS = 64  # up to this many keys are found in a run window by window, more by reading the whole run
PIXEL_STREAM_PREFIX = "anobench-pixels-"  # the temporary folder's name (a run removes those a killed run left)


def float_keys(values: np.ndarray) -> np.ndarray:
    """Unsigned 32-bit keys in the order of the float32 ``values`` (-0.0 and +0.0 are one key)."""
    bits = (np.asarray(values, dtype=np.float32) + np.float32(0)).view(np.uint32)  # -0.0 + 0.0 == +0.0
    return np.where(bits & np.uint32(0x80000000), ~bits, bits | np.uint32(0x80000000))


def key_floats(keys: np.ndarray) -> np.ndarray:
    """The float32 values of keys made by ``float_keys``."""
    keys = np.asarray(keys).astype(np.uint32)
    return np.where(keys & np.uint32(0x80000000), keys & np.uint32(0x7FFFFFFF), ~keys).view(np.float32)


def ceil_key(value: float) -> int:
    """The key of the smallest float32 at or above ``value`` (a float64 threshold as a key threshold)."""
    single = np.float32(value)
    if float(single) < value:
        single = np.nextafter(single, np.float32(np.inf))
    return int(float_keys(np.array([single]))[0])


def memory_bound(largest_image: int, range_words: int = RANGE_WORDS) -> int:
    """Bytes a stream holds at its peak, whatever the number of images: a range being merged (its keys and
    special words, their sorted copies, and what the curves take of them) and the largest image being added
    (its map, mask, region labels, keys and sorted copy)."""
    return range_words * 40 + largest_image * 48


def keys_at_ranks(count_at_or_above: Callable[[np.ndarray], np.ndarray], ranks: np.ndarray) -> np.ndarray:
    """The key of each rank (0: the highest pixel) among pixels counted by ``count_at_or_above(keys)``: the
    largest key at or above which more pixels than the rank lie, found by bisection over the key space."""
    ranks = np.asarray(ranks, dtype=np.int64)
    low, high = np.zeros(ranks.size, dtype=np.int64), np.full(ranks.size, KEY_END, dtype=np.int64)
    while (high - low > 1).any():
        middle = (low + high) // 2
        enough = count_at_or_above(middle) > ranks
        low, high = np.where(enough, middle, low), np.where(enough, high, middle)
    return low.astype(np.uint32)


@dataclass
class Run:
    """Where one image's sorted keys (or words) are in their file, with every INDEX_STRIDE-th of them."""

    start: int
    length: int
    index: np.ndarray


@dataclass
class Range:
    """The pixels of one range of whole scores [low, high) (keys): the special pixels in descending order,
    and each group's ordinary keys in ascending order (or, for a range of one score, their counts)."""

    low: int
    high: int
    special_keys: np.ndarray  # descending
    special_classes: np.ndarray
    ordinary: dict[int, np.ndarray]  # group → ascending keys
    special_counts: np.ndarray | None = None  # a single score: pixels per entry of special_classes
    ordinary_counts: dict[int, int] | None = None  # a single score: pixels per group

    @property
    def single(self) -> bool:
        return self.ordinary_counts is not None

    def ordinary_at_or_above(self, groups: list[int], keys: np.ndarray, strictly: bool = False) -> np.ndarray:
        """How many ordinary pixels of ``groups`` in this range lie at or above (or, ``strictly``, above) each key."""
        side = "right" if strictly else "left"
        total = np.zeros(len(keys), dtype=np.int64)
        for group in groups:
            array = self.ordinary.get(group)
            if array is not None and array.size:
                total += array.size - np.searchsorted(array, keys, side=side)
        return total

    def ordinary_total(self, groups: list[int]) -> int:
        if self.ordinary_counts is not None:
            return sum(self.ordinary_counts.get(g, 0) for g in groups)
        return sum(self.ordinary[g].size for g in groups if g in self.ordinary)

    def special_total(self, weights: np.ndarray) -> float:
        values = weights[self.special_classes]
        return float(values @ self.special_counts) if self.special_counts is not None else float(values.sum())


class PixelStream:
    """Pixels added image by image, kept sorted on disk; merged afterwards into ranges of descending score."""

    def __init__(self, folder: Path | None = None, range_words: int | None = None):
        self._tmp = tempfile.TemporaryDirectory(prefix=PIXEL_STREAM_PREFIX, dir=folder)
        root = Path(self._tmp.name)
        self._files = {"ordinary": open(root / "ordinary.u32", "wb"),  # noqa: SIM115 (closed in _finish)
                       "special": open(root / "special.u64", "wb")}  # noqa: SIM115
        self._written = {"ordinary": 0, "special": 0}
        self.range_words = range_words or RANGE_WORDS
        self.runs: dict[str, list[Run]] = {"ordinary": [], "special": []}
        self._columns: dict[str, list[np.ndarray]] = {"image": [], "defect": [], "overlap": [], "pixels": []}
        self._extras: list[str] = []
        self.groups: list[int] = []
        self.n_regions: list[int] = []
        self.n_images = 0
        self._n_classes = 0
        self._arrays: dict[str, np.ndarray] | None = None
        self._readers: dict[str, int] = {}

    # -- adding images ---------------------------------------------------------------------------------

    def add(self, mask: np.ndarray, amap: np.ndarray, group: int = 0,
            extras: Mapping[str, np.ndarray] | None = None) -> None:
        """One image: its boolean mask, its float32 map of the same shape, the group its image belongs to,
        and, optionally, named per-pixel weights some protocol needs (nonzero only where it needs them).
        Images without defect pixels go to a group of their own within ``group`` (``groups_of``)."""
        extras = dict(extras or {})
        if not self.n_images:
            self._extras = sorted(extras)
            self._columns.update({name: [] for name in self._extras})
        if sorted(extras) != self._extras:
            raise ValueError(f"every image needs the same extra weights {self._extras}, got {sorted(extras)}")
        keys = float_keys(amap).ravel()
        labelled, regions = label_regions(mask)
        labelled = labelled.ravel()
        special = mask.ravel().copy()
        for weights in extras.values():
            special |= weights.ravel() != 0
        rows = [labelled[special].astype(np.float64)] + [extras[n].ravel()[special].astype(np.float64)
                                                        for n in self._extras]
        distinct, inverse = np.unique(np.stack(rows, axis=1), axis=0, return_inverse=True)
        classes = self._n_classes + np.arange(len(distinct))
        region = distinct[:, 0].astype(np.int64)
        sizes = np.bincount(labelled, minlength=regions + 1)
        self._columns["image"].append(np.full(len(distinct), self.n_images, dtype=np.int64))
        self._columns["defect"].append(region > 0)
        self._columns["overlap"].append(np.where(region > 0, 1.0 / np.maximum(sizes[region], 1), 0.0))
        self._columns["pixels"].append(np.bincount(inverse.ravel(), minlength=len(distinct)).astype(np.float64))
        for k, name in enumerate(self._extras, start=1):
            self._columns[name].append(distinct[:, k])
        words = (keys[special].astype(np.uint64) << CLASS_BITS) | classes[inverse.ravel()].astype(np.uint64)
        self._write("ordinary", np.sort(keys[~special]))
        self._write("special", np.sort(words))
        self._n_classes += len(distinct)
        self.groups.append(2 * group + int(regions == 0))
        self.n_regions.append(regions)
        self.n_images += 1

    @staticmethod
    def groups_of(given: list[int]) -> list[int]:
        """The stream's groups of the images added with these groups (with and without defect pixels)."""
        return [2 * g + empty for g in given for empty in (0, 1)]

    def normal_groups(self) -> list[int]:
        """The groups of images without defect pixels (AUPIMO's normal images)."""
        return sorted({g for g in self.groups if g % 2})

    def _write(self, kind: str, values: np.ndarray) -> None:
        self._files[kind].write(values.tobytes())
        self.runs[kind].append(Run(self._written[kind], values.size, values[::INDEX_STRIDE].copy()))
        self._written[kind] += values.size

    def _finish(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            self._arrays = {}
            for kind, file in self._files.items():
                file.close()
                self._readers[kind] = os.open(file.name, os.O_RDONLY)
            for name, parts in self._columns.items():
                self._arrays[name] = np.concatenate(parts) if parts else np.empty(0)
            self._arrays["defect"] = self._arrays["defect"].astype(bool)
        return self._arrays

    def _read(self, kind: str, start: int, stop: int) -> np.ndarray:
        """Elements [start, stop) of a run file, read into memory (not mapped: mapped pages would count in
        this process's resident memory until unmapped, and grow with every pixel read)."""
        dtype = DTYPES[kind]
        if stop <= start:
            return np.empty(0, dtype=dtype)
        self._finish()
        data = os.pread(self._readers[kind], (stop - start) * dtype.itemsize, start * dtype.itemsize)
        return np.frombuffer(data, dtype=dtype)

    def _positions(self, kind: str, image: int, values: np.ndarray) -> np.ndarray:
        """Where ``values`` (keys, or special words) fall in one image's sorted run (numpy's side="left")."""
        run = self.runs[kind][image]
        values = np.asarray(values, dtype=DTYPES[kind])
        if values.size > FEW_KEYS:
            return np.searchsorted(self.run(kind, image), values, side="left")
        windows = np.searchsorted(run.index, values, side="left")
        out = np.empty(values.size, dtype=np.int64)
        for k, (value, j) in enumerate(zip(values, windows, strict=True)):
            lo, hi = max(0, (int(j) - 1) * INDEX_STRIDE), min(run.length, int(j) * INDEX_STRIDE)
            out[k] = lo + int(np.searchsorted(self._read(kind, run.start + lo, run.start + hi), value, side="left"))
        return out

    def column(self, name: str) -> np.ndarray:
        """A per-class column of the special pixels: image, defect, overlap (1 / region size), pixels, or an
        extra weight."""
        return self._finish()[name]

    def ordinary_pixels(self) -> np.ndarray:
        """Ordinary pixels per image."""
        return np.array([run.length for run in self.runs["ordinary"]], dtype=np.float64)

    def special_total(self, weights: np.ndarray) -> float:
        """Sum of a per-class weight over every special pixel."""
        return float(weights @ self.column("pixels"))

    def run(self, kind: str, image: int) -> np.ndarray:
        """One image's sorted ordinary keys (``kind`` "ordinary") or special words ("special"), ascending."""
        run = self.runs[kind][image]
        return self._read(kind, run.start, run.start + run.length)

    # -- per image, by binary search ---------------------------------------------------------------------

    def lowest_ordinary(self, image: int) -> int:
        """The image's lowest ordinary key."""
        run = self.runs["ordinary"][image]
        return int(self._read("ordinary", run.start, run.start + 1)[0])

    def ordinary_from(self, image: int, key: int) -> np.ndarray:
        """The image's ordinary keys at or above ``key``, ascending (only those are read)."""
        run = self.runs["ordinary"][image]
        start = int(self._positions("ordinary", image, np.array([key]))[0])
        return self._read("ordinary", run.start + start, run.start + run.length)

    def ordinary_at_or_above(self, images: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """(len(images), len(keys)): each image's ordinary pixels at or above each key."""
        keys = np.asarray(keys, dtype=np.int64)
        inside = keys < KEY_END
        out = np.zeros((len(images), keys.size), dtype=np.int64)
        for row, image in enumerate(images):
            run = self.runs["ordinary"][int(image)]
            out[row, inside] = run.length - self._positions("ordinary", int(image), keys[inside])
        return out

    def special_at_or_above(self, keys: np.ndarray, weights: np.ndarray, images: np.ndarray | None = None
                            ) -> np.ndarray:
        """(len(images), len(keys)): each image's sum of ``weights`` (per class) over its special pixels at or
        above each key (every image by default)."""
        words = np.asarray(keys, dtype=np.uint64) << CLASS_BITS
        images = np.arange(self.n_images) if images is None else images
        out = np.zeros((len(images), len(words)))
        for row, image in enumerate(images):
            run = self.run("special", int(image))
            if not run.size:
                continue
            cumulative = np.r_[0.0, np.cumsum(weights[(run & CLASS_MASK).astype(np.int64)])]
            out[row] = cumulative[-1] - cumulative[np.searchsorted(run, words, side="left")]
        return out

    # -- merging ---------------------------------------------------------------------------------------

    def _segments(self, kind: str, low: int, high: int) -> list[tuple[int, int]]:
        """Per image, the [start, stop) in its file of its keys (words) whose key lies in [low, high)."""
        shift = 32 if kind == "special" else 0
        bounds = []
        for image, run in enumerate(self.runs[kind]):
            inside = [key << shift for key in (low, high) if key < KEY_END]
            positions = list(self._positions(kind, image, np.array(inside, dtype=np.uint64)))
            start = positions[0] if low < KEY_END else run.length
            stop = positions[-1] if high < KEY_END else run.length
            bounds.append((run.start + start, run.start + stop))
        return bounds

    def ranges(self) -> Iterator[Range]:
        """The pixels merged from the highest score down, in ranges of whole scores."""
        self._finish()
        todo = [(0, KEY_END)]
        while todo:
            low, high = todo.pop(0)
            ordinary, special = self._segments("ordinary", low, high), self._segments("special", low, high)
            size = sum(b - a for a, b in ordinary) + sum(b - a for a, b in special)
            if size == 0:
                continue
            if size > self.range_words and high - low > 1:
                middle = self._middle_key(low, high)
                todo[:0] = [(middle, high), (low, middle)]
                continue
            words = [self._read("special", a, b) for a, b in special if b > a]
            if high - low == 1:  # one score: counted, not merged
                classes = np.concatenate([(w & CLASS_MASK).astype(np.int64) for w in words]) if words else \
                    np.empty(0, dtype=np.int64)
                present, counts = np.unique(classes, return_counts=True)
                sizes: dict[int, int] = {}
                for group, (a, b) in zip(self.groups, ordinary, strict=True):
                    sizes[group] = sizes.get(group, 0) + b - a
                yield Range(low, high, np.full(present.size, low, dtype=np.uint32), present, {},
                            counts.astype(np.float64), sizes)
                continue
            by_group: dict[int, list[np.ndarray]] = {}
            for group, (a, b) in zip(self.groups, ordinary, strict=True):
                if b > a:
                    by_group.setdefault(group, []).append(self._read("ordinary", a, b))
            merged = np.sort(np.concatenate(words))[::-1] if words else np.empty(0, dtype=np.uint64)
            yield Range(low, high, (merged >> CLASS_BITS).astype(np.uint32), (merged & CLASS_MASK).astype(np.int64),
                        {g: np.sort(np.concatenate(parts)) for g, parts in by_group.items()})

    def _middle_key(self, low: int, high: int) -> int:
        """A key that splits [low, high) into two ranges of about equal size (strictly inside it), from the
        runs' in-memory indexes: reading the files for it would map their pages into this process."""
        samples = [np.empty(0, dtype=np.int64)]
        for kind, shift in (("ordinary", 0), ("special", 32)):
            for run in self.runs[kind]:
                keys = run.index.astype(np.int64) >> shift if shift else run.index.astype(np.int64)
                samples.append(keys[(keys >= low) & (keys < high)])
        pooled = np.concatenate(samples)
        middle = int(np.median(pooled)) if pooled.size else (low + high) // 2
        return middle if low < middle < high else (low + high) // 2

    def close(self) -> None:
        for file in self._files.values():
            file.close()
        for reader in self._readers.values():
            os.close(reader)
        self._readers = {}
        self._arrays = None
        self._tmp.cleanup()

    def __enter__(self) -> PixelStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
