"""Streamed evaluation (anobench.pixelstream, anobench.pixel_metrics) against the in-memory definitions in
anobench.metrics and anobench.metrics_datasets: the same values on odd inputs (ties, empty masks, one-pixel
defects, ranges forced small enough to split every tie), memory that does not grow with the test set, and
plans that count the pixels at the resolution the metrics are computed at."""

from __future__ import annotations

import tracemalloc
import types
import warnings

import numpy as np
import pytest

from anobench import evaluation, metrics, pixel_metrics, pixelstream, planning
from anobench.cells import Cell
from anobench.datasets import create_dataset
from anobench.metrics_datasets import au_spro
from anobench.protocols import ProtocolInput, loco
from tests import fake_datasets as fake

NAMES = ["pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro", "aupro@0.05", "aupro@1", "aupimo"]
AUPIMO_BOUNDS = (1e-3, 1e-2)  # resolvable on small images


def odd_test_set(seed: int, levels: int | None, n: int = 12, size: int = 24):
    """Masks with several regions, defect-free images, a one-pixel defect, and maps with or without ties."""
    rng = np.random.default_rng(seed)
    masks, maps = [], []
    for i in range(n):
        mask = np.zeros((size, size), bool)
        if i % 3:
            for _ in range(rng.integers(1, 3)):
                y, x = rng.integers(0, size - 4, 2)
                h, w = rng.integers(1, 6, 2)
                mask[y:y + h, x:x + w] = True
        if i == 5:
            mask[:] = False
            mask[3, 4] = True
        amap = rng.random((size, size)).astype(np.float32)
        if levels:
            amap = (np.round(amap * levels) / levels).astype(np.float32)
        masks.append(mask)
        maps.append((amap + mask * np.float32(0.3)).astype(np.float32))
    labels = np.array([int(m.any()) for m in masks])
    defect_types = ["good" if label == 0 else "ab"[i % 2] for i, label in enumerate(labels)]
    return masks, maps, labels, defect_types


def in_memory(masks, maps, labels, defect_types) -> dict[str, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values = {"pixel_auroc": metrics.pixel_auroc(masks, maps), "pixel_ap": metrics.average_precision(masks, maps),
                  "pixel_f1_max": metrics.f1_max(masks, maps)[0], "aupro": metrics.aupro(masks, maps),
                  "aupro@0.05": metrics.aupro(masks, maps, 0.05), "aupro@1": metrics.aupro(masks, maps, 1.0),
                  "aupimo": metrics.aupimo(masks, maps, AUPIMO_BOUNDS)}
        for kind in "ab":
            rows = [i for i, (label, t) in enumerate(zip(labels, defect_types, strict=True)) if label == 0 or t == kind]
            chosen_masks, chosen_maps = [masks[i] for i in rows], [maps[i] for i in rows]
            values[f"{kind}/pixel_auroc"] = metrics.pixel_auroc(chosen_masks, chosen_maps)
            values[f"{kind}/aupro"] = metrics.aupro(chosen_masks, chosen_maps)
    return values


@pytest.mark.parametrize("levels", [None, 7, 50])
@pytest.mark.parametrize("range_words", [10**9, 900, 20])
def test_streamed_metrics_equal_the_in_memory_definitions(levels, range_words):
    for seed in range(3):
        masks, maps, labels, defect_types = odd_test_set(seed, levels)
        expected = in_memory(masks, maps, labels, defect_types)
        groups, subsets = evaluation.image_groups(labels, defect_types)
        with pixelstream.PixelStream(range_words=range_words) as stream:
            for mask, amap, group in zip(masks, maps, groups, strict=True):
                stream.add(mask, amap, group)
            result = pixel_metrics.evaluate(stream, subsets, NAMES, aupro_limit=metrics.aupro_limit,
                                            aupimo_bounds=AUPIMO_BOUNDS)
        got = {**result.values, **{f"{t}/{k}": v for t, d in result.per_defect.items() for k, v in d.items()}}
        for name, value in expected.items():
            if np.isnan(value):  # undefined in memory: empty here (with its reason)
                assert got[name] is None and name in result.notes, (seed, name)
            else:
                assert got[name] == pytest.approx(value, abs=1e-9), (seed, name)


def test_a_range_of_one_score_is_counted_not_merged():
    """Every pixel of every map one score, in a range far smaller than the pixels: counted, and exact."""
    masks, _, labels, defect_types = odd_test_set(0, None)
    maps = [np.full(m.shape, 0.5, np.float32) for m in masks]
    with pixelstream.PixelStream(range_words=10) as stream:
        for mask, amap in zip(masks, maps, strict=True):
            stream.add(mask, amap)
        ranges = list(stream.ranges())
        result = pixel_metrics.evaluate(stream, {}, ["pixel_auroc", "aupro"], aupro_limit=metrics.aupro_limit,
                                        aupimo_bounds=AUPIMO_BOUNDS)
    assert len(ranges) == 1 and ranges[0].single
    assert result.values["pixel_auroc"] == pytest.approx(metrics.pixel_auroc(masks, maps), abs=1e-12)
    assert result.values["aupro"] == pytest.approx(metrics.aupro(masks, maps), abs=1e-12)


def test_keys_keep_the_order_and_ties_of_float32_scores():
    values = np.array([-np.inf, -3.5, -1e-30, -0.0, 0.0, 1e-30, 2.0, 2.0, np.inf], dtype=np.float32)
    keys = pixelstream.float_keys(values)
    assert (np.diff(keys.astype(np.int64)) >= 0).all()
    assert keys[3] == keys[4] and keys[6] == keys[7]  # -0.0 and +0.0 tie, as they compare equal
    np.testing.assert_array_equal(pixelstream.key_floats(keys)[[0, 1, 2, 5, 6, 8]], values[[0, 1, 2, 5, 6, 8]])


def test_float64_maps_that_float32_cannot_hold_are_refused():
    masks, maps, _, _ = odd_test_set(0, None, n=3)
    with pytest.raises(ValueError, match="float32"):
        evaluation.pixel_stream(zip(masks, [m.astype(np.float64) + 1e-12 for m in maps], strict=True), [0, 0, 0])


def test_loco_protocol_streamed_equals_au_spro_in_memory(tmp_path):
    root = fake.write_fake_loco(tmp_path / "loco", ("pushpins",), counts={"good": 3, "logical_anomalies": 3,
                                                                          "structural_anomalies": 3})
    source = create_dataset("mvtec_loco", root)
    refs = source.samples("pushpins", "test")
    rng = np.random.default_rng(0)
    maps = [np.round(rng.random((32, 48)), 2).astype(np.float32) for _ in refs]  # ties
    pixels = types.SimpleNamespace(evaluated_map=lambda i, shape: maps[i])
    labels = np.array([ref.label for ref in refs])
    inp = ProtocolInput(cell=types.SimpleNamespace(class_name="pushpins"), source=source, geometry=None, refs=refs,
                        labels=labels, image_scores=np.array([m.max() for m in maps]), pixels=pixels, original=True,
                        input_maps=np.stack(maps), predict_maps=None, output_dir=None)
    result = loco(inp)
    for subset in ("logical", "structural"):
        chosen = [i for i, ref in enumerate(refs) if ref.label == 0 or ref.defect_type == f"{subset}_anomalies"]
        defects = [[(c.mask, c.config.saturation_area(int(c.mask.sum()), 1.0))
                    for c in (source.defect_channels("pushpins", refs[i]) if refs[i].mask_path else [])]
                   for i in chosen]
        expected = au_spro(defects, [maps[i] for i in chosen], metrics.LOCO_FPR_LIMITS)
        for limit, value in expected.items():
            assert result.metrics[f"au_spro_{subset}@{limit:g}"] == pytest.approx(value, abs=1e-9)


def peak_traced_bytes(n_images: int, monkeypatch, size: int = 128) -> int:
    """Peak memory that streaming and evaluating ``n_images`` maps allocates, with ranges of 20,000 pixels."""
    monkeypatch.setattr(pixelstream, "RANGE_WORDS", 20_000)
    rng = np.random.default_rng(0)

    def mask(i: int) -> np.ndarray:
        defect = np.zeros((size, size), bool)
        if i % 2:
            defect[i % 40:i % 40 + 8, 4:12] = True
        return defect

    pairs = ((mask(i), rng.random((size, size), dtype=np.float32)) for i in range(n_images))
    tracemalloc.start()
    try:
        with evaluation.pixel_stream(pairs, [i % 2 for i in range(n_images)]) as stream:
            pixel_metrics.evaluate(stream, {"defect": stream.groups_of([0, 1])}, NAMES,
                                   aupro_limit=metrics.aupro_limit, aupimo_bounds=metrics.AUPIMO_FPR_BOUNDS)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_evaluation_memory_does_not_grow_with_the_pixels(monkeypatch):
    """Four times the images: what grows is a few kilobytes of bookkeeping per image, under a byte per added
    pixel (holding the pixels, as one sort of them all would, takes about 40 bytes each)."""
    small, large = peak_traced_bytes(40, monkeypatch), peak_traced_bytes(160, monkeypatch)
    added_pixels = 120 * 128 * 128
    assert large - small < 1.0 * added_pixels, (small, large)


def test_plans_count_the_pixels_at_the_resolution_metrics_are_computed_at(tmp_path):
    root = tmp_path / "data"
    fake.write_mvtec_style(root / "big", ("dent",), size=(640, 480), train=2, test_good=2, per_defect=2)
    source = create_dataset("folder", root)
    test = source.samples("big", "test")
    plans = {}
    for resolution in ("input", "original"):
        cell = Cell(suite="s", dataset="folder", class_name="big", method="padim", encoder="resnet18", resolution=64,
                    resize=64, seed=0, weights="random", protocol="strict", metrics_resolution=resolution,
                    batch_size=8)
        plans[resolution] = planning.estimate(cell, source, "cpu")
    assert plans["original"].disk_bytes == 8 * len(test) * 640 * 480
    assert plans["input"].disk_bytes == 8 * len(test) * 64 * 64
    extra = plans["original"].host_bytes - plans["input"].host_bytes
    assert extra == pixelstream.memory_bound(640 * 480) - pixelstream.memory_bound(64 * 64)
