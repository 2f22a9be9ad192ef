"""DiagGauss: each feature position is a diagonal Gaussian over the training images; a test feature's
anomaly score is its standardized distance from that position's mean.

A PaDiM without covariances: cheaper to fit and to store (two vectors per position instead of a
matrix), weaker where channels are correlated. It is here to show what a plugin needs — one class that
follows the ``EncoderMethod`` contract and one entry point in ``pyproject.toml`` — not as a method to
publish.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

from anobench.methods.base import EncoderMethod
from anobench.methods.postprocess import gaussian_blur, upsample
from anobench_diaggauss.moments import GaussianState, diagonal_gaussian


class DiagGauss(GaussianState, EncoderMethod):
    """Per-position diagonal Gaussian on two encoder levels (example plugin).

    Parameters
    ----------
    encoder : str, default="resnet18"
    weights : {"imagenet", "random"} or path, default="imagenet"
    levels : tuple, default=(2, 3)
        Encoder levels, joined on the first one's grid.
    variance_floor : float, default=1e-3
        Added to every variance, so constant channels do not divide by zero.
    blur_sigma : float, default=4.0
    seed : int, default=0
    device : str, default="cpu"
    """

    name = "diag_gauss"
    display_name = "DiagGauss"

    def __init__(self, *, encoder: str = "resnet18", weights: str = "imagenet", levels: tuple = (2, 3),
                 variance_floor: float = 1e-3, blur_sigma: float = 4.0, seed: int = 0, device: str = "cpu"):
        self.encoder = encoder
        self.weights = weights
        self.levels = levels
        self.variance_floor = variance_floor
        self.blur_sigma = blur_sigma
        self.seed = seed
        self.device = device

    def encoder_levels(self) -> tuple:
        return tuple(self.levels)

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W): every tapped level, nearest-upsampled to the first level's grid."""
        feats = self.encoder_(images)
        size = feats[0].shape[-2:]
        return torch.cat([f if f.shape[-2:] == size else F.interpolate(f, size=size, mode="nearest")
                          for f in feats], dim=1).float()

    @torch.no_grad()
    def _fit(self, batches: Iterable[torch.Tensor]) -> None:
        features = (self._embed(images.to(self.device)) for images in batches)
        self.mean_, self.inv_std_ = diagonal_gaussian(features, self.variance_floor, "DiagGauss")

    def forward_scores(self, images: torch.Tensor) -> torch.Tensor:
        """Standardized distance per position, (B, h, w)."""
        return ((self._embed(images) - self.mean_) * self.inv_std_).pow(2).sum(dim=1).sqrt()

    def postprocess(self, raw: torch.Tensor, input_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        maps = gaussian_blur(upsample(raw, input_size), self.blur_sigma)
        return maps.flatten(1).amax(dim=1), maps

    def memory_estimate(self, geometry, n_train: int, batch_size: int) -> dict[str, int]:
        positions = geometry.sizes[0][0] * geometry.sizes[0][1]
        return {**super().memory_estimate(geometry, n_train, batch_size),
                "statistics": 4 * positions * sum(geometry.channels) * 8}
