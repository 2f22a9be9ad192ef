"""The statistics both example methods fit: a diagonal Gaussian per position, from running sums, and the
fitted state they keep of it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from anobench.methods.base import tensor_bytes


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


class GaussianState:
    """Size, saving and restoring of a fitted ``mean_`` and ``inv_std_`` (a method's hooks, shared)."""

    mean_: torch.Tensor
    inv_std_: torch.Tensor
    device: str

    def _fitted_size(self) -> dict[str, int]:
        return {"mean": tensor_bytes(self.mean_), "inverse_std": tensor_bytes(self.inv_std_)}

    def _fitted_state(self) -> dict[str, Any]:
        return {"mean": self.mean_, "inverse_std": self.inv_std_}

    def _restore(self, state: dict[str, Any]) -> None:
        self.mean_ = state["mean"].to(self.device)
        self.inv_std_ = state["inverse_std"].to(self.device)
