"""PaDiM (Defard et al., ICPR-W 2021), faithful to the paper and its reference code, but batched.

Per feature position: a Gaussian over a random subset of the concatenated layer 1–3 channels (mean and
unbiased covariance + ε·I); score = Mahalanobis distance, upsampled bilinearly, blurred with σ=4; image
score = max of the map. Mean and covariance are accumulated in one streaming pass (no store of all
training embeddings), and scoring is one batched matrix product per position set (no per-position loop).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F

from anobench.core import progress
from anobench.methods.base import EncoderMethod, tensor_bytes
from anobench.methods.encoders import Level, encoder_geometry
from anobench.methods.postprocess import gaussian_blur, upsample

# The paper's channel counts per encoder; other encoders keep all channels unless d_reduced is given.
D_REDUCED = {"resnet18": 100, "wide_resnet50_2": 550}

INVERSE_CHUNK_BYTES = 256 * 2**20  # float64 covariances inverted per chunk


class PaDiM(EncoderMethod):
    """PaDiM anomaly maps from per-position Gaussians.

    Parameters
    ----------
    encoder : str, default="wide_resnet50_2"
    weights : {"imagenet", "random"} or path, default="imagenet"
    encoder_padding : {"zeros", "reflect"}, default="zeros"
        The paper's zero padding; "reflect" as the official CFLOW-AD code pads its ResNets (ResNets only).
    levels : tuple, default=(1, 2, 3)
        Encoder levels (timm feature indices or module names); the first sets the map resolution.
    d_reduced : int or None, default=None
        Size of the random channel subset; None takes the paper's value (R18 100, WR50 550) or all.
    epsilon : float, default=0.01
        Added to the covariance diagonal.
    blur_sigma : float, default=4.0
    seed : int, default=0
        Fixes the channel subset (and random weights).
    device : str, default="cpu"
    """

    name = "padim"
    head_component = "statistics"
    display_name = "PaDiM"

    def __init__(self, *, encoder: str = "wide_resnet50_2", weights: str = "imagenet", encoder_padding: str = "zeros",
                 levels: tuple[Level, ...] = (1, 2, 3), d_reduced: int | None = None, epsilon: float = 0.01,
                 blur_sigma: float = 4.0, seed: int = 0, device: str = "cpu"):
        self.encoder = encoder
        self.weights = weights
        self.encoder_padding = encoder_padding
        self.levels = levels
        self.d_reduced = d_reduced
        self.epsilon = epsilon
        self.blur_sigma = blur_sigma
        self.seed = seed
        self.device = device

    def encoder_levels(self) -> tuple[Level, ...]:
        return tuple(self.levels)

    # -- embedding ---------------------------------------------------------------------------------------

    def _dimension(self, total: int) -> int:
        d = self.d_reduced or D_REDUCED.get(self.encoder.split(".")[0], total)
        if not 0 < d <= total:
            raise ValueError(f"d_reduced={d} must be between 1 and the {total} channels of levels {self.levels}")
        return d

    def memory_estimate(self, geometry, n_train: int, batch_size: int) -> dict[str, int]:
        d = self._dimension(sum(geometry.channels))
        positions = geometry.sizes[0][0] * geometry.sizes[0][1]
        return {**super().memory_estimate(geometry, n_train, batch_size),
                "covariances": positions * d * d * 4, "means": positions * d * 4,
                "batch_embeddings": 3 * batch_size * positions * d * 4, "inversion": 3 * INVERSE_CHUNK_BYTES}

    def _choose_channels(self) -> torch.Tensor:
        total = sum(self.encoder_.channels)
        d = self._dimension(total)
        generator = torch.Generator().manual_seed(self.seed)
        return torch.randperm(total, generator=generator)[:d].sort().values

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, d, H, W): the chosen channels of every level, nearest-upsampled to the first level's grid."""
        feats = self.encoder_(images)
        size = feats[0].shape[-2:]
        parts, offset = [], 0
        for feat, picks in zip(feats, self.level_picks_, strict=True):
            if len(picks):
                chosen = feat[:, picks - offset]
                parts.append(chosen if chosen.shape[-2:] == size else F.interpolate(chosen, size=size, mode="nearest"))
            offset += feat.shape[1]
        return torch.cat(parts, dim=1)

    def _split_picks(self, channel_index: torch.Tensor) -> list[torch.Tensor]:
        """The chosen channel indices (into the concatenation) that fall in each level."""
        bounds = torch.tensor([0, *self.encoder_.channels]).cumsum(0)
        return [channel_index[(channel_index >= lo) & (channel_index < hi)].to(self.device)
                for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]

    # -- fitting -----------------------------------------------------------------------------------------

    @torch.no_grad()
    def _fit(self, batches: Iterable[torch.Tensor]) -> None:
        self.channel_index_ = self._choose_channels()
        self.level_picks_ = self._split_picks(self.channel_index_)
        shift = total = outer = None
        n = 0
        for images in progress(batches, "padim fit"):
            emb = self._embed(images.to(self.device))
            b, d, h, w = emb.shape
            x = emb.permute(2, 3, 0, 1).reshape(h * w, b, d).float()
            if shift is None:  # centring on the first batch keeps the float32 sums well conditioned
                shift = x.mean(dim=1)
                total = torch.zeros_like(shift)
                outer = torch.zeros(h * w, d, d, device=x.device)
            xc = x - shift[:, None, :]
            total += xc.sum(dim=1)
            outer.baddbmm_(xc.transpose(1, 2), xc)
            n += b
        if n < 2:
            raise ValueError(f"PaDiM needs at least 2 training images, got {n}")
        centred_mean = total / n
        self.mean_ = centred_mean + shift
        self.precision_ = self._invert_in_place(outer, centred_mean, n)

    def _invert_in_place(self, outer: torch.Tensor, centred_mean: torch.Tensor, n: int) -> torch.Tensor:
        """Turn the sums of outer products into inverse covariances, chunk by chunk, in float64."""
        positions, d, _ = outer.shape
        chunk = max(1, INVERSE_CHUNK_BYTES // (d * d * 8))
        eye = torch.eye(d, dtype=torch.float64, device=outer.device)
        for start in range(0, positions, chunk):
            stop = min(start + chunk, positions)
            m = centred_mean[start:stop].double()
            cov = (outer[start:stop].double() - n * m[:, :, None] * m[:, None, :]) / (n - 1) + self.epsilon * eye
            outer[start:stop] = torch.cholesky_inverse(torch.linalg.cholesky(cov)).float()
        return outer

    # -- scoring -----------------------------------------------------------------------------------------

    def forward_scores(self, images: torch.Tensor) -> torch.Tensor:
        """Mahalanobis distance per position, (B, h, w)."""
        emb = self._embed(images)
        b, d, h, w = emb.shape
        x = emb.permute(2, 3, 0, 1).reshape(h * w, b, d).float() - self.mean_[:, None, :]
        squared = (torch.bmm(x, self.precision_) * x).sum(dim=-1)
        return squared.clamp_min(0).sqrt().T.reshape(b, h, w)

    def head_flop_formula(self, input_size: int) -> dict[str, int]:
        """Per position of the first level's grid: x − μ (d), the product with the inverse covariance (2·d²),
        the dot product with x − μ (2·d); the channel picks and nearest upsampling are copies."""
        self.check_fitted()
        positions, d = self.mean_.shape
        h, w = encoder_geometry(self.encoder, self.encoder_levels(), input_size).sizes[0]
        if h * w != positions:
            raise ValueError(f"PaDiM is fitted to {positions} positions; {input_size} px gives {h}×{w}")
        return {"inverse_covariance_products": 2 * positions * d * d, "centring_and_dot": 3 * positions * d}

    def postprocess(self, raw: torch.Tensor, input_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        maps = gaussian_blur(upsample(raw, input_size), self.blur_sigma)
        return maps.flatten(1).amax(dim=1), maps

    # -- size and persistence ----------------------------------------------------------------------------

    def _fitted_size(self) -> dict[str, int]:
        return {"mean": tensor_bytes(self.mean_), "inverse_covariance": tensor_bytes(self.precision_),
                "channel_index": tensor_bytes(self.channel_index_)}

    def _fitted_state(self) -> dict[str, Any]:
        return {"channel_index": self.channel_index_, "mean": self.mean_, "precision": self.precision_}

    def _restore(self, state: dict[str, Any]) -> None:
        self.channel_index_ = state["channel_index"]
        self.level_picks_ = self._split_picks(self.channel_index_)
        self.mean_ = state["mean"].to(self.device)
        self.precision_ = state["precision"].to(self.device)
