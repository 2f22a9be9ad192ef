"""FastFlow (Yu et al., 2021), as the reference implementation (gathierry/FastFlow) builds and trains it.

The authors released no code; gathierry's implementation is the one anomalib copies. Per encoder level
(timm ``out_indices`` 1–3: strides 4, 8, 16) a trainable ``LayerNorm`` over (C, H, W), then a 2-D
normalizing flow: ``flow_steps`` FrEIA ``AllInOneBlock`` steps (affine clamp 2.0, SOFTPLUS global affine,
a fixed random channel permutation), whose subnet is ``conv k×k → ReLU → conv k×k`` with
``int(c·hidden_ratio)`` hidden channels, k = 3 on even steps and 1 on odd ones unless ``conv3x3_only``.
Step count, hidden ratio and kernels come from the reference's config for the encoder.

Training: Adam (lr 1e-3, weight decay 1e-5), 500 epochs of shuffled batches (32 in the reference: the
suite's ``batch_size``), an incomplete last batch dropped; per level the loss is
mean over the batch of (½·Σ z² − log|det J|), summed over levels. Inference: per level
p = exp(−½·mean_c z²), bilinearly upsampled to the input size; map = −mean over levels of p (in [−1, 0],
higher is more anomalous); image score = the map's maximum (anomalib's; the reference evaluates pixels only).

The coupling steps are written here with exactly the ``AllInOneBlock`` arithmetic (a test checks them
against FrEIA's block); the fixed permutation is applied by indexing rather than as a 1×1 convolution with
a permutation matrix, which computes the same values without C² multiply-adds per position. Scoring takes a
leaner path through the same arithmetic (``Flow.latent``): the elementwise steps work in place, tanh is
computed through the sigmoid, constant factors are folded into the subnet's last convolution, and the last
permutation is left out, since mean_c z² does not depend on the order of the channels; a test holds it to
the training path.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from anobench.core import progress
from anobench.methods.base import EncoderMethod, tensor_bytes
from anobench.methods.encoders import Level
from anobench.methods.marks import REFLECT_PADDING, SHORT_SCHEDULE

# The reference's configs/*.yaml: (flow steps, hidden ratio, 3×3 convolutions only). Other CNN encoders
# take the WideResNet-50 setting unless given.
REFERENCE_CONFIGS = {
    "resnet18": (8, 1.0, True),
    "wide_resnet50_2": (8, 1.0, False),
}
OTHER_CNN_CONFIG = (8, 1.0, False)
REFERENCE_EPOCHS = 500
# AllInOneBlock's SOFTPLUS global affine: γ = 0.1·softplus_β=0.5(g), initialized so that γ = 1
GLOBAL_SCALE_INIT = 2.0 * math.log(math.exp(0.5 * 10.0) - 1)


class CouplingStep(nn.Module):
    """One ``AllInOneBlock`` step on (B, C, H, W): affine coupling of the last C//2 channels conditioned on
    the first C − C//2, then y = P(x·γ + β) with a fixed channel permutation P."""

    def __init__(self, channels: int, kernel: int, hidden_ratio: float, clamp: float, permutation: torch.Tensor):
        super().__init__()
        self.passive = channels - channels // 2
        self.active = channels // 2
        self.clamp = clamp
        hidden = int(self.passive * hidden_ratio)
        self.subnet = nn.Sequential(nn.Conv2d(self.passive, hidden, kernel, padding="same"), nn.ReLU(),
                                    nn.Conv2d(hidden, 2 * self.active, kernel, padding="same"))
        self.global_scale = nn.Parameter(torch.full((1, channels, 1, 1), GLOBAL_SCALE_INIT))
        self.global_offset = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("permutation", permutation)
        self.register_buffer("inverse_permutation", torch.argsort(permutation))

    def scale(self) -> torch.Tensor:
        return 0.1 * F.softplus(self.global_scale, beta=0.5)

    def _coefficients(self, passive: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(clamp·tanh(a₁), a₂) of the scaled subnet output a = 0.1·subnet(passive) = (a₁, a₂)."""
        a = self.subnet(passive).mul_(0.1)  # in place, as AllInOneBlock does (no backward needs the conv output)
        return self.clamp * torch.tanh(a[:, : self.active]), a[:, self.active:]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(y, log|det J| per sample)."""
        passive, active = x[:, : self.passive], x[:, self.passive:]
        log_scale, shift = self._coefficients(passive)
        active = torch.addcmul(shift, active, torch.exp(log_scale))
        scale = self.scale()
        y = permute_channels(torch.addcmul(self.global_offset, torch.cat([passive, active], dim=1), scale),
                             self.permutation)
        return y, log_scale.sum(dim=(1, 2, 3)) + x[0, 0].numel() * torch.log(scale).sum()

    def score_step(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``forward(x)[0]`` without gradients, overwriting ``x``: the permuted result is written to ``out`` (a
        tensor like ``x``); without ``out``, ``x`` is returned unpermuted. The same arithmetic, rearranged so
        that every elementwise step is one in-place pass: clamp·tanh(u) is computed as clamp·(2σ(2u) − 1)
        (PyTorch's CPU tanh takes about six times as long as its sigmoid), and the constants (the subnet's 0.1,
        the active half's global affine γ_a, β_a, and e^−clamp) ride on the last convolution's weights and on
        the exponent."""
        first, _, last = self.subnet
        p, n = self.passive, self.active
        scale, offset = self.scale(), self.global_offset
        # the last convolution's rows: n giving 2u, n giving γ_a·shift + β_a (shift = 0.1·its output)
        rows = torch.cat([torch.full_like(scale[0, p:, 0, 0], 0.2), 0.1 * scale[0, p:, 0, 0]])
        bias = last.bias * rows + torch.cat([torch.zeros_like(offset[0, p:, 0, 0]), offset[0, p:, 0, 0]])
        a = F.conv2d(first(x[:, :p]).relu_(), last.weight * rows.view(-1, 1, 1, 1), bias, padding=last.padding)
        # γ_a·exp(clamp·tanh(u)) = exp(2·clamp·σ(2u) + log γ_a − clamp)
        factor = a[:, :n].sigmoid_()
        torch.add(torch.log(scale[:, p:]) - self.clamp, factor, alpha=2 * self.clamp, out=factor).exp_()
        active, passive = x[:, p:], x[:, :p]
        torch.addcmul(a[:, n:], active, factor, out=active)
        torch.addcmul(offset[:, :p], passive, scale[:, :p], out=passive)
        return x if out is None else torch.index_select(x, 1, self.permutation, out=out)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        x = (permute_channels(y, self.inverse_permutation) - self.global_offset) / self.scale()
        passive, active = x[:, : self.passive], x[:, self.passive:]
        log_scale, shift = self._coefficients(passive)
        return torch.cat([passive, (active - shift) * torch.exp(-log_scale)], dim=1)


def permute_channels(x: torch.Tensor, permutation: torch.Tensor) -> torch.Tensor:
    """``x[:, permutation]`` as whole-plane copies."""
    return x.index_select(1, permutation)


class Flow(nn.Module):
    """The steps of one level; ``forward`` returns z and the summed log-determinant."""

    def __init__(self, steps: list[CouplingStep]):
        super().__init__()
        self.steps = nn.ModuleList(steps)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_det = torch.zeros(len(x), device=x.device, dtype=x.dtype)
        for step in self.steps:
            x, step_log_det = step(x)
            log_det = log_det + step_log_det
        return x, log_det

    @torch.no_grad()
    def latent(self, x: torch.Tensor) -> torch.Tensor:
        """z up to the order of its channels (the last step's permutation is left out), for scores that do
        not depend on it; overwrites ``x``."""
        spare = torch.empty_like(x)  # the steps permute into it and into x in turn: no new tensor per step
        for i, step in enumerate(self.steps):
            x, spare = step.score_step(x, out=spare if i < len(self.steps) - 1 else None), x
        return x

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        for step in reversed(self.steps):
            z = step.inverse(z)
        return z


def build_flow(channels: int, flow_steps: int, hidden_ratio: float, conv3x3_only: bool, clamp: float,
               generator: torch.Generator) -> Flow:
    """Kernel 3 on even steps and 1 on odd ones (3 everywhere with ``conv3x3_only``), as the reference."""
    steps = []
    for i in range(flow_steps):
        kernel = 1 if i % 2 == 1 and not conv3x3_only else 3
        steps.append(CouplingStep(channels, kernel, hidden_ratio, clamp, torch.randperm(channels, generator=generator)))
    return Flow(steps)


class FastFlow(EncoderMethod):
    """FastFlow: per-level 2-D normalizing flows over layer-normalized encoder features.

    Parameters
    ----------
    encoder : str, default="wide_resnet50_2"
    weights : {"imagenet", "random"} or path, default="imagenet"
    levels : tuple, default=(1, 2, 3)
        Encoder levels (timm feature indices: strides 4, 8, 16 for ResNets).
    flow_steps : int or None, default=None
        None: the reference's value for the encoder (8 for ResNet-18 and WideResNet-50).
    hidden_ratio : float or None, default=None
        None: the reference's value (1.0 for the CNNs).
    conv3x3_only : bool or None, default=None
        None: the reference's value (True for ResNet-18, False for WideResNet-50: alternating 3×3 and 1×1).
    clamp : float, default=2.0
    lr : float, default=1e-3
    weight_decay : float, default=1e-5
    epochs : int, default=500
        The reference's schedule; anything else (or ``max_steps``) is labelled a short schedule.
    max_steps : int or None, default=None
        Stop training after this many optimizer steps.
    seed : int, default=0
    device : str, default="cpu"
    """

    name = "fastflow"
    head_component = "decoders"
    display_name = "FastFlow"
    marks = (SHORT_SCHEDULE, REFLECT_PADDING)
    check_params = {"epochs": 1, "flow_steps": 2}

    def __init__(self, *, encoder: str = "wide_resnet50_2", weights: str = "imagenet",
                 levels: tuple[Level, ...] = (1, 2, 3), flow_steps: int | None = None,
                 hidden_ratio: float | None = None, conv3x3_only: bool | None = None, clamp: float = 2.0,
                 lr: float = 1e-3, weight_decay: float = 1e-5, epochs: int = REFERENCE_EPOCHS,
                 max_steps: int | None = None, seed: int = 0, device: str = "cpu"):
        self.encoder = encoder
        self.weights = weights
        self.levels = levels
        self.flow_steps = flow_steps
        self.hidden_ratio = hidden_ratio
        self.conv3x3_only = conv3x3_only
        self.clamp = clamp
        self.lr = lr
        self.weight_decay = weight_decay
        self.epochs = epochs
        self.max_steps = max_steps
        self.seed = seed
        self.device = device

    def encoder_levels(self) -> tuple[Level, ...]:
        return tuple(self.levels)

    def flow_config(self) -> tuple[int, float, bool]:
        """(flow steps, hidden ratio, 3×3 only): the parameters given, else the reference's for the encoder."""
        steps, ratio, only3 = REFERENCE_CONFIGS.get(self.encoder.split(".")[0], OTHER_CNN_CONFIG)
        return (self.flow_steps if self.flow_steps is not None else steps,
                self.hidden_ratio if self.hidden_ratio is not None else ratio,
                self.conv3x3_only if self.conv3x3_only is not None else only3)

    def labels(self) -> dict[str, Any]:
        full = self.epochs == REFERENCE_EPOCHS and self.max_steps is None
        steps, ratio, only3 = self.flow_config()
        return {**super().labels(), "schedule": "reference" if full else "short", "flow_steps": steps, "hidden_ratio": ratio,
                "conv3x3_only": only3}

    # -- building ----------------------------------------------------------------------------------------

    def _build(self, shapes: list[tuple[int, int, int]]) -> None:
        """The per-level layer norms and flows for feature maps of these (C, H, W) shapes."""
        steps, ratio, only3 = self.flow_config()
        generator = torch.Generator().manual_seed(self.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.norms_ = nn.ModuleList([nn.LayerNorm(list(shape), elementwise_affine=True) for shape in shapes])
            self.flows_ = nn.ModuleList([build_flow(c, steps, ratio, only3, self.clamp, generator)
                                         for c, _, _ in shapes])
        self.norms_.to(self.device)
        self.flows_.to(self.device)
        self.shapes_ = [tuple(s) for s in shapes]

    def _normalized_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Per level the layer-normalized encoder features of a batch (new tensors: the flows may overwrite them)."""
        with torch.no_grad():
            feats = self.encoder_(images)
        shapes = [tuple(f.shape[1:]) for f in feats]
        if self.shapes_ is None:
            self._build(shapes)
        elif shapes != self.shapes_:
            raise ValueError(f"FastFlow's layer norms are fitted to feature maps {self.shapes_} (the training "
                             f"images' size); these images give {shapes}. Score images of the training size.")
        return [norm(f) for f, norm in zip(feats, self.norms_, strict=True)]

    # -- training ----------------------------------------------------------------------------------------

    def _fit(self, batches) -> None:
        """The layer norms and flows are built at the first batch, for its feature-map shapes. A batch smaller
        than the first (the last one of an epoch) is skipped, as the reference's ``drop_last=True`` does."""
        self.shapes_ = None
        optimizer = None
        full_batch = None
        steps, images_seen, train_seconds = 0, 0, 0.0
        epoch_losses = []
        for epoch in range(self.epochs):
            losses = []
            for images in progress(batches, f"fastflow fit {epoch + 1}/{self.epochs}"):
                full_batch = full_batch or len(images)
                if len(images) < full_batch:
                    continue
                start = time.perf_counter()
                levels = [flow(f) for f, flow in zip(self._normalized_features(images.to(self.device)),
                                                     self.flows_, strict=True)]
                if optimizer is None:
                    parameters = [*self.norms_.parameters(), *self.flows_.parameters()]
                    optimizer = torch.optim.Adam(parameters, lr=self.lr, weight_decay=self.weight_decay)
                loss = sum(torch.mean(0.5 * z.pow(2).sum(dim=(1, 2, 3)) - log_det) for z, log_det in levels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                train_seconds += time.perf_counter() - start
                losses.append(loss.item())
                steps += 1
                images_seen += len(images)
                if self.max_steps is not None and steps >= self.max_steps:
                    break
            epoch_losses.append(float(np.mean(losses)))
            if self.max_steps is not None and steps >= self.max_steps:
                break
        self.norms_.eval()
        self.flows_.eval()
        self.fit_stats_ = {"steps": steps, "epochs_run": len(epoch_losses), "train_s": train_seconds,
                           "images_per_s": images_seen / train_seconds if train_seconds else None,
                           "mean_loss_per_epoch": epoch_losses}

    def fit_stats(self) -> dict[str, Any]:
        return dict(self.fit_stats_)

    # -- scoring -----------------------------------------------------------------------------------------

    def forward_scores(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Per level, log p = −½·mean over channels of z², (B, h, w)."""
        return [-0.5 * flow.latent(f).pow(2).mean(dim=1)
                for f, flow in zip(self._normalized_features(images), self.flows_, strict=True)]

    def postprocess(self, raw: list[torch.Tensor], input_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        maps = -torch.stack([F.interpolate(torch.exp(log_p).unsqueeze(1), size=input_size, mode="bilinear",
                                           align_corners=False).squeeze(1) for log_p in raw]).mean(dim=0)
        return maps.flatten(1).amax(dim=1), maps

    # -- memory, size, persistence -------------------------------------------------------------------------

    def memory_estimate(self, geometry, n_train: int, batch_size: int) -> dict[str, int]:
        steps, ratio, _ = self.flow_config()
        weights, activations = 0, 0
        for c, (h, w) in zip(geometry.channels, geometry.sizes, strict=True):
            passive, active = c - c // 2, c // 2
            hidden = int(passive * ratio)
            weights += steps * (9 * (passive * hidden + hidden * 2 * active) + 2 * c) + 2 * c * h * w
            activations += steps * 8 * c * h * w  # what each step keeps for the backward pass (measured: R18, 256 px)
        return {**super().memory_estimate(geometry, n_train, batch_size),
                "flows_and_norms": 4 * 4 * weights,  # parameters, gradients and Adam's two moments
                "training_activations": batch_size * activations * 4}

    def _fitted_size(self) -> dict[str, int]:
        return {"layer_norms": tensor_bytes(*self.norms_.parameters()),
                "flows": tensor_bytes(*self.flows_.parameters(), *self.flows_.buffers())}

    def _fitted_state(self) -> dict[str, Any]:
        return {"shapes": [list(s) for s in self.shapes_], "norms": self.norms_.state_dict(),
                "flows": self.flows_.state_dict(), "fit_stats": self.fit_stats_}

    def _restore(self, state: dict[str, Any]) -> None:
        self._build([tuple(s) for s in state["shapes"]])
        self.norms_.load_state_dict(state["norms"])
        self.flows_.load_state_dict(state["flows"])
        self.norms_.eval()
        self.flows_.eval()
        self.fit_stats_ = state["fit_stats"]
