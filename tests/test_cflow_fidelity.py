"""CFLOW-AD against an independent, straight-line reimplementation of the official algorithm.

The reference below is written from the official code (github.com/gudovskiy/cflow-ad: ``model.py``'s
``freia_cflow_head`` and ``positionalencoding2d``, ``train.py``'s ``train_meta_epoch`` and test-time score
aggregation, ``custom_models/utils.py``'s learning-rate helpers, ``custom_models/resnet.py``'s reflect
padding, the loader's ``RandomRotation(5)``) and shares no code with ``anobench.methods``. It takes one thing
from ours, the seeding protocol, because the official code seeds from the clock: numpy and torch are seeded
with the seed while the encoder and then the decoders (level by level) are built, and one ``torch.Generator``
seeded with the seed draws, per image batch, the rotation angles and then each level's fiber order.

A few optimizer steps on generated images, then every level's log-likelihood of every test fiber, the loss
trace and the paper-protocol anomaly maps must agree to 1e-5.
"""

import math

import FrEIA.framework as Ff
import FrEIA.modules as Fm
import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torch import nn

from anobench.methods import create_method
from tests.test_method_contract import batches

SEED, BATCH, N, SIZE = 3, 4, 16, 64
SCHEDULE = {"meta_epochs": 2, "sub_epochs": 1, "warmup_epochs": 1, "lr": 2e-3}  # warm-up, then cosine
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TOLERANCE = 1e-5


def official_encoder(seed):
    """ResNet-18 layer2/3/4 with random weights, padding_mode='reflect' on the 7x7 stem and every 3x3 conv."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        body = timm.create_model("resnet18", pretrained=False, features_only=True, out_indices=(2, 3, 4))
    for module in body.modules():
        if isinstance(module, nn.Conv2d) and module.kernel_size in ((3, 3), (7, 7)):
            module.padding_mode = "reflect"
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return lambda images: body.eval()((images - mean) / std)


def subnet_fc(dims_in, dims_out):
    return nn.Sequential(nn.Linear(dims_in, 2 * dims_in), nn.ReLU(), nn.Linear(2 * dims_in, dims_out))


def freia_cflow_head(n_feat, coupling_blocks=8, clamp_alpha=1.9, condition_vec=128):
    coder = Ff.SequenceINN(n_feat)
    for _ in range(coupling_blocks):
        coder.append(Fm.AllInOneBlock, cond=0, cond_shape=(condition_vec,), subnet_constructor=subnet_fc,
                     affine_clamping=clamp_alpha, global_affine_type="SOFTPLUS", permute_soft=True)
    return coder


def positionalencoding2d(D, H, W):
    P = torch.zeros(D, H, W)
    D = D // 2
    div_term = torch.exp(torch.arange(0.0, D, 2) * -(math.log(1e4) / D))
    pos_w = torch.arange(0.0, W).unsqueeze(1)
    pos_h = torch.arange(0.0, H).unsqueeze(1)
    P[0:D:2, :, :] = torch.sin(pos_w * div_term).transpose(0, 1).unsqueeze(1).repeat(1, H, 1)
    P[1:D:2, :, :] = torch.cos(pos_w * div_term).transpose(0, 1).unsqueeze(1).repeat(1, H, 1)
    P[D::2, :, :] = torch.sin(pos_h * div_term).transpose(0, 1).unsqueeze(2).repeat(1, 1, W)
    P[D + 1::2, :, :] = torch.cos(pos_h * div_term).transpose(0, 1).unsqueeze(2).repeat(1, 1, W)
    return P


def get_logp(C, z, logdet_J):
    return C * -math.log(math.sqrt(2 * math.pi)) - 0.5 * torch.sum(z**2, 1) + logdet_J


def fibers(e, P=128):
    """(B·H·W, C) features and (B·H·W, P) codes, as train.py lays them out."""
    B, C, H, W = e.size()
    S, E = H * W, B * H * W
    p = positionalencoding2d(P, H, W).unsqueeze(0).repeat(B, 1, 1, 1)
    return e.reshape(B, C, S).transpose(1, 2).reshape(E, C), p.reshape(B, P, S).transpose(1, 2).reshape(E, P)


def official_run(train, test, meta_epochs, sub_epochs, warmup_epochs, lr, rotation=5.0):
    """Train as train_meta_epoch does; return per-level log p / C of the test fibers, loss per meta-epoch, maps."""
    encoder = official_encoder(SEED)
    state = np.random.get_state()
    np.random.seed(SEED)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        decoders = [freia_cflow_head(c) for c in (128, 256, 512)]
    np.random.set_state(state)
    params = [p for d in decoders for p in d.parameters()]
    optimizer = torch.optim.Adam(params, lr=lr)
    generator = torch.Generator().manual_seed(SEED)
    eta_min = lr * 0.1**3
    warmup_from = lr / 10.0
    warmup_to = eta_min + (lr - eta_min) * (1 + math.cos(math.pi * warmup_epochs / meta_epochs)) / 2
    losses = []
    batches_per_sub_epoch = len(train)
    for epoch in range(meta_epochs):
        for group in optimizer.param_groups:  # adjust_learning_rate (cosine)
            group["lr"] = eta_min + (lr - eta_min) * (1 + math.cos(math.pi * epoch / meta_epochs)) / 2
        epoch_losses = []
        for sub_epoch in range(sub_epochs):
            for i, image in enumerate(train):
                if epoch < warmup_epochs:  # warmup_learning_rate
                    p = (i + sub_epoch * batches_per_sub_epoch + epoch * batches_per_sub_epoch * sub_epochs) / (
                        warmup_epochs * batches_per_sub_epoch * sub_epochs)
                    for group in optimizer.param_groups:
                        group["lr"] = warmup_from + p * (warmup_to - warmup_from)
                angles = (torch.rand(len(image), generator=generator) * 2 - 1) * rotation  # RandomRotation(5)
                image = torch.stack([TF.rotate(x, float(a), interpolation=TF.InterpolationMode.NEAREST, fill=0.0)
                                     for x, a in zip(image, angles, strict=True)])
                with torch.no_grad():
                    features = encoder(image)
                for e, decoder in zip(features, decoders, strict=True):
                    decoder.train()
                    C = e.size(1)
                    e_r, c_r = fibers(e.detach())
                    perm = torch.randperm(len(e_r), generator=generator)
                    for f in range(len(e_r) // N):
                        idx = torch.arange(f * N, (f + 1) * N)
                        z, log_jac_det = decoder(e_r[perm[idx]], [c_r[perm[idx]]])
                        loss = -F.logsigmoid(get_logp(C, z, log_jac_det) / C)
                        optimizer.zero_grad()
                        loss.mean().backward()
                        optimizer.step()
                        epoch_losses.append(loss.mean().item())
        losses.append(float(np.mean(epoch_losses)))
    test_dist = [[] for _ in decoders]
    shapes = []
    with torch.no_grad():
        features = encoder(test)
        for level, (e, decoder) in enumerate(zip(features, decoders, strict=True)):
            decoder.eval()
            B, C, H, W = e.size()
            shapes.append((H, W))
            e_r, c_r = fibers(e)
            z, log_jac_det = decoder(e_r, [c_r])
            test_dist[level] = get_logp(C, z, log_jac_det) / C
    score_map = 0
    for level, (H, W) in enumerate(shapes):  # train.py's score aggregation over the whole test set
        test_norm = test_dist[level].double()
        test_norm -= torch.max(test_norm)
        test_mask = torch.exp(test_norm).reshape(-1, H, W)
        score_map = score_map + F.interpolate(test_mask.unsqueeze(1), size=test.shape[-2:], mode="bilinear",
                                              align_corners=True).squeeze(1).numpy()
    maps = score_map.max() - score_map
    return [d.reshape(-1, *s) for d, s in zip(test_dist, shapes, strict=True)], losses, maps


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Fiber batches of 16 gain nothing from more threads, and on a loaded machine idle OpenMP threads cost
    tenfold; both implementations run under the same setting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def images(tiny_data):
    train = torch.cat(batches(tiny_data, "disc", size=SIZE))[:2 * BATCH]
    return [train[:BATCH], train[BATCH:]], torch.cat(batches(tiny_data, "disc", split="test", size=SIZE))[:6]


@pytest.fixture(scope="module")
def reference(images):
    train, test = images
    return official_run(train, test, **SCHEDULE)


def test_cflow_trains_and_scores_as_the_official_code(images, reference):
    train, test = images
    ours = create_method("cflow", encoder="resnet18", weights="random", seed=SEED, fiber_batch=N, protocol="paper",
                         **SCHEDULE).fit(train)
    reference_log_p, reference_losses, reference_maps = reference
    with torch.no_grad():
        our_log_p = ours.forward_scores(test)
    for level, (a, b) in enumerate(zip(our_log_p, reference_log_p, strict=True)):
        assert a.shape == b.shape
        assert (a - b).abs().max().item() < TOLERANCE, f"level {level}"
    np.testing.assert_allclose(ours.fit_stats()["mean_loss_per_meta_epoch"], reference_losses, rtol=0,
                               atol=TOLERANCE)
    assert reference_losses[-1] < reference_losses[0]  # it did train
    np.testing.assert_allclose(ours.predict_dataset([test]).maps, reference_maps, rtol=0, atol=TOLERANCE)


def test_the_reference_tells_a_departure_apart(images, reference):
    """The check can fail: hard permutations (anomalib's) do not pass for the official soft ones."""
    train, test = images
    hard = create_method("cflow", encoder="resnet18", weights="random", seed=SEED, fiber_batch=N,
                         permute_soft=False, **SCHEDULE).fit(train)
    reference_log_p = reference[0]
    with torch.no_grad():
        differences = [(a - b).abs().max().item() for a, b in zip(hard.forward_scores(test), reference_log_p,
                                                                    strict=True)]
    assert min(differences) > 100 * TOLERANCE


def test_defaults_are_the_official_codes():
    params = create_method("cflow").get_params()
    official = {"encoder": "wide_resnet50_2", "encoder_padding": "official", "coupling_blocks": 8,
                "condition_dims": 128, "clamp": 1.9, "permute_soft": True, "lr": 2e-4, "meta_epochs": 25,
                "sub_epochs": 8, "warmup_epochs": 2, "fiber_batch": 256, "rotation_degrees": 5.0}
    assert {k: params[k] for k in official} == official
