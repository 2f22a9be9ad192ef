"""Anomaly-detection methods by name, and the encoders they use.

Adding a method is one file that ends with ``@register_method("name")`` on its class, plus one import here.
"""

import inspect

from anobench.methods import cflow, padim, spade  # noqa: F401  (registers the methods)
from anobench.methods.base import METHODS, AnomalyMethod, Prediction, register_method
from anobench.methods.encoders import ENCODERS, Encoder


def create_method(name: str, where: str | None = None, **params) -> AnomalyMethod:
    """Build a registered method by name with the given parameters (unknown names list the valid ones)."""
    return METHODS.get(name, where)(**params)


def method_parameters(name: str) -> set[str]:
    """The keyword parameters a method's constructor takes: what a suite's ``params`` may name (the one place
    that knows it, so that validation does not depend on how a method is found)."""
    parameters = inspect.signature(METHODS.get(name)).parameters.values()
    return {p.name for p in parameters if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def list_methods(pattern: str = "*") -> list[str]:
    return METHODS.names(pattern)


def list_encoders(pattern: str = "*") -> list[str]:
    return ENCODERS.names(pattern)


__all__ = ["AnomalyMethod", "Encoder", "Prediction", "create_method", "list_encoders", "list_methods",
           "method_parameters", "register_method"]
