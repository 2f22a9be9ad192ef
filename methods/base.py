"""The method contract (scikit-learn's estimator idea, for anomaly maps), in two classes, as
lm-evaluation-harness separates ``LM`` from ``TemplateLM``: ``AnomalyMethod`` for any method, and
``EncoderMethod`` for methods built on a timm encoder, which fills in the hooks below from its encoder.

Every method:

- takes only parameters in ``__init__`` (keyword-only) and stores them unchanged; ``get_params()``
  returns them and is what a record stores as the method's configuration. Of the parameters the harness
  sets itself (``HARNESS_PARAMETERS``), a method takes ``seed`` and ``device`` and whichever others apply
  to it; the harness passes exactly those its constructor names;
- learns in ``fit(batches)`` from an iterable of image batches (float (B, 3, H, W) in [0, 1]) and keeps
  learned state in attributes ending in ``_``;
- scores in two stages, so that measurement can time them separately:
  ``forward_scores`` (the network: encoder plus decoders/statistics on a ready tensor) and
  ``postprocess`` (upsampling, smoothing, image score);
- reports ``size_breakdown()``: bytes of everything needed to score, and ``memory_plan()``: what fitting
  and scoring will hold;
- declares what deployment runtimes export: ``scoring_graph()`` (by default the two scoring stages as one
  module), or the reason it cannot in ``not_exportable``.

What the harness needs beyond scores it asks through hooks, never through a method's attributes:
``timed_encoder()`` (a module to time alone, or None), ``encoder_name()`` and ``weights_info()`` (what
the record says of the encoder), ``labels()`` (facts a report shows), ``input_problem()`` (an input size
the method cannot use), ``head_flop_formula()``, and the class attributes below (display name, marks,
whether its encoder region makes Table 6's encoder-only rows).

A higher score means more anomalous (the reverse of scikit-learn's ``score_samples``).
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from anobench.core import NotFittedError
from anobench.methods import METHODS
from anobench.methods.encoders import (
    Encoder,
    EncoderGeometry,
    Level,
    encoder_geometry,
    encoder_strides,
    smallest_runnable_input,
)
from anobench.methods.marks import REFLECT_PADDING, Mark

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


#: Constructor parameters the harness sets itself, and where from; a suite's ``params`` cannot set them.
HARNESS_PARAMETERS = {"encoder": "the grid's encoders", "weights": "the suite's weights (or --weights)",
                      "seed": "the suite's seeds", "device": "--device",
                      "protocol": "the suite's protocol (or --protocol)"}
#: The harness parameters every method takes.
REQUIRED_HARNESS_PARAMETERS = ("seed", "device")


def harness_arguments(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """Of the harness's ``values`` (one per ``HARNESS_PARAMETERS`` key), those ``cls``'s constructor takes
    (all of them for a constructor with ``**kwargs``)."""
    parameters = inspect.signature(cls).parameters
    every = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    return {k: v for k, v in values.items() if k in HARNESS_PARAMETERS and (every or k in parameters)}


class AnomalyMethod(ABC):
    """Base class of all methods; see the module docstring for the contract."""

    name: ClassVar[str]
    #: What the head (between the encoder and post-processing) is called in FLOP counts: decoders, statistics, knn.
    head_component: ClassVar[str] = "head"
    #: The name tables print (e.g. "CFLOW-AD"); the registered name where empty.
    display_name: ClassVar[str] = ""
    #: The marks this method's rows may carry (a mark shows where the cell's labels earn it).
    marks: ClassVar[tuple[Mark, ...]] = ()
    #: Where the timed encoder region runs the encoder up to its last level, Table 6 shows it as the encoder's
    #: own row ("R18 encoder only"); this says so in the caption ("the encoder of the X cells (...)"). Empty:
    #: no encoder-only rows from this method's cells.
    encoder_row: ClassVar[str] = ""
    #: True when an image's score depends on the other test images (a protocol choice, never hidden).
    test_set_dependent: ClassVar[bool] = False
    #: Parameters that make the conformance checks (``bench check-method``) quick, e.g. a short schedule.
    check_params: ClassVar[dict[str, Any]] = {}
    #: Why this method's scoring cannot be exported to a deployment runtime (empty: it can, see ``scoring_graph``).
    not_exportable: ClassVar[str] = ""

    seed: int
    device: str

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

    # -- what the harness asks (defaults for a method without an encoder) ------------------------------

    def encoder_name(self) -> str | None:
        """The timm encoder the method is built on (reports print its short name); None for none."""
        return None

    def weights_info(self) -> dict[str, Any] | None:
        """How the pretrained weights were obtained, for the record; None where the method uses none."""
        return None

    def timed_encoder(self) -> Callable[[torch.Tensor], Any] | None:
        """What speed and FLOP counts time alone as the "encoder" region (on a ready batch); None where the
        method has no encoder, and then the encoder region and fps / encoder fps stay empty."""
        return None

    def input_problem(self, resolution: int) -> str | None:
        """Why the method cannot score inputs of ``resolution`` px (one sentence naming the fix), or None."""
        return None

    def head_flop_formula(self, input_size: int) -> dict[str, int] | None:
        """FLOPs per image of the head by formula, term by term, for heads that are distance computations
        (nearest-neighbour search, Mahalanobis distances); None lets the FLOP counter count the head."""
        return None

    # -- fitting ---------------------------------------------------------------------------------------

    def fit(self, batches: Iterable[torch.Tensor]) -> AnomalyMethod:
        torch.manual_seed(self.seed)
        self._fit(batches)
        return self

    @abstractmethod
    def _fit(self, batches: Iterable[torch.Tensor]) -> None: ...

    def is_fitted(self) -> bool:
        """Whether ``fit`` has run: the learned attributes (names ending in ``_``) are there."""
        return any(a.endswith("_") and not a.startswith("_") for a in vars(self))

    def check_fitted(self) -> None:
        if not self.is_fitted():
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

    # -- memory plan and size --------------------------------------------------------------------------

    @abstractmethod
    def memory_plan(self, resolution: int, n_train: int, batch_size: int) -> dict[str, int]:
        """Bytes by part that fitting and scoring will hold at their peak (a plan, not a measurement), for
        square inputs of ``resolution`` px; called before ``fit``."""

    def size_breakdown(self) -> dict[str, int]:
        """Bytes of everything needed to score, by part."""
        self.check_fitted()
        return self._fitted_size()

    @abstractmethod
    def _fitted_size(self) -> dict[str, int]: ...

    def size_bytes(self) -> int:
        return sum(self.size_breakdown().values())

    # -- persistence -----------------------------------------------------------------------------------

    @abstractmethod
    def _fitted_state(self) -> dict[str, Any]:
        """Learned state as tensors/plain data (an encoder is saved apart)."""

    @abstractmethod
    def _restore(self, state: dict[str, Any]) -> None: ...

    def _saved(self) -> dict[str, Any]:
        """What ``save`` stores beside the parameters; subclasses that keep parts apart add them."""
        return {"state": self._fitted_state()}

    def _load_saved(self, blob: dict[str, Any]) -> None:
        self._restore(blob["state"])

    def save(self, path: str | Path) -> None:
        """Save parameters and learned state (an encoder's weights too), so that loading needs no download."""
        self.check_fitted()
        blob = {"format": SAVE_FORMAT, "method": self.name,
                "class": f"{type(self).__module__}:{type(self).__qualname__}", "params": self.get_params(),
                **self._saved()}
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
        method._load_saved(blob)
        return method


class EncoderMethod(AnomalyMethod):
    """A method built on a timm encoder (``encoder_``, built in ``fit``): the encoder is timed alone, counted
    in the size and the memory plan, saved with the model, and its padding and weights go to the record."""

    marks: ClassVar[tuple[Mark, ...]] = (REFLECT_PADDING,)

    encoder: str
    weights: str
    #: How the encoder pads its convolutions ("zeros" or "reflect", see ``encoders``); a method that offers the
    #: choice takes ``encoder_padding`` as a constructor parameter.
    encoder_padding: str = "zeros"

    @abstractmethod
    def encoder_levels(self) -> tuple[Level, ...]:
        """Which encoder levels the method taps."""

    def encoder_padding_mode(self) -> str:
        """The padding the encoder is built with (methods whose parameter has a symbolic default resolve it)."""
        return self.encoder_padding

    def _build_encoder(self, weights: str) -> Encoder:
        return Encoder(self.encoder, self.encoder_levels(), weights=weights, seed=self.seed,
                       padding=self.encoder_padding_mode()).to(self.device)

    def fit(self, batches: Iterable[torch.Tensor]) -> EncoderMethod:
        torch.manual_seed(self.seed)
        self.encoder_ = self._build_encoder(self.weights)
        self._fit(batches)
        return self

    # -- what the harness asks -------------------------------------------------------------------------

    def labels(self) -> dict[str, Any]:
        return {"encoder_padding": self.encoder_padding_mode()}

    def encoder_name(self) -> str | None:
        return self.encoder

    def weights_info(self) -> dict[str, Any] | None:
        self.check_fitted()
        return dict(self.encoder_.weights_info())

    def timed_encoder(self) -> Callable[[torch.Tensor], Any] | None:
        self.check_fitted()
        return self.encoder_

    def input_problem(self, resolution: int) -> str | None:
        """Below the stride of the deepest level tapped, that level's feature map covers less than one cell of
        real pixels (the rest is padding); a padded map must also stay wider than its padding."""
        levels = tuple(self.encoder_levels())
        padding = self.encoder_padding_mode()
        strides = encoder_strides(self.encoder, levels)
        smallest = max(strides)
        deepest = levels[strides.index(smallest)]
        runnable = smallest_runnable_input(self.encoder, levels, padding)
        if resolution < smallest:
            return (f"resolution {resolution} is below {smallest} px, the smallest useful input of {self.encoder} "
                    f"for {self.name} (the stride of level {deepest}, the deepest it taps); use a resolution of at "
                    f"least {smallest}.")
        if runnable is None or resolution < runnable:
            least = f"at least {runnable}" if runnable else "another encoder"
            return (f"resolution {resolution} is too small for {self.encoder} padded by {padding} as {self.name} "
                    f"builds it (its deepest padded feature map must be wider than the padding); use {least}, "
                    f"or encoder_padding = \"zeros\" in params.")
        return None

    # -- memory plan and size --------------------------------------------------------------------------

    def memory_plan(self, resolution: int, n_train: int, batch_size: int) -> dict[str, int]:
        geometry = encoder_geometry(self.encoder, tuple(self.encoder_levels()), resolution)
        return self.memory_estimate(geometry, n_train, batch_size)

    def memory_estimate(self, geometry: EncoderGeometry, n_train: int, batch_size: int) -> dict[str, int]:
        """``memory_plan`` from the encoder's shapes at the input size: the encoder's weights and one batch's
        features here; subclasses add their learned state and largest working buffers."""
        return {"encoder": geometry.weight_bytes,
                "batch_features": batch_size * sum(c * h * w for c, (h, w) in
                                                   zip(geometry.channels, geometry.sizes, strict=True)) * 4}

    def size_breakdown(self) -> dict[str, int]:
        """Bytes of everything needed to score, by part; the encoder counts up to its last tapped level."""
        self.check_fitted()
        return {"encoder": self.encoder_.size_bytes(), **self._fitted_size()}

    # -- persistence -----------------------------------------------------------------------------------

    def _saved(self) -> dict[str, Any]:
        return {"encoder_state": self.encoder_.state_dict(), **super()._saved()}

    def _load_saved(self, blob: dict[str, Any]) -> None:
        self.encoder_ = self._build_encoder("random")  # a skeleton; the saved weights fill it
        self.encoder_.load_state_dict(blob["encoder_state"])
        self.encoder_.weights = self.weights
        super()._load_saved(blob)


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
