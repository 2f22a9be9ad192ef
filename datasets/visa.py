"""VisA (Amazon, "SPot-the-Difference", ECCV 2022), in its original layout or the converted MVTec-like one.

Original, as ``VisA_20220922.tar`` extracts::

    <root>/split_csv/1cls.csv                   object,split,label,image,mask (CRLF line endings)
    <root>/<class>/Data/Images/{Normal,Anomaly}/*.JPG
    <root>/<class>/Data/Masks/Anomaly/<stem>.png  defect class ids (1, 2, ...), not 255

The one-class split comes from ``1cls.csv`` (paths relative to the root; the mask field is empty for
normal rows). Converted, by SPD's ``prepare_data.py --split-type 1cls`` (``<out>/1cls/<class>``),
anomalib (``visa_pytorch/<class>``) or ``bench data convert-visa``::

    <root>/<class>/{train/good, test/good, test/bad, ground_truth/bad/<stem>.png}

Either way any non-zero mask pixel is a defect (SPD binarises with ``mask != 0``).
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

from anobench.datasets.base import (
    DatasetError,
    DatasetSource,
    SampleRef,
    check_class_name,
    check_sample_files,
)
from anobench.datasets.mvtec import FolderLayout, check_root, scan_class_folder, validate_class_folder

VISA_CLASSES = ("candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2", "pcb1",
                "pcb2", "pcb3", "pcb4", "pipe_fryum")
SPLIT_FILE = "split_csv/1cls.csv"
CSV_HEADER = ["object", "split", "label", "image", "mask"]
LAYOUTS = ("auto", "original", "converted")
ORIGINAL_LAYOUT = ("<root>/split_csv/1cls.csv, <root>/<class>/Data/Images/{Normal,Anomaly}/*.JPG and "
                   "<root>/<class>/Data/Masks/Anomaly/<stem>.png")
CONVERTED = FolderLayout("good", (".png",), "<root>/<class>/train/good/*.JPG, <root>/<class>/test/{good,bad}/"
                                            "*.JPG and <root>/<class>/ground_truth/bad/<stem>.png")


def _converted_root(root: Path) -> Path | None:
    """The folder holding converted class folders: the root itself, SPD's ``1cls/`` or anomalib's
    ``visa_pytorch/``."""
    for candidate in (root, root / "1cls", root / "visa_pytorch"):
        if any((candidate / name / "train").is_dir() for name in VISA_CLASSES):
            return candidate
    return None


class VisA(DatasetSource):
    """VisA: 12 classes, original layout with split_csv/1cls.csv or the converted MVTec-like one."""

    name = "visa"
    hint = "the extracted VisA folder (holding split_csv/ and the class folders) or a converted one"

    def __init__(self, root: str | Path | None = None, *, layout: str = "auto", allow_empty_masks: bool = False):
        root = check_root(root, self.name, self.hint)
        self.allow_empty_masks = allow_empty_masks
        if layout not in LAYOUTS:
            raise DatasetError(f"VisA layout must be one of {', '.join(LAYOUTS)}, got {layout!r}.")
        converted = _converted_root(root)
        has_split_file = (root / "split_csv").is_dir()
        if layout == "original" or (layout == "auto" and (has_split_file or converted is None)):
            self.layout, self.root = "original", root
        else:
            self.layout, self.root = "converted", converted or root
        self._rows: dict[str, list[tuple[int, str, str, str, str]]] | None = None

    # -- the split file ------------------------------------------------------------------------------------

    def _split_rows(self) -> dict[str, list[tuple[int, str, str, str, str]]]:
        """Rows of ``1cls.csv`` by class: (line, split, label, image, mask), checked field by field."""
        if self._rows is not None:
            return self._rows
        path = self.root / SPLIT_FILE
        if not path.is_file():
            raise DatasetError(f"VisA split file {path} (the one-class split) is missing; is --data-root "
                               f"{self.root} {self.hint}? Expected layout: {ORIGINAL_LAYOUT}.")
        rows: dict[str, list] = defaultdict(list)
        with open(path, newline="", encoding="utf-8-sig") as f:  # csv handles the CRLF line endings
            reader = csv.reader(f)
            header = next(reader, None)
            if header != CSV_HEADER:
                raise DatasetError(f"{path} must start with the header {','.join(CSV_HEADER)}, found "
                                   f"{','.join(header or [])!r}; use VisA's split_csv/1cls.csv.")
            for line, row in enumerate(reader, start=2):
                if not any(row):
                    continue
                if len(row) != len(CSV_HEADER):
                    raise DatasetError(f"{path} line {line} has {len(row)} fields, expected "
                                       f"{len(CSV_HEADER)} ({','.join(CSV_HEADER)}).")
                obj, split, label, image, mask = row
                if split not in ("train", "test") or label not in ("normal", "anomaly"):
                    raise DatasetError(f"{path} line {line}: split must be train or test and label normal or "
                                       f"anomaly, got {split!r} and {label!r}.")
                if label == "anomaly" and (split == "train" or not mask):
                    raise DatasetError(f"{path} line {line}: an anomalous image must be a test image with a "
                                       "mask; this is not VisA's one-class split.")
                rows[obj].append((line, split, label, image, mask))
        self._rows = dict(rows)
        return self._rows

    def listed_classes(self) -> list[str]:
        """The VisA classes the split file has rows for (all twelve in the published one)."""
        rows = self._split_rows()
        return [name for name in VISA_CLASSES if name in rows]

    def _class_rows(self, class_name: str):
        rows = self._split_rows().get(class_name)
        if not rows:
            raise DatasetError(f"{self.root / SPLIT_FILE} has no rows for class '{class_name}'; use VisA's "
                               "1cls.csv.")
        return rows

    # -- the DatasetSource interface --------------------------------------------------------------------

    def classes(self) -> list[str]:
        return list(VISA_CLASSES)

    def validate(self, class_name: str) -> None:
        check_class_name(class_name, VISA_CLASSES, "a VisA class")
        if self.layout == "converted":
            validate_class_folder(self.root / class_name, f"is --data-root {self.root} {self.hint}?", CONVERTED,
                                  allow_empty_masks=self.allow_empty_masks)
            return
        rows = self._class_rows(class_name)
        split_file = self.root / SPLIT_FILE
        if not any(split == "train" for _, split, *_ in rows):
            raise DatasetError(f"{split_file} names no training image for class '{class_name}'.")
        for line, _, label, image, mask in rows:
            image_path = self.root / image
            if not image_path.is_file():
                raise DatasetError(f"Image {image_path} named in {split_file} line {line} is missing. "
                                   f"Expected layout: {ORIGINAL_LAYOUT}.")
            if label == "anomaly":
                mask_path = self.root / mask
                if not mask_path.is_file():
                    raise DatasetError(f"Mask {mask_path} named in {split_file} line {line} is missing. "
                                       f"Expected layout: {ORIGINAL_LAYOUT}.")
        check_sample_files([*self.samples(class_name, "train"), *self.samples(class_name, "test")],
                           self.allow_empty_masks)

    def samples(self, class_name: str, split: str) -> list[SampleRef]:
        if self.layout == "converted":
            return scan_class_folder(self.root / class_name, split, CONVERTED)
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        refs = []
        for _, row_split, label, image, mask in self._class_rows(class_name):
            if row_split != split:
                continue
            if label == "anomaly":
                refs.append(SampleRef(self.root / image, self.root / mask, 1, "anomaly"))
            else:
                refs.append(SampleRef(self.root / image, None, 0, "good"))
        return refs

    def describe(self) -> dict:
        return {"name": self.name, "root": str(self.root), "layout": self.layout}
