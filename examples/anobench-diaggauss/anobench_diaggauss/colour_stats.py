"""ColourStats: each pixel's colour is a diagonal Gaussian over the training images; a test pixel's anomaly
score is its standardized distance from that pixel's mean colour.

No encoder at all: it shows how a method that is not built on a timm encoder plugs in. It subclasses
``AnomalyMethod`` (not ``EncoderMethod``), takes only the harness parameters that apply to it (``seed``
and ``device``), plans its own memory and says that it has no encoder to time alone. Useful only where
the images are aligned and the defects change colour, which is why it is an example.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from anobench.methods.base import AnomalyMethod
from anobench.methods.postprocess import gaussian_blur
from anobench_diaggauss.moments import GaussianState, diagonal_gaussian

CHANNELS = 3


class ColourStats(GaussianState, AnomalyMethod):
    """Per-pixel diagonal Gaussian of the colour, at the input resolution (example plugin).

    Parameters
    ----------
    variance_floor : float, default=1e-4
        Added to every variance, so pixels that never change do not divide by zero.
    blur_sigma : float, default=2.0
    seed : int, default=0
    device : str, default="cpu"
    """

    name = "colour_stats"
    display_name = "ColourStats"
    head_component = "statistics"

    def __init__(self, *, variance_floor: float = 1e-4, blur_sigma: float = 2.0, seed: int = 0,
                 device: str = "cpu"):
        self.variance_floor = variance_floor
        self.blur_sigma = blur_sigma
        self.seed = seed
        self.device = device

    @torch.no_grad()
    def _fit(self, batches: Iterable[torch.Tensor]) -> None:
        pixels = (images.to(self.device) for images in batches)
        self.mean_, self.inv_std_ = diagonal_gaussian(pixels, self.variance_floor, "ColourStats")

    def forward_scores(self, images: torch.Tensor) -> torch.Tensor:
        """Standardized colour distance per pixel, (B, H, W)."""
        if images.shape[-2:] != self.mean_.shape[-2:]:
            raise ValueError(f"ColourStats is fitted to {tuple(self.mean_.shape[-2:])} px images; got "
                             f"{tuple(images.shape[-2:])}")
        return ((images - self.mean_) * self.inv_std_).pow(2).sum(dim=1).sqrt()

    def postprocess(self, raw: torch.Tensor, input_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        maps = gaussian_blur(raw, self.blur_sigma)
        return maps.flatten(1).amax(dim=1), maps

    def head_flop_formula(self, input_size: int) -> dict[str, int]:
        """Per pixel and channel: x − μ and the product with 1/σ (2 FLOPs), the square and the sum over
        channels (2 FLOPs); the square root is left out, as the counter leaves out elementwise functions."""
        return {"centring_and_scaling": 2 * input_size * input_size * CHANNELS,
                "squared_norm": 2 * input_size * input_size * CHANNELS}

    def memory_plan(self, resolution: int, n_train: int, batch_size: int) -> dict[str, int]:
        pixels = CHANNELS * resolution * resolution
        return {"statistics": 2 * pixels * 4, "fit_sums": 2 * pixels * 8, "batch_images": batch_size * pixels * 8}
