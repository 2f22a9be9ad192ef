"""Anomaly-detection methods and the encoders they use, by name.

Importing this package imports no torch: the registries hold where each built-in lives and load it on
first use, so listing names and checking suites stay light. Adding a method is one file with an
``AnomalyMethod`` subclass (``EncoderMethod`` for one built on a timm encoder) plus one ``METHODS.add``
line below. Other packages add theirs through the
``anobench.methods`` / ``anobench.encoders`` entry-point groups, or a suite names a class directly as
``"package.module:Class"``.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from anobench.core import BenchError, Reference, Registry
from anobench.methods.marks import HARD_PERMUTATION, REFLECT_PADDING, SHORT_SCHEDULE, Presentation

if TYPE_CHECKING:
    from anobench.methods.base import AnomalyMethod


def _is_method_class(value: Any) -> bool:
    from anobench.methods.base import AnomalyMethod

    return isinstance(value, type) and issubclass(value, AnomalyMethod)


def _is_timm_model(value: Any) -> bool:
    """Built-ins are timm's own (nothing to import); a plugin's entry point names the function its module
    registers with timm's ``register_model``, so importing it makes the model known to timm."""
    return value is None or callable(value)


METHODS: Registry[type[AnomalyMethod]] = Registry(
    "method", group="anobench.methods", references=True,
    accepts=("a subclass of anobench.methods.base.AnomalyMethod", _is_method_class))
# Each with how reports print it (the class's display_name, marks and encoder_row, here too so that reading
# records imports no torch; tests/test_method_contract.py checks that the two agree).
METHODS.add("cflow", Reference("anobench.methods.cflow:CFlow"), presentation=Presentation(
    "CFLOW-AD", (SHORT_SCHEDULE, REFLECT_PADDING, HARD_PERMUTATION),
    "the encoder of the CFLOW cells (every level up to the last)"))
METHODS.add("fastflow", Reference("anobench.methods.fastflow:FastFlow"),
            presentation=Presentation("FastFlow", (SHORT_SCHEDULE, REFLECT_PADDING)))
METHODS.add("padim", Reference("anobench.methods.padim:PaDiM"),
            presentation=Presentation("PaDiM", (REFLECT_PADDING,)))
METHODS.add("patchcore", Reference("anobench.methods.patchcore:PatchCore"),
            presentation=Presentation("PatchCore", (REFLECT_PADDING,)))
METHODS.add("spade", Reference("anobench.methods.spade:SPADE"),
            presentation=Presentation("SPADE", (REFLECT_PADDING,)))
register_method = METHODS.register

# Encoders the harness knows by name, with the paper's names. Any other timm model name works too
# (``timm.list_models()``); plugins register theirs with timm and name the registering module here.
ENCODERS: Registry[Any] = Registry("encoder", group="anobench.encoders",
                                   accepts=("a timm model constructor", _is_timm_model))
ENCODERS.add("resnet18", None, display="ResNet-18", short="R18")
ENCODERS.add("wide_resnet50_2", None, display="WideResNet-50", short="WR50")
ENCODERS.add("mobilenetv3_large_100", None, display="MobileNetV3-L", short="MNetV3")


def create_method(name: str, where: str | None = None, **params) -> AnomalyMethod:
    """Build a registered method by name with the given parameters (unknown names list the valid ones)."""
    return METHODS.get(name, where)(**params)


def build_method(name: str, harness: dict[str, Any], params: dict[str, Any]) -> AnomalyMethod:
    """The one way the harness builds a method: of its own values (``base.HARNESS_PARAMETERS``: encoder,
    weights, seed, device, protocol) those the constructor takes, then the suite's ``params``."""
    from anobench.methods.base import harness_arguments

    cls = METHODS.get(name)
    return cls(**harness_arguments(cls, harness), **params)


def method_presentation(name: str) -> Presentation | None:
    """How reports print method ``name``: a built-in's from its registration (no import), another's from
    its class; None where it cannot be loaded here (a plugin not installed): reports then print what the
    records say of it (its display name) without its marks."""
    if name in METHODS and "presentation" in METHODS.entry(name).meta:
        return METHODS.entry(name).meta["presentation"]
    try:
        return Presentation.of(METHODS.get(name))
    except BenchError:
        return None


def method_parameters(name: str) -> set[str] | None:
    """The keyword parameters a method's constructor takes: what a suite's ``params`` may name (the one
    place that knows it); None for a constructor with ``**kwargs``, which only the method can check."""
    parameters = inspect.signature(METHODS.get(name)).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def list_methods(pattern: str = "*") -> list[str]:
    return METHODS.names(pattern)


def list_encoders(pattern: str = "*") -> list[str]:
    return ENCODERS.names(pattern)


def encoder_short_name(encoder: str) -> str:
    """'R18' for resnet18 (a tag such as '.tv_in1k' is ignored); unknown encoders keep their name."""
    base = encoder.split(".")[0]
    return ENCODERS.entry(base).meta.get("short", base) if base in ENCODERS else base


__all__ = ["ENCODERS", "METHODS", "build_method", "create_method", "encoder_short_name", "list_encoders", "list_methods",
           "method_parameters", "method_presentation", "register_method"]
