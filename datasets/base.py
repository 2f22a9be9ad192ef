"""Datasets in MVTec AD layout: sample references, validation, and a torch Dataset of transformed samples."""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torchvision.transforms.functional as TF
from anobench.core import BenchError, Registry
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MVTEC_LAYOUT = "<root>/<class>/train/good/*.png, <root>/<class>/test/<defect>/*.png and <root>/<class>/ground_truth/<defect>/<stem>_mask.png"


class DatasetError(BenchError):
    """The data on disk does not match what the dataset expects."""


@dataclass(frozen=True)
class SampleRef:
    """Where one sample lives and what it is; label 1 means anomalous.

    ``mask_frame`` is set when the mask is one frame of a (T, H, W) ``.npy`` array (video datasets).
    """

    image_path: Path
    mask_path: Path | None
    label: int
    defect_type: str
    mask_frame: int | None = None


@dataclass(frozen=True)
class Geometry:
    """Resize to ``resize``×``resize`` then centre-crop to ``crop``×``crop`` (PaDiM: 256 → 224)."""

    resize: int
    crop: int

    def __post_init__(self):
        if not 0 < self.crop <= self.resize:
            raise BenchError(f"crop {self.crop} must be positive and at most the resize {self.resize}")


def read_image(path: Path) -> Image.Image:
    """Open an image as RGB (grayscale datasets such as grid, screw or magnetic tiles included)."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise DatasetError(f"Cannot read image {path} ({exc}); replace or remove the file.") from None


def read_mask(ref: SampleRef) -> np.ndarray:
    """A sample's mask as a boolean array: an image (values of 128 and above are defect) or one frame of a
    ``.npy`` stack (non-zero is defect, read through a memory map)."""
    path = ref.mask_path
    try:
        if ref.mask_frame is not None:
            return np.asarray(np.load(path, mmap_mode="r")[ref.mask_frame]) > 0
        with Image.open(path) as img:
            return np.asarray(img.convert("L")) >= 128
    except (OSError, ValueError, IndexError, UnidentifiedImageError) as exc:
        raise DatasetError(f"Cannot read mask {path} ({exc}); replace or remove the file.") from None


def geometry_mask(mask: np.ndarray, geometry: Geometry) -> np.ndarray:
    """A boolean mask at the original resolution, resized (nearest) and centre-cropped like its image."""
    g = geometry
    image = Image.fromarray(mask.astype(np.uint8) * 255)
    image = TF.resize(image, [g.resize, g.resize], TF.InterpolationMode.NEAREST)
    image = TF.center_crop(image, [g.crop, g.crop])
    return np.asarray(image) >= 128


def mask_values(path: Path) -> np.ndarray:
    """A mask file's stored values, undecoded (class ids, per-defect values, palette indices); for datasets
    whose masks are not plain binary images."""
    try:
        with Image.open(path) as img:
            return np.asarray(img)
    except (OSError, ValueError, UnidentifiedImageError) as exc:
        raise DatasetError(f"Cannot read mask {path} ({exc}); replace or remove the file.") from None


def nonzero_mask(path: Path) -> np.ndarray:
    """Defect wherever a mask stores any non-zero value (in any colour channel; alpha ignored)."""
    values = mask_values(path)
    return values > 0 if values.ndim == 2 else (values[..., :3] > 0).any(axis=-1)


class AnomalyDataset(torch.utils.data.Dataset):
    """Transformed samples: image float (3, crop, crop) in [0, 1], mask uint8 (crop, crop), label, type, path.

    Decoded, resized images are kept in memory as uint8 after the first read, so that multi-epoch
    training does not decode the same files again. ``mask_reader`` is the dataset's own way of reading a
    mask (``DatasetSource.read_mask``; VisA's class ids, LOCO's folder of per-defect masks).
    """

    def __init__(self, refs: list[SampleRef], geometry: Geometry,
                 mask_reader: Callable[[SampleRef], np.ndarray] | None = None):
        self.refs = refs
        self.geometry = geometry
        self.mask_reader = mask_reader or read_mask
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.refs)

    def _load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if index not in self._cache:
            ref = self.refs[index]
            g = self.geometry
            image = TF.center_crop(TF.resize(read_image(ref.image_path), [g.resize, g.resize]), [g.crop, g.crop])
            image_u8 = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).contiguous()
            if ref.mask_path is not None:
                mask_u8 = torch.from_numpy(geometry_mask(self.mask_reader(ref), g).astype(np.uint8))
            else:
                mask_u8 = torch.zeros((g.crop, g.crop), dtype=torch.uint8)
            self._cache[index] = (image_u8, mask_u8)
        return self._cache[index]

    def __getitem__(self, index: int) -> dict:
        image_u8, mask = self._load(index)
        ref = self.refs[index]
        return {"image": image_u8.float() / 255.0, "mask": mask, "label": ref.label, "defect_type": ref.defect_type,
                "path": str(ref.image_path), "index": index}

    def labels(self) -> np.ndarray:
        return np.array([r.label for r in self.refs], dtype=np.int64)

    def image_u8(self, index: int) -> np.ndarray:
        """The transformed image as (H, W, 3) uint8, for figures."""
        return self._load(index)[0].permute(1, 2, 0).numpy()


class DatasetSource(ABC):
    """A dataset on disk: which classes it has, and the samples of a class split.

    Subclasses take their options as keyword arguments (from the suite's ``[dataset]`` table) and must
    check the layout in ``validate`` before any work starts, raising one-sentence ``DatasetError``s.
    """

    name: ClassVar[str]
    needs_root: ClassVar[bool] = True
    #: metrics of the dataset's own protocol, beside the usual ones (names in ``anobench.protocols``)
    protocol_metrics: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def classes(self) -> list[str]: ...

    @abstractmethod
    def validate(self, class_name: str) -> None: ...

    @abstractmethod
    def samples(self, class_name: str, split: str) -> list[SampleRef]: ...

    def read_mask(self, ref: SampleRef) -> np.ndarray:
        """A sample's mask as a boolean array; datasets whose masks encode defects differently override."""
        return read_mask(ref)

    def original_mask(self, ref: SampleRef) -> np.ndarray:
        """The ground truth at the image's original resolution (zeros for a defect-free image)."""
        if ref.mask_path is not None:
            return self.read_mask(ref)
        with Image.open(ref.image_path) as img:
            return np.zeros((img.height, img.width), dtype=bool)

    def ground_truth(self, class_name: str) -> tuple[str, str]:
        """What the test split is labelled with, and why if less than pixels: ``("pixel", "")``,
        ``("image", reason)`` (pixel metrics stay empty) or ``("none", reason)`` (no metrics at all)."""
        return "pixel", ""

    def describe(self) -> dict:
        """Plain-data description of this source for records."""
        return {"name": self.name}


DATASETS: Registry[type[DatasetSource]] = Registry("dataset")
register_dataset = DATASETS.register


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding its pixels."""
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, UnidentifiedImageError) as exc:
        raise DatasetError(f"Cannot read image {path} ({exc}); replace or remove the file.") from None


def check_mask_size(image: Path, mask: Path) -> None:
    """A mask must have its image's size (checked from the headers): a mismatch would be scored wrongly."""
    mask_size, size = image_size(mask), image_size(image)
    if mask_size != size:
        raise DatasetError(f"Mask {mask} is {mask_size[0]}x{mask_size[1]} pixels but its image {image} is "
                           f"{size[0]}x{size[1]}; a mask must cover its image pixel for pixel.")


def check_class_name(class_name: str, valid: tuple[str, ...] | list[str], noun: str) -> None:
    """A class the dataset has (``noun``: "an MVTec AD class"), else one sentence listing them."""
    if class_name not in valid:
        raise DatasetError(f"'{class_name}' is not {noun}; valid classes: {', '.join(valid)}.")


def read_json(path: Path, what: str, hint: str) -> Any:
    """A dataset's JSON file (a split, a configuration): one sentence if it is missing or unreadable."""
    if not path.is_file():
        raise DatasetError(f"{what} {path} is missing; {hint}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{what} {path} is not readable JSON ({exc}); restore it from the dataset's "
                           "archive.") from None


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []


def subsample(refs: list[SampleRef], limit: int | None) -> list[SampleRef]:
    """Keep at most ``limit`` samples, evenly spaced and deterministic (test-only overrides, quick suites)."""
    if limit is None or limit >= len(refs):
        return refs
    step = len(refs) / limit
    return [refs[math.floor(i * step)] for i in range(limit)]
