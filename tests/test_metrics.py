import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from anobench import metrics
from tests import brute_force


def random_case(seed, n_images=6, size=12, levels=7):
    """Quantized maps (many ties), masks with several regions, and some defect-free images."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n_images, size, size), dtype=np.uint8)
    for i in range(n_images):
        if i % 3 == 0:
            continue  # defect-free image
        for _ in range(rng.integers(1, 4)):
            r, c = rng.integers(0, size - 3, 2)
            h, w = rng.integers(1, 4, 2)
            masks[i, r:r + h, c:c + w] = 1
    maps = rng.integers(0, levels, masks.shape).astype(np.float32) + 2.0 * masks * rng.random(masks.shape)
    return masks, np.round(maps, 1)


@pytest.mark.parametrize("seed", range(5))
def test_image_auroc_matches_pairwise_definition_and_sklearn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 40)
    scores = rng.integers(0, 5, 40).astype(float)  # heavy ties
    expected = brute_force.auroc_by_pairs(labels, scores)
    assert metrics.image_auroc(labels, scores) == pytest.approx(expected, abs=1e-12)
    assert metrics.image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_pixel_auroc_matches_pairwise_definition(seed):
    masks, maps = random_case(seed)
    expected = brute_force.auroc_by_pairs(masks.ravel(), maps.ravel())
    assert metrics.pixel_auroc(masks, maps) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("limit", [0.3, 0.05, 1.0])
def test_aupro_matches_per_threshold_definition(seed, limit):
    masks, maps = random_case(seed)
    expected = brute_force.aupro_by_thresholds(masks, maps, limit)
    assert metrics.aupro(masks, maps, fpr_limit=limit) == pytest.approx(expected, abs=1e-9)


def test_pro_curve_points_equal_per_threshold_points():
    masks, maps = random_case(11)
    fpr, pro = metrics.pro_curve(masks, maps)
    expected_fpr, expected_pro = brute_force.pro_points_by_thresholds(masks, maps)
    np.testing.assert_allclose(fpr, expected_fpr, atol=1e-12)
    np.testing.assert_allclose(pro, expected_pro, atol=1e-12)


def test_regions_are_eight_connected():
    # two pixels touching only at a corner form one region: perfect overlap needs both
    mask = np.zeros((1, 4, 4), dtype=np.uint8)
    mask[0, 1, 1] = mask[0, 2, 2] = 1
    amap = np.zeros((1, 4, 4))
    amap[0, 1, 1] = 1.0  # finds half of the single region
    fpr, pro = metrics.pro_curve(mask, amap)
    assert pro[1] == pytest.approx(0.5)  # one region half covered, not one of two regions fully


def test_aupro_accepts_images_of_different_sizes():
    masks, maps = random_case(3)
    ragged_masks = [masks[0][:10, :8], masks[1], masks[2][:, :9]]
    ragged_maps = [maps[0][:10, :8], maps[1], maps[2][:, :9]]
    expected = brute_force.aupro_by_thresholds(ragged_masks, ragged_maps)
    assert metrics.aupro(ragged_masks, ragged_maps) == pytest.approx(expected, abs=1e-9)


def test_perfect_and_inverted_maps():
    masks, _ = random_case(2)
    assert metrics.aupro(masks, masks.astype(float)) == pytest.approx(1.0)
    assert metrics.pixel_auroc(masks, masks.astype(float)) == pytest.approx(1.0)
    assert metrics.pixel_auroc(masks, -masks.astype(float)) == pytest.approx(0.0)


@pytest.mark.parametrize("seed", range(5))
def test_f1_max_matches_threshold_sweep(seed):
    masks, maps = random_case(seed)
    f1, threshold = metrics.f1_max(masks, maps)
    expected_f1, _ = brute_force.f1_max_by_thresholds(masks, maps)
    assert f1 == pytest.approx(expected_f1, abs=1e-12)
    predicted = maps >= threshold
    achieved = 2 * (predicted & (masks == 1)).sum() / (predicted.sum() + masks.sum())
    assert achieved == pytest.approx(f1, abs=1e-12)


def test_f1_max_on_image_labels():
    labels = np.array([0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.9])
    f1, threshold = metrics.f1_max(labels, scores)
    assert f1 == pytest.approx(brute_force.f1_max_by_thresholds(labels, scores)[0])
    assert threshold == pytest.approx(0.35)


def test_one_class_gives_nan_with_warning():
    with pytest.warns(UserWarning, match="one class"):
        assert np.isnan(metrics.image_auroc([1, 1, 1], [0.1, 0.2, 0.3]))
    with pytest.warns(UserWarning, match="AUPRO is undefined"):
        assert np.isnan(metrics.aupro(np.zeros((2, 4, 4)), np.random.rand(2, 4, 4)))


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="differ in length"):
        metrics.image_auroc([0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="only 0 and 1"):
        metrics.image_auroc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        metrics.pixel_auroc(np.zeros((1, 2, 2)), np.full((1, 2, 2), np.nan))
    with pytest.raises(ValueError, match="shape"):
        metrics.aupro(np.zeros((1, 2, 2)), np.zeros((1, 3, 3)))


def test_scores_are_used_raw():
    # a monotone transform must not change AUROC/AUPRO, and huge raw scores are fine (no sigmoid saturation)
    masks, maps = random_case(4)
    shifted = maps.astype(np.float64) * 1e6 + 1e9
    assert metrics.aupro(masks, shifted) == pytest.approx(metrics.aupro(masks, maps), abs=1e-9)
    assert metrics.pixel_auroc(masks, shifted) == pytest.approx(metrics.pixel_auroc(masks, maps), abs=1e-12)


@pytest.mark.parametrize("limit", [0.01, 0.3, 0.7])
def test_truncated_pro_curve_is_a_prefix_of_the_full_curve(limit):
    masks, maps = random_case(5, n_images=8, size=16, levels=30)
    fpr, pro = metrics.pro_curve(masks, maps)
    short_fpr, short_pro = metrics.pro_curve(masks, maps, fpr_limit=limit)
    n = len(short_fpr)
    np.testing.assert_allclose(short_fpr, fpr[:n])
    np.testing.assert_allclose(short_pro, pro[:n])
    assert short_fpr[-1] > limit >= short_fpr[-2]
