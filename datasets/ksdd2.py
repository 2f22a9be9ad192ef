"""KolektorSDD2 (Božič et al. 2021) as its zip extracts: flat ``train/`` and ``test/`` folders in which every
image ``N.png`` has its ground truth ``N_GT.png`` (all zero for a defect-free image)::

    <root>/train/10000.png, <root>/train/10000_GT.png, ...
    <root>/test/...

An image is defective when its ground truth has a non-zero pixel (the official code's ``np.max(label) > 0``).
The unsupervised protocol trains on the defect-free training images and tests on every test image. The
archive holds exact duplicates named ``... (copy).png``: they are ignored.
"""

from __future__ import annotations

import re
from pathlib import Path

from anobench.datasets.base import (
    DatasetError,
    DatasetSource,
    SampleRef,
    check_sample_files,
    mask_values,
)
from anobench.datasets.mvtec import check_root

CLASS = "ksdd2"
IMAGE_NAME = re.compile(r"^(\d+)\.png$")
GT_NAME = re.compile(r"^(\d+)_GT\.png$")
KSDD2_LAYOUT = "<root>/train/<N>.png with <root>/train/<N>_GT.png, and the same under <root>/test/"


class KolektorSDD2(DatasetSource):
    """KolektorSDD2: one class, flat train/test folders, N.png beside N_GT.png (defective iff GT non-zero)."""

    name = "ksdd2"
    hint = "the KolektorSDD2 folder holding train/ and test/"

    def __init__(self, root: str | Path | None = None):
        self.root = check_root(root, self.name, self.hint)
        self._labels: dict[Path, int] = {}

    def _ids(self, split: str) -> tuple[Path, set[str], set[str]]:
        """The split's folder, and the ids of its images and of its ground-truth files."""
        folder = self.root / split
        if not folder.is_dir():
            raise DatasetError(f"{folder} is missing; is --data-root {self.root} {self.hint}? "
                               f"Expected layout: {KSDD2_LAYOUT}.")
        images, truths = set(), set()
        for path in folder.iterdir():
            if match := IMAGE_NAME.match(path.name):
                images.add(match.group(1))
            elif match := GT_NAME.match(path.name):
                truths.add(match.group(1))
        return folder, images, truths

    def _label(self, truth: Path) -> int:
        if truth not in self._labels:
            self._labels[truth] = int(mask_values(truth).any())
        return self._labels[truth]

    def classes(self) -> list[str]:
        return [CLASS]

    def validate(self, class_name: str) -> None:
        if class_name != CLASS:
            raise DatasetError(f"KolektorSDD2 has one class, '{CLASS}', not '{class_name}'.")
        for split in ("train", "test"):
            folder, images, truths = self._ids(split)
            if not images:
                raise DatasetError(f"{folder} holds no <N>.png image. Expected layout: {KSDD2_LAYOUT}.")
            for ident in sorted(truths - images, key=int):
                raise DatasetError(f"Ground truth {folder / f'{ident}_GT.png'} names the image "
                                   f"{folder / f'{ident}.png'}, which is missing.")
            for ident in sorted(images - truths, key=int):
                raise DatasetError(f"Image {folder / f'{ident}.png'} has no ground truth "
                                   f"{folder / f'{ident}_GT.png'}.")
            check_sample_files(SampleRef(folder / f"{ident}.png", folder / f"{ident}_GT.png", 0, "good")
                               for ident in sorted(images, key=int))

    def samples(self, class_name: str, split: str) -> list[SampleRef]:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        folder, images, _ = self._ids(split)
        refs = []
        for ident in sorted(images, key=int):
            truth = folder / f"{ident}_GT.png"
            label = self._label(truth)
            if split == "train" and label:
                continue  # unsupervised: defect-free training images only
            refs.append(SampleRef(folder / f"{ident}.png", truth if label else None, label,
                                  "defective" if label else "good"))
        return refs

    def describe(self) -> dict:
        return {"name": self.name, "root": str(self.root)}
