"""The method contract as runnable checks (scikit-learn's ``check_estimator`` idea).

The harness measures every method the same way only because every method keeps the same promises: it
stores its parameters and nothing else until ``fit``; ``fit`` returns the method; predictions have fixed
shapes and dtypes and finite values; an image scores the same alone or in any batch (unless the method
declares itself test-set dependent); the same seed gives the same scores; a saved and loaded model scores
identically; size and memory plans are there; the harness's own parameters and hooks are as the
contract declares them. ``check_method`` runs each promise on generated data and
returns one result per property, so that a plugin's own tests can call it and ``bench check-method``
can print it.
"""

from __future__ import annotations

import inspect
import json
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anobench.core import BenchError, NotFittedError, unknown_name
from anobench.methods import METHODS
from anobench.methods.base import (
    HARNESS_PARAMETERS,
    REQUIRED_HARNESS_PARAMETERS,
    AnomalyMethod,
    EncoderMethod,
    Mark,
    Prediction,
    harness_arguments,
)

SIZE = 64
SCORE_TOLERANCE = 1e-4  # relative and absolute: float reductions may differ between batch shapes


@dataclass
class CheckResult:
    """One property: passed (True), failed (False) or not applicable (None), and why."""

    name: str
    passed: bool | None
    detail: str = ""

    def line(self) -> str:
        verdict = {True: "PASS", False: "FAIL", None: "SKIP"}[self.passed]
        return f"{verdict}  {self.name}" + (f": {self.detail}" if self.detail else "")


class CheckFailed(AssertionError):
    """A property does not hold; the message says how."""


@dataclass
class _Context:
    """What the checks share: the class, its parameters, generated data and the fitted models."""

    cls: type[AnomalyMethod]
    params: dict[str, Any]
    train: list[torch.Tensor]
    test: torch.Tensor
    fitted: dict[str, AnomalyMethod] = field(default_factory=dict)
    predictions: dict[str, Prediction] = field(default_factory=dict)

    def new(self) -> AnomalyMethod:
        return self.cls(**self.params)

    def fit(self, key: str) -> AnomalyMethod:
        if key not in self.fitted:
            self.fitted[key] = self.new().fit(self.train)
        return self.fitted[key]

    def predict(self, key: str) -> Prediction:
        if key not in self.predictions:
            self.predictions[key] = self.fit(key).predict(self.test)
        return self.predictions[key]


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def _same_scores(a: Prediction, b: Prediction, what: str) -> None:
    for name, x, y in (("image scores", a.image_scores, b.image_scores), ("maps", a.maps, b.maps)):
        _require(x.shape == y.shape, f"{what}: {name} have shapes {x.shape} and {y.shape}")
        if not np.allclose(x, y, rtol=SCORE_TOLERANCE, atol=SCORE_TOLERANCE):
            worst = float(np.max(np.abs(x.astype(np.float64) - y)))
            raise CheckFailed(f"{what}: {name} differ by up to {worst:.3g} (tolerance {SCORE_TOLERANCE:g})")


# ----------------------------------------------------------------------------------------------------------
# the properties


def _stores_parameters(ctx: _Context) -> str:
    method = ctx.new()
    names = [p for p in inspect.signature(ctx.cls).parameters]
    params = method.get_params()
    _require(set(params) == set(names), f"get_params() returns {sorted(params)}, the constructor takes {sorted(names)}")
    for key, value in ctx.params.items():
        _require(params[key] == value or (isinstance(value, tuple) and params[key] == list(value)),
                 f"get_params()['{key}'] is {params[key]!r}, the constructor was given {value!r}")
    learned = [a for a in vars(method) if a.endswith("_") and not a.startswith("_")]
    _require(not learned, f"the constructor sets learned attributes {learned} (they belong to fit)")
    return ""


def _parameters_round_trip(ctx: _Context) -> str:
    params = ctx.new().get_params()
    again = ctx.cls(**params).get_params()
    _require(again == params, f"constructing from get_params() gives {again}, not {params}")
    json.dumps(params)  # records store them: plain data only
    return ""


def _predict_before_fit_raises(ctx: _Context) -> str:
    try:
        ctx.new().predict(ctx.test[:1])
    except NotFittedError:
        return ""
    raise CheckFailed("predict() before fit() did not raise NotFittedError")


def _fit_returns_the_method(ctx: _Context) -> str:
    method = ctx.new()
    returned = method.fit(ctx.train)
    _require(returned is method, f"fit() returned {type(returned).__name__}, not the method itself")
    ctx.fitted["a"] = method
    return ""


def _prediction_shapes(ctx: _Context) -> str:
    prediction = ctx.predict("a")
    n, (h, w) = len(ctx.test), ctx.test.shape[-2:]
    _require(isinstance(prediction, Prediction), f"predict() returned {type(prediction).__name__}, not Prediction")
    _require(prediction.image_scores.shape == (n,), f"image scores have shape {prediction.image_scores.shape}, "
                                                   f"expected ({n},)")
    _require(prediction.maps.shape == (n, h, w), f"maps have shape {prediction.maps.shape}, expected ({n}, {h}, {w}) "
                                                 "(the input resolution)")
    for name, array in (("image scores", prediction.image_scores), ("maps", prediction.maps)):
        _require(array.dtype == np.float32, f"{name} are {array.dtype}, expected float32")
    return ""


def _finite_scores(ctx: _Context) -> str:
    prediction = ctx.predict("a")
    for name, array in (("image scores", prediction.image_scores), ("maps", prediction.maps)):
        _require(bool(np.isfinite(array).all()), f"{name} hold {int((~np.isfinite(array)).sum())} NaN/inf values")
    return ""


def _batch_independence(ctx: _Context) -> str | None:
    method = ctx.fit("a")
    if method.test_set_dependent:
        return None
    together = ctx.predict("a")
    for i in (0, len(ctx.test) - 1):
        alone = method.predict(ctx.test[i:i + 1])
        _same_scores(Prediction(alone.image_scores, alone.maps),
                     Prediction(together.image_scores[i:i + 1], together.maps[i:i + 1]),
                     f"image {i} alone vs in a batch of {len(ctx.test)}")
    return ""


def _same_seed_same_scores(ctx: _Context) -> str:
    _same_scores(ctx.predict("a"), ctx.predict("b"), "two fits with the same seed")
    return ""


def _save_load_round_trip(ctx: _Context) -> str:
    method = ctx.fit("a")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.pt"
        method.save(path)
        loaded = ctx.cls.load(path)
    _require(type(loaded) is ctx.cls, f"load() built a {type(loaded).__name__}")
    _require(loaded.get_params() == method.get_params(), "the loaded model has other parameters")
    _same_scores(loaded.predict(ctx.test), ctx.predict("a"), "saved and loaded vs original")
    return ""


def _size_breakdown(ctx: _Context) -> str:
    breakdown = ctx.fit("a").size_breakdown()
    _require(isinstance(breakdown, dict) and breakdown, "size_breakdown() must be a non-empty dict of bytes")
    bad = {k: v for k, v in breakdown.items() if not isinstance(v, int) or v < 0}
    _require(not bad, f"size_breakdown() has parts that are not byte counts: {bad}")
    _require(sum(breakdown.values()) > 0, "size_breakdown() adds up to 0 bytes")
    return f"{sum(breakdown.values()) / 1e6:.1f} MB in {len(breakdown)} parts"


def _memory_plan(ctx: _Context) -> str:
    plan = ctx.new().memory_plan(SIZE, n_train=sum(len(b) for b in ctx.train), batch_size=len(ctx.test))
    _require(isinstance(plan, dict) and plan, "memory_plan() must be a non-empty dict of bytes")
    bad = {k: v for k, v in plan.items() if not isinstance(v, int) or v <= 0}
    _require(not bad, f"memory_plan() has parts that are not positive byte counts: {bad}")
    return f"{sum(plan.values()) / 1e6:.1f} MB planned"


def _harness_parameters(ctx: _Context) -> str:
    accepted = inspect.signature(ctx.cls).parameters
    taken = [name for name in HARNESS_PARAMETERS if name in accepted]
    missing = [name for name in REQUIRED_HARNESS_PARAMETERS if name not in accepted]
    _require(not missing, f"the constructor does not take {', '.join(missing)}, which the harness sets for every "
                          "method")
    _require(("encoder" in taken) == ("weights" in taken), "the constructor takes one of encoder and weights "
                                                           "without the other")
    if issubclass(ctx.cls, EncoderMethod):
        _require("encoder" in taken, "an EncoderMethod's constructor must take encoder and weights")
    return f"takes {', '.join(taken)}"


def _harness_hooks(ctx: _Context) -> str:
    method = ctx.fit("a")
    encoder = method.timed_encoder()
    if encoder is not None:
        encoder(ctx.test.to(method.device))
    weights = method.weights_info()
    _require(weights is None or "source" in weights, f"weights_info() is {weights!r}: None or a dict with 'source'")
    problem = method.input_problem(SIZE)
    _require(problem is None, f"input_problem({SIZE}) says {problem!r}; the checks need {SIZE} px inputs")
    marks = [m for m in method.marks if not isinstance(m, Mark)]
    _require(not marks, f"marks holds {marks}, not Mark declarations")
    return "an encoder region timed alone" if encoder is not None else "no encoder region (none to time alone)"


PROPERTIES: list[tuple[str, Callable[[_Context], str | None]]] = [
    ("the constructor only stores its parameters", _stores_parameters),
    ("get_params() round-trips through the constructor", _parameters_round_trip),
    ("predict() before fit() raises NotFittedError", _predict_before_fit_raises),
    ("fit() returns the method", _fit_returns_the_method),
    ("predictions have the contract's shapes and dtypes", _prediction_shapes),
    ("scores are finite", _finite_scores),
    ("an image scores the same alone and in a batch", _batch_independence),
    ("the same seed gives the same scores", _same_seed_same_scores),
    ("save() and load() give identical scores", _save_load_round_trip),
    ("size_breakdown() counts bytes", _size_breakdown),
    ("memory_plan() plans bytes", _memory_plan),
    ("the harness's parameters are taken as the contract says", _harness_parameters),
    ("the harness's hooks answer", _harness_hooks),
]
NOT_APPLICABLE = {_batch_independence: "the method declares itself test-set dependent"}


# ----------------------------------------------------------------------------------------------------------
# running them


def check_params(cls: type[AnomalyMethod], params: dict[str, Any] | None = None) -> dict[str, Any]:
    """The parameters a check runs with: a small random-weights ResNet-18 where the method takes an
    encoder, the method's own ``check_params`` (a short schedule), then the caller's."""
    base = harness_arguments(cls, {"encoder": "resnet18", "weights": "random", "device": "cpu"})
    return {**base, **getattr(cls, "check_params", {}), **(params or {})}


def generated_images(size: int = SIZE) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Training batches of defect-free images and a test batch with good and defective images (fixed)."""
    from anobench.datasets.synthetic import DEFECT_KINDS, SynthSpec, render_sample

    spec = SynthSpec(size=size, classes=("disc",))

    def tensor(stream: str, index: int) -> torch.Tensor:
        image, _ = render_sample(spec, "disc", stream, index)
        return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255

    train = torch.stack([tensor("train", i) for i in range(16)])
    test = torch.stack([tensor("good", 0), tensor("good", 1), *(tensor(kind, 0) for kind in DEFECT_KINDS[:3])])
    return [train[:8], train[8:]], test


def check_method(method: str | type[AnomalyMethod], params: dict[str, Any] | None = None) -> list[CheckResult]:
    """Run every property of the method contract on ``method`` (a registered name, a
    ``"package.module:Class"`` reference or the class) and return one result per property."""
    cls = METHODS.get(method) if isinstance(method, str) else method
    if not (isinstance(cls, type) and issubclass(cls, AnomalyMethod)):
        raise BenchError(f"{method!r} is not an AnomalyMethod subclass; check-method needs one.")
    accepted = inspect.signature(cls).parameters
    for key in params or {}:
        if key not in accepted:
            raise unknown_name(f"{cls.__name__} parameter", key, accepted)
    ctx = _Context(cls, check_params(cls, params), *generated_images())
    results = []
    for name, check in PROPERTIES:
        try:
            detail = check(ctx)
            results.append(CheckResult(name, None, NOT_APPLICABLE[check]) if detail is None
                           else CheckResult(name, True, detail))
        except CheckFailed as exc:
            results.append(CheckResult(name, False, str(exc)))
        except Exception as exc:  # a crash is a failure of that property, reported with where it happened
            where = traceback.extract_tb(exc.__traceback__)[-1]
            results.append(CheckResult(name, False, f"{type(exc).__name__}: {exc} "
                                                    f"({Path(where.filename).name}:{where.lineno})"))
    return results


def assert_method_conforms(method: str | type[AnomalyMethod], params: dict[str, Any] | None = None) -> None:
    """For a plugin's own tests: raise AssertionError listing every property that fails."""
    failures = [r.line() for r in check_method(method, params) if r.passed is False]
    if failures:
        raise AssertionError("the method breaks the contract:\n" + "\n".join(failures))
