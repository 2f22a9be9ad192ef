"""Score-map post-processing shared by the methods: bilinear upsampling and Gaussian smoothing."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling (align_corners=False) of (B, H, W) maps to ``size``."""
    return F.interpolate(maps.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)


def _symmetric_index(n: int, radius: int, device: torch.device) -> torch.Tensor:
    """Indices that pad a length-``n`` axis by ``radius`` mirroring about the edge (d c b a | a b c d),
    which is scipy.ndimage's default 'reflect' mode."""
    idx = torch.arange(-radius, n + radius, device=device)
    period = 2 * n
    idx = torch.remainder(idx, period)
    return torch.where(idx >= n, period - 1 - idx, idx)


def gaussian_blur(maps: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Separable Gaussian blur of (B, H, W) maps, matching ``scipy.ndimage.gaussian_filter(sigma=...)``.

    The kernel radius is ``int(truncate * sigma + 0.5)`` and borders mirror about the edge, as scipy does,
    so the smoothing equals the reference PaDiM/SPADE code that calls scipy per image.
    """
    if sigma <= 0:
        return maps
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    b, h, w = maps.shape
    out = maps.index_select(1, _symmetric_index(h, radius, maps.device))
    out = F.conv2d(out.unsqueeze(1), kernel.view(1, 1, -1, 1)).squeeze(1)
    out = out.index_select(2, _symmetric_index(w, radius, maps.device))
    out = F.conv2d(out.unsqueeze(1), kernel.view(1, 1, 1, -1)).squeeze(1)
    return out
