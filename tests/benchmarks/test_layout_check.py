"""The layout check's cost on MVTec AD-shaped data (pytest-benchmark; run with `nox -s benchmarks`).

``write_mvtec_standin`` writes a stand-in of MVTec AD: its 15 classes with their real per-class image
counts (3,629 train, 467 test-good, 1,258 defect images with 1,258 masks: 5,354 images), side lengths
(700–1024 px) and modes (grid, screw and zipper grey), as PNGs of about MVTec's byte sizes (a smooth
pattern plus noise: about 1.4 MB at 1024² RGB) and 0/255 masks holding one defect blob each. Each file is
a separate copy (no links), so the page cache sees as many files as the real dataset has.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anobench.datasets.mvtec import validate_class_folder

# class: (side, mode, train good, test good, {defect: test images}), from the dataset's documentation
MVTEC_AD = {
    "bottle": (900, "RGB", 209, 20, {"broken_large": 20, "broken_small": 22, "contamination": 21}),
    "cable": (1024, "RGB", 224, 58, {"bent_wire": 13, "cable_swap": 12, "combined": 11, "cut_inner_insulation": 14,
                                     "cut_outer_insulation": 10, "missing_cable": 12, "missing_wire": 10,
                                     "poke_insulation": 10}),
    "capsule": (1000, "RGB", 219, 23, {"crack": 23, "faulty_imprint": 22, "poke": 21, "scratch": 23, "squeeze": 20}),
    "carpet": (1024, "RGB", 280, 28, {"color": 19, "cut": 17, "hole": 17, "metal_contamination": 17, "thread": 19}),
    "grid": (1024, "L", 264, 21, {"bent": 12, "broken": 12, "glue": 11, "metal_contamination": 11, "thread": 11}),
    "hazelnut": (1024, "RGB", 391, 40, {"crack": 18, "cut": 17, "hole": 18, "print": 17}),
    "leather": (1024, "RGB", 245, 32, {"color": 19, "cut": 19, "fold": 17, "glue": 19, "poke": 18}),
    "metal_nut": (700, "RGB", 220, 22, {"bent": 25, "color": 22, "flip": 23, "scratch": 23}),
    "pill": (800, "RGB", 267, 26, {"color": 25, "combined": 17, "contamination": 21, "crack": 26, "faulty_imprint": 19,
                                   "pill_type": 9, "scratch": 24}),
    "screw": (1024, "L", 320, 41, {"manipulated_front": 24, "scratch_head": 24, "scratch_neck": 25, "thread_side": 23,
                                   "thread_top": 23}),
    "tile": (840, "RGB", 230, 33, {"crack": 17, "glue_strip": 18, "gray_stroke": 16, "oil": 18, "rough": 15}),
    "toothbrush": (1024, "RGB", 60, 12, {"defective": 30}),
    "transistor": (1024, "RGB", 213, 60, {"bent_lead": 10, "cut_lead": 10, "damaged_case": 10, "misplaced": 10}),
    "wood": (1024, "RGB", 247, 19, {"color": 8, "combined": 11, "hole": 10, "liquid": 10, "scratch": 21}),
    "zipper": (1024, "L", 240, 32, {"broken_teeth": 19, "combined": 16, "fabric_border": 17, "fabric_interior": 16,
                                    "rough": 17, "split_teeth": 18, "squeezed_teeth": 16}),
}
VARIANTS = 4  # distinct encoded images per side and mode, written as separate files round-robin


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def _images(side: int, mode: str, rng: np.random.Generator) -> list[bytes]:
    yy, xx = np.mgrid[0:side, 0:side] / side
    base = 120 + 60 * np.sin(6 * xx + 3 * yy) + 30 * np.cos(11 * yy)
    shape = (side, side) if mode == "L" else (side, side, 3)
    pattern = base if mode == "L" else base[..., None]
    return [_png(np.clip(pattern + rng.normal(0, 2, shape), 0, 255).astype(np.uint8)) for _ in range(VARIANTS)]


def _masks(side: int, rng: np.random.Generator) -> list[bytes]:
    yy, xx = np.mgrid[0:side, 0:side]
    masks = []
    for _ in range(VARIANTS):
        cy, cx, radius = *rng.integers(side // 4, 3 * side // 4, 2), rng.integers(side // 50, side // 10)
        masks.append(_png(((yy - cy) ** 2 + (xx - cx) ** 2 < radius**2).astype(np.uint8) * 255))
    return masks


def write_mvtec_standin(root: Path, classes=tuple(MVTEC_AD)) -> int:
    """Write the stand-in under ``root`` (MVTec layout); return the number of images (masks not counted)."""
    rng = np.random.default_rng(0)
    count = 0
    for name in classes:
        side, mode, train, good, defects = MVTEC_AD[name]
        images, masks = _images(side, mode, rng), _masks(side, rng)
        folders = {root / name / "train" / "good": train, root / name / "test" / "good": good}
        folders.update({root / name / "test" / d: n for d, n in defects.items()})
        for folder, n in folders.items():
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                (folder / f"{i:03d}.png").write_bytes(images[count % VARIANTS])
                count += 1
                if folder.parent.name == "test" and folder.name != "good":
                    mask_dir = root / name / "ground_truth" / folder.name
                    mask_dir.mkdir(parents=True, exist_ok=True)
                    (mask_dir / f"{i:03d}_mask.png").write_bytes(masks[i % VARIANTS])
    return count


@pytest.fixture(scope="module")
def bottle(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mvtec")
    assert write_mvtec_standin(root, ("bottle",)) == 209 + 20 + 63
    return root / "bottle"


def test_layout_check_of_mvtec_bottle(benchmark, bottle):
    """Every header and end marker of bottle's 292 images and 63 masks, and the 63 masks decoded for the
    empty-mask check (warm page cache)."""
    benchmark(validate_class_folder, bottle, "")
