"""Real-IAD (Wang et al., CVPR 2024): 30 classes, five camera views (C1-C5) per sample, splits in JSON.

The official layout (https://realiad4ad.github.io/Real-IAD, example repository README)::

    <root>/realiad_1024/<class>/OK/S0001/<class>_0001_OK_C1_<timestamp>.jpg
    <root>/realiad_1024/<class>/NG/<code>/S0027/<...>_C2_<timestamp>.jpg  (+ .png mask, same stem)
    <root>/realiad_jsons/<class>.json        multi-view split; realiad_jsons_sv/ single view, _fuiad_0.1 ...

A JSON holds ``meta``, ``train`` and ``test``; each entry has ``category``, ``anomaly_class`` (``OK`` or a
defect code), ``image_path`` and ``mask_path`` (``null`` for OK), relative to the class folder; paths are
used as the JSON gives them, never rebuilt. anomalib's nested ``realiad_jsons/realiad_jsons/`` and ADer's
``<root>/<class>.json`` beside ``<root>/<class>/`` read too. An image is anomalous when its entry's
``anomaly_class`` is not ``OK`` (ADer, anomalib; ADEval, the official evaluator, labels by the mask, which
differs for the few NG views whose mask is empty). Options: ``resolution`` (the ``realiad_<resolution>``
folder; ``auto`` by default), ``split`` (the JSON folder: ``realiad_jsons_sv`` for single view, ...) and
``allow_empty_masks`` (true by default: the published data has those NG views whose mask is empty).
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
    read_json,
)
from anobench.datasets.mvtec import check_root

REALIAD_CLASSES = (
    "audiojack", "bottle_cap", "button_battery", "end_cap", "eraser", "fire_hood", "mint", "mounts", "pcb",
    "phone_battery", "plastic_nut", "plastic_plug", "porcelain_doll", "regulator", "rolled_strip_base",
    "sim_card_set", "switch", "tape", "terminalblock", "toothbrush", "toy", "toy_brick", "transistor1",
    "u_block", "usb", "usb_adaptor", "vcpill", "wooden_beads", "woodstick", "zipper",
)
#: the official evaluation's ``--sample_key_pat``: one key per physical sample, shared by its views
SAMPLE_KEY = re.compile(r"([a-zA-Z][a-zA-Z0-9_]*_[0-9]{4}_[A-Z][A-Z_]*[A-Z])_C[0-9]_")
ENTRY_KEYS = ("anomaly_class", "image_path", "mask_path")
RESOLUTIONS = ("1024", "512", "256", "raw")
REALIAD_LAYOUT = "<root>/realiad_<resolution>/<class>/{OK,NG}/... and <root>/<split>/<class>.json"


class RealIAD(DatasetSource):
    """Real-IAD: 30 classes, multi-view, JSON splits; image, sample (views grouped) and pixel metrics."""

    name = "realiad"
    hint = "the Real-IAD folder holding realiad_<resolution>/ and realiad_jsons/"
    protocol_metrics = ("realiad",)

    def __init__(self, root: str | Path | None = None, *, resolution: str = "auto",
                 split: str = "realiad_jsons", allow_empty_masks: bool = True):
        self.root = check_root(root, self.name, self.hint)
        self.allow_empty_masks = allow_empty_masks
        self.resolution, self.split = str(resolution), split
        self._entries: dict[str, dict] = {}

    def json_path(self, class_name: str) -> Path:
        candidates = [self.root / self.split / f"{class_name}.json",
                      self.root / self.split / self.split / f"{class_name}.json",
                      self.root / f"{class_name}.json"]
        return next((c for c in candidates if c.is_file()), candidates[0])

    def class_dir(self, class_name: str) -> Path:
        """``realiad_<resolution>/<class>`` (with ``auto``: the first of 1024, 512, 256, raw that exists),
        else ADer's ``<root>/<class>``."""
        resolutions = RESOLUTIONS if self.resolution == "auto" else (self.resolution,)
        candidates = [self.root / f"realiad_{r}" / class_name for r in resolutions]
        return next((c for c in candidates if c.is_dir()), self.root / class_name)

    def _split(self, class_name: str) -> dict:
        """The class's JSON, checked: ``train`` and ``test`` lists of entries with the keys loaders read."""
        if class_name in self._entries:
            return self._entries[class_name]
        path = self.json_path(class_name)
        data = read_json(path, "Real-IAD split file", f"is --data-root {self.root} {self.hint} (split folder "
                                                       f"'{self.split}')? Expected layout: {REALIAD_LAYOUT}.")
        for part in ("train", "test"):
            entries = data.get(part) if isinstance(data, dict) else None
            well_formed = isinstance(entries, list) and all(
                isinstance(e, dict) and all(k in e for k in ENTRY_KEYS) for e in entries)
            if not well_formed:
                raise DatasetError(f"Real-IAD split file {path} needs a '{part}' list of entries with "
                                   f"{', '.join(ENTRY_KEYS)}.")
        self._entries[class_name] = data
        return data

    def classes(self) -> list[str]:
        return list(REALIAD_CLASSES)

    def validate(self, class_name: str) -> None:
        check_class_name(class_name, REALIAD_CLASSES, "a Real-IAD class")
        data, path = self._split(class_name), self.json_path(class_name)
        class_dir = self.class_dir(class_name)
        if not data["train"]:
            raise DatasetError(f"Real-IAD split file {path} lists no training image.")
        for part in ("train", "test"):
            for entry in data[part]:
                image = class_dir / entry["image_path"]
                if not image.is_file():
                    raise DatasetError(f"Image {image} named in {path} ('{part}') is missing. Expected "
                                       f"layout: {REALIAD_LAYOUT}.")
                if entry["mask_path"]:
                    mask = class_dir / entry["mask_path"]
                    if not mask.is_file():
                        raise DatasetError(f"Mask {mask} named in {path} ('{part}') is missing.")
        check_sample_files([*self.samples(class_name, "train"), *self.samples(class_name, "test")],
                           self.allow_empty_masks)

    def samples(self, class_name: str, split: str) -> list[SampleRef]:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        class_dir = self.class_dir(class_name)
        refs = []
        for entry in self._split(class_name)[split]:
            anomalous = entry["anomaly_class"] != "OK"
            mask = class_dir / entry["mask_path"] if entry["mask_path"] else None
            refs.append(SampleRef(class_dir / entry["image_path"], mask, int(anomalous),
                                  entry["anomaly_class"] if anomalous else "good"))
        return refs

    @staticmethod
    def sample_key(ref: SampleRef) -> str | None:
        """The physical sample an image (view) shows, by the official pattern; None if the name has none."""
        match = SAMPLE_KEY.search(ref.image_path.name)
        return match.group(1) if match else None

    def describe(self) -> dict:
        return {"name": self.name, "root": str(self.root), "resolution": self.resolution, "split": self.split}
