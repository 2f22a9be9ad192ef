"""CFLOW-AD (Gudovskiy et al., WACV 2022): conditional normalizing flows over encoder feature vectors.

The model is the paper's and the official code's: a frozen encoder tapped at three levels (ResNets padded
by reflection, as the official code's ResNet copy), and per level a FrEIA sequence of AllInOneBlocks (affine
clamp 1.9, SOFTPLUS global affine, ``permute_soft=True``: a fixed random orthogonal channel mixing drawn
from SO(C)) over single C-dim feature vectors ("fibers"), each coupling subnet conditioned on a 2-D sin/cos
positional encoding. Training maximizes −logsigmoid(log p / C) over shuffled fiber batches, on images
rotated by up to ±5° (nearest neighbour, as torchvision's ``RandomRotation`` in the official loader).
Departures are parameters, named in every record: ``permute_soft=False`` (hard channel permutations,
anomalib's choice) and ``encoder_padding="zeros"`` for ResNets (timm's).

Two scoring protocols, always recorded:

- ``paper``: per level, log-likelihoods minus their maximum over the whole test set, exp, bilinear
  upsampling, sum over levels; map = (max over the test set) − sum. An image's score depends on the other
  test images (``test_set_dependent``), exactly as the reference code evaluates.
- ``strict`` (default): the same computation with every constant from the training data: each level's
  log-likelihoods minus their maximum over the training fibers, and map = (number of levels) − sum.
  An image scores the same alone or in any batch.

Neither protocol selects an epoch: the reported model is the last one.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterable
from typing import Any

import FrEIA.framework as Ff
import FrEIA.modules as Fm
import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torch import nn

from anobench.core import progress
from anobench.methods.base import EncoderMethod, Prediction, tensor_bytes
from anobench.methods.encoders import Level, is_resnet
from anobench.methods.marks import HARD_PERMUTATION, REFLECT_PADDING, SHORT_SCHEDULE

HALF_LOG_TWO_PI = 0.5 * math.log(2 * math.pi)
PAPER_SCHEDULE = (25, 8)
# Levels per encoder where timm's default stage ends are not the reference's (MobileNetV3-L: 40/112/160).
DEFAULT_LEVELS: dict[str, tuple[Level, ...]] = {"mobilenetv3_large_100": ("blocks.2", "blocks.4", "blocks.5")}


def positional_encoding_2d(channels: int, height: int, width: int) -> torch.Tensor:
    """(channels, height, width) sin/cos codes: the first half encodes the column, the second the row.

    Within each half, even channels are sin and odd channels cos of position × 10000^(−2i/(channels/2)),
    as in the CFLOW-AD code (after the Transformer's 1-D encoding).
    """
    if channels % 4:
        raise ValueError(f"positional encoding needs a multiple of 4 channels, got {channels}")
    half = channels // 2
    frequencies = torch.exp(torch.arange(0.0, half, 2) * -(math.log(1e4) / half))  # (half/2,)
    cols = torch.arange(0.0, width)[:, None] * frequencies  # (W, half/2)
    rows = torch.arange(0.0, height)[:, None] * frequencies  # (H, half/2)
    code = torch.zeros(channels, height, width)
    code[0:half:2] = torch.sin(cols).T[:, None, :].expand(-1, height, -1)
    code[1:half:2] = torch.cos(cols).T[:, None, :].expand(-1, height, -1)
    code[half::2] = torch.sin(rows).T[:, :, None].expand(-1, -1, width)
    code[half + 1::2] = torch.cos(rows).T[:, :, None].expand(-1, -1, width)
    return code


def subnet(dims_in: int, dims_out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(dims_in, 2 * dims_in), nn.ReLU(), nn.Linear(2 * dims_in, dims_out))


def conditional_flow(channels: int, condition: int, blocks: int, clamp: float, permute_soft: bool) -> Ff.SequenceINN:
    """One decoder: ``blocks`` AllInOneBlocks over C-dim fibers, each conditioned on a P-dim code."""
    flow = Ff.SequenceINN(channels)
    for _ in range(blocks):
        flow.append(Fm.AllInOneBlock, cond=0, cond_shape=(condition,), subnet_constructor=subnet,
                    affine_clamping=clamp, global_affine_type="SOFTPLUS", permute_soft=permute_soft)
    return flow


def log_likelihood(z: torch.Tensor, log_det_jacobian: torch.Tensor) -> torch.Tensor:
    """log p(x) = C·(−½ ln 2π) − ½‖z‖² + log|det J| per fiber."""
    channels = z.shape[1]
    return -channels * HALF_LOG_TWO_PI - 0.5 * z.pow(2).sum(dim=1) + log_det_jacobian


def learning_rate(lr: float, meta_epoch: int, meta_epochs: int, warmup_epochs: int, warmup_progress: float) -> float:
    """The reference schedule: linear warm-up from lr/10 over the first meta-epochs, then cosine to lr/1000.

    ``warmup_progress`` is the fraction of the warm-up done (counted in image batches), used while
    ``meta_epoch < warmup_epochs``.
    """
    floor = lr * 0.1**3

    def cosine(epoch: int) -> float:
        return floor + (lr - floor) * (1 + math.cos(math.pi * epoch / meta_epochs)) / 2

    if meta_epoch < warmup_epochs:
        start, end = lr / 10, cosine(warmup_epochs)
        return start + warmup_progress * (end - start)
    return cosine(meta_epoch)


def official_padding(encoder: str) -> str:
    """The official code's padding for an encoder: reflect in its ResNet copy, zeros elsewhere (its
    MobileNetV3 copy and the timm models it loads)."""
    return "reflect" if is_resnet(encoder) else "zeros"


@contextlib.contextmanager
def numpy_seed(seed: int):
    """FrEIA draws its permutations from numpy's global generator (``np.random.permutation``, and scipy's
    ``special_ortho_group`` with no ``random_state`` for soft ones): seed it, then put it back."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


class CFlow(EncoderMethod):
    """CFLOW-AD: conditional normalizing flows on multi-scale encoder features.

    Parameters
    ----------
    encoder : str, default="wide_resnet50_2"
    weights : {"imagenet", "random"} or path, default="imagenet"
    encoder_padding : {"official", "zeros", "reflect"}, default="official"
        "official": as the official code builds each encoder (reflect for ResNets, zeros otherwise).
    levels : tuple or None, default=None
        Encoder levels; None takes layer2/3/4 (timm indices 2, 3, 4) or the reference's levels for
        MobileNetV3-L (40/112/160 channels).
    coupling_blocks : int, default=8
    condition_dims : int, default=128
        P, the positional encoding's size (half for rows, half for columns).
    clamp : float, default=1.9
    permute_soft : bool, default=True
        True (the official code): each block mixes channels with a fixed random orthogonal matrix from SO(C)
        (scipy's ``special_ortho_group``, seeded); False: a fixed random hard permutation (anomalib's choice,
        a departure, labelled).
    lr : float, default=2e-4
    meta_epochs, sub_epochs : int, default=25, 8
        The paper's schedule; anything else is labelled a short schedule.
    warmup_epochs : int, default=2
    fiber_batch : int, default=256
        N, fibers per optimizer step.
    rotation_degrees : float, default=5.0
        Training augmentation: each image rotated by a uniform angle in ±this, nearest-neighbour
        interpolation, zero fill (0 turns it off).
    max_steps : int or None, default=None
        Stop training after this many optimizer steps (a labelled short schedule, for speed/size suites).
    protocol : {"strict", "paper"}, default="strict"
    calibration_images : int or None, default=None
        Training images used for the strict protocol's per-level constants (None: all).
    autocast : bool, default=False
        bf16 autocast at inference on CUDA.
    compile : bool, default=False
        ``torch.compile`` the decoders for inference on CUDA.
    seed : int, default=0
    device : str, default="cpu"
    """

    name = "cflow"
    head_component = "decoders"
    display_name = "CFLOW-AD"
    marks = (SHORT_SCHEDULE, REFLECT_PADDING, HARD_PERMUTATION)
    encoder_row = "the encoder of the CFLOW cells (every level up to the last)"
    check_params = {"meta_epochs": 1, "sub_epochs": 1, "coupling_blocks": 2, "fiber_batch": 128}

    def __init__(self, *, encoder: str = "wide_resnet50_2", weights: str = "imagenet",
                 encoder_padding: str = "official", levels: tuple[Level, ...] | None = None,
                 coupling_blocks: int = 8, condition_dims: int = 128,
                 clamp: float = 1.9, permute_soft: bool = True, lr: float = 2e-4, meta_epochs: int = 25,
                 sub_epochs: int = 8, warmup_epochs: int = 2, fiber_batch: int = 256,
                 rotation_degrees: float = 5.0, max_steps: int | None = None, protocol: str = "strict",
                 calibration_images: int | None = None, autocast: bool = False, compile: bool = False,
                 seed: int = 0, device: str = "cpu"):
        self.encoder = encoder
        self.weights = weights
        self.encoder_padding = encoder_padding
        self.levels = levels
        self.coupling_blocks = coupling_blocks
        self.condition_dims = condition_dims
        self.clamp = clamp
        self.permute_soft = permute_soft
        self.lr = lr
        self.meta_epochs = meta_epochs
        self.sub_epochs = sub_epochs
        self.warmup_epochs = warmup_epochs
        self.fiber_batch = fiber_batch
        self.rotation_degrees = rotation_degrees
        self.max_steps = max_steps
        self.protocol = protocol
        self.calibration_images = calibration_images
        self.autocast = autocast
        self.compile = compile
        self.seed = seed
        self.device = device

    @property
    def test_set_dependent(self) -> bool:  # type: ignore[override]
        return self.protocol == "paper"

    def encoder_padding_mode(self) -> str:
        return official_padding(self.encoder) if self.encoder_padding == "official" else self.encoder_padding

    def encoder_levels(self) -> tuple[Level, ...]:
        if self.levels is not None:
            return tuple(self.levels)
        return DEFAULT_LEVELS.get(self.encoder.split(".")[0], (2, 3, 4))

    def labels(self) -> dict[str, Any]:
        full = (self.meta_epochs, self.sub_epochs) == PAPER_SCHEDULE and self.max_steps is None
        return {**super().labels(), "schedule": "paper" if full else "short", "permutation": "soft" if self.permute_soft else "hard",
                "inference_autocast_bf16": self._use_autocast(),
                "inference_compiled": self.compile and self.device.startswith("cuda")}

    def memory_estimate(self, geometry, n_train: int, batch_size: int) -> dict[str, int]:
        decoders, activations = 0, 0
        for c, (h, w) in zip(geometry.channels, geometry.sizes, strict=True):
            width = c - c // 2 + self.condition_dims
            block = width * 2 * width + 2 * width * c + 2 * c * c  # subnet weights and the permutation matrices
            decoders += self.coupling_blocks * block * 4
            activations = max(activations, batch_size * h * w * 2 * width * 4 * 3)  # one level in one pass
        return {**super().memory_estimate(geometry, n_train, batch_size), "decoders": 4 * decoders,  # + Adam
                "level_pass": activations}

    # -- building ----------------------------------------------------------------------------------------

    def _build_decoders(self, draw_soft_permutations: bool = True) -> nn.ModuleList:
        """The seeded decoders. ``draw_soft_permutations=False`` builds hard ones in their place, for a
        skeleton whose saved state (which holds every block's mixing matrix) replaces them: drawing from SO(C)
        takes seconds per block at C=2048."""
        if self.protocol not in ("strict", "paper"):
            raise ValueError(f"protocol must be 'strict' or 'paper', got {self.protocol!r}")
        soft = self.permute_soft and draw_soft_permutations
        with numpy_seed(self.seed), torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            flows = [conditional_flow(c, self.condition_dims, self.coupling_blocks, self.clamp, soft)
                     for c in self.encoder_.channels]
        return nn.ModuleList(flows).to(self.device)

    def _codes(self, height: int, width: int) -> torch.Tensor:
        """(H·W, P) positional codes of a level's grid, cached per grid size."""
        key = (height, width)
        if key not in self._code_cache:
            code = positional_encoding_2d(self.condition_dims, height, width)
            self._code_cache[key] = code.reshape(self.condition_dims, -1).T.contiguous().to(self.device)
        return self._code_cache[key]

    def _fibers(self, feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B·H·W, C) feature vectors and their (B·H·W, P) codes, image-major."""
        b, c, h, w = feature.shape
        fibers = feature.permute(0, 2, 3, 1).reshape(b * h * w, c)
        return fibers, self._codes(h, w).repeat(b, 1)

    # -- training ----------------------------------------------------------------------------------------

    def _augment(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if not self.rotation_degrees:
            return images
        angles = (torch.rand(len(images), generator=generator) * 2 - 1) * self.rotation_degrees
        return torch.stack([TF.rotate(img, float(a), interpolation=TF.InterpolationMode.NEAREST)
                            for img, a in zip(images, angles, strict=True)])

    def _schedule(self, batches) -> Iterable[tuple[int, float, torch.Tensor]]:
        """(meta-epoch, fraction of the warm-up done, image batch) over the whole schedule."""
        n = len(batches)
        warmup_batches = max(self.warmup_epochs * self.sub_epochs * n, 1)
        for meta_epoch in range(self.meta_epochs):
            for sub_epoch in range(self.sub_epochs):
                desc = f"cflow fit {meta_epoch + 1}/{self.meta_epochs}.{sub_epoch + 1}"
                for i, images in enumerate(progress(batches, desc, total=n)):
                    yield meta_epoch, ((meta_epoch * self.sub_epochs + sub_epoch) * n + i) / warmup_batches, images

    def _fit(self, batches) -> None:
        """Encoder features of an image batch once; per level, shuffled fibers in batches of N, one step each."""
        self._code_cache: dict[tuple[int, int], torch.Tensor] = {}
        self.decoders_ = self._build_decoders()
        optimizer = torch.optim.Adam(self.decoders_.parameters(), lr=self.lr)
        generator = torch.Generator().manual_seed(self.seed)
        steps, fibers_seen, train_seconds = 0, 0, 0.0
        losses: dict[int, list[float]] = {}
        self.decoders_.train()
        for meta_epoch, warm, images in self._schedule(batches):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(self.lr, meta_epoch, self.meta_epochs, self.warmup_epochs, warm)
            with torch.no_grad():
                feats = self.encoder_(self._augment(images, generator).to(self.device))
            start = time.perf_counter()
            for feature, decoder in zip(feats, self.decoders_, strict=True):
                fibers, codes = self._fibers(feature)
                order = torch.randperm(len(fibers), generator=generator).to(self.device)
                n_steps = len(fibers) // self.fiber_batch  # the remainder is dropped, as the reference does
                if self.max_steps is not None:
                    n_steps = min(n_steps, self.max_steps - steps)
                for k in range(n_steps):
                    pick = order[k * self.fiber_batch:(k + 1) * self.fiber_batch]
                    z, log_det = decoder(fibers[pick], c=[codes[pick]])
                    loss = -F.logsigmoid(log_likelihood(z, log_det) / fibers.shape[1]).mean()
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    losses.setdefault(meta_epoch, []).append(loss.item())
                steps += n_steps
                fibers_seen += n_steps * self.fiber_batch
            train_seconds += time.perf_counter() - start
            if self.max_steps is not None and steps >= self.max_steps:
                break
        self.decoders_.eval()
        self.fit_stats_ = {"steps": steps, "fibers": fibers_seen, "decoder_train_s": train_seconds,
                           "fibers_per_s": fibers_seen / train_seconds if train_seconds else None,
                           "mean_loss_per_meta_epoch": [float(np.mean(v)) for _, v in sorted(losses.items())]}
        self.level_constants_ = self._calibrate(batches) if self.protocol == "strict" else None

    @torch.no_grad()
    def _calibrate(self, batches: Iterable[torch.Tensor]) -> torch.Tensor:
        """Per-level maximum of log p / C over the training fibers (no augmentation): the strict constants."""
        maxima = torch.full((len(self.decoders_),), -math.inf, dtype=torch.float64)
        seen = 0
        for images in batches:
            if self.calibration_images is not None and seen >= self.calibration_images:
                break
            if self.calibration_images is not None:
                images = images[: self.calibration_images - seen]
            seen += len(images)
            for level, log_p in enumerate(self.forward_scores(images.to(self.device))):
                maxima[level] = max(maxima[level], log_p.max().item())
        return maxima

    def fit_stats(self) -> dict[str, Any]:
        return dict(self.fit_stats_)

    # -- scoring -----------------------------------------------------------------------------------------

    def _use_autocast(self) -> bool:
        return self.autocast and self.device.startswith("cuda")

    def _inference_decoders(self) -> list[nn.Module]:
        if self.compile and self.device.startswith("cuda"):
            if not hasattr(self, "_compiled"):
                self._compiled = [torch.compile(d) for d in self.decoders_]
            return self._compiled
        return list(self.decoders_)

    def forward_scores(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Per level, log p / C of every fiber, (B, h, w), float32: all fibers of a level in one pass."""
        context = torch.autocast("cuda", dtype=torch.bfloat16) if self._use_autocast() else contextlib.nullcontext()
        out = []
        with context:
            feats = self.encoder_(images)
            for feature, decoder in zip(feats, self._inference_decoders(), strict=True):
                b, c, h, w = feature.shape
                fibers, codes = self._fibers(feature)
                z, log_det = decoder(fibers, c=[codes])
                out.append((log_likelihood(z.float(), log_det.float()) / c).reshape(b, h, w))
        return out

    @staticmethod
    def _probability_sum(log_ps: list[torch.Tensor], constants: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Σ_levels upsample(exp(log p − constant)). The exp runs in float64 as the reference's does; the
        upsampled sum runs in float32, the precision the map is stored in."""
        total = None
        for log_p, constant in zip(log_ps, constants.tolist(), strict=True):
            prob = torch.exp(log_p.double() - constant).float()
            up = F.interpolate(prob.unsqueeze(1), size=size, mode="bilinear", align_corners=True).squeeze(1)
            total = up if total is None else total.add_(up)
        return total

    def postprocess(self, raw: list[torch.Tensor], input_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Strict protocol: constants from training; map = levels − Σ prob; image score = max of the map."""
        if self.protocol == "paper":
            constants = torch.tensor([lp.max().item() for lp in raw], dtype=torch.float64)
            total = self._probability_sum(raw, constants, input_size)
            maps = total.max() - total  # this batch stands in for the test set
        else:
            maps = len(raw) - self._probability_sum(raw, self.level_constants_, input_size)
        return maps.flatten(1).amax(dim=1), maps

    @torch.no_grad()
    def predict_dataset(self, batches: Iterable[torch.Tensor]) -> Prediction:
        """The paper protocol normalizes over the whole test set: a first pass collects every level's log p."""
        if self.protocol != "paper":
            return super().predict_dataset(batches)
        self.check_fitted()
        collected, size = [], None
        for images in batches:
            size = tuple(images.shape[-2:])
            collected.append([lp.cpu() for lp in self.forward_scores(images.to(self.device))])
        levels = list(zip(*collected, strict=True))
        constants = torch.tensor([max(lp.max().item() for lp in level) for level in levels], dtype=torch.float64)
        totals = torch.cat([self._probability_sum(list(batch), constants, size) for batch in collected])
        maps = totals.max() - totals
        return Prediction(maps.flatten(1).amax(dim=1).numpy(), maps.numpy())

    # -- size and persistence ----------------------------------------------------------------------------

    def _fitted_size(self) -> dict[str, int]:
        return {"decoders": tensor_bytes(*self.decoders_.parameters(), *self.decoders_.buffers()),
                **({"level_constants": tensor_bytes(self.level_constants_)} if self.level_constants_ is not None else {})}

    def _fitted_state(self) -> dict[str, Any]:
        return {"decoders": self.decoders_.state_dict(), "level_constants": self.level_constants_,
                "fit_stats": self.fit_stats_}

    def _restore(self, state: dict[str, Any]) -> None:
        self._code_cache = {}
        self.decoders_ = self._build_decoders(draw_soft_permutations=False)
        self.decoders_.load_state_dict(state["decoders"])
        self.decoders_.eval()
        self.level_constants_ = state["level_constants"]
        self.fit_stats_ = state["fit_stats"]
