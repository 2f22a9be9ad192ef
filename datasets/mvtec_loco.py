"""MVTec LOCO AD (Bergmann et al., IJCV 2022): logical and structural anomalies, several masks per image::

    <root>/<class>/defects_config.json
    <root>/<class>/train/good/*.png, validation/good/*.png
    <root>/<class>/test/{good,logical_anomalies,structural_anomalies}/*.png
    <root>/<class>/ground_truth/<type>/<stem>/NNN.png   one PNG per annotated defect ("channel")

Each channel PNG holds one defect: zero, and one non-zero value, that defect's ``pixel_value`` in
``defects_config.json``, which also gives its sPRO saturation (``saturation_threshold``, absolute in pixels
or ``relative_saturation`` to the defect's area). The protocol (``protocols.loco``) scores logical and
structural anomalies separately, each with every good test image. Training uses ``train/good``; the
option ``train_with_validation`` adds ``validation/good`` (ADer's choice).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anobench.datasets.base import (
    DatasetError,
    DatasetSource,
    SampleRef,
    check_class_name,
    check_sample_files,
    image_files,
    mask_values,
    read_json,
    read_mask,
    subfolders,
)
from anobench.datasets.mvtec import check_root

LOCO_CLASSES = ("breakfast_box", "juice_bottle", "pushpins", "screw_bag", "splicing_connectors")
ANOMALY_TYPES = ("logical_anomalies", "structural_anomalies")
CONFIG_FILE = "defects_config.json"
LOCO_LAYOUT = ("<root>/<class>/defects_config.json, <root>/<class>/train/good/*.png, "
               "<root>/<class>/test/{good,logical_anomalies,structural_anomalies}/*.png and "
               "<root>/<class>/ground_truth/<type>/<stem>/*.png")


@dataclass(frozen=True)
class DefectConfig:
    """One entry of ``defects_config.json``."""

    name: str
    pixel_value: int
    saturation_threshold: float
    relative: bool

    def saturation_area(self, defect_area: int, area_scale: float = 1.0) -> int:
        """Pixels of overlap at which a defect of ``defect_area`` pixels counts as fully found (LOCO's
        ``get_saturation_area``): ``int(threshold × area)`` if relative, else ``min(threshold, area)``.
        ``area_scale`` converts an absolute threshold, given in original-resolution pixels, to the evaluated
        resolution. At least 1 (LOCO's evaluation would divide by zero there)."""
        if self.relative:
            saturation = int(self.saturation_threshold * defect_area)
        else:
            saturation = min(int(round(self.saturation_threshold * area_scale)), defect_area)
        return max(saturation, 1)


@dataclass(frozen=True)
class DefectChannel:
    """One annotated defect of one image, at the image's resolution, and its configuration."""

    mask: np.ndarray
    config: DefectConfig


def parse_defects_config(path: Path) -> dict[int, DefectConfig]:
    """``defects_config.json`` by pixel value, with the types LOCO's evaluation asserts."""
    entries = read_json(path, "Defects configuration", f"MVTec LOCO's sPRO needs each class's {CONFIG_FILE}. "
                                                       f"Expected layout: {LOCO_LAYOUT}.")
    configs: dict[int, DefectConfig] = {}
    for i, entry in enumerate(entries if isinstance(entries, list) else [None]):
        try:
            value, threshold = entry["pixel_value"], entry["saturation_threshold"]
            relative = entry["relative_saturation"]
            number = isinstance(threshold, int | float) and not isinstance(threshold, bool)
            whole = number and threshold >= 0 and threshold == int(threshold)
            in_range = number and (0 < threshold <= 1 if relative else whole)
            valid = (isinstance(entry["defect_name"], str) and isinstance(value, int) and 1 <= value <= 255
                     and isinstance(relative, bool) and in_range)
        except (KeyError, TypeError):
            valid = False
        if not valid:
            raise DatasetError(f"{path} entry {i + 1} must have defect_name (text), pixel_value (1-255), "
                               "relative_saturation (true/false) and saturation_threshold (a fraction in (0, "
                               f"1] if relative, else a pixel count); got {entry!r}.")
        configs[value] = DefectConfig(entry["defect_name"], value, float(threshold), relative)
    return configs


class MVTecLOCO(DatasetSource):
    """MVTec LOCO AD: five classes, logical and structural anomalies, sPRO from defects_config.json."""

    name = "mvtec_loco"
    hint = "the folder holding MVTec LOCO AD's class folders (breakfast_box/, ...)"
    protocol_metrics = ("loco",)

    def __init__(self, root: str | Path | None = None, *, train_with_validation: bool = False,
                 allow_empty_masks: bool = False):
        self.root = check_root(root, self.name, self.hint)
        self.allow_empty_masks = allow_empty_masks
        self.train_with_validation = train_with_validation
        self._configs: dict[str, dict[int, DefectConfig]] = {}

    def defects_config(self, class_name: str) -> dict[int, DefectConfig]:
        if class_name not in self._configs:
            self._configs[class_name] = parse_defects_config(self.root / class_name / CONFIG_FILE)
        return self._configs[class_name]

    def classes(self) -> list[str]:
        return list(LOCO_CLASSES)

    def validate(self, class_name: str) -> None:
        check_class_name(class_name, LOCO_CLASSES, "an MVTec LOCO class")
        class_dir = self.root / class_name
        expected = f"Expected layout: {LOCO_LAYOUT}."
        if not class_dir.is_dir():
            raise DatasetError(f"Class folder {class_dir} does not exist; is --data-root {self.root} "
                               f"{self.hint}? {expected}")
        if not image_files(class_dir / "train" / "good"):
            raise DatasetError(f"{class_dir / 'train' / 'good'} is missing or holds no images. {expected}")
        self.defects_config(class_name)
        if not image_files(class_dir / "test" / "good"):
            raise DatasetError(f"{class_dir / 'test' / 'good'} is missing or holds no images. {expected}")
        for kind in ANOMALY_TYPES:
            for image in image_files(class_dir / "test" / kind):
                truth = class_dir / "ground_truth" / kind / image.stem
                channels = image_files(truth)
                if not channels:
                    raise DatasetError(f"Defect image {image} has no ground-truth folder {truth} with a PNG "
                                       f"per defect. {expected}")
            for truth in subfolders(class_dir / "ground_truth" / kind):
                image = class_dir / "test" / kind / f"{truth.name}.png"
                if not image.is_file():
                    raise DatasetError(f"Ground-truth folder {truth} belongs to the image {image}, which is "
                                       f"missing. {expected}")
        check_sample_files([*self.samples(class_name, "train"),
                            *(channel for ref in self.samples(class_name, "test")
                              for channel in self.channel_refs(ref))], self.allow_empty_masks)

    @staticmethod
    def channel_refs(ref: SampleRef) -> list[SampleRef]:
        """A test sample as one reference per defect channel (the image itself when it has none), so each
        channel is read and checked like any mask."""
        if ref.mask_path is None:
            return [ref]
        return [SampleRef(ref.image_path, path, ref.label, ref.defect_type) for path in image_files(ref.mask_path)]

    def samples(self, class_name: str, split: str) -> list[SampleRef]:
        class_dir = self.root / class_name
        if split in ("train", "validation"):
            folders = [class_dir / split / "good"]
            if split == "train" and self.train_with_validation:
                folders.append(class_dir / "validation" / "good")
            return [SampleRef(p, None, 0, "good") for folder in folders for p in image_files(folder)]
        if split != "test":
            raise ValueError(f"split must be 'train', 'validation' or 'test', got {split!r}")
        refs = [SampleRef(p, None, 0, "good") for p in image_files(class_dir / "test" / "good")]
        for kind in ANOMALY_TYPES:
            refs += [SampleRef(p, class_dir / "ground_truth" / kind / p.stem, 1, kind)
                     for p in image_files(class_dir / "test" / kind)]
        return refs

    def defect_channels(self, class_name: str, ref: SampleRef) -> list[DefectChannel]:
        """The image's defects, one per PNG, each checked to hold zero and one configured value."""
        configs = self.defects_config(class_name)
        channels = []
        for path in image_files(ref.mask_path):
            values = mask_values(path)
            present = np.unique(values[values != 0])
            if len(present) != 1 or int(present[0]) not in configs:
                raise DatasetError(f"Ground-truth channel {path} must hold 0 and one pixel value of {self.root / class_name / CONFIG_FILE} "
                                   f"({', '.join(map(str, sorted(configs)))}), found {present[:5].tolist()}.")
            channels.append(DefectChannel(values != 0, configs[int(present[0])]))
        return channels

    def read_mask(self, ref: SampleRef) -> np.ndarray:
        """The union of the image's defect channels (any non-zero value)."""
        return np.logical_or.reduce([read_mask(channel) for channel in self.channel_refs(ref)])

    def describe(self) -> dict:
        return {"name": self.name, "root": str(self.root),
                "train_with_validation": self.train_with_validation}
