"""Exact pixel metrics over any number of test images in bounded memory.

Every evaluated pixel becomes one 64-bit word: its score's float32 bits mapped to an order-preserving
unsigned integer (the high 32 bits) and a class id (the low 32 bits). A class groups the pixels that every
metric weighs alike: the defect-free pixels of one image, or the pixels of one defect region that carry
the same protocol weights. Words are sorted in buffers of at most ``run_words`` and written to a run file
on disk; the runs are then merged in ranges of whole scores, from the highest score down, each range at
most ``range_words`` words (a range holding a single score is summed run by run instead). At each distinct
score a range gives the exact sum of any per-class weight over its pixels: everything ROC, precision-recall,
F1, PRO, sPRO and AUPIMO's shared FPR are made of. Memory: the class table (a row per image and per defect
region), one range, and per run an index of every ``INDEX_STRIDE``-th word, whatever the number of images.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anobench.metrics import label_regions

INDEX_STRIDE = 1024
RUN_WORDS = 4_000_000  # pixels sorted together before they go to disk
RANGE_WORDS = 8_000_000  # pixels merged at once
CLASS_BITS = np.uint64(32)
CLASS_MASK = np.uint64(0xFFFFFFFF)


def float_keys(values: np.ndarray) -> np.ndarray:
    """Unsigned 32-bit keys in the order of the float32 ``values`` (-0.0 and +0.0 are one key)."""
    bits = (np.asarray(values, dtype=np.float32) + np.float32(0)).view(np.uint32)  # -0.0 + 0.0 == +0.0
    return np.where(bits & np.uint32(0x80000000), ~bits, bits | np.uint32(0x80000000))


def key_floats(keys: np.ndarray) -> np.ndarray:
    """The float32 values of keys made by ``float_keys``."""
    keys = np.asarray(keys, dtype=np.uint32)
    return np.where(keys & np.uint32(0x80000000), keys & np.uint32(0x7FFFFFFF), ~keys).view(np.float32)


def ceil_key(value: float) -> np.uint32:
    """The key of the smallest float32 at or above ``value`` (a float64 threshold as a key threshold)."""
    single = np.float32(value)
    if float(single) < value:
        single = np.nextafter(single, np.float32(np.inf))
    return float_keys(np.array([single]))[0]


def memory_bound(largest_image: int, run_words: int = RUN_WORDS, range_words: int = RANGE_WORDS) -> int:
    """Bytes a stream holds at its peak, whatever the number of images: a range being merged (its words,
    their sorted copy, keys, classes and the positions and sums the metrics take of it), a run being sorted,
    and the largest image being added (its map, mask, region labels, keys, classes and words)."""
    return range_words * 48 + run_words * 24 + largest_image * 64


@dataclass
class Range:
    """The pixels of one range of scores, in descending order of score (ties in any order).

    Curves are made of counts of pixels of chosen classes above points of the order, and most pixels are
    "ordinary" (the defect-free pixels of an image, one class per image) while the rest are "special"
    (defect pixels, or pixels a protocol weighs): the queries below touch the ordinary pixels only where a
    subset of images is asked for, and otherwise work on the special pixels' positions alone.
    """

    keys: np.ndarray  # distinct keys, descending
    ends: np.ndarray  # per distinct key, one past its last pixel in ``classes``
    classes: np.ndarray  # class of each pixel (or, for a single-score range, the classes present)
    ordinary: np.ndarray  # per class of the stream: True for an image's ordinary pixels
    counts: np.ndarray | None = None  # pixels per entry of ``classes`` where they were summed, else None
    _special: np.ndarray | None = None
    _member_positions: dict | None = None

    @property
    def size(self) -> int:
        return int(self.ends[-1]) if self.counts is None else int(self.counts.sum())

    def total(self, weights: np.ndarray) -> float:
        """Sum of a per-class weight over the range (a single-score range's one point)."""
        values = weights[self.classes]
        return float(values @ self.counts) if self.counts is not None else float(values.sum())

    def special_positions(self) -> np.ndarray:
        """Positions (in descending order) of the special pixels."""
        if self._special is None:
            self._special = np.flatnonzero(~self.ordinary[self.classes])
        return self._special

    def weighted(self, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions and weights of the special pixels whose weight is not zero."""
        special = self.special_positions()
        values = weights[self.classes[special]]
        keep = values != 0
        return special[keep], values[keep]

    def count_before(self, positions: np.ndarray, member: np.ndarray) -> np.ndarray:
        """For each position, how many pixels before it (higher, or tied and earlier) have a member class."""
        special = self.special_positions()
        special_members = special[member[self.classes[special]]]
        counted = np.searchsorted(special_members, positions, side="left")
        ordinary_member = member & self.ordinary
        if np.array_equal(ordinary_member, self.ordinary):  # every ordinary pixel counts
            return counted + positions - np.searchsorted(special, positions, side="left")
        return counted + np.searchsorted(self.member_positions(ordinary_member), positions, side="left")

    def member_positions(self, member: np.ndarray) -> np.ndarray:
        """Positions of the pixels of member classes (kept for the range: subsets are asked for repeatedly)."""
        if self._member_positions is None:
            self._member_positions = {}
        key = member.tobytes()
        if key not in self._member_positions:
            self._member_positions[key] = np.flatnonzero(member[self.classes])
        return self._member_positions[key]

    def member_ranks(self, member: np.ndarray, ranks: np.ndarray) -> tuple[np.ndarray, int]:
        """The keys of the member pixels of the given ranks (0: the range's highest member), and how many
        member pixels the range has (ranks at or beyond it are not in this range: their keys are unset)."""
        ranks = np.asarray(ranks, dtype=np.int64)
        if self.counts is not None:
            count = int(round(self.total(member.astype(np.float64))))
            return np.full(ranks.size, self.keys[0]), count
        special = self.special_positions()
        is_member = member[self.classes[special]]
        ordinary_member = member & self.ordinary
        if np.array_equal(ordinary_member, self.ordinary):  # all but the special non-members
            others = special[~is_member]
            count = self.size - others.size
            positions = ranks + np.searchsorted(others - np.arange(others.size), ranks, side="right")
        else:
            members = special[is_member]
            if ordinary_member.any():
                members = np.sort(np.r_[members, self.member_positions(ordinary_member)])
            count = members.size
            positions = members[np.minimum(ranks, max(count - 1, 0))] if count else np.zeros(ranks.size, np.int64)
        inside = ranks < count
        keys = np.zeros(ranks.size, dtype=np.uint32)
        keys[inside] = self.keys[self.key_index(positions[inside])]
        return keys, count

    def key_index(self, positions: np.ndarray) -> np.ndarray:
        """The index in ``keys`` of the pixel at each position."""
        return np.searchsorted(self.ends, positions, side="right")


class PixelStream:
    """Pixels added image by image; merged afterwards into ranges of descending score."""

    def __init__(self, folder: Path | None = None, run_words: int = RUN_WORDS, range_words: int = RANGE_WORDS):
        self._tmp = tempfile.TemporaryDirectory(prefix="anobench-pixels-", dir=folder)
        self._file = open(Path(self._tmp.name) / "runs.u64", "wb")  # noqa: SIM115 (closed in close())
        self.run_words, self.range_words = run_words, range_words
        self._buffer: list[np.ndarray] = []
        self._buffered = 0
        self._runs: list[tuple[int, int]] = []  # (first word, length) in the file
        self._index: list[np.ndarray] = []  # each run's every INDEX_STRIDE-th word
        self._columns: dict[str, list[np.ndarray]] = {"image": [], "ordinary": [], "defect": [], "overlap": [],
                                                     "pixels": []}
        self._extras: list[str] = []
        self.n_images = 0
        self._n_classes = 0
        self.n_regions: list[int] = []
        self._words: np.ndarray | None = None

    # -- adding images ---------------------------------------------------------------------------------

    def add(self, mask: np.ndarray, amap: np.ndarray, extras: Mapping[str, np.ndarray] | None = None) -> None:
        """One image: its boolean mask, its float32 map of the same shape and, optionally, named per-pixel
        weights that some protocol needs (nonzero only where it needs them)."""
        extras = dict(extras or {})
        if not self._extras and not self.n_images:
            self._extras = sorted(extras)
            self._columns.update({name: [] for name in self._extras})
        if sorted(extras) != self._extras:
            raise ValueError(f"every image needs the same extra weights {self._extras}, got {sorted(extras)}")
        flat_mask = mask.ravel()
        labelled, regions = label_regions(mask)
        labelled = labelled.ravel()
        special = flat_mask.copy()
        for weights in extras.values():
            special |= weights.ravel() != 0
        rows = [labelled[special].astype(np.float64)] + [extras[n].ravel()[special].astype(np.float64)
                                                        for n in self._extras]
        distinct, inverse = np.unique(np.stack(rows, axis=1), axis=0, return_inverse=True)
        base = self._n_classes
        classes = np.full(flat_mask.size, base, dtype=np.uint64)  # class `base`: this image's ordinary pixels
        classes[special] = base + 1 + inverse.ravel()
        sizes = np.bincount(labelled, minlength=regions + 1)
        region = distinct[:, 0].astype(np.int64)
        n_classes = len(distinct) + 1
        self._columns["image"].append(np.full(n_classes, self.n_images, dtype=np.int64))
        self._columns["ordinary"].append(np.r_[True, np.zeros(len(distinct), dtype=bool)])
        self._columns["defect"].append(np.r_[False, region > 0])
        self._columns["overlap"].append(np.r_[0.0, np.where(region > 0, 1.0 / np.maximum(sizes[region], 1), 0.0)])
        self._columns["pixels"].append(np.bincount((classes - np.uint64(base)).astype(np.int64),
                                                   minlength=n_classes).astype(np.float64))
        for k, name in enumerate(self._extras, start=1):
            self._columns[name].append(np.r_[0.0, distinct[:, k]])
        self.n_regions.append(regions)
        self.n_images += 1
        self._n_classes += n_classes
        words = (float_keys(amap).ravel().astype(np.uint64) << CLASS_BITS) | classes
        self._buffer.append(words)
        self._buffered += words.size
        if self._buffered >= self.run_words:
            self._flush()

    def _flush(self) -> None:
        if not self._buffered:
            return
        words = np.sort(np.concatenate(self._buffer))
        self._buffer, self._buffered = [], 0
        start = sum(length for _, length in self._runs)
        self._file.write(words.tobytes())
        self._runs.append((start, words.size))
        self._index.append(words[::INDEX_STRIDE].copy())

    def column(self, name: str) -> np.ndarray:
        """A per-class column: image, ordinary (an image's defect-free pixels without protocol weight), defect,
        overlap (1 / region size), pixels, or an extra weight."""
        self._finish()
        return self._cache[name]

    def _finish(self) -> None:
        if self._words is None:
            self._flush()
            self._file.close()
            total = sum(length for _, length in self._runs)
            self._words = (np.memmap(self._file.name, dtype=np.uint64, mode="r", shape=(total,)) if total
                           else np.empty(0, dtype=np.uint64))
            self._cache = {name: np.concatenate(parts) if parts else np.empty(0) for name, parts in self._columns.items()}

    def total(self, weights: np.ndarray) -> float:
        """Sum of a per-class weight over every pixel."""
        return float(weights @ self.column("pixels"))

    # -- merging ---------------------------------------------------------------------------------------

    def _segments(self, low: int, high: int) -> list[tuple[int, int]]:
        """Per run, the [start, stop) of its words whose key lies in [low, high) (keys as integers)."""
        bounds = []
        for (start, length), index in zip(self._runs, self._index, strict=True):
            run = self._words[start:start + length]
            positions = []
            for key in (low, high):
                if key >= 1 << 32:  # past the highest key: the run's end
                    positions.append(length)
                    continue
                word = np.uint64(key) << CLASS_BITS
                j = int(np.searchsorted(index, word, side="left"))
                window_lo, window_hi = max(0, (j - 1) * INDEX_STRIDE), min(length, j * INDEX_STRIDE)
                positions.append(window_lo + int(np.searchsorted(run[window_lo:window_hi], word, side="left")))
            bounds.append((start + positions[0], start + positions[1]))
        return bounds

    def ranges(self) -> Iterator[Range]:
        """The pixels merged from the highest score down, in ranges of whole scores."""
        self._finish()
        if not self._runs:
            return
        todo = [(0, 1 << 32)]  # key ranges [low, high), the highest first
        while todo:
            low, high = todo.pop(0)
            segments = self._segments(low, high)
            size = sum(stop - start for start, stop in segments)
            if size == 0:
                continue
            if size > self.range_words and high - low > 1:
                middle = self._middle_key(segments, low, high)
                todo[:0] = [(middle, high), (low, middle)]
                continue
            if high - low == 1:  # one score: its pixels' classes, counted run by run
                classes = np.concatenate([(self._words[a:b] & CLASS_MASK).astype(np.int64) for a, b in segments])
                present, counts = np.unique(classes, return_counts=True)
                yield Range(np.array([low], dtype=np.uint32), np.array([present.size]), present,
                            self._cache["ordinary"], counts.astype(np.float64))
                continue
            words = np.sort(np.concatenate([self._words[a:b] for a, b in segments]))[::-1]
            keys = (words >> CLASS_BITS).astype(np.uint32)
            ends = np.flatnonzero(np.r_[keys[1:] != keys[:-1], True]) + 1
            yield Range(keys[ends - 1], ends, (words & CLASS_MASK).astype(np.int64), self._cache["ordinary"])

    def _middle_key(self, segments: list[tuple[int, int]], low: int, high: int) -> int:
        """A key that splits [low, high) into two ranges of about equal size (strictly inside it)."""
        sample = np.concatenate([self._words[a:b:max(1, (b - a) // 64 or 1)] for a, b in segments if b > a])
        middle = int(np.median(sample >> CLASS_BITS))
        return min(max(middle, low + 1), high - 1) if middle > low else (low + high) // 2

    # -- per image -------------------------------------------------------------------------------------

    def counts_at_or_above(self, edges: np.ndarray, weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """For each image and each key in ``edges`` (ascending), the sum of each per-class weight over its
        pixels whose key is at or above that edge: arrays of shape (n_images, len(edges))."""
        self._finish()
        edges = np.asarray(edges, dtype=np.uint64)
        image = self.column("image")
        out = {name: np.zeros((self.n_images, edges.size)) for name in weights}
        boundaries = edges << CLASS_BITS
        slots = edges.size + 1
        for start, length in self._runs:
            run = self._words[start:start + length]
            cuts = np.searchsorted(run, boundaries, side="left")  # words below each edge
            classes = (run & CLASS_MASK).astype(np.int64)
            images = image[classes]
            first, last = int(images.min()), int(images.max())  # a run holds consecutive images
            # a pixel's slot is the number of edges at or below its key: it counts for edges[:slot]
            cell = (images - first) * slots + np.repeat(np.arange(slots), np.diff(np.r_[0, cuts, length]))
            for name, column in weights.items():
                per_slot = np.bincount(cell, weights=column[classes], minlength=(last - first + 1) * slots)
                per_slot = per_slot.reshape(last - first + 1, slots)
                out[name][first:last + 1] += np.cumsum(per_slot[:, ::-1], axis=1)[:, ::-1][:, 1:]
        return out

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
        self._words = None
        self._tmp.cleanup()

    def __enter__(self) -> PixelStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
