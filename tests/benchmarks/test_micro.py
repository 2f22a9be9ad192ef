"""Micro-benchmarks (pytest-benchmark). Not run by the test command; run with `nox -s benchmarks`:

    pytest tests/benchmarks --benchmark-autosave            # saves .benchmarks/<machine>/NNNN_<commit>.json
    pytest tests/benchmarks --benchmark-compare --benchmark-compare-fail=median:15%

Each saved run carries pytest-benchmark's machine_info and commit_info.
"""

import numpy as np
import pytest
import torch
from scipy import ndimage

from anobench import evaluation, metrics, pixel_metrics, statistics
from anobench.methods import create_method
from anobench.methods.cflow import conditional_flow, positional_encoding_2d
from anobench.methods.knn import knn

N_MAPS, SIZE = 100, 256


@pytest.fixture(scope="module")
def maps_and_masks():
    """100 maps of 256×256: half defect-free, half with three rectangular defects each."""
    rng = np.random.default_rng(0)
    masks = np.zeros((N_MAPS, SIZE, SIZE), np.uint8)
    for i in range(N_MAPS // 2, N_MAPS):
        for _ in range(3):
            r, c = rng.integers(0, SIZE - 40, 2)
            masks[i, r:r + rng.integers(4, 40), c:c + rng.integers(4, 40)] = 1
    maps = rng.random(masks.shape, dtype=np.float32) + 0.6 * masks
    return masks, maps


def test_aupro_100_maps_256(benchmark, maps_and_masks):
    masks, maps = maps_and_masks
    value = benchmark(metrics.aupro, masks, maps)
    assert 0 < value < 1


def aupro_by_relabelling(masks, maps, n_thresholds=1000, limit=0.3):
    """The per-threshold sweep of the reference code: 1000 linear thresholds, regions relabelled and
    overlaps recomputed at each one (what the exact one-sort AUPRO replaces)."""
    thresholds = np.linspace(maps.max(), maps.min(), n_thresholds)
    fprs, pros = [], []
    normal = masks == 0
    for t in thresholds:
        predicted = maps >= t
        overlaps = []
        for mask, pred in zip(masks, predicted, strict=True):
            labelled, n = ndimage.label(mask, structure=np.ones((3, 3)))
            overlaps += [pred[labelled == k].mean() for k in range(1, n + 1)]
        fprs.append((predicted & normal).sum() / normal.sum())
        pros.append(np.mean(overlaps))
    fprs, pros = np.array(fprs), np.array(pros)
    keep = fprs <= limit
    return np.trapezoid(pros[keep], fprs[keep]) / limit


def test_aupro_by_per_threshold_relabelling(benchmark, maps_and_masks):
    masks, maps = maps_and_masks
    value = benchmark.pedantic(aupro_by_relabelling, args=(masks, maps), rounds=1, iterations=1)
    assert value == pytest.approx(metrics.aupro(masks, maps), abs=0.02)  # same quantity, coarser


@pytest.fixture(scope="module")
def padim_r18():
    torch.manual_seed(0)
    train = [torch.rand(16, 3, 224, 224) for _ in range(2)]
    return create_method("padim", encoder="resnet18", weights="random").fit(train)


def test_padim_mahalanobis_scoring(benchmark, padim_r18):
    """PaDiM-R18 at 224: encoder + batched Mahalanobis over 56×56 positions, batch of 8."""
    images = torch.rand(8, 3, 224, 224)
    with torch.inference_mode():
        scores = benchmark(padim_r18.forward_scores, images)
    assert scores.shape == (8, 56, 56)


def test_cflow_level_flow_forward(benchmark):
    """One CFLOW level (WR50's 512 channels, 8 blocks): forward of 4096 fibers with their codes."""
    torch.manual_seed(0)
    np.random.seed(0)
    flow = conditional_flow(512, 128, 8, clamp=1.9, permute_soft=False).eval()
    fibers = torch.randn(4096, 512)
    codes = positional_encoding_2d(128, 64, 64).reshape(128, -1).T.contiguous()
    with torch.inference_mode():
        z, log_det = benchmark(flow, fibers, c=[codes])
    assert z.shape == fibers.shape and log_det.shape == (4096,)


def test_spade_chunked_knn(benchmark):
    """SPADE's pixel kNN: 64×64 test pixels against 10 neighbour images' 64×64 pixels, 256 channels."""
    torch.manual_seed(0)
    queries, gallery = torch.randn(64 * 64, 256), torch.randn(10 * 64 * 64, 256)
    dist, _ = benchmark(knn, queries, gallery, 1, 256 * 2**20)
    assert dist.shape == (4096, 1)


def bootstrap_of(names, labels, masks, maps, resamples=1000):
    with evaluation.pixel_stream(zip(masks, maps.astype(np.float32), strict=True), [0] * len(masks)) as stream:
        counts = pixel_metrics.bootstrap_counts(stream)
    return statistics.bootstrap_cell(labels, maps.reshape(len(maps), -1).max(axis=1), counts,
                                     ["good" if x == 0 else "defect" for x in labels], names, [],
                                     resamples=resamples, seed=0, fingerprint="0" * 16, confidence=0.95)


def test_bootstrap_1000_resamples_image_pixel_auroc_aupro_100_maps_256(benchmark, maps_and_masks):
    """The issue's target (≤ 15 s on a 2-core CPU): grid, per-image histograms and 1000 resamples of three
    metrics, from the maps."""
    masks, maps = maps_and_masks
    labels = masks.reshape(N_MAPS, -1).any(axis=1).astype(int)
    result = benchmark.pedantic(bootstrap_of, args=(["image_auroc", "pixel_auroc", "aupro"], labels, masks, maps),
                                rounds=2, iterations=1)
    lo, hi = result.intervals["aupro"]
    assert lo < metrics.aupro(masks, maps) < hi


def test_bootstrap_1000_resamples_every_metric_100_maps_256(benchmark, maps_and_masks):
    """What a cell of this size pays: every standard metric (AP, F1-max, AUPRO@0.3 and @0.05, AUPIMO too)."""
    masks, maps = maps_and_masks
    labels = masks.reshape(N_MAPS, -1).any(axis=1).astype(int)
    names = ["image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro",
             "aupro@0.05", "aupimo"]
    result = benchmark.pedantic(bootstrap_of, args=(names, labels, masks, maps), rounds=1, iterations=1)
    assert all(result.intervals[n] is not None for n in names)


def test_bootstrap_grid_against_exact_resampling(benchmark):
    """How far the fast path's interval end points lie from exact resampling (the same 1000 resamples, each
    metric recomputed from all pixels): 20 maps of 96×96, 10 with defects. Figures in extra_info (pp)."""
    rng = np.random.default_rng(1)
    masks = np.zeros((20, 96, 96), np.uint8)
    for i in range(10, 20):
        for _ in range(2):
            r, c = rng.integers(0, 80, 2)
            masks[i, r:r + rng.integers(3, 16), c:c + rng.integers(3, 16)] = 1
    maps = (rng.standard_normal(masks.shape) + 1.2 * masks * rng.random(masks.shape)).astype(np.float32)
    labels = masks.reshape(20, -1).any(axis=1).astype(int)
    exact_metrics = {
        "pixel_auroc": lambda m, a: metrics.pixel_auroc(m, a),
        "pixel_ap": lambda m, a: metrics.average_precision(m, a),
        "pixel_f1_max": lambda m, a: metrics.f1_max(m, a)[0],
        "aupro": lambda m, a: metrics.aupro(m, a),
        "aupro@0.05": lambda m, a: metrics.aupro(m, a, 0.05),
    }
    fast = bootstrap_of(list(exact_metrics), labels, masks, maps)
    weights = statistics.stratified_counts(labels, 1000, statistics.stream(0, "0" * 16))

    def exact_resampling():
        out = {name: [] for name in exact_metrics}
        for row in weights:
            index = np.repeat(np.arange(20), row.astype(int))
            for name, metric in exact_metrics.items():
                out[name].append(metric(masks[index], maps[index]))
        return out

    exact = benchmark.pedantic(exact_resampling, rounds=1, iterations=1)
    for name in exact_metrics:
        exact_interval = statistics.percentile_interval(np.array(exact[name]), 0.95)
        shift = max(abs(a - b) for a, b in zip(exact_interval, fast.intervals[name], strict=True))
        benchmark.extra_info[f"{name} end point shift pp"] = 100 * shift
        benchmark.extra_info[f"{name} largest resample difference pp"] = 100 * float(
            np.max(np.abs(np.array(exact[name]) - fast.replicates[name])))
        assert shift < 1e-3, name  # 0.1 percentage point
