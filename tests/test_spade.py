import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from anobench import metrics
from anobench.datasets import create_dataset
from anobench.datasets.base import AnomalyDataset, Geometry
from anobench.methods import create_method
from anobench.methods.knn import CPU_BLOCK, chunk_sizes, knn
from tests.test_method_contract import batches


@pytest.mark.parametrize("k", [1, 3, 50, 400])
@pytest.mark.parametrize("budget", [2_000, 50_000, None])
def test_chunked_knn_equals_brute_force(k, budget):
    torch.manual_seed(k)
    queries, gallery = torch.randn(120, 16), torch.randn(400, 16) * 2 + 1
    dist, index = knn(queries, gallery, k, budget)
    expected = torch.cdist(queries.double(), gallery.double()).topk(k, largest=False)
    torch.testing.assert_close(dist.double(), expected.values, atol=1e-5, rtol=1e-5)
    distinct = (expected.values[:, 1:] - expected.values[:, :-1]).abs().min() > 1e-4 if k > 1 else True
    if distinct:
        assert torch.equal(index, expected.indices)
    if budget is not None:
        query_chunk, gallery_chunk = chunk_sizes(120, 400, k, 16, budget)
        assert query_chunk * gallery_chunk < 120 * 400  # the distance matrix really was split


@pytest.mark.parametrize("k", [1, 3])
def test_cpu_blocks_split_a_large_budget_search_and_still_find_every_neighbour(k):
    queries, gallery = torch.randn(2 * CPU_BLOCK[0] + 5, 8), torch.randn(2 * CPU_BLOCK[1] + 7, 8)
    query_chunk, gallery_chunk = chunk_sizes(len(queries), len(gallery), k, 8, 2**30)
    assert query_chunk == len(queries) and gallery_chunk == len(gallery)  # the budget alone would take one block
    dist, index = knn(queries, gallery, k, 2**30)
    expected = torch.cdist(queries.double(), gallery.double()).topk(k, largest=False)
    torch.testing.assert_close(dist.double(), expected.values, atol=1e-5, rtol=1e-5)
    assert (index == expected.indices).float().mean() > 0.999  # ties and float rounding aside


def test_k_larger_than_a_chunk_and_equal_to_the_gallery():
    queries, gallery = torch.randn(7, 4), torch.randn(30, 4)
    assert chunk_sizes(7, 30, 30, 4, 400)[1] < 30
    dist, _ = knn(queries, gallery, 30, budget_bytes=400)
    torch.testing.assert_close(dist, torch.cdist(queries, gallery).sort(dim=1).values, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="between 1 and the gallery size"):
        knn(queries, gallery, 31)


def test_distances_are_never_negative_and_identical_vectors_are_at_zero():
    gallery = torch.randn(200, 64) * 100 + 1000  # large norms: the product formula cancels badly here
    dist, index = knn(gallery[:50], gallery, 1, budget_bytes=20_000)
    assert (dist >= 0).all()
    assert torch.equal(dist[:, 0], torch.zeros(50))
    assert torch.equal(index[:, 0], torch.arange(50))


def reference_spade(method, train, test, k):
    """Per image and pixel, with cdist on full matrices: the definition, without any chunking."""
    with torch.no_grad():
        train_feats = [method.encoder_(b) for b in train]
        test_feats = method.encoder_(test)
    pooled = torch.cat([f[-1].mean(dim=(2, 3)) for f in train_feats])
    maps = [torch.cat([f[level] for f in train_feats]) for level in range(3)]
    image_dist = torch.cdist(test_feats[-1].mean(dim=(2, 3)), pooled).topk(k, largest=False)
    scores, out = image_dist.values.mean(dim=1), []
    for i in range(len(test)):
        levels = []
        for level in range(3):
            c = maps[level].shape[1]
            gallery = maps[level][image_dist.indices[i]].permute(0, 2, 3, 1).reshape(-1, c)
            q = test_feats[level][i].permute(1, 2, 0).reshape(-1, c)
            h, w = test_feats[level].shape[-2:]
            nearest = torch.cdist(q, gallery).min(dim=1).values.reshape(1, 1, h, w)
            levels.append(F.interpolate(nearest, size=test.shape[-2:], mode="bilinear", align_corners=False)[0, 0])
        out.append(gaussian_filter(torch.stack(levels).mean(dim=0).numpy(), sigma=4))
    return scores.numpy(), np.stack(out)


def test_spade_equals_the_definition_and_a_tiny_budget_changes_nothing(tiny_data):
    train = batches(tiny_data, size=48)
    test = torch.cat(batches(tiny_data, split="test", size=48))[:4]
    method = create_method("spade", encoder="resnet18", weights="random", k_images=5).fit(train)
    ours = method.predict(test)
    scores, maps = reference_spade(method, train, test, 5)
    np.testing.assert_allclose(ours.image_scores, scores, rtol=1e-4)
    np.testing.assert_allclose(ours.maps, maps, rtol=1e-3, atol=1e-3)
    full_matrix_bytes = 12 * 12 * 5 * 12 * 12 * 4  # one test image's layer-1 distances to its gallery
    tiny = create_method("spade", encoder="resnet18", weights="random", k_images=5,
                         memory_budget=full_matrix_bytes // 10).fit(train)
    np.testing.assert_allclose(tiny.predict(test).maps, ours.maps, rtol=1e-5, atol=1e-5)


def test_size_grows_linearly_with_training_images(tiny_data):
    images = torch.cat(batches(tiny_data))
    sizes = {}
    for n in (4, 8, 12):
        method = create_method("spade", encoder="resnet18", weights="random", k_images=3).fit([images[:n]])
        breakdown = method.size_breakdown()
        sizes[n] = method.size_bytes() - breakdown["encoder"]
        assert breakdown["gallery"] == n * (64 * 16 * 16 + 128 * 8 * 8 + 256 * 4 * 4) * 4
    assert sizes[8] - sizes[4] == sizes[12] - sizes[8] > 0


def test_k_is_clipped_to_the_training_set_and_recorded(tiny_data):
    method = create_method("spade", encoder="resnet18", weights="random").fit(batches(tiny_data))
    assert method.fit_stats()["k_images_effective"] == 12 and method.k_images == 50


def test_spade_finds_generated_defects(tiny_data):
    method = create_method("spade", encoder="resnet18", weights="random", k_images=5).fit(batches(tiny_data, "stripes"))
    prediction = method.predict_dataset(batches(tiny_data, "stripes", split="test"))
    dataset = AnomalyDataset(create_dataset("folder", tiny_data).samples("stripes", "test"), Geometry(64, 64))
    masks = np.stack([dataset[i]["mask"].numpy() for i in range(len(dataset))])
    # measured on this data (random weights): image 0.69, pixel 0.989; SPADE's image-level kNN over pooled
    # features is its weak side (85.5 on MVTec in the paper, with ImageNet weights)
    assert metrics.image_auroc(dataset.labels(), prediction.image_scores) > 0.6
    assert metrics.pixel_auroc(masks, prediction.maps) > 0.95
