"""Datasets in MVTec AD layout: sample references, validation, and a torch Dataset of transformed samples."""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image, UnidentifiedImageError

from anobench.core import BenchError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MVTEC_LAYOUT = "<root>/<class>/train/good/*.png, <root>/<class>/test/<defect>/*.png and <root>/<class>/ground_truth/<defect>/<stem>_mask.png"


class DatasetError(BenchError):
    """The data on disk does not match what the dataset expects."""


@dataclass(frozen=True)
class SampleRef:
    """Where one sample lives and what it is; label 1 means anomalous.

    ``mask_frame`` is set when the mask is one frame of a (T, H, W) ``.npy`` array (video datasets).
    ``mask_threshold`` is for datasets whose own definition of a defect pixel is not "any non-zero value"
    (see ``read_mask``): stored values at or above it are defects.
    """

    image_path: Path
    mask_path: Path | None
    label: int
    defect_type: str
    mask_frame: int | None = None
    mask_threshold: float | None = None


@dataclass(frozen=True)
class Geometry:
    """Resize to ``resize``×``resize`` then centre-crop to ``crop``×``crop`` (PaDiM: 256 → 224)."""

    resize: int
    crop: int

    def __post_init__(self):
        if not 0 < self.crop <= self.resize:
            raise BenchError(f"crop {self.crop} must be positive and at most the resize {self.resize}")


SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
EXACT_RGB_MODES = ("1", "L", "P", "RGB", "RGBX", "YCbCr")  # Pillow converts these to RGB without loss
ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")
SINGLE_CHANNEL_MODES = ("1", "L", "P", "I", "F", *SIXTEEN_BIT_MODES)
LOSSY_MASK_SUFFIXES = (".jpg", ".jpeg")
LOSSY_MASK_THRESHOLD = 128


def _unreadable(path: Path, why: str, fix: str) -> DatasetError:
    return DatasetError(f"Cannot read {path} ({why}); {fix}")


def _high_byte(values: np.ndarray) -> np.ndarray:
    """16-bit values 0..65535 onto 0..255 by their high byte (v // 256): linear, the way Pillow itself
    decodes 16-bit colour PNGs (so grey and colour files agree), and exact for 8-bit data widened either as
    v·257 or v·256."""
    return (values.astype(np.uint32) >> 8).astype(np.uint8)


def _over_black(img: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 colour composited over black (colour × alpha / 255, rounded): a transparent pixel is
    black whatever colour it stores, an opaque alpha changes nothing."""
    rgba = np.asarray(img.convert("RGBA"), dtype=np.uint32)
    return ((rgba[..., :3] * rgba[..., 3:] + 127) // 255).astype(np.uint8)


def _as_rgb(img: Image.Image, path: Path) -> Image.Image:
    """An opened image as 8-bit RGB with its real contrast, or one sentence saying why it cannot be."""
    mode = img.mode
    if mode in SIXTEEN_BIT_MODES or mode == "I":
        values = np.asarray(img)
        if mode == "I" and values.size and (values.min() < 0 or values.max() > 65535):
            raise _unreadable(path, f"32-bit integer pixels from {values.min()} to {values.max()}: no known "
                              "white point", "convert it to 8- or 16-bit grey or RGB.")
        return Image.fromarray(_high_byte(values), "L").convert("RGB")
    if mode == "F":
        values = np.asarray(img)
        if not np.isfinite(values).all() or (values.size and (values.min() < 0 or values.max() > 1)):
            raise _unreadable(path, "floating-point pixels outside [0, 1]: no known white point",
                              "convert it to 8- or 16-bit grey or RGB, or scale it to [0, 1].")
        return Image.fromarray(np.rint(values * 255).astype(np.uint8), "L").convert("RGB")
    if mode in ALPHA_MODES or (mode == "P" and "transparency" in img.info):
        return Image.fromarray(_over_black(img), "RGB")
    if mode in EXACT_RGB_MODES:
        return img.convert("RGB")
    raise _unreadable(path, f"pixel mode {mode} has no exact conversion to RGB without a colour profile",
                      "convert it to 8- or 16-bit grey or RGB.")


def read_image(path: Path) -> Image.Image:
    """Open an image as 8-bit RGB with its real contrast: 8-bit grey, RGB and palette exactly; 16-bit grey
    by the high byte of each value (``_high_byte``, as Pillow decodes 16-bit colour); float pixels in [0, 1]
    ×255; alpha composited over black (``_over_black``). A mode without an exact conversion (CMYK, LAB,
    32-bit integers beyond 16 bits, floats beyond [0, 1]) is one sentence naming the file."""
    try:
        with Image.open(path) as img:
            return _as_rgb(img, path)
    except (OSError, UnidentifiedImageError) as exc:
        raise DatasetError(f"Cannot read image {path} ({exc}); replace or remove the file.") from None


def mask_values(path: Path) -> np.ndarray:
    """A mask image's stored values as one (H, W) array: single-channel masks (grey, palette indices, 16-bit,
    float) as stored, so class numbers and per-defect values survive; colour masks by each pixel's largest
    channel after compositing any alpha over black."""
    try:
        with Image.open(path) as img:
            if img.mode in SINGLE_CHANNEL_MODES:
                return np.asarray(img)
            return np.asarray(_as_rgb(img, path)).max(axis=-1)
    except (OSError, ValueError, UnidentifiedImageError) as exc:
        raise DatasetError(f"Cannot read mask {path} ({exc}); replace or remove the file.") from None


def read_mask(ref: SampleRef) -> np.ndarray:
    """A sample's ground truth as a boolean array: a pixel is a defect where its stored value is not zero,
    so 0/255, 0/1 and defect-class-number masks all work, in 8 or 16 bits. Colour masks count a pixel whose
    largest channel (after compositing any alpha over black) is not zero; palette masks their stored index.
    Where the dataset defines defects otherwise, ``ref.mask_threshold`` applies (values at or above it);
    JPEG masks default to 128, because lossy compression leaves small non-zero values beside every edge.
    A frame of a ``.npy`` stack is read through a memory map."""
    path = ref.mask_path
    threshold = ref.mask_threshold
    if ref.mask_frame is not None:
        try:
            values = np.asarray(np.load(path, mmap_mode="r")[ref.mask_frame])
        except (OSError, ValueError, IndexError) as exc:
            raise DatasetError(f"Cannot read mask {path} ({exc}); replace or remove the file.") from None
    else:
        values = mask_values(path)
        if threshold is None and path.suffix.lower() in LOSSY_MASK_SUFFIXES:
            threshold = LOSSY_MASK_THRESHOLD
    return values > 0 if threshold is None else values >= threshold


def geometry_mask(mask: np.ndarray, geometry: Geometry) -> np.ndarray:
    """A boolean mask at the original resolution, resized (nearest) and centre-cropped like its image."""
    g = geometry
    image = Image.fromarray(mask.astype(np.uint8) * 255)
    image = TF.resize(image, [g.resize, g.resize], TF.InterpolationMode.NEAREST)
    image = TF.center_crop(image, [g.crop, g.crop])
    return np.asarray(image) >= 128


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


def is_hidden(path: Path) -> bool:
    """Hidden and OS metadata entries (macOS ``._*`` AppleDouble twins and ``.DS_Store``, anything starting
    with a dot): never data, whatever their suffix."""
    return path.name.startswith(".")


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
    """The image files in ``folder``, sorted; hidden and OS metadata files are ignored, not read
    (Windows' ``Thumbs.db`` and ``desktop.ini`` have no image suffix)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.suffix.lower() in IMAGE_SUFFIXES and not is_hidden(p) and p.is_file())


def subfolders(folder: Path) -> list[Path]:
    """The folders in ``folder``, sorted, hidden ones left out."""
    return sorted(d for d in folder.iterdir() if d.is_dir() and not is_hidden(d)) if folder.is_dir() else []


# A whole PNG ends with its IEND chunk and a whole JPEG with its EOI marker, which a truncated copy lacks.
END_MARKERS = {"PNG": b"IEND", "JPEG": b"\xff\xd9"}
TAIL_BYTES = 4096  # searched at the end of the file (a few writers append bytes after the marker)


def image_header(path: Path) -> tuple[int, int]:
    """An image's (width, height) from its header, once it is known to be whole: not empty, a format PIL
    reads, and, for PNG and JPEG, with the format's end marker in its last 4 KiB (a JPEG's compressed data
    cannot hold FF D9; a PNG's holds "IEND" by chance once in 2^32 positions). That costs a header and a
    tail read, no decoding. A file without the marker, and other formats (BMP, TIFF), are decoded in full:
    only a file that fails to decode is refused (one sentence naming it)."""
    try:
        if path.stat().st_size == 0:
            raise DatasetError(f"Cannot use image {path} (it is empty: 0 bytes); replace or remove the file.")
        with Image.open(path) as img:
            marker = END_MARKERS.get(img.format or "")
            if marker is None or not _tail_holds(path, marker):
                img.load()
            return img.size
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"Cannot use image {path} ({exc}); replace or remove the file.") from None


def _tail_holds(path: Path, marker: bytes) -> bool:
    with open(path, "rb") as f:
        f.seek(max(0, f.seek(0, 2) - TAIL_BYTES))
        return marker in f.read()


def mask_size(ref: SampleRef) -> tuple[int, int]:
    """(width, height) of a sample's mask: an image's header, or a frame of a (T, H, W) ``.npy`` stack."""
    if ref.mask_frame is None:
        return image_header(ref.mask_path)
    try:
        height, width = np.load(ref.mask_path, mmap_mode="r").shape[1:3]
    except (OSError, ValueError) as exc:
        raise DatasetError(f"Cannot read mask {ref.mask_path} ({exc}); replace or remove the file.") from None
    return width, height


def check_sample_files(refs: Iterable[SampleRef], allow_empty_masks: bool = False) -> None:
    """The layout check's look at every file before any work: each image and mask whole and readable
    (headers only, ``image_header``), each mask the size of its image, and, unless the dataset says
    defects without marked pixels are intended, no defect image with an entirely empty mask."""
    for ref in refs:
        size = image_header(ref.image_path)
        if ref.mask_path is None:
            continue
        found = mask_size(ref)
        if found != size:
            raise DatasetError(f"Mask {ref.mask_path} is {found[0]}×{found[1]} but its image {ref.image_path} is "
                               f"{size[0]}×{size[1]}; a mask must have its image's size (is it the right file?).")
        if ref.label == 1 and not allow_empty_masks and not read_mask(ref).any():
            raise DatasetError(f"Defect image {ref.image_path} has an entirely empty mask {ref.mask_path}; fix the "
                               f"mask, or set the dataset option allow_empty_masks = true if that is intended.")


def subsample(refs: list[SampleRef], limit: int | None) -> list[SampleRef]:
    """Keep at most ``limit`` samples, evenly spaced and deterministic (test-only overrides, quick suites)."""
    if limit is None or limit >= len(refs):
        return refs
    step = len(refs) / limit
    return [refs[math.floor(i * step)] for i in range(limit)]
