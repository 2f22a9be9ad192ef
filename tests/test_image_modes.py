"""Images and masks of every common bit depth and mode read as what they show: the same metrics as their
8-bit RGB / 0-255 twins; a mode without an exact conversion is one sentence naming the file."""

import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anobench.cells import Cell
from anobench.datasets import create_dataset
from anobench.datasets.base import AnomalyDataset, DatasetError, Geometry, SampleRef, read_image, read_mask
from anobench.evaluation import compute_metrics, run_cell
from anobench.methods import create_method
from anobench.methods.base import Prediction

CLASS = "disc"


def write_png16(array: np.ndarray, path: Path) -> None:
    """A 16-bit RGB or RGBA PNG written by hand (Pillow cannot write 16 bits per colour channel)."""
    height, width, channels = array.shape
    rows = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    colour_type = {3: 2, 4: 6}[channels]
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))


def rgb(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


# Each variant rewrites one 8-bit RGB image: (file to write, its 8-bit RGB twin's pixels).
def grey_twin(path: Path) -> tuple[Path, np.ndarray]:
    grey = np.asarray(Image.fromarray(rgb(path)).convert("L"))
    Image.fromarray(grey).convert("RGB").save(path)
    return path, np.repeat(grey[..., None], 3, axis=2)


def grey16_png(path: Path) -> tuple[Path, np.ndarray]:
    grey = np.asarray(Image.fromarray(rgb(path)).convert("L"))
    Image.fromarray(grey.astype(np.uint16) * 257).save(path)  # 8-bit widened the usual way
    return path, np.repeat(grey[..., None], 3, axis=2)


def grey16_tiff(path: Path) -> tuple[Path, np.ndarray]:
    grey = np.asarray(Image.fromarray(rgb(path)).convert("L"))
    target = path.with_suffix(".tif")
    Image.fromarray(grey.astype(np.uint16) << 8).save(target)  # widened by a shift
    path.unlink()
    return target, np.repeat(grey[..., None], 3, axis=2)


def rgb16_png(path: Path) -> tuple[Path, np.ndarray]:
    pixels = rgb(path)
    write_png16(pixels.astype(np.uint16) * 257, path)
    return path, pixels


def rgba_png(path: Path) -> tuple[Path, np.ndarray]:
    pixels = rgb(path)
    Image.fromarray(pixels).convert("RGBA").save(path)  # opaque alpha: changes nothing
    return path, pixels


def palette_png(path: Path) -> tuple[Path, np.ndarray]:
    palette = Image.fromarray(rgb(path)).quantize(64)
    palette.save(path)
    return path, np.asarray(palette.convert("RGB"))


def palette_twin(path: Path) -> tuple[Path, np.ndarray]:
    _, pixels = palette_png(path)
    Image.fromarray(pixels).save(path)
    return path, pixels


def rewrite_images(source: Path, target: Path, variant) -> Path:
    shutil.copytree(source / CLASS, target / CLASS)
    for path in sorted((target / CLASS).glob("t*/*/*.png")):
        written, expected = variant(path)
        assert np.array_equal(np.asarray(read_image(written)), expected), written
    return target


def padim_metrics(root: Path) -> dict:
    cell = Cell(suite="modes", dataset="folder", class_name=CLASS, method="padim", encoder="resnet18",
                resolution=64, resize=64, seed=0, weights="random", protocol="strict",
                metrics_resolution="input", batch_size=8)
    record, _ = run_cell(cell, create_dataset("folder", root), "cpu")
    assert record["status"] == "ok", record.get("error")
    return record["metrics"]


@pytest.mark.parametrize("twin,variants", [
    (None, [rgb16_png, rgba_png]),
    (grey_twin, [grey16_png, grey16_tiff]),
    (palette_twin, [palette_png]),
], ids=["rgb", "grey", "palette"])
def test_other_bit_depths_and_modes_give_the_metrics_of_their_8_bit_rgb_twin(tiny_data, tmp_path, twin,
                                                                             variants):
    reference = rewrite_images(tiny_data, tmp_path / "twin", twin) if twin else tiny_data
    expected = padim_metrics(reference)
    assert expected["image_auroc"] > 0.5  # real contrast, not a white image
    for variant in variants:
        assert padim_metrics(rewrite_images(tiny_data, tmp_path / variant.__name__, variant)) == expected


def test_alpha_is_composited_over_black_and_16_bit_is_scaled_not_clipped(tmp_path):
    pixels = np.array([[[200, 100, 50, 255], [200, 100, 50, 128], [200, 100, 50, 0]]], np.uint8)
    Image.fromarray(pixels, "RGBA").save(tmp_path / "alpha.png")
    composited = [[[200, 100, 50], [100, 50, 25], [0, 0, 0]]]
    assert np.asarray(read_image(tmp_path / "alpha.png")).tolist() == composited
    Image.fromarray(np.array([[0, 1000, 40000, 65535]], np.uint16)).save(tmp_path / "deep.png")
    assert np.asarray(read_image(tmp_path / "deep.png"))[0, :, 0].tolist() == [0, 3, 156, 255]
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32)).save(tmp_path / "float.tif")
    assert np.asarray(read_image(tmp_path / "float.tif"))[0, :, 0].tolist() == [0, 128, 255]


@pytest.mark.parametrize("name,make,problem", [
    ("cmyk.jpg", lambda: Image.new("CMYK", (4, 4), (0, 50, 100, 0)), "mode CMYK has no exact conversion"),
    ("wide.tif", lambda: Image.fromarray(np.full((4, 4), 10**6, np.int32)), "32-bit integer pixels"),
    ("hdr.tif", lambda: Image.fromarray(np.full((4, 4), 3.5, np.float32)), "outside \\[0, 1\\]"),
])
def test_a_mode_without_an_exact_conversion_is_one_sentence_naming_the_file(tmp_path, name, make, problem):
    make().save(tmp_path / name)
    with pytest.raises(DatasetError, match=rf"Cannot read {tmp_path / name} \(.*{problem}.*\); convert it"):
        read_image(tmp_path / name)


# Each mask variant rewrites one 0/255 mask: any non-zero value is a defect.
def mask_01(path: Path, values: np.ndarray, kind: int) -> None:
    Image.fromarray((values > 0).astype(np.uint8)).save(path)


def mask_class_numbers(path: Path, values: np.ndarray, kind: int) -> None:
    Image.fromarray((values > 0).astype(np.uint8) * kind).save(path)


def mask_16_bit(path: Path, values: np.ndarray, kind: int) -> None:
    Image.fromarray((values > 0).astype(np.uint16) * 65535).save(path)


def mask_colour(path: Path, values: np.ndarray, kind: int) -> None:
    colour = np.zeros((*values.shape, 3), np.uint8)
    colour[values > 0] = (0, 0, 90 + kind)
    Image.fromarray(colour).save(path)


def mask_palette(path: Path, values: np.ndarray, kind: int) -> None:
    Image.fromarray((values > 0).astype(np.uint8) * kind).convert("P").save(path)


PIXEL_METRICS = ("pixel_auroc", "aupro", "pixel_f1_max")


def pixel_metrics(root: Path, prediction: Prediction) -> dict:
    """The pixel metrics of one prediction against the masks under ``root``, read as a run reads them."""
    test = AnomalyDataset(create_dataset("folder", root).samples(CLASS, "test"), Geometry(64, 64))
    masks = np.stack([test[i]["mask"].numpy() for i in range(len(test))])
    metrics, _, _ = compute_metrics(test.labels(), masks, prediction.image_scores, prediction.maps)
    return {m: metrics[m] for m in PIXEL_METRICS}


def test_01_class_number_16_bit_colour_and_palette_masks_give_the_metrics_of_0_255_masks(tiny_data, tmp_path):
    method = create_method("padim", encoder="resnet18", weights="random", seed=0, device="cpu")
    train = AnomalyDataset(create_dataset("folder", tiny_data).samples(CLASS, "train"), Geometry(64, 64))
    test = AnomalyDataset(create_dataset("folder", tiny_data).samples(CLASS, "test"), Geometry(64, 64))
    method.fit([torch.stack([train[i]["image"] for i in range(len(train))])])
    prediction = method.predict(torch.stack([test[i]["image"] for i in range(len(test))]))
    expected = pixel_metrics(tiny_data, prediction)
    assert None not in expected.values() and expected["pixel_auroc"] > 0.6
    for variant in (mask_01, mask_class_numbers, mask_16_bit, mask_colour, mask_palette):
        root = tmp_path / variant.__name__
        shutil.copytree(tiny_data / CLASS, root / CLASS)
        for kind, folder in enumerate(sorted((root / CLASS / "ground_truth").iterdir()), start=1):
            for path in sorted(folder.glob("*.png")):
                original = np.asarray(Image.open(path))
                variant(path, original, kind)
                assert np.array_equal(read_mask(SampleRef(path, path, 1, folder.name)), original > 0), path
        assert pixel_metrics(root, prediction) == expected, variant.__name__


def test_a_dataset_may_define_defect_pixels_otherwise_and_jpeg_masks_ignore_compression_noise(tmp_path):
    values = np.zeros((16, 16), np.uint8)
    values[4:12, 4:12] = 255
    values[0, 0] = 2  # below a dataset's own threshold
    Image.fromarray(values).save(tmp_path / "m.png")
    ref = SampleRef(tmp_path / "i.png", tmp_path / "m.png", 1, "x")
    assert read_mask(ref).sum() == 65
    assert read_mask(SampleRef(ref.image_path, ref.mask_path, 1, "x", mask_threshold=128)).sum() == 64
    Image.fromarray(values).save(tmp_path / "m.jpg", quality=75)
    with Image.open(tmp_path / "m.jpg") as img:
        assert (np.asarray(img)[values == 0] > 0).any()  # ringing beside the edges
    assert read_mask(SampleRef(ref.image_path, tmp_path / "m.jpg", 1, "x")).sum() == 64
