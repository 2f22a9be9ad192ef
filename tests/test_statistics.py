"""The bootstrap's fast path against exact resampling, and the behaviour intervals must have."""

import warnings

import numpy as np
import pytest

from anobench import evaluation, metrics, pixel_metrics, statistics
from tests import brute_force
from tests.test_metrics import random_case

PIXEL_METRICS = {
    "pixel_auroc": lambda labels, scores, masks, maps: metrics.pixel_auroc(masks, maps),
    "pixel_ap": lambda labels, scores, masks, maps: metrics.average_precision(masks, maps),
    "pixel_f1_max": lambda labels, scores, masks, maps: metrics.f1_max(masks, maps)[0],
    "aupro": lambda labels, scores, masks, maps: metrics.aupro(masks, maps),
    "aupro@0.05": lambda labels, scores, masks, maps: metrics.aupro(masks, maps, 0.05),
    "aupimo": lambda labels, scores, masks, maps: metrics.aupimo(masks, maps, (1e-3, 1e-2)),
}
IMAGE_METRICS = {
    "image_auroc": lambda labels, scores, masks, maps: metrics.image_auroc(labels, scores),
    "image_ap": lambda labels, scores, masks, maps: metrics.average_precision(labels, scores),
    "image_f1_max": lambda labels, scores, masks, maps: metrics.f1_max(labels, scores)[0],
}


def generated_test_set(seed, n_good=10, n_defective=10, size=48, separation=1.0, noise_seed=None):
    """Anomaly maps of a model on a generated test set: rectangular defects of varying visibility that score up
    to ``separation`` higher, over the images' own texture; ``noise_seed`` changes the model's noise (a training
    seed) but not the test images."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n_good + n_defective, size, size), np.uint8)
    for i in range(n_good, n_good + n_defective):
        r, c = rng.integers(0, size - 12, 2)
        masks[i, r:r + rng.integers(3, 12), c:c + rng.integers(3, 12)] = 1
    texture, visibility = rng.standard_normal(masks.shape), rng.random(masks.shape)
    model = np.random.default_rng(1000 + (noise_seed or 0)).standard_normal(masks.shape)
    maps = (0.8 * texture + 0.6 * model + separation * masks * visibility).astype(np.float32)
    labels = masks.reshape(len(masks), -1).any(axis=1).astype(int)
    return labels, maps.reshape(len(maps), -1).max(axis=1), masks, maps


def pixel_counts(masks, maps, edges=None) -> statistics.BinnedCounts:
    """Each image's pixels in the bootstrap's grid (or in ``edges``), through the pixel stream."""
    with evaluation.pixel_stream(zip(masks, maps, strict=True), [0] * len(masks)) as stream:
        return pixel_metrics.bootstrap_counts(stream) if edges is None else pixel_metrics.binned_counts(stream, edges)


def aupimo_bounds(monkeypatch):
    """AUPIMO's bounds widened so that small generated test sets resolve them."""
    monkeypatch.setattr(metrics, "AUPIMO_FPR_BOUNDS", (1e-3, 1e-2))


@pytest.mark.parametrize("seed", range(3))
def test_binned_metrics_equal_the_exact_ones_when_every_distinct_score_is_a_bin(seed, monkeypatch):
    aupimo_bounds(monkeypatch)
    masks, maps = random_case(seed, n_images=9, size=14)
    maps = maps.astype(np.float32)
    labels = masks.reshape(9, -1).any(axis=1).astype(int)
    scores = np.round(maps.reshape(9, -1).mean(axis=1), 1)  # ties between images
    weights = statistics.stratified_counts(labels, 20, np.random.default_rng(seed))
    exact_counts = pixel_counts(masks, maps, edges=np.unique(maps))
    fast = statistics.resampled_metrics(PIXEL_METRICS, exact_counts, weights)
    fast.update(statistics.resampled_metrics(IMAGE_METRICS, statistics.image_counts(labels, scores), weights))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, metric in {**PIXEL_METRICS, **IMAGE_METRICS}.items():
            exact = brute_force.resampled_exactly(weights, labels, scores, list(masks), list(maps), metric)
            np.testing.assert_allclose(fast[name], exact, atol=1e-6 if name in PIXEL_METRICS else 1e-12,
                                       err_msg=name)


@pytest.mark.slow
def test_fast_path_on_its_default_grid_stays_within_a_hundredth_of_a_point_of_exact_resampling(monkeypatch):
    aupimo_bounds(monkeypatch)
    labels, scores, masks, maps = generated_test_set(0, n_good=8, n_defective=8, size=64)
    weights = statistics.stratified_counts(labels, 15, np.random.default_rng(1))
    counts = pixel_counts(masks, maps)
    assert counts.bins < np.unique(maps).size  # a real grid, not every distinct score
    fast = statistics.resampled_metrics(PIXEL_METRICS, counts, weights)
    for name, metric in PIXEL_METRICS.items():
        exact = brute_force.resampled_exactly(weights, labels, scores, list(masks), list(maps), metric)
        assert np.nanmax(np.abs(fast[name] - exact)) < 1e-3, name  # 0.1 percentage point
        np.testing.assert_array_equal(np.isnan(fast[name]), np.isnan(exact))


def test_resamples_are_stratified_and_fixed_by_seed_and_test_set():
    labels = np.array([0] * 7 + [1] * 5)
    counts = statistics.stratified_counts(labels, 200, statistics.stream(3, "ab" * 8))
    assert (counts[:, :7].sum(axis=1) == 7).all() and (counts[:, 7:].sum(axis=1) == 5).all()
    assert counts.std(axis=0).min() > 0  # every image is sometimes drawn more or less than once
    same = statistics.stratified_counts(labels, 200, statistics.stream(3, "ab" * 8))
    other_test_set = statistics.stratified_counts(labels, 200, statistics.stream(3, "cd" * 8))
    np.testing.assert_array_equal(counts, same)
    assert not np.array_equal(counts, other_test_set)


def bootstrap(labels, scores, masks, maps, names=("image_auroc", "pixel_auroc", "aupro"), fingerprint="ab" * 8):
    return statistics.bootstrap_cell(labels, scores, pixel_counts(masks, maps),
                                     ["good" if x == 0 else "d" for x in labels],
                                     list(names), [], resamples=1000, seed=0, fingerprint=fingerprint,
                                     confidence=0.95)


def width(interval):
    return interval[1] - interval[0]


def test_intervals_shrink_as_the_test_set_grows():
    small = bootstrap(*generated_test_set(0, n_good=8, n_defective=8))
    large = bootstrap(*generated_test_set(0, n_good=64, n_defective=64))
    for name in ("image_auroc", "pixel_auroc", "aupro"):
        assert width(large.intervals[name]) < 0.6 * width(small.intervals[name]), name


def test_interval_holds_the_point_estimate_and_the_percentile_level():
    labels, scores, masks, maps = generated_test_set(2, n_good=20, n_defective=20)
    result = bootstrap(labels, scores, masks, maps)
    lo, hi = result.intervals["pixel_auroc"]
    assert lo < metrics.pixel_auroc(masks, maps) < hi
    values = result.replicates["pixel_auroc"]
    assert np.mean((values >= lo) & (values <= hi)) == pytest.approx(0.95, abs=0.002)


def paired_interval(a, b, name):
    return statistics.percentile_interval(a.replicates[name] - b.replicates[name], 0.95)


def test_paired_interval_excludes_zero_for_a_clearly_better_method_and_includes_it_for_seeds_of_one():
    labels, scores, masks, _ = generated_test_set(4, n_good=20, n_defective=20)
    runs = {}
    for key, separation, noise_seed in (("seed0", 1.0, 0), ("seed1", 1.0, 1), ("better", 3.0, 0)):
        _, scores, _, maps = generated_test_set(4, n_good=20, n_defective=20, separation=separation,
                                                noise_seed=noise_seed)
        runs[key] = bootstrap(labels, scores, masks, maps)
    for name in ("pixel_auroc", "aupro"):
        lo, hi = paired_interval(runs["better"], runs["seed0"], name)
        assert lo > 0, name
        lo, hi = paired_interval(runs["seed1"], runs["seed0"], name)
        assert lo < 0 < hi, name
        # pairing removes the test set's own variability: narrower than the unpaired intervals
        assert hi - lo < width(runs["seed0"].intervals[name])


def test_per_defect_intervals_resample_within_each_defect_type():
    labels, scores, masks, maps = generated_test_set(5, n_good=10, n_defective=10)
    types = ["good"] * 10 + ["a"] * 4 + ["b"] * 6
    result = statistics.bootstrap_cell(labels, scores, pixel_counts(masks, maps), types, ["image_auroc"],
                                       ["image_auroc", "pixel_auroc", "aupro"], resamples=200, seed=0,
                                       fingerprint="ab" * 8, confidence=0.95)
    assert set(result.intervals) == {"image_auroc"} | {statistics.defect_key(d, m) for d in "ab"
                                                        for m in ("image_auroc", "pixel_auroc", "aupro")}
    rows = np.r_[0:10, 10:14]
    exact = metrics.aupro([masks[i] for i in rows], [maps[i] for i in rows])
    lo, hi = result.intervals[statistics.defect_key("a", "aupro")]
    assert lo <= exact <= hi


def test_undefined_resamples_leave_no_interval():
    values = np.r_[np.full(980, 0.5), np.full(20, np.nan)]
    assert statistics.percentile_interval(values, 0.95) is None
    assert statistics.percentile_interval(values[:-15], 0.95) == (0.5, 0.5)  # 5 of 985 undefined


def test_a_test_set_of_good_images_only_gets_no_interval_and_no_failure():
    from anobench.cells import Cell

    labels, scores, masks, maps = generated_test_set(6, n_good=6, n_defective=0)
    cell = Cell(suite="s", dataset="d", class_name="c", method="padim", encoder="resnet18", resolution=48,
                resize=48, seed=0, weights="random", protocol="strict", metrics_resolution="input", batch_size=8)
    result = {"per_defect": {}}
    result["metrics"], notes, _ = evaluation.compute_metrics(labels, masks, scores, maps)
    assert result["metrics"]["image_auroc"] is None and "one class" in notes["image_auroc"]
    assert evaluation.bootstrap_intervals(cell, "ab" * 8, labels, ["good"] * 6, scores, pixel_counts(masks, maps),
                                          result) == {}
    assert result["intervals"] == {}
