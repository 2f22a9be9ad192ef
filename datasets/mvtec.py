"""MVTec AD, and any dataset stored in its layout (``folder``)."""

from __future__ import annotations

from pathlib import Path

from anobench.datasets.base import (
    MVTEC_LAYOUT,
    DatasetError,
    DatasetSource,
    SampleRef,
    check_sample_files,
    image_files,
    subfolders,
)

MVTEC_CLASSES = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
)


def mask_path_for(class_dir: Path, defect: str, image: Path) -> Path:
    return class_dir / "ground_truth" / defect / f"{image.stem}_mask.png"


def validate_class_folder(class_dir: Path, root_hint: str, allow_empty_masks: bool = False) -> None:
    """Check one class folder against the MVTec layout, and every image and mask in it
    (``check_sample_files``); one sentence per problem, naming the path."""
    if not class_dir.is_dir():
        raise DatasetError(f"Class folder {class_dir} does not exist; {root_hint} Expected layout: {MVTEC_LAYOUT}.")
    train_good = class_dir / "train" / "good"
    if not image_files(train_good):
        raise DatasetError(f"{train_good} is missing or holds no images; every class needs defect-free "
                           f"training images. Expected layout: {MVTEC_LAYOUT}.")
    test_dir = class_dir / "test"
    if not any(image_files(d) for d in subfolders(test_dir)):
        raise DatasetError(f"{test_dir} is missing or holds no images. Expected layout: {MVTEC_LAYOUT}.")
    for defect_dir in (d for d in subfolders(test_dir) if d.name != "good"):
        for image in image_files(defect_dir):
            mask = mask_path_for(class_dir, defect_dir.name, image)
            if not mask.is_file():
                raise DatasetError(f"Defect image {image} has no mask {mask}. Expected layout: {MVTEC_LAYOUT}.")
    check_sample_files([*scan_class_folder(class_dir, "train"), *scan_class_folder(class_dir, "test")],
                       allow_empty_masks)


def scan_class_folder(class_dir: Path, split: str) -> list[SampleRef]:
    if split == "train":
        return [SampleRef(p, None, 0, "good") for p in image_files(class_dir / "train" / "good")]
    if split != "test":
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    refs = []
    for defect_dir in subfolders(class_dir / "test"):
        defect = defect_dir.name
        for image in image_files(defect_dir):
            if defect == "good":
                refs.append(SampleRef(image, None, 0, "good"))
            else:
                refs.append(SampleRef(image, mask_path_for(class_dir, defect, image), 1, defect))
    return refs


def check_root(root: str | Path | None, dataset: str, example: str) -> Path:
    if root is None:
        raise DatasetError(f"Dataset '{dataset}' needs a data root; pass --data-root pointing at {example}.")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DatasetError(f"Data root {path} does not exist; pass --data-root pointing at {example}.")
    return path


class MVTecAD(DatasetSource):
    """MVTec AD from ``root``: 15 class folders (5 textures, 10 objects)."""

    name = "mvtec"
    hint = "the folder that holds MVTec AD's class folders (bottle/, cable/, ...)"

    def __init__(self, root: str | Path | None = None, *, allow_empty_masks: bool = False):
        self.root = check_root(root, self.name, self.hint)
        self.allow_empty_masks = allow_empty_masks

    def classes(self) -> list[str]:
        return list(MVTEC_CLASSES)

    def validate(self, class_name: str) -> None:
        if class_name not in MVTEC_CLASSES:
            raise DatasetError(f"'{class_name}' is not an MVTec AD class; valid classes: {', '.join(MVTEC_CLASSES)}.")
        validate_class_folder(self.root / class_name, f"is --data-root {self.root} {self.hint}?",
                              self.allow_empty_masks)

    def samples(self, class_name: str, split: str) -> list[SampleRef]:
        return scan_class_folder(self.root / class_name, split)

    def describe(self) -> dict:
        return {"name": self.name, "root": str(self.root)}


class MVTecLayoutFolder(DatasetSource):
    """Any dataset in MVTec layout: ``root`` holds class folders, or is itself one class folder."""

    name = "folder"
    hint = "a folder in MVTec AD layout (e.g. ../shared/data/bsdata)"

    def __init__(self, root: str | Path | None = None, *, allow_empty_masks: bool = False):
        self.root = check_root(root, self.name, self.hint)
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
        validate_class_folder(self._class_dir(class_name), f"is --data-root {self.root} {self.hint}?",
                              self.allow_empty_masks)

    def samples(self, class_name: str, split: str) -> list[SampleRef]:
        return scan_class_folder(self._class_dir(class_name), split)

    def describe(self) -> dict:
        return {"name": self.name, "root": str(self.root)}
