"""The datasets' own metrics against slow, obviously-correct definitions, and what the protocols do that
the dataset suites' runs do not show."""

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import f1_score

from anobench import metrics
from anobench.core import BenchError
from anobench.datasets.base import Geometry
from anobench.metrics_datasets import au_spro, mean_plus_std_threshold, sample_auroc, seg_f1, spro_curve
from anobench.protocols import ProtocolInput, write_submission
from anobench.records import read_records
from anobench.runner import RunOptions, run_suite
from anobench.suites import parse_suite
from tests import fake_datasets as fake
from tests.brute_force import area_by_segments

LIMITS = (0.01, 0.05, 0.1, 0.3, 1.0)


def au_spro_by_thresholds(defects, maps, limits):
    """LOCO's definition read literally: binarise every map at each threshold, clip each defect's overlap
    at its saturation area, average over defects; FPR over the pixels outside every defect."""
    maps = [np.asarray(m, dtype=np.float64) for m in maps]
    unions = [
        np.logical_or.reduce([m for m, _ in d]) if d else np.zeros(a.shape, bool)
        for d, a in zip(defects, maps, strict=True)
    ]
    n_negative = sum((~u).sum() for u in unions)
    fprs, spros = [0.0], [0.0]
    for t in np.unique(np.concatenate([a.ravel() for a in maps]))[::-1]:
        false_pos, overlaps = 0, []
        for image_defects, amap, union in zip(defects, maps, unions, strict=True):
            predicted = amap >= t
            false_pos += (predicted & ~union).sum()
            overlaps += [
                min((predicted & mask).sum() / saturation, 1.0) for mask, saturation in image_defects
            ]
        fprs.append(false_pos / n_negative)
        spros.append(float(np.mean(overlaps)))
    return {limit: area_by_segments(np.array(fprs), np.array(spros), limit) / limit for limit in limits}


def random_case(seed, n_images=5, size=(12, 10), levels=7):
    """Maps with many ties (few score levels), overlapping defects, absolute and relative saturations."""
    rng = np.random.default_rng(seed)
    maps, defects = [], []
    for i in range(n_images):
        amap = rng.integers(0, levels, size).astype(np.float32)
        image_defects = []
        for _ in range(0 if i == 0 else rng.integers(1, 4)):
            mask = np.zeros(size, bool)
            y, x = rng.integers(0, size[0] - 3), rng.integers(0, size[1] - 3)
            mask[y : y + rng.integers(1, 4), x : x + rng.integers(1, 4)] = True
            amap[mask] += rng.uniform(0, 3)
            area = int(mask.sum())
            image_defects.append((mask, int(rng.integers(1, area + 1))))
        maps.append(amap)
        defects.append(image_defects)
    return defects, maps


@pytest.mark.parametrize("seed", range(6))
def test_au_spro_equals_the_threshold_by_threshold_definition(seed):
    defects, maps = random_case(seed)
    fast = au_spro(defects, maps, LIMITS)
    slow = au_spro_by_thresholds(defects, maps, LIMITS)
    for limit in LIMITS:
        assert fast[limit] == pytest.approx(slow[limit], abs=1e-12), limit
    fpr, spro = spro_curve(defects, maps)
    assert (fpr[0], spro[0], fpr[-1]) == (0.0, 0.0, 1.0) and spro[-1] == pytest.approx(1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(spro) >= -1e-12)


def test_unsaturated_single_region_defects_give_the_pro_curve():
    """With every defect one connected region saturating only at its full area, sPRO is MVTec's PRO."""
    rng = np.random.default_rng(3)
    masks = np.zeros((4, 16, 16), bool)
    masks[1, 2:6, 3:8] = masks[2, 9:12, 1:3] = masks[3, 4:5, 10:15] = True
    maps = rng.random((4, 16, 16)).astype(np.float32) + masks * 0.4
    defects = []
    for mask in masks:
        labelled, n = ndimage.label(mask, structure=np.ones((3, 3)))
        defects.append([(labelled == k, int((labelled == k).sum())) for k in range(1, n + 1)])
    for limit in (0.05, 0.3):
        assert au_spro(defects, maps, [limit])[limit] == pytest.approx(
            metrics.aupro(masks, maps, limit), abs=1e-12
        )


def test_a_saturated_defect_counts_fully_once_its_saturation_area_is_found():
    mask = np.zeros((4, 4), bool)
    mask[0, :] = True  # 4 pixels
    amap = np.zeros((4, 4), np.float32)
    amap[0, 0] = 1.0  # one defect pixel scores above everything else
    fpr, spro = spro_curve([[(mask, 1)]], [amap])
    assert spro[1] == 1.0 and fpr[1] == 0.0  # one pixel found = saturated
    fpr, spro = spro_curve([[(mask, 4)]], [amap])
    assert spro[1] == 0.25
    with pytest.raises(ValueError, match="at least one pixel"):
        spro_curve([[(mask, 0)]], [amap])


def test_seg_f1_threshold_and_sample_auroc_against_plain_definitions():
    rng = np.random.default_rng(0)
    masks = [rng.random((9, 7)) > 0.8 for _ in range(3)]
    maps = [rng.random((9, 7)) + m * 0.5 for m in masks]
    threshold = 0.9
    expected = f1_score(
        np.concatenate([m.ravel() for m in masks]), np.concatenate([a.ravel() for a in maps]) > threshold
    )
    assert seg_f1(masks, maps, threshold) == pytest.approx(expected)
    validation = [rng.random((5, 6)), rng.random((4, 8))]
    flat = np.concatenate([v.ravel() for v in validation])
    assert mean_plus_std_threshold(validation) == pytest.approx(flat.mean() + 3 * flat.std())
    keys = ["a", "a", "b", "b", "c", "c"]
    labels = np.array([0, 1, 0, 0, 1, 0])
    scores = np.array([0.1, 0.2, 0.9, 0.3, 0.5, 0.4])
    # samples: a (label 1, score 0.2), b (0, 0.9), c (1, 0.5) → positives 0.2 and 0.5 against negative 0.9
    assert sample_auroc(keys, labels, scores) == 0.0
    scores[1] = 0.95  # sample a now outscores b, c still does not
    assert sample_auroc(keys, labels, scores) == 0.5


# ----------------------------------------------------------------------------------------------------------
# the protocols in runs on the fakes (the dataset suites' tests run the others: LOCO at the original
# resolution, MVTec AD 2 public and private, Real-IAD)


def test_loco_at_the_input_resolution_scales_absolute_saturations(tmp_path):
    root = fake.write_fake_loco(tmp_path / "loco", ("pushpins",))
    raw = {
        "name": "loco",
        "version": 1,
        "weights": "random",
        "batch_size": 8,
        "metrics_resolution": "input",
        "dataset": {"name": "mvtec_loco", "root": str(root), "classes": ["pushpins"]},
        "grid": [{"methods": ["padim"], "encoders": ["resnet18"], "resolutions": [32]}],
    }
    summary = run_suite(parse_suite(raw, tmp_path / "loco.toml"), tmp_path / "run", RunOptions())
    (record,) = read_records(tmp_path / "run")
    assert summary.failed == 0 and 0 <= record["metrics"]["au_spro@0.05"] <= 1
    assert "scaled by the resize's area ratio" in " ".join(record["dataset_protocol"]["notes"])


def test_private_maps_that_would_not_cover_the_image_are_refused():
    inp = ProtocolInput(
        cell=None,
        source=None,
        geometry=Geometry(32, 24),
        refs=[],
        labels=np.zeros(0),
        image_scores=np.zeros(0),
        pixels=[],
        original=True,
        input_maps=np.zeros((0, 24, 24)),
        predict_maps=None,
        output_dir=Path("unused"),
    )
    with pytest.raises(
        BenchError, match="private maps must cover the whole image, but this cell crops 24 of 32"
    ):
        write_submission(inp, 0.5)
