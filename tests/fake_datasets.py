"""Tiny fakes of the published datasets' layouts, exactly as the dataset layouts reference describes them:
names, folder structure, file modes and extensions, mask encodings, split files (VisA's CRLF CSV, Real-IAD's
JSON, LOCO's defects_config.json) and a few corner cases (KSDD2's "(copy)" duplicate, BTAD's mixed .bmp/.png,
MVTec AD 2's per-lighting names). Images are a few dozen pixels, defects are bright blobs exactly under
their masks, so any method separates them and metrics are defined.
"""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from anobench.datasets.btad import BTAD_CLASSES
from anobench.datasets.mpdd import MPDD_CLASSES
from anobench.datasets.mvtec_ad2 import AD2_CLASSES
from anobench.datasets.mvtec_loco import LOCO_CLASSES
from anobench.datasets.realiad import REALIAD_CLASSES
from anobench.datasets.visa import VISA_CLASSES

MPDD_DEFECTS = {
    "bracket_black": ("hole", "scratches"),
    "bracket_brown": ("bend_and_parts_mismatch", "parts_mismatch"),
    "bracket_white": ("defective_painting", "scratches"),
    "connector": ("parts_mismatch",),
    "metal_plate": ("major_rust", "scratches", "total_rust"),
    "tubes": ("flattening",),
}
VISA_NORMAL_WIDTH = {"candle": 4, "macaroni1": 4, "macaroni2": 4, "pcb1": 4, "pcb2": 4, "pcb3": 4, "pcb4": 4}
CRLF = "\r\n"


def _rng(*keys) -> np.random.Generator:
    """The same images on every run (a stable hash, not Python's salted one)."""
    return np.random.default_rng(zlib.crc32("/".join(map(str, keys)).encode()))


def defect_mask(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A random rectangle covering about 3-10 % of the image."""
    mask = np.zeros((height, width), dtype=bool)
    h, w = max(2, height // 4), max(2, width // 4)
    y, x = rng.integers(0, height - h), rng.integers(0, width - w)
    mask[y : y + h, x : x + w] = True
    return mask


def picture(
    rng: np.random.Generator, width: int, height: int, defect: np.ndarray | None = None, gray: bool = False
) -> Image.Image:
    """A smooth textured image; defect pixels are bright."""
    yy, xx = np.mgrid[0:height, 0:width]
    base = (
        90
        + 30 * np.sin(xx / 3.0 + rng.uniform(0, 0.3)) * np.cos(yy / 4.0)
        + rng.normal(0, 2, (height, width))
    )
    rgb = np.stack([base, base * 0.9 + 10, base * 0.8 + 20], axis=-1)
    if defect is not None:
        rgb[defect] = 250
    rgb = np.clip(rgb, 0, 255).astype(np.uint8)
    return Image.fromarray(rgb[..., 0], "L") if gray else Image.fromarray(rgb, "RGB")


def save_mask(path: Path, mask: np.ndarray, value: int = 255, channels: int = 1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    values = np.where(mask, value, 0).astype(np.uint8)
    if channels == 3:
        Image.fromarray(np.stack([values] * 3, axis=-1), "RGB").save(path)
    else:
        Image.fromarray(values, "L").save(path)


def save_image(path: Path, image: Image.Image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".jpg":
        image.save(path, format="JPEG", quality=95)
    else:
        image.save(path)


def write_mvtec_style(
    class_dir: Path,
    defects: tuple[str, ...],
    *,
    good: str = "good",
    size=(40, 40),
    image_ext: str = ".png",
    mask_name=lambda stem: f"{stem}_mask.png",
    train: int = 6,
    test_good: int = 2,
    per_defect: int = 2,
    width: int = 3,
    seed_key: str = "",
) -> None:
    """One class folder: train/<good>, test/<good>, test/<defect>, ground_truth/<defect>/<mask_name(stem)>."""
    w, h = size
    rng = _rng(seed_key or class_dir.name)
    for i in range(train):
        save_image(class_dir / "train" / good / f"{i:0{width}d}{image_ext}", picture(rng, w, h))
    for i in range(test_good):
        save_image(class_dir / "test" / good / f"{i:0{width}d}{image_ext}", picture(rng, w, h))
    for defect in defects:
        for i in range(per_defect):
            mask = defect_mask(rng, w, h)
            save_image(class_dir / "test" / defect / f"{i:0{width}d}{image_ext}", picture(rng, w, h, mask))
            save_mask(class_dir / "ground_truth" / defect / mask_name(f"{i:0{width}d}"), mask)


# ----------------------------------------------------------------------------------------------------------
# VisA


def write_fake_visa(
    root: Path,
    classes: tuple[str, ...] = VISA_CLASSES,
    *,
    train: int = 5,
    test_good: int = 2,
    anomalies: int = 3,
    size=(48, 40),
) -> Path:
    """The original layout: Data/Images/{Normal,Anomaly}/*.JPG, Data/Masks/Anomaly/*.png holding defect class
    ids (1, 2, 3; not 255), split_csv/1cls.csv with CRLF endings and an empty mask field for normals."""
    w, h = size
    lines = ["object,split,label,image,mask"]
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    (root / "LICENSE-DATASET").write_text("Attribution 4.0 International\n")
    for name in classes:
        rng = _rng("visa", name)
        digits = VISA_NORMAL_WIDTH.get(name, 3)
        normals = [f"{name}/Data/Images/Normal/{i:0{digits}d}.JPG" for i in range(train + test_good)]
        for rel in normals:
            save_image(root / rel, picture(rng, w, h))
        lines += [f"{name},train,normal,{rel}," for rel in normals[:train]]
        lines += [f"{name},test,normal,{rel}," for rel in normals[train:]]
        anno = ["image,label,mask"]
        for i in range(anomalies):
            mask = defect_mask(rng, w, h)
            image_rel, mask_rel = (
                f"{name}/Data/Images/Anomaly/{i:03d}.JPG",
                f"{name}/Data/Masks/Anomaly/{i:03d}.png",
            )
            save_image(root / image_rel, picture(rng, w, h, mask))
            save_mask(root / mask_rel, mask, value=1 + i % 3)  # a class id, as in the original masks
            lines.append(f"{name},test,anomaly,{image_rel},{mask_rel}")
            anno.append(f'{image_rel},"melt, scratch",{mask_rel}')
        (root / name / "image_anno.csv").write_text(CRLF.join(anno) + CRLF)
    (root / "split_csv" / "1cls.csv").write_bytes((CRLF.join(lines) + CRLF).encode())
    return root


def write_fake_visa_anomalib(
    root: Path, classes: tuple[str, ...] = ("candle", "pcb1"), size=(48, 40)
) -> Path:
    """anomalib's converted copy: visa_pytorch/<class>/{train/good,test/good,test/bad} and
    ground_truth/bad/<stem>.png, 3-channel 0/255 masks (written by cv2), the original .JPG names."""
    for name in classes:
        write_mvtec_style(
            root / "visa_pytorch" / name,
            ("bad",),
            size=size,
            image_ext=".JPG",
            mask_name=lambda stem: f"{stem}.png",
            seed_key=f"visa-anomalib-{name}",
        )
        for mask in (root / "visa_pytorch" / name / "ground_truth" / "bad").iterdir():
            values = np.asarray(Image.open(mask))
            Image.fromarray(np.stack([values] * 3, axis=-1), "RGB").save(mask)
    return root


# ----------------------------------------------------------------------------------------------------------
# MPDD, BTAD


def write_fake_mpdd(root: Path, classes: tuple[str, ...] = MPDD_CLASSES) -> Path:
    for name in classes:
        write_mvtec_style(root / name, MPDD_DEFECTS[name], per_defect=1)
    return root


def write_fake_btad(root: Path, classes: tuple[str, ...] = BTAD_CLASSES) -> Path:
    """btad.zip's BTech_Dataset_transformed/: ok/ko, 4-digit stems, masks without suffix; 01 images .bmp with
    .png masks, 02 .png/.png, 03 .bmp/.bmp."""
    extensions = {"01": (".bmp", ".png"), "02": (".png", ".png"), "03": (".bmp", ".bmp")}
    for name in classes:
        image_ext, mask_ext = extensions[name]
        write_mvtec_style(
            root / "BTech_Dataset_transformed" / name,
            ("ko",),
            good="ok",
            image_ext=image_ext,
            mask_name=lambda stem, ext=mask_ext: f"{stem}{ext}",
            width=4,
            per_defect=3,
        )
    return root


# ----------------------------------------------------------------------------------------------------------
# MVTec LOCO AD


def write_fake_loco(root: Path, classes: tuple[str, ...] = LOCO_CLASSES, size=(48, 32),
                    counts: dict[str, int] | None = None) -> Path:
    """defects_config.json (absolute and relative saturation), train/validation/test folders and one folder
    of per-defect PNGs per anomalous image, each holding its defect's pixel_value; two defects on the first
    image of each kind. ``counts``: images per split and kind (train, validation, good, logical_anomalies,
    structural_anomalies), by default a few of each."""
    w, h = size
    counts = {"train": 6, "validation": 2, "good": 2, "logical_anomalies": 2, "structural_anomalies": 2,
              **(counts or {})}
    config = [
        {
            "defect_name": "missing_part",
            "pixel_value": 255,
            "saturation_threshold": 40,
            "relative_saturation": False,
        },
        {
            "defect_name": "extra_part",
            "pixel_value": 254,
            "saturation_threshold": 1.0,
            "relative_saturation": True,
        },
        {
            "defect_name": "scratch",
            "pixel_value": 253,
            "saturation_threshold": 0.5,
            "relative_saturation": True,
        },
    ]
    for name in classes:
        rng = _rng("loco", name)
        class_dir = root / name
        class_dir.mkdir(parents=True, exist_ok=True)
        (class_dir / "defects_config.json").write_text(json.dumps(config, indent=4))
        (class_dir / "license.txt").write_text("CC BY-NC-SA 4.0\n")
        (class_dir / "readme.txt").write_text("MVTec LOCO AD\n")
        for split in ("train", "validation"):
            for i in range(counts[split]):
                save_image(class_dir / split / "good" / f"{i:03d}.png", picture(rng, w, h))
        for i in range(counts["good"]):
            save_image(class_dir / "test" / "good" / f"{i:03d}.png", picture(rng, w, h))
        for kind, values in (("logical_anomalies", (255, 254)), ("structural_anomalies", (253,))):
            for i in range(counts[kind]):
                masks = [defect_mask(rng, w, h) for _ in (values if i == 0 else values[:1])]
                union = np.logical_or.reduce(masks)
                save_image(class_dir / "test" / kind / f"{i:03d}.png", picture(rng, w, h, union))
                for k, (mask, value) in enumerate(zip(masks, values, strict=False)):
                    save_mask(
                        class_dir / "ground_truth" / kind / f"{i:03d}" / f"{k:03d}.png", mask, value=value
                    )
    return root


# ----------------------------------------------------------------------------------------------------------
# MVTec AD 2


def write_fake_ad2(root: Path, classes: tuple[str, ...] = AD2_CLASSES, size=(56, 24)) -> Path:
    """train/validation good NNN_regular.png; test_public good/bad with mixed lighting names and
    ground_truth/bad/<stem>_mask.png (255); flat test_private (NNN_regular) and test_private_mixed
    (NNN_mixed)."""
    w, h = size
    lightings = ("regular", "overexposed", "shift_1")
    for name in classes:
        rng = _rng("ad2", name)
        class_dir = root / name
        for split, count in (("train", 6), ("validation", 3)):
            for i in range(count):
                save_image(class_dir / split / "good" / f"{i:03d}_regular.png", picture(rng, w, h))
        for i in range(3):
            save_image(class_dir / "test_public" / "good" / f"{i:03d}_{lightings[i]}.png", picture(rng, w, h))
            mask = defect_mask(rng, w, h)
            stem = f"{i:03d}_{lightings[i]}"
            save_image(class_dir / "test_public" / "bad" / f"{stem}.png", picture(rng, w, h, mask))
            save_mask(class_dir / "test_public" / "ground_truth" / "bad" / f"{stem}_mask.png", mask)
        for split, suffix in (("test_private", "regular"), ("test_private_mixed", "mixed")):
            for i in range(3):
                mask = defect_mask(rng, w, h) if i else None
                save_image(class_dir / split / f"{i:03d}_{suffix}.png", picture(rng, w, h, mask))
    return root


# ----------------------------------------------------------------------------------------------------------
# KolektorSDD2


def write_fake_ksdd2(root: Path, size=(24, 64)) -> Path:
    """Flat train/ and test/: N.png and N_GT.png for every image (GT all zero if defect-free, 3-channel on
    some), plus an exact duplicate named '... (copy).png' to be ignored."""
    w, h = size
    rng = _rng("ksdd2")
    ident = 10000
    for split, normal, defective in (("train", 6, 2), ("test", 3, 3)):
        for k in range(normal + defective):
            mask = defect_mask(rng, w, h) if k >= normal else np.zeros((h, w), dtype=bool)
            save_image(root / split / f"{ident}.png", picture(rng, w, h, mask if mask.any() else None))
            save_mask(root / split / f"{ident}_GT.png", mask, channels=3 if k % 2 else 1)
            ident += 1
    (root / "train" / "10000 (copy).png").write_bytes((root / "train" / "10000.png").read_bytes())
    return root


# ----------------------------------------------------------------------------------------------------------
# Real-IAD


def write_fake_realiad(
    root: Path, classes: tuple[str, ...] = REALIAD_CLASSES, resolution: str = "256", size=(32, 32)
) -> Path:
    """realiad_<resolution>/<class>/{OK,NG/<code>}/S<NNNN>/<class>_<NNNN>_<OK|NG_code>_C<view>_<time>.jpg,
    NG masks as .png with the same stem, and realiad_jsons/<class>.json (meta/train/test; paths relative to
    the class folder, mask_path null for OK). Some classes use a double underscore after the name."""
    w, h = size
    for number, name in enumerate(classes):
        rng = _rng("realiad", name)
        prefix = f"{name}_" if number % 2 else f"{name}__"  # both spellings occur in the real data
        entries = {"train": [], "test": []}
        samples = [("train", "OK", 1), ("train", "OK", 2), ("test", "OK", 3), ("test", "QS", 4)]
        for split, kind, sample in samples:
            folder = f"OK/S{sample:04d}" if kind == "OK" else f"NG/{kind}/S{sample:04d}"
            for view in range(1, 6):
                label = "OK" if kind == "OK" else f"NG_{kind}"
                stem = f"{prefix}{sample:04d}_{label}_C{view}_2023102113{view:04d}"
                mask = defect_mask(rng, w, h) if kind != "OK" and view <= 3 else None
                image_rel = f"{folder}/{stem}.jpg"
                save_image(root / f"realiad_{resolution}" / name / image_rel, picture(rng, w, h, mask))
                mask_rel = None
                if kind != "OK":
                    mask_rel = f"{folder}/{stem}.png"
                    save_mask(
                        root / f"realiad_{resolution}" / name / mask_rel,
                        mask if mask is not None else np.zeros((h, w), dtype=bool),
                    )
                entries[split].append(
                    {"category": name, "anomaly_class": kind, "image_path": image_rel, "mask_path": mask_rel}
                )
        data = {"meta": {"prefix": "", "normal_class": "OK", "pre_transform": {}}, **entries}
        (root / "realiad_jsons").mkdir(parents=True, exist_ok=True)
        (root / "realiad_jsons" / f"{name}.json").write_text(json.dumps(data))
    return root


def write_image_labelled(root: Path, classes: tuple[str, ...] = ("widget",)) -> Path:
    """An image-labelled dataset: train/good, test/good and test/<defect> without any ground_truth folder."""
    for name in classes:
        write_mvtec_style(root / name, ("dent", "stain"))
        shutil.rmtree(root / name / "ground_truth")
    return root
