import math

import numpy as np
import pytest
import torch

from anobench import metrics
from anobench.datasets import create_dataset
from anobench.datasets.base import AnomalyDataset, Geometry
from anobench.methods import create_method
from anobench.methods.cflow import conditional_flow, learning_rate, log_likelihood, positional_encoding_2d
from tests.test_method_contract import batches

QUICK = {"meta_epochs": 4, "sub_epochs": 2, "lr": 2e-3, "fiber_batch": 32, "rotation_degrees": 0.0}


def small_flow(channels=8, condition=4, blocks=3, seed=0):
    torch.manual_seed(seed)
    np.random.seed(seed)
    flow = conditional_flow(channels, condition, blocks, clamp=1.9, permute_soft=False).double().eval()
    with torch.no_grad():  # move away from the identity so the test means something
        for p in flow.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn_like(p))
    return flow


@pytest.mark.parametrize("channels", [8, 64])
def test_flow_round_trip(channels):
    flow = small_flow(channels)
    x = torch.randn(50, channels, dtype=torch.float64)
    cond = torch.randn(50, 4, dtype=torch.float64)
    z, _ = flow(x, c=[cond])
    back, _ = flow(z, c=[cond], rev=True)
    assert (back - x).abs().max() < 1e-4
    assert (z - x).abs().max() > 1e-2  # not the identity


def test_fitted_level_flows_round_trip(tiny_data):
    method = create_method("cflow", encoder="resnet18", weights="random", meta_epochs=1, sub_epochs=1,
                           fiber_batch=64).fit(batches(tiny_data))
    for decoder, channels in zip(method.decoders_, method.encoder_.channels, strict=True):
        x = torch.randn(20, channels)
        cond = positional_encoding_2d(128, 4, 5).reshape(128, -1).T
        with torch.no_grad():
            z, _ = decoder(x, c=[cond])
            back, _ = decoder(z, c=[cond], rev=True)
        assert (back - x).abs().max() < 1e-4


def test_log_det_equals_autograd_jacobian():
    flow = small_flow(channels=8)
    cond = torch.randn(1, 4, dtype=torch.float64)
    x = torch.randn(1, 8, dtype=torch.float64)
    _, log_det = flow(x, c=[cond])
    jacobian = torch.autograd.functional.jacobian(lambda v: flow(v[None], c=[cond])[0][0], x[0])
    assert log_det.item() == pytest.approx(torch.linalg.slogdet(jacobian).logabsdet.item(), abs=1e-8)


def test_log_likelihood_formula():
    z = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    log_det = torch.tensor([0.5, -1.0])
    expected = torch.tensor([-math.log(2 * math.pi) - 2.5 + 0.5, -math.log(2 * math.pi) - 1.0])
    torch.testing.assert_close(log_likelihood(z, log_det), expected)


def test_positional_encoding():
    code = positional_encoding_2d(128, 6, 9)
    assert code.shape == (128, 6, 9)
    assert code.min() >= -1 and code.max() <= 1
    flat = code.reshape(128, -1).T
    assert len(torch.unique(flat, dim=0)) == 6 * 9  # every position has its own code
    torch.testing.assert_close(code[0::2, 0, 0], torch.zeros(64))  # sin(0)
    torch.testing.assert_close(code[1::2, 0, 0], torch.ones(64))  # cos(0)
    assert code[0, 0, 1].item() == pytest.approx(math.sin(1.0))  # column 1, the highest frequency
    assert code[64, 1, 0].item() == pytest.approx(math.sin(1.0))  # row 1 in the second half
    torch.testing.assert_close(code[:64, 0, :], code[:64, 5, :])  # first half: columns only
    with pytest.raises(ValueError):
        positional_encoding_2d(6, 2, 2)


def test_learning_rate_schedule():
    lr, epochs = 2e-4, 25
    assert learning_rate(lr, 0, epochs, 2, 0.0) == pytest.approx(lr / 10)
    end_of_warmup = learning_rate(lr, 1, epochs, 2, 1.0)
    assert end_of_warmup == pytest.approx(learning_rate(lr, 2, epochs, 2, 0.0))
    values = [learning_rate(lr, e, epochs, 2, 1.0) for e in range(2, epochs)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False))
    assert learning_rate(lr, epochs, epochs, 2, 1.0) == pytest.approx(lr / 1000)


def test_training_lowers_the_loss_and_finds_generated_defects(tiny_data):
    train = batches(tiny_data, "stripes")
    method = create_method("cflow", encoder="resnet18", weights="random", **QUICK).fit(train)
    losses = method.fit_stats()["mean_loss_per_meta_epoch"]
    assert losses[-1] < 0.5 * losses[0]
    assert method.labels()["schedule"] == "short"
    dataset = AnomalyDataset(create_dataset("folder", tiny_data).samples("stripes", "test"), Geometry(64, 64))
    prediction = method.predict_dataset(batches(tiny_data, "stripes", split="test"))
    masks = np.stack([dataset[i]["mask"].numpy() for i in range(len(dataset))])
    # measured: image 1.00, pixel 0.94 (random weights, 64 px, 4×2 epochs)
    assert metrics.image_auroc(dataset.labels(), prediction.image_scores) > 0.9
    assert metrics.pixel_auroc(masks, prediction.maps) > 0.9


def test_paper_protocol_depends_on_the_test_set_and_strict_does_not(tiny_data):
    train = batches(tiny_data, "stripes")
    test = torch.cat(batches(tiny_data, "stripes", split="test"))
    paper = create_method("cflow", encoder="resnet18", weights="random", protocol="paper", **QUICK).fit(train)
    assert paper.test_set_dependent and paper.level_constants_ is None
    full = paper.predict_dataset([test])
    part = paper.predict_dataset([test[:4]])
    assert not np.allclose(full.maps[:4], part.maps)  # other test images moved these scores
    strict = create_method("cflow", encoder="resnet18", weights="random", **QUICK).fit(train)
    assert not strict.test_set_dependent
    np.testing.assert_allclose(strict.predict_dataset([test]).maps[:4], strict.predict_dataset([test[:4]]).maps,
                               rtol=1e-5, atol=1e-5)


def test_paper_protocol_follows_the_reference_formula(tiny_data):
    method = create_method("cflow", encoder="resnet18", weights="random", protocol="paper",
                           meta_epochs=1, sub_epochs=1).fit(batches(tiny_data))
    test = torch.cat(batches(tiny_data, split="test"))
    prediction = method.predict_dataset([test[:5], test[5:]])
    with torch.no_grad():
        log_ps = method.forward_scores(test)
    total = 0
    for log_p in log_ps:
        prob = torch.exp(log_p.double() - log_p.max())
        total = total + torch.nn.functional.interpolate(prob[:, None], size=(64, 64), mode="bilinear",
                                                        align_corners=True)[:, 0]
    expected = (total.max() - total).float().numpy()
    np.testing.assert_allclose(prediction.maps, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(prediction.image_scores, expected.max(axis=(1, 2)), rtol=1e-5, atol=1e-6)


def test_mobilenet_uses_the_reference_levels():
    method = create_method("cflow", encoder="mobilenetv3_large_100", weights="random")
    method.encoder_ = method._build_encoder("random")
    assert method.encoder_.channels == [40, 112, 160]
    assert method.encoder_.strides == [8, 16, 32]


def test_decoders_are_seeded():
    one = create_method("cflow", encoder="resnet18", weights="random", seed=3, coupling_blocks=2)
    two = create_method("cflow", encoder="resnet18", weights="random", seed=3, coupling_blocks=2)
    for m in (one, two):
        m.encoder_ = m._build_encoder("random")
    a, b = one._build_decoders(), two._build_decoders()
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


def test_soft_permutations_are_seeded_rotations_and_hard_ones_a_labelled_choice():
    def decoders(**params):
        method = create_method("cflow", encoder="resnet18", weights="random", coupling_blocks=2, **params)
        method.encoder_ = method._build_encoder("random")
        return method, method._build_decoders()

    numpy_state = np.random.get_state()[1].copy()
    method, soft = decoders(seed=3)
    assert (np.random.get_state()[1] == numpy_state).all()  # the global generator is put back
    assert method.labels()["permutation"] == "soft"
    for flow, channels in zip(soft, method.encoder_.channels, strict=True):
        for block in flow.module_list:
            w = block.w_perm.reshape(channels, channels).double()
            torch.testing.assert_close(w @ w.T, torch.eye(channels, dtype=torch.float64), atol=1e-5, rtol=0)
            assert torch.linalg.det(w).item() == pytest.approx(1.0, abs=1e-3)  # SO(C), not just O(C)
            assert w.abs().max() < 0.9  # mixes channels: no entry is a permutation's 1
            torch.testing.assert_close(block.w_perm_inv.reshape(channels, channels).double(), w.T)
    _, other_seed = decoders(seed=4)
    assert not torch.equal(soft[0].module_list[0].w_perm, other_seed[0].module_list[0].w_perm)
    hard_method, hard = decoders(seed=3, permute_soft=False)
    assert hard_method.labels()["permutation"] == "hard"
    w = hard[0].module_list[0].w_perm.flatten()
    assert set(w.unique().tolist()) == {0.0, 1.0} and w.sum() == hard_method.encoder_.channels[0]
