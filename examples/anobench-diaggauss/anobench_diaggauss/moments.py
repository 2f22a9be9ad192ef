"""The statistics both example methods fit: a diagonal Gaussian per position, from running sums."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def diagonal_gaussian(batches: Iterable[torch.Tensor], variance_floor: float,
                      method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and inverse standard deviation (float32) over the images of every batch, at each position of
    the rest of the shape; summed in float64, ``variance_floor`` added to every variance."""
    total = squares = None
    n = 0
    for batch in batches:
        values = batch.double()
        total = values.sum(0) if total is None else total + values.sum(0)
        squares = (values**2).sum(0) if squares is None else squares + (values**2).sum(0)
        n += len(values)
    if n < 2:
        raise ValueError(f"{method} needs at least 2 training images, got {n}")
    mean = total / n
    return mean.float(), ((squares - n * mean**2) / (n - 1) + variance_floor).rsqrt().float()
