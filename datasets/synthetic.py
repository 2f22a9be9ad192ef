"""A deterministic generator of MVTec-layout data: two texture-like and two object-like classes with
four defect kinds and exact masks. Same parameters and seed → byte-identical PNG files.

It exists so that the harness runs end to end with no download; numbers on it are not MVTec numbers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from anobench.core import unknown_name
from anobench.datasets.base import DatasetError, DatasetSource, SampleRef
from anobench.datasets.mvtec import scan_class_folder, validate_class_folder

GENERATOR_VERSION = 1
MIN_SIZE = 8
DEFECT_KINDS = ("scratch", "stain", "cutout", "color")


# ----------------------------------------------------------------------------------------------------------
# defect-free images: each returns (rgb float image in [0, 1], mask of where defects may go)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    return np.mgrid[0:size, 0:size].astype(np.float64) / size


def _stripes(rng: np.random.Generator, size: int):
    """Wood-like: warped stripes in brown tones."""
    y, x = _grid(size)
    warp = 0.03 * np.sin(2 * np.pi * (3 * y + rng.uniform(0, 1)))
    phase = rng.uniform(0, 2 * np.pi)
    value = 0.5 + 0.5 * np.sin(2 * np.pi * 14 * (x + warp) + phase)
    rgb = np.stack([0.45 + 0.25 * value, 0.28 + 0.18 * value, 0.12 + 0.1 * value], axis=-1)
    return rgb, np.ones((size, size), dtype=bool)


def _weave(rng: np.random.Generator, size: int):
    """Carpet-like: a woven check of two yarn colours."""
    y, x = _grid(size)
    oy, ox = rng.uniform(0, 1, 2) / 12
    weft = 0.5 + 0.5 * np.sin(2 * np.pi * 24 * (y + oy))
    warp = 0.5 + 0.5 * np.sin(2 * np.pi * 24 * (x + ox))
    on_top = (np.floor((x + ox) * 24) + np.floor((y + oy) * 24)) % 2 == 0
    value = np.where(on_top, weft, warp)
    rgb = np.stack([0.25 + 0.35 * value, 0.35 + 0.2 * value, 0.55 + 0.15 * value], axis=-1)
    return rgb, np.ones((size, size), dtype=bool)


def _disc(rng: np.random.Generator, size: int):
    """Metal-nut-like: a shaded ring on a dark background, slightly displaced per image."""
    y, x = _grid(size)
    cy, cx = 0.5 + rng.uniform(-0.02, 0.02, 2)
    r = np.hypot(y - cy, x - cx)
    ring = (r < 0.33) & (r > 0.12)
    shade = 0.55 + 0.3 * np.cos(np.arctan2(y - cy, x - cx) - 0.8) * (r / 0.33)
    background = np.full((size, size), 0.12)
    value = np.where(ring, shade, background)
    rgb = np.stack([value, value, value * 1.05], axis=-1)
    return rgb, ring


def _capsule(rng: np.random.Generator, size: int):
    """Capsule-like: a rounded two-colour pill on a light background."""
    y, x = _grid(size)
    cy, cx = 0.5 + rng.uniform(-0.015, 0.015, 2)
    half_len, radius = 0.28, 0.13
    dx = np.clip(np.abs(x - cx) - half_len, 0, None)
    body = np.hypot(dx, y - cy) < radius
    left = x < cx
    red, cream = np.array([0.75, 0.18, 0.15]), np.array([0.92, 0.88, 0.75])
    highlight = 0.12 * np.exp(-((y - cy + 0.05) ** 2) / 0.002)
    colour = np.where(left[..., None], red, cream) + highlight[..., None]
    rgb = np.where(body[..., None], colour, np.array([0.82, 0.84, 0.86]))
    return rgb, body


CLASSES: dict[str, tuple[str, Callable]] = {
    "stripes": ("texture", _stripes),
    "weave": ("texture", _weave),
    "disc": ("object", _disc),
    "capsule": ("object", _capsule),
}


# ----------------------------------------------------------------------------------------------------------
# defects: each changes ``rgb`` in place and returns the exact mask of changed pixels


def _defect_centre(rng: np.random.Generator, allowed: np.ndarray) -> tuple[int, int]:
    ys, xs = np.nonzero(allowed)
    i = rng.integers(len(ys))
    return int(ys[i]), int(xs[i])


def _extent(rng: np.random.Generator, size: int) -> float:
    """Defect radius in pixels: a third are small (a few pixels), the rest up to ~12% of the image."""
    small = rng.random() < 1 / 3
    return float(rng.uniform(0.012, 0.025) * size if small else rng.uniform(0.04, 0.12) * size)


def _blob(rng, size, centre, radius) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    angle = rng.uniform(0, np.pi)
    ry, rx = radius, radius * rng.uniform(0.5, 1.0)
    dy, dx = yy - centre[0], xx - centre[1]
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    wobble = 1 + 0.15 * np.sin(3 * np.arctan2(v, u) + rng.uniform(0, 2 * np.pi))
    return (u / rx) ** 2 + (v / ry) ** 2 < wobble


def _scratch(rng, rgb, allowed, background):
    size = rgb.shape[0]
    centre = _defect_centre(rng, allowed)
    length = _extent(rng, size) * 2.5
    angle = rng.uniform(0, np.pi)
    t = np.linspace(-0.5, 0.5, int(length * 2) + 2)
    ys = np.clip(np.round(centre[0] + t * length * np.sin(angle)).astype(int), 0, size - 1)
    xs = np.clip(np.round(centre[1] + t * length * np.cos(angle)).astype(int), 0, size - 1)
    mask = np.zeros((size, size), dtype=bool)
    width = int(rng.integers(1, 3))
    for oy in range(width):
        for ox in range(width):
            mask[np.clip(ys + oy, 0, size - 1), np.clip(xs + ox, 0, size - 1)] = True
    mask &= allowed
    tone = 0.95 if rng.random() < 0.5 else 0.05
    rgb[mask] = tone
    return mask


def _stain(rng, rgb, allowed, background):
    size = rgb.shape[0]
    mask = _blob(rng, size, _defect_centre(rng, allowed), _extent(rng, size)) & allowed
    colour = rng.uniform(0, 1, 3)
    rgb[mask] = 0.35 * rgb[mask] + 0.65 * colour
    return mask


def _cutout(rng, rgb, allowed, background):
    size = rgb.shape[0]
    mask = _blob(rng, size, _defect_centre(rng, allowed), _extent(rng, size) * 1.2) & allowed
    rgb[mask] = background
    return mask


def _colour_shift(rng, rgb, allowed, background):
    size = rgb.shape[0]
    mask = _blob(rng, size, _defect_centre(rng, allowed), _extent(rng, size) * 1.3) & allowed
    rgb[mask] = rgb[mask][:, [2, 0, 1]]  # rotate the channels: same brightness, another hue
    return mask


DEFECTS = {"scratch": _scratch, "stain": _stain, "cutout": _cutout, "color": _colour_shift}


# ----------------------------------------------------------------------------------------------------------
# writing a dataset


@dataclass(frozen=True)
class SynthSpec:
    """Everything that determines the generated files; its hash names the cache folder."""

    seed: int = 0
    size: int = 256
    classes: tuple[str, ...] = tuple(CLASSES)
    train: int = 40
    test_good: int = 12
    test_per_defect: int = 4

    def __post_init__(self):
        """Refuse options that would write a partial or unusable dataset, before anything is written."""
        limits = {"seed": (self.seed, 0, "numpy seeds are non-negative"),
                  "size": (self.size, MIN_SIZE, "pixels per side; smaller images cannot hold the defects"),
                  "train": (self.train, 1, "every class needs defect-free training images"),
                  "test_good": (self.test_good, 1, "image AUROC needs defect-free test images"),
                  "test_per_defect": (self.test_per_defect, 1, "every defect kind needs test images")}
        for name, (value, least, why) in limits.items():
            if not isinstance(value, int) or value < least:
                raise DatasetError(f"Synthetic data option {name} must be an integer of at least {least} "
                                   f"({why}), got {value!r}.")
        unknown = [c for c in self.classes if c not in CLASSES]
        if unknown or not self.classes:
            raise unknown_name("synthetic class", unknown[0] if unknown else "", CLASSES)

    def key(self) -> str:
        payload = json.dumps({**asdict(self), "generator": GENERATOR_VERSION}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


STREAMS = ("train", "good", *DEFECT_KINDS)  # each draws from its own random stream


def render_sample(spec: SynthSpec, class_name: str, stream: str, index: int):
    """One image (and its mask when ``stream`` is a defect kind)."""
    rng = np.random.default_rng([spec.seed, list(CLASSES).index(class_name), STREAMS.index(stream), index])
    defect = stream if stream in DEFECT_KINDS else None
    _, draw = CLASSES[class_name]
    rgb, allowed = draw(rng, spec.size)
    mask = None
    if defect is not None:
        background = rgb[~allowed].mean(axis=0) if (~allowed).any() else np.array([0.5, 0.5, 0.5])
        mask = DEFECTS[defect](rng, rgb, allowed, background)
    rgb = rgb + rng.normal(0, 0.015, rgb.shape)  # sensor noise
    image = Image.fromarray((np.clip(rgb, 0, 1) * 255).round().astype(np.uint8), "RGB")
    return image, mask


def _save_png(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", optimize=False, compress_level=6)


def write_dataset(out: Path, spec: SynthSpec) -> Path:
    """Write the dataset under ``out`` (one folder per class, MVTec layout) and return ``out``."""
    for class_name in spec.classes:
        root = out / class_name
        for i in range(spec.train):
            image, _ = render_sample(spec, class_name, "train", i)
            _save_png(image, root / "train" / "good" / f"{i:03d}.png")
        for i in range(spec.test_good):
            image, _ = render_sample(spec, class_name, "good", i)
            _save_png(image, root / "test" / "good" / f"{i:03d}.png")
        for defect in DEFECT_KINDS:
            for i in range(spec.test_per_defect):
                image, mask = render_sample(spec, class_name, defect, i)
                _save_png(image, root / "test" / defect / f"{i:03d}.png")
                _save_png(Image.fromarray(mask.astype(np.uint8) * 255, "L"),
                          root / "ground_truth" / defect / f"{i:03d}_mask.png")
    (out / "SOURCE.md").write_text(
        "# Generated data (anobench synthetic)\n\n"
        f"Written by `bench data synth`, generator version {GENERATOR_VERSION}, parameters "
        f"`{json.dumps(asdict(spec), sort_keys=True)}`. Not real data: use it to check the harness, "
        "not to rank methods.\n"
    )
    return out


def default_cache_dir() -> Path:
    return Path(os.environ.get("ANOBENCH_CACHE", Path.home() / ".cache" / "anobench"))


def ensure_generated(spec: SynthSpec, cache_dir: Path | None = None) -> Path:
    """Return the folder of ``spec``'s dataset, generating it atomically on first use."""
    target = (cache_dir or default_cache_dir()) / "synthetic" / spec.key()
    if (target / "SOURCE.md").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".synth-", dir=target.parent))
    try:
        write_dataset(staging, spec)
        try:
            staging.rename(target)
        except OSError:  # another process finished first; keep theirs
            if not (target / "SOURCE.md").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


class SyntheticDataset(DatasetSource):
    """Generated MVTec-layout data, cached under ``$ANOBENCH_CACHE`` (default ~/.cache/anobench)."""

    name = "synthetic"
    needs_root = False

    def __init__(self, root: str | Path | None = None, *, seed: int = 0, size: int = 256,
                 classes: list[str] | None = None, train: int = 40, test_good: int = 12,
                 test_per_defect: int = 4):
        self.spec = SynthSpec(seed=seed, size=size, classes=tuple(classes or CLASSES), train=train,
                              test_good=test_good, test_per_defect=test_per_defect)
        self._cache_dir = Path(root) if root else None
        self._root: Path | None = None

    @property
    def root(self) -> Path:
        if self._root is None:
            self._root = ensure_generated(self.spec, self._cache_dir)
        return self._root

    def classes(self) -> list[str]:
        return list(self.spec.classes)

    def validate(self, class_name: str) -> None:
        if class_name not in self.spec.classes:
            raise unknown_name("synthetic class", class_name, self.spec.classes)
        validate_class_folder(self.root / class_name, "the generated cache looks damaged; delete it.")

    def samples(self, class_name: str, split: str) -> list[SampleRef]:
        return scan_class_folder(self.root / class_name, split)

    def describe(self) -> dict:
        return {"name": self.name, "generator_version": GENERATOR_VERSION, **asdict(self.spec)}
