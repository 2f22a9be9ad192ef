"""The method contract (scikit-learn's estimator idea, for anomaly maps).

Every method:

- takes only parameters in ``__init__`` (keyword-only) and stores them unchanged; ``get_params()``
  returns them and is what a record stores as the method's configuration;
- learns in ``fit(batches)`` from an iterable of image batches (float (B, 3, H, W) in [0, 1]) and keeps
  learned state in attributes ending in ``_``;
- scores in two stages, so that measurement can time them separately:
  ``forward_scores`` (the network: encoder plus decoders/statistics on a ready tensor) and
  ``postprocess`` (upsampling, smoothing, image score);
- reports ``size_breakdown()``: bytes of everything needed to score;
- declares what deployment runtimes export: ``scoring_graph()`` (by default the two scoring stages as one
  module), or the reason it cannot in ``not_exportable``.

A higher score means more anomalous (the reverse of scikit-learn's ``score_samples``).
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from anobench.core import NotFittedError
from anobench.methods import METHODS
from anobench.methods.encoders import Encoder, EncoderGeometry, Level

SAVE_FORMAT = 1


@dataclass
class Prediction:
    """Image scores (n,) and anomaly maps (n, H, W) at the input resolution, float32."""

    image_scores: np.ndarray
    maps: np.ndarray

    @classmethod
    def concatenate(cls, parts: list[Prediction]) -> Prediction:
        return cls(np.concatenate([p.image_scores for p in parts]), np.concatenate([p.maps for p in parts]))


def tensor_bytes(*tensors: torch.Tensor) -> int:
    return sum(t.nbytes for t in tensors)


class AnomalyMethod(ABC):
    """Base class of all methods; see the module docstring for the contract."""

    name: ClassVar[str]
    #: What the head (between the encoder and post-processing) is called in FLOP counts: decoders, statistics, knn.
    head_component: ClassVar[str] = "head"
    #: The name tables print (e.g. "CFLOW-AD"); the registered name where empty.
    display_name: ClassVar[str] = ""
    #: True when an image's score depends on the other test images (a protocol choice, never hidden).
    test_set_dependent: ClassVar[bool] = False
    #: Parameters that make the conformance checks (``bench check-method``) quick, e.g. a short schedule.
    check_params: ClassVar[dict[str, Any]] = {}
    #: Why this method's scoring cannot be exported to a deployment runtime (empty: it can, see ``scoring_graph``).
    not_exportable: ClassVar[str] = ""

    encoder: str
    weights: str
    seed: int
    device: str
    #: How the encoder pads its convolutions ("zeros" or "reflect", see ``encoders``); a method that offers the
    #: choice takes ``encoder_padding`` as a constructor parameter.
    encoder_padding: str = "zeros"

    # -- parameters ------------------------------------------------------------------------------------

    def get_params(self) -> dict[str, Any]:
        """The constructor's parameters and their current values (plain data)."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {n: _plain(getattr(self, n)) for n in names}

    def labels(self) -> dict[str, Any]:
        """Facts a report must show beside this method's numbers (e.g. protocol, schedule)."""
        return {}

    def fit_stats(self) -> dict[str, Any]:
        """What training did (steps, throughput, losses), for the record; empty for closed-form fits."""
        return {}

    # -- fitting ---------------------------------------------------------------------------------------

    def fit(self, batches: Iterable[torch.Tensor]) -> AnomalyMethod:
        torch.manual_seed(self.seed)
        self.encoder_ = self._build_encoder(self.weights)
        self._fit(batches)
        return self

    @abstractmethod
    def _fit(self, batches: Iterable[torch.Tensor]) -> None: ...

    @abstractmethod
    def encoder_levels(self) -> tuple[Level, ...]:
        """Which encoder levels the method taps."""

    def encoder_padding_mode(self) -> str:
        """The padding the encoder is built with (methods whose parameter has a symbolic default resolve it)."""
        return self.encoder_padding

    def _build_encoder(self, weights: str) -> Encoder:
        return Encoder(self.encoder, self.encoder_levels(), weights=weights, seed=self.seed,
                       padding=self.encoder_padding_mode()).to(self.device)

    def check_fitted(self) -> None:
        if not hasattr(self, "encoder_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted yet; call fit() before predicting.")

    # -- scoring ---------------------------------------------------------------------------------------

    @abstractmethod
    def forward_scores(self, images: torch.Tensor) -> Any:
        """The network stage: raw scores at feature resolution for images already on the device."""

    @abstractmethod
    def postprocess(self, raw: Any, input_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The post-processing stage: (image scores (B,), maps (B, H, W)) at the input resolution."""

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> Prediction:
        """Score a batch; each image's result does not depend on the others in the batch."""
        self.check_fitted()
        images = images.to(self.device)
        scores, maps = self.postprocess(self.forward_scores(images), tuple(images.shape[-2:]))
        return Prediction(scores.float().cpu().numpy(), maps.float().cpu().numpy())

    def predict_dataset(self, batches: Iterable[torch.Tensor]) -> Prediction:
        """Score a whole test set batch by batch (methods whose protocol normalizes over the set override)."""
        return Prediction.concatenate([self.predict(b) for b in batches])

    def scoring_graph(self) -> torch.nn.Module:
        """What deployment runtimes export: a module mapping images (B, 3, H, W) to (image scores (B,), maps
        (B, H, W)), for a fixed B and H, W. By default both scoring stages, so that an exported model is the
        whole detector; a method whose scoring cannot be exported (now or under its current parameters) says
        why in ``export_refusal``."""
        self.check_fitted()
        return ScoringGraph(self)

    def export_refusal(self) -> str:
        """Why this method cannot be exported as configured (empty: it can). A test-set-dependent protocol
        normalizes over the whole test set, which no per-batch graph computes."""
        if self.test_set_dependent and not self.not_exportable:
            return "its scores depend on the other test images (test_set_dependent), which no per-batch graph computes"
        return self.not_exportable

    def head_flop_formula(self, input_size: int) -> dict[str, int] | None:
        """FLOPs per image of the head by formula, term by term, for heads that are distance computations
        (nearest-neighbour search, Mahalanobis distances); None lets the FLOP counter count the head."""
        return None

    # -- memory plan -----------------------------------------------------------------------------------

    def memory_estimate(self, geometry: EncoderGeometry, n_train: int, batch_size: int) -> dict[str, int]:
        """Bytes by part that fitting and scoring will hold at their peak (a plan, not a measurement):
        the learned state and the largest working buffers. Subclasses add their own parts."""
        return {"encoder": geometry.weight_bytes,
                "batch_features": batch_size * sum(c * h * w for c, (h, w) in
                                                   zip(geometry.channels, geometry.sizes, strict=True)) * 4}

    # -- size ------------------------------------------------------------------------------------------

    def size_breakdown(self) -> dict[str, int]:
        """Bytes of everything needed to score, by part; the encoder counts up to its last tapped level."""
        self.check_fitted()
        return {"encoder": self.encoder_.size_bytes(), **self._fitted_size()}

    @abstractmethod
    def _fitted_size(self) -> dict[str, int]: ...

    def size_bytes(self) -> int:
        return sum(self.size_breakdown().values())

    # -- persistence -----------------------------------------------------------------------------------

    @abstractmethod
    def _fitted_state(self) -> dict[str, Any]:
        """Learned state as tensors/plain data (the encoder is saved separately)."""

    @abstractmethod
    def _restore(self, state: dict[str, Any]) -> None: ...

    def save(self, path: str | Path) -> None:
        """Save parameters, encoder weights and learned state, so that loading needs no download."""
        self.check_fitted()
        blob = {"format": SAVE_FORMAT, "method": self.name,
                "class": f"{type(self).__module__}:{type(self).__qualname__}", "params": self.get_params(),
                "encoder_state": self.encoder_.state_dict(), "state": self._fitted_state()}
        torch.save(blob, path)

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> AnomalyMethod:
        """A saved model; ``AnomalyMethod.load`` finds its class by registered name, or where it lives."""
        blob = torch.load(path, map_location="cpu", weights_only=True)
        params = dict(blob["params"])
        if device is not None:
            params["device"] = device
        if cls is AnomalyMethod:
            cls = METHODS.get(blob["method"] if blob["method"] in METHODS else blob["class"])
        method = cls(**params)
        method.encoder_ = method._build_encoder("random")  # a skeleton; the saved weights fill it
        method.encoder_.load_state_dict(blob["encoder_state"])
        method.encoder_.weights = method.weights
        method._restore(blob["state"])
        return method


class ScoringGraph(torch.nn.Module):
    """A method's ``forward_scores`` and ``postprocess`` as one module, the graph an exporter traces."""

    def __init__(self, method: AnomalyMethod):
        super().__init__()
        self.method = method

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.method.postprocess(self.method.forward_scores(images), tuple(images.shape[-2:]))


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return value
