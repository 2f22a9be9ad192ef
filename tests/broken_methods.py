"""Methods that break the contract on purpose, to show that the conformance checks catch each breach."""

from __future__ import annotations

import os
import signal

from anobench.methods.padim import PaDiM


class BatchDependentPaDiM(PaDiM):
    """Min-max normalizes scores over the batch, as some harnesses do: an image's score then depends on
    the rest of its batch."""

    def postprocess(self, raw, input_size):
        scores, maps = super().postprocess(raw, input_size)
        low, high = maps.amin(), maps.amax()
        maps = (maps - low) / (high - low + 1e-12)
        return maps.flatten(1).amax(dim=1), maps


class UnstableParamsPaDiM(PaDiM):
    """Stores a transformed parameter, so constructing from get_params() gives another method."""

    def __init__(self, *, encoder: str = "resnet18", weights: str = "random", d_reduced: int = 40,
                 seed: int = 0, device: str = "cpu"):
        super().__init__(encoder=encoder, weights=weights, d_reduced=d_reduced + 10, seed=seed, device=device)


class SelfKillingPaDiM(PaDiM):
    """Kills its own process with SIGKILL in the middle of scoring, as the kernel's out-of-memory killer
    would: the harness must still record the cell, with the reason, and go on with the next."""

    def predict(self, images):
        os.kill(os.getpid(), signal.SIGKILL)


__all__ = ["BatchDependentPaDiM", "SelfKillingPaDiM", "UnstableParamsPaDiM"]
