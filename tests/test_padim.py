import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from scipy.spatial.distance import mahalanobis

from anobench import metrics
from anobench.datasets import create_dataset
from anobench.datasets.base import AnomalyDataset, Geometry
from anobench.methods import create_method
from tests.test_method_contract import batches


def reference_padim(method, train, test):
    """The widely used reimplementation's arithmetic: stored embeddings, np.cov and scipy per position."""
    def embed(images):
        feats = method.encoder_(images)
        size = feats[0].shape[-2:]
        full = torch.cat([f if f.shape[-2:] == size else F.interpolate(f, size=size, mode="nearest") for f in feats], 1)
        return full[:, method.channel_index_].double().numpy()

    emb = np.concatenate([embed(b) for b in train])  # (N, d, H, W)
    n, d, h, w = emb.shape
    emb = emb.reshape(n, d, h * w)
    means = emb.mean(axis=0)
    inverses = [np.linalg.inv(np.cov(emb[:, :, i], rowvar=False) + 0.01 * np.eye(d)) for i in range(h * w)]
    test_emb = embed(test).reshape(len(test), d, h * w)
    dist = np.array([[mahalanobis(sample[:, i], means[:, i], inverses[i]) for i in range(h * w)] for sample in test_emb])
    maps = F.interpolate(torch.from_numpy(dist.reshape(-1, 1, h, w)), size=test.shape[-2:], mode="bilinear",
                         align_corners=False).squeeze(1).numpy()
    maps = np.stack([gaussian_filter(m, sigma=4) for m in maps])
    return maps.max(axis=(1, 2)), maps


def test_padim_equals_the_reference_arithmetic(tiny_data):
    train = batches(tiny_data, size=48)
    test = torch.cat(batches(tiny_data, split="test", size=48))[:4]
    method = create_method("padim", encoder="resnet18", weights="random", d_reduced=40).fit(train)
    ours = method.predict(test)
    scores, maps = reference_padim(method, train, test)
    np.testing.assert_allclose(ours.maps, maps, rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(ours.image_scores, scores, rtol=2e-3)


def test_channel_subset_is_fixed_by_seed():
    picks = []
    for seed in (0, 0, 1):
        method = create_method("padim", encoder="resnet18", weights="random", seed=seed)
        method.encoder_ = method._build_encoder("random")
        picks.append(method._choose_channels())
    assert torch.equal(picks[0], picks[1]) and not torch.equal(picks[0], picks[2])
    assert len(picks[0]) == 100  # the paper's d for ResNet-18 (of 448 channels)


def test_size_is_encoder_plus_means_and_covariances(tiny_data):
    method = create_method("padim", encoder="resnet18", weights="random").fit(batches(tiny_data))
    encoder_bytes = sum(t.numel() * t.element_size()
                        for t in [*method.encoder_.body.parameters(), *method.encoder_.body.buffers()])
    positions, d = (64 // 4) ** 2, 100
    expected = encoder_bytes + positions * d * 4 + positions * d * d * 4 + d * 8  # + the channel index
    assert method.size_bytes() == expected


def test_padim_finds_generated_defects(tiny_data):
    method = create_method("padim", encoder="resnet18", weights="random").fit(batches(tiny_data, "stripes"))
    test = batches(tiny_data, "stripes", split="test")
    prediction = method.predict_dataset(test)
    dataset = AnomalyDataset(create_dataset("folder", tiny_data).samples("stripes", "test"), Geometry(64, 64))
    masks = np.stack([dataset[i]["mask"].numpy() for i in range(len(dataset))])
    assert metrics.pixel_auroc(masks, prediction.maps) > 0.9
    assert metrics.image_auroc(dataset.labels(), prediction.image_scores) > 0.8


def test_too_few_training_images_is_an_error(tiny_data):
    one = [batches(tiny_data)[0][:1]]
    with pytest.raises(ValueError, match="at least 2 training images"):
        create_method("padim", encoder="resnet18", weights="random").fit(one)
