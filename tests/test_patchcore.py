import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from anobench import metrics
from anobench.datasets import create_dataset
from anobench.datasets.base import AnomalyDataset, Geometry
from anobench.methods import create_method
from anobench.methods.patchcore import gather_rows, greedy_coreset, pooling_convolution
from tests.test_method_contract import batches


def brute_force_k_center(points, n_select, start):
    """The official approximate sampler written out with a full float64 distance matrix."""
    distances = torch.cdist(points.double(), points.double())
    closest = distances[:, start].mean(dim=1)
    picks = []
    for _ in range(n_select):
        pick = int(closest.argmax())
        picks.append(pick)
        closest = torch.minimum(closest, distances[:, pick])
    return picks


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("pruned", [True, False])
def test_greedy_coreset_picks_what_brute_force_k_center_picks(seed, pruned):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(12, 16, generator=generator) * 5
    points = centres[torch.randint(0, 12, (600,), generator=generator)] + torch.randn(600, 16, generator=generator)
    points += 40  # large norms: the pruning's norm-based distances cancel badly here
    start = torch.randperm(600, generator=generator)[:10]
    picks = greedy_coreset(points, 90, start, pruned=pruned)
    assert picks.tolist() == brute_force_k_center(points, 90, start)


def test_pruned_and_full_selection_agree_on_many_points():
    """Enough points that the pruned selection re-sorts its points by reference several times."""
    generator = torch.Generator().manual_seed(5)
    points = torch.randn(4000, 12, generator=generator) * torch.rand(4000, 1, generator=generator) * 4
    start = torch.randperm(4000, generator=generator)[:10]
    assert torch.equal(greedy_coreset(points, 300, start, pruned=True), greedy_coreset(points, 300, start, pruned=False))


def test_coreset_radius_never_grows_and_picks_are_unique():
    points = torch.randn(400, 8, generator=torch.Generator().manual_seed(1))
    picks = greedy_coreset(points, 40, torch.arange(10))
    assert len(set(picks.tolist())) == 40
    radii = [torch.cdist(points, points[picks[:i]]).min(dim=1).values.max() for i in range(1, 41)]
    assert all(b <= a for a, b in zip(radii, radii[1:], strict=False))


def test_picking_stops_once_every_point_is_covered():
    points = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 0.0], [5.0, 5.0]])
    for pruned in (True, False):
        picks = greedy_coreset(points, 4, torch.tensor([0, 1]), pruned=pruned)
        assert sorted(picks.tolist()) == [0, 1, 4]  # the duplicates add nothing


def official_patch_features(feats, pretrain_dims, target_dims):
    """The official pipeline step by step: unfold 3×3 neighbourhoods, resize every unfolded component of the
    later levels to the first level's grid, adaptive-average-pool each flattened neighbourhood, stack the
    levels and pool again."""
    size = feats[0].shape[-2:]
    per_level = []
    for feat in feats:
        b, c, h, w = feat.shape
        patches = F.unfold(feat, kernel_size=3, padding=1).reshape(b, c * 9, h, w)
        if (h, w) != tuple(size):
            patches = F.interpolate(patches, size=size, mode="bilinear", align_corners=False)
        rows = patches.permute(0, 2, 3, 1).reshape(-1, 1, c * 9)
        per_level.append(F.adaptive_avg_pool1d(rows, pretrain_dims)[:, 0])
    stacked = torch.stack(per_level, dim=1).reshape(len(per_level[0]), 1, -1)
    return F.adaptive_avg_pool1d(stacked, target_dims)[:, 0]


@pytest.mark.parametrize("channels, out", [(16, 16), (8, 16), (12, 8), (6, 20), (24, 10)])
def test_pooling_convolution_equals_pooling_every_unfolded_neighbourhood(channels, out):
    feat = torch.randn(2, channels, 5, 7)
    weight, groups = pooling_convolution(channels, out, 3)
    ours = F.conv2d(feat, weight, padding=1, groups=groups).permute(0, 2, 3, 1).reshape(-1, out)
    rows = F.unfold(feat, kernel_size=3, padding=1).transpose(1, 2).reshape(-1, 1, channels * 9)
    torch.testing.assert_close(ours, F.adaptive_avg_pool1d(rows, out)[:, 0], rtol=1e-5, atol=1e-6)


def test_one_output_per_channel_is_the_explicit_3x3_average():
    """WR50's layer 3 (1024 channels → 1024): each value is its channel's 3×3 mean, zeros beyond the border."""
    feat = torch.randn(1, 4, 6, 6)
    weight, groups = pooling_convolution(4, 4, 3)
    ours = F.conv2d(feat, weight, padding=1, groups=groups)
    padded = F.pad(feat, (1, 1, 1, 1))
    explicit = torch.zeros_like(feat)
    for dy in range(3):
        for dx in range(3):
            explicit += padded[:, :, dy:dy + 6, dx:dx + 6] / 9
    torch.testing.assert_close(ours, explicit, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def fitted(tiny_data):
    train = batches(tiny_data, "stripes")
    method = create_method("patchcore", encoder="resnet18", weights="random", coreset_fraction=0.2,
                           pretrain_dims=96, target_dims=64).fit(train)
    return method, train


def test_embedding_equals_the_official_pipeline(fitted):
    method, train = fitted
    images = train[0][:3]
    ours = method._embed(images).permute(0, 2, 3, 1).reshape(-1, 64)
    torch.testing.assert_close(ours, official_patch_features(method.encoder_(images), 96, 64), rtol=1e-4, atol=1e-5)


def test_bank_is_the_coreset_of_the_training_patches(fitted):
    method, train = fitted
    stats = method.fit_stats()
    n = sum(len(b) for b in train) * 8 * 8  # 64 px → a layer-2 grid of 8×8
    assert stats["training_patches"] == n and stats["coreset_size"] == int(0.2 * n) == len(method.memory_bank_)
    all_rows = torch.cat([method._embed(b).permute(0, 2, 3, 1).reshape(-1, 64) for b in train])
    nearest = torch.cdist(method.memory_bank_, all_rows, compute_mode="donot_use_mm_for_euclid_dist").min(dim=1)
    assert nearest.values.max() < 1e-4  # every bank row is a training patch


def test_scores_equal_brute_force_nearest_neighbour(fitted, tiny_data):
    method, _ = fitted
    test = torch.cat(batches(tiny_data, "stripes", split="test"))[:4]
    ours = method.predict(test)
    queries = method._embed(test).permute(0, 2, 3, 1).reshape(4, 64, 64)
    squared = torch.stack([torch.cdist(q.double(), method.memory_bank_.double()).min(dim=1).values ** 2
                           for q in queries]).reshape(4, 8, 8)
    np.testing.assert_allclose(ours.image_scores, squared.amax(dim=(1, 2)).numpy(), rtol=1e-4)
    upsampled = F.interpolate(squared[:, None].float(), size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
    maps = np.stack([gaussian_filter(m, sigma=4) for m in upsampled.numpy()])
    np.testing.assert_allclose(ours.maps, maps, rtol=1e-3, atol=1e-4 * float(maps.max()))


def test_k_nearest_averages_squared_distances(fitted, tiny_data):
    method, train = fitted
    three = create_method("patchcore", encoder="resnet18", weights="random", coreset_fraction=0.2,
                          pretrain_dims=96, target_dims=64, k_nearest=3).fit(train)
    test = torch.cat(batches(tiny_data, "stripes", split="test"))[:2]
    patch, _ = three.forward_scores(test)
    queries = three._embed(test).permute(0, 2, 3, 1).reshape(-1, 64)
    expected = torch.cdist(queries.double(), three.memory_bank_.double()).topk(3, largest=False).values.pow(2)
    torch.testing.assert_close(patch.flatten().double(), expected.mean(dim=1), rtol=1e-4, atol=1e-5)


def test_reweighting_is_the_papers_equation(fitted, tiny_data):
    method, train = fitted
    paper = create_method("patchcore", encoder="resnet18", weights="random", coreset_fraction=0.2,
                          pretrain_dims=96, target_dims=64, image_score="reweighted", reweight_neighbours=4).fit(train)
    test = torch.cat(batches(tiny_data, "stripes", split="test"))[:3]
    scores = paper.predict(test).image_scores
    bank = paper.memory_bank_
    for i, image in enumerate(test):
        queries = paper._embed(image[None]).permute(0, 2, 3, 1).reshape(-1, 64)
        dist = torch.cdist(queries, bank)
        worst = dist.min(dim=1).values.argmax()
        s_star = dist[worst].min() ** 2
        m_star = bank[dist[worst].argmin()]
        neighbourhood = torch.cdist(m_star[None], bank)[0].topk(4, largest=False).indices
        distances = torch.linalg.vector_norm(queries[worst] - bank[neighbourhood], dim=1)
        weight = 1 - torch.exp(distances[0]) / torch.exp(distances).sum()
        assert scores[i] == pytest.approx(float(weight * s_star), rel=1e-4)
    assert paper.labels()["image_score"] == "reweighted" and method.labels()["image_score"] == "max"


def test_a_training_image_scores_zero_without_subsampling(tiny_data):
    train = batches(tiny_data, "disc")
    method = create_method("patchcore", encoder="resnet18", weights="random", coreset_fraction=1.0).fit(train)
    assert method.fit_stats()["coreset_size"] == sum(len(b) for b in train) * 64
    assert method.predict(train[0][:2]).image_scores.max() < 1e-6


def test_gather_rows_equals_indexing_the_concatenation():
    chunks = [torch.randn(n, 3) for n in (4, 1, 6)]
    index = torch.tensor([10, 0, 4, 5, 3, 9])
    assert torch.equal(gather_rows(chunks, index), torch.cat(chunks)[index])


def test_bad_parameters_are_refused(tiny_data):
    for params in ({"coreset_fraction": 0.0}, {"image_score": "mean"}, {"patch_size": 2}):
        with pytest.raises(ValueError):
            create_method("patchcore", encoder="resnet18", weights="random", **params).fit(batches(tiny_data))


def test_patchcore_finds_generated_defects(tiny_data):
    train = batches(tiny_data, "stripes")
    method = create_method("patchcore", encoder="resnet18", weights="random").fit(train)
    prediction = method.predict_dataset(batches(tiny_data, "stripes", split="test"))
    dataset = AnomalyDataset(create_dataset("folder", tiny_data).samples("stripes", "test"), Geometry(64, 64))
    masks = np.stack([dataset[i]["mask"].numpy() for i in range(len(dataset))])
    image = metrics.image_auroc(dataset.labels(), prediction.image_scores)
    pixel = metrics.pixel_auroc(masks, prediction.maps)
    assert image > 0.95 and pixel > 0.96, (image, pixel)  # measured 1.0 and 0.976 (random weights)
