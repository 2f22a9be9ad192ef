"""Anomaly-detection methods by name, and the encoders they use.

Adding a method is one file that ends with ``@register_method("name")`` on its class, plus one import here.
"""

from anobench.methods import cflow, fastflow, padim, patchcore, spade  # noqa: F401  (registers the methods)
from anobench.methods.base import METHODS, AnomalyMethod, Prediction, register_method
from anobench.methods.encoders import ENCODERS, Encoder


def create_method(name: str, where: str | None = None, **params) -> AnomalyMethod:
    """Build a registered method by name with the given parameters (unknown names list the valid ones)."""
    return METHODS.get(name, where)(**params)


def list_methods(pattern: str = "*") -> list[str]:
    return METHODS.names(pattern)


def list_encoders(pattern: str = "*") -> list[str]:
    return ENCODERS.names(pattern)


__all__ = ["AnomalyMethod", "Encoder", "Prediction", "create_method", "list_encoders", "list_methods",
           "register_method"]
