"""MVTec AD, datasets stored in its layout (``folder``), and the folder logic its relatives share (MPDD,
BTAD, VisA's converted layout): ``<class>/train/<good>``, ``<class>/test/<defect>``, masks under
``<class>/ground_truth/<defect>/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from anobench.datasets.base import (
    MVTEC_LAYOUT,
    DatasetError,
    DatasetSource,
    SampleRef,
    check_class_name,
    check_sample_files,
    image_files,
    subfolders,
)

MVTEC_CLASSES = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
)


@dataclass(frozen=True)
class FolderLayout:
    """How an MVTec-like dataset names things: its defect-free folder, and its masks as the image's stem plus
    one of ``mask_suffixes`` (the first that exists; the first is the one named when none does)."""

    good: str = "good"
    mask_suffixes: tuple[str, ...] = ("_mask.png",)
    description: str = MVTEC_LAYOUT


MVTEC = FolderLayout()


def mask_path_for(class_dir: Path, defect: str, image: Path, layout: FolderLayout = MVTEC) -> Path:
    folder = class_dir / "ground_truth" / defect
    candidates = [folder / f"{image.stem}{suffix}" for suffix in layout.mask_suffixes]
    return next((c for c in candidates if c.is_file()), candidates[0])


def validate_class_folder(class_dir: Path, root_hint: str, layout: FolderLayout = MVTEC, masks: bool = True,
                          no_mask_hint: str = "", allow_empty_masks: bool = False) -> None:
    """Check one class folder against the layout, and every image and mask in it (``check_sample_files``);
    one sentence per problem, naming the path. With ``masks=False`` (an image-labelled dataset) defect
    images need no mask."""
    expected = f"Expected layout: {layout.description}."
    if not class_dir.is_dir():
        raise DatasetError(f"Class folder {class_dir} does not exist; {root_hint} {expected}")
    train_good = class_dir / "train" / layout.good
    if not image_files(train_good):
        raise DatasetError(f"{train_good} is missing or holds no images; every class needs defect-free "
                           f"training images. {expected}")
    test_dir = class_dir / "test"
    if not any(image_files(d) for d in subfolders(test_dir)):
        raise DatasetError(f"{test_dir} is missing or holds no images. {expected}")
    if masks:
        for defect_dir in (d for d in subfolders(test_dir) if d.name != layout.good):
            for image in image_files(defect_dir):
                mask = mask_path_for(class_dir, defect_dir.name, image, layout)
                if not mask.is_file():
                    raise DatasetError(f"Defect image {image} has no mask {mask}{no_mask_hint}. {expected}")
        check_masks_have_images(class_dir, layout)
    check_sample_files([*scan_class_folder(class_dir, "train", layout, masks),
                        *scan_class_folder(class_dir, "test", layout, masks)], allow_empty_masks)


def check_masks_have_images(class_dir: Path, layout: FolderLayout = MVTEC) -> None:
    """Every mask's image exists (a missing one would silently drop a defect from the test set)."""
    ground_truth = class_dir / "ground_truth"
    for defect_dir in subfolders(ground_truth):
        stems = {p.stem for p in image_files(class_dir / "test" / defect_dir.name)}
        for mask in image_files(defect_dir):
            stem = next((mask.name[:-len(s)] for s in layout.mask_suffixes if mask.name.endswith(s)), None)
            if stem is not None and stem not in stems:
                image = class_dir / "test" / defect_dir.name / stem
                raise DatasetError(f"Mask {mask} belongs to the image {image}.*, which is missing. Expected "
                                   f"layout: {layout.description}.")


def scan_class_folder(class_dir: Path, split: str, layout: FolderLayout = MVTEC,
                      masks: bool = True) -> list[SampleRef]:
    if split == "train":
        return [SampleRef(p, None, 0, "good") for p in image_files(class_dir / "train" / layout.good)]
    if split != "test":
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    refs = []
    for defect_dir in subfolders(class_dir / "test"):
        defect = defect_dir.name
        for image in image_files(defect_dir):
            if defect == layout.good:
                refs.append(SampleRef(image, None, 0, "good"))
            else:
                mask = mask_path_for(class_dir, defect, image, layout) if masks else None
                refs.append(SampleRef(image, mask, 1, defect))
    return refs


def check_root(root: str | Path | None, dataset: str, example: str) -> Path:
    if root is None:
        raise DatasetError(f"Dataset '{dataset}' needs a data root; pass --data-root pointing at {example}.")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DatasetError(f"Data root {path} does not exist; pass --data-root pointing at {example}.")
    return path


class MVTecStyleSource(DatasetSource):
    """A published dataset with a fixed list of classes, each a folder in an MVTec-like layout."""

    class_names: ClassVar[tuple[str, ...]]
    class_noun: ClassVar[str]  # "an MVTec AD class", for messages
    hint: ClassVar[str]
    layout: ClassVar[FolderLayout] = MVTEC

    def __init__(self, root: str | Path | None = None, *, allow_empty_masks: bool = False):
        self.root = self.locate(check_root(root, self.name, self.hint))
        self.allow_empty_masks = allow_empty_masks

    def locate(self, root: Path) -> Path:
        """The folder that holds the class folders (a subclass may look one level down)."""
        return root

    def classes(self) -> list[str]:
        return list(self.class_names)

    def validate(self, class_name: str) -> None:
        check_class_name(class_name, self.class_names, self.class_noun)
        validate_class_folder(self.root / class_name, f"is --data-root {self.root} {self.hint}?", self.layout,
                              allow_empty_masks=self.allow_empty_masks)

    def samples(self, class_name: str, split: str) -> list[SampleRef]:
        return scan_class_folder(self.root / class_name, split, self.layout)

    def describe(self) -> dict:
        return {"name": self.name, "root": str(self.root)}


class MVTecAD(MVTecStyleSource):
    """MVTec AD from ``root``: 15 class folders (5 textures, 10 objects)."""

    name = "mvtec"
    class_names = MVTEC_CLASSES
    class_noun = "an MVTec AD class"
    hint = "the folder that holds MVTec AD's class folders (bottle/, cable/, ...)"


IMAGE_LABELS_HINT = (" (if the dataset labels whole images only, pass --image-labels-only or set "
                     "image_labels_only = true in the suite's [dataset] options)")


class MVTecLayoutFolder(DatasetSource):
    """Any dataset in MVTec layout: ``root`` holds class folders, or is itself one class folder.

    ``image_labels_only = true`` (suite ``[dataset] options`` or ``bench run --image-labels-only``) says the
    dataset labels whole images only (``test/<defect>`` without ``ground_truth``): it then runs with image
    metrics and empty pixel metrics; without it a defect image without its mask is an error.
    """

    name = "folder"
    hint = "your dataset's folder in MVTec AD layout (one class folder, or a folder of class folders)"

    def __init__(self, root: str | Path | None = None, *, image_labels_only: bool = False,
                 allow_empty_masks: bool = False):
        self.root = check_root(root, self.name, self.hint)
        self.image_labels_only = image_labels_only
        self.allow_empty_masks = allow_empty_masks

    def _class_dir(self, class_name: str) -> Path:
        return self.root if (self.root / "train").is_dir() and class_name == self.root.name else self.root / class_name

    def classes(self) -> list[str]:
        if (self.root / "train").is_dir():
            return [self.root.name]
        found = sorted(d.name for d in self.root.iterdir() if (d / "train").is_dir())
        if not found:
            raise DatasetError(f"No class folder with a train/ folder under {self.root}. Expected layout: {MVTEC_LAYOUT}.")
        return found

    def validate(self, class_name: str) -> None:
        hint = f"is --data-root {self.root} {self.hint}?"
        validate_class_folder(self._class_dir(class_name), hint, masks=not self.image_labels_only,
                              no_mask_hint=IMAGE_LABELS_HINT, allow_empty_masks=self.allow_empty_masks)

    def samples(self, class_name: str, split: str) -> list[SampleRef]:
        return scan_class_folder(self._class_dir(class_name), split, masks=not self.image_labels_only)

    def ground_truth(self, class_name: str) -> tuple[str, str]:
        if self.image_labels_only:
            return "image", "image-labelled dataset (image_labels_only): no pixel ground truth"
        return "pixel", ""

    def describe(self) -> dict:
        described = {"name": self.name, "root": str(self.root)}
        if self.image_labels_only:
            described["image_labels_only"] = True
        return described
