"""MVTec AD 2 (Heckler-Kram et al., 2025)::

    <root>/<class>/train/good/NNN_regular.png
    <root>/<class>/validation/good/NNN_regular.png
    <root>/<class>/test_public/{good,bad}/NNN_<lighting>.png
    <root>/<class>/test_public/ground_truth/bad/NNN_<lighting>_mask.png   (255 = defect)
    <root>/<class>/test_private/NNN_regular.png, test_private_mixed/NNN_mixed.png   (no labels, no masks)

Image names follow the official utilities' patterns (``[0-9][0-9][0-9]*.png``; ``good``/``bad`` folders on
non-private splits). ``test_split`` chooses the test set: ``test_public`` is evaluated here; the private
sets (``test_private``, ``test_private_mixed``, or ``private`` for both) have no public ground truth, so the
protocol (``protocols.mvtec_ad2``) writes the anomaly maps in the layout the evaluation server expects.
Archives extracted per class (``<class>/<class>/...``) read too.
"""

from __future__ import annotations

import re
from pathlib import Path

from anobench.datasets.base import (
    DatasetError,
    DatasetSource,
    SampleRef,
    check_class_name,
    check_sample_files,
    image_files,
)
from anobench.datasets.mvtec import check_root

AD2_CLASSES = ("can", "fabric", "fruit_jelly", "rice", "sheet_metal", "vial", "wallplugs", "walnuts")
PRIVATE_SPLITS = ("test_private", "test_private_mixed")
TEST_SPLITS = ("test_public", *PRIVATE_SPLITS, "private")  # "private": both private sets, one submission
OFFICIAL_NAME = re.compile(r"^[0-9]{3}.*\.png$")
AD2_LAYOUT = ("<root>/<class>/{train,validation}/good/NNN_regular.png, "
              "<root>/<class>/test_public/{good,bad}/*.png, <root>/<class>/test_public/ground_truth/bad/"
              "<stem>_mask.png and <root>/<class>/test_private*/NNN_*.png")


def official_images(folder: Path) -> list[Path]:
    """The images the official utilities glob in a folder (``[0-9][0-9][0-9]*.png``)."""
    return [p for p in image_files(folder) if OFFICIAL_NAME.match(p.name)]


class MVTecAD2(DatasetSource):
    """MVTec AD 2: eight classes, public test set evaluated here, private test sets written for the server."""

    name = "mvtec_ad2"
    hint = "the folder holding MVTec AD 2's class folders (can/, fabric/, ...)"
    protocol_metrics = ("mvtec_ad2",)

    def __init__(self, root: str | Path | None = None, *, test_split: str = "test_public",
                 allow_empty_masks: bool = False):
        self.root = check_root(root, self.name, self.hint)
        self.allow_empty_masks = allow_empty_masks
        if test_split not in TEST_SPLITS:
            raise DatasetError(f"MVTec AD 2's test_split must be one of {', '.join(TEST_SPLITS)}, got "
                               f"{test_split!r}.")
        self.test_split = test_split

    @property
    def private(self) -> bool:
        return self.test_split != "test_public"

    @property
    def test_folders(self) -> tuple[str, ...]:
        return PRIVATE_SPLITS if self.test_split == "private" else (self.test_split,)

    def class_dir(self, class_name: str) -> Path:
        folder = self.root / class_name
        nested = folder / class_name
        return nested if not (folder / "train").is_dir() and (nested / "train").is_dir() else folder

    def classes(self) -> list[str]:
        return list(AD2_CLASSES)

    def validate(self, class_name: str) -> None:
        check_class_name(class_name, AD2_CLASSES, "an MVTec AD 2 class")
        class_dir = self.class_dir(class_name)
        expected = f"Expected layout: {AD2_LAYOUT}."
        if not class_dir.is_dir():
            raise DatasetError(f"Class folder {class_dir} does not exist; is --data-root {self.root} "
                               f"{self.hint}? {expected}")
        for folder, what in ((class_dir / "train" / "good", "training images"),
                             (class_dir / "validation" / "good", "validation images (they set the SegF1 "
                                                                 "threshold)")):
            if not official_images(folder):
                raise DatasetError(f"{folder} is missing or holds no NNN_*.png images; every class needs "
                                   f"defect-free {what}. {expected}")
        for split in self.test_folders:
            test_dir = class_dir / split
            images = official_images(test_dir if self.private else test_dir / "good")
            if not images + official_images(test_dir / "bad"):
                raise DatasetError(f"{test_dir} is missing or holds no NNN_*.png images. {expected}")
        if not self.private:
            test_dir = class_dir / self.test_split
            for image in official_images(test_dir / "bad"):
                mask = self._mask(test_dir, image)
                if not mask.is_file():
                    raise DatasetError(f"Defect image {image} has no mask {mask}. {expected}")
            for mask in image_files(test_dir / "ground_truth" / "bad"):
                image = test_dir / "bad" / mask.name.replace("_mask.png", ".png")
                if not image.is_file():
                    raise DatasetError(f"Mask {mask} belongs to the image {image}, which is missing. "
                                       f"{expected}")
        check_sample_files([*self.samples(class_name, "train"), *self.samples(class_name, "validation"),
                            *self.samples(class_name, "test")], self.allow_empty_masks)

    @staticmethod
    def _mask(test_dir: Path, image: Path) -> Path:
        return test_dir / "ground_truth" / "bad" / f"{image.stem}_mask.png"

    def samples(self, class_name: str, split: str) -> list[SampleRef]:
        class_dir = self.class_dir(class_name)
        if split in ("train", "validation"):
            return [SampleRef(p, None, 0, "good") for p in official_images(class_dir / split / "good")]
        if split != "test":
            raise ValueError(f"split must be 'train', 'validation' or 'test', got {split!r}")
        if self.private:
            return [SampleRef(p, None, -1, "unknown") for split in self.test_folders
                    for p in official_images(class_dir / split)]
        test_dir = class_dir / self.test_split
        return ([SampleRef(p, None, 0, "good") for p in official_images(test_dir / "good")]
                + [SampleRef(p, self._mask(test_dir, p), 1, "bad")
                   for p in official_images(test_dir / "bad")])

    def ground_truth(self, class_name: str) -> tuple[str, str]:
        if self.private:
            splits = " and ".join(self.test_folders)
            return "none", (f"{splits}: no public ground truth; the anomaly maps are written for MVTec's "
                            "evaluation server (benchmark.mvtec.com)")
        return "pixel", ""

    def describe(self) -> dict:
        return {"name": self.name, "root": str(self.root), "test_split": self.test_split}
