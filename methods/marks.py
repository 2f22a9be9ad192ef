"""How reports print a method: its display name, the marks its rows may carry and the encoder-only rows its
cells make. Declared apart from the methods themselves and free of torch, so that reading records
(``bench report``, ``bench compare``) imports no model code: the built-ins' declarations are registered
beside their names (``methods/__init__.py``); a plugin's are its class attributes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Mark:
    """A table mark a method declares: ``symbol`` after a row's name where the cell's ``labels()[label]``
    is ``value``, and ``meaning`` once as a footnote. ``encoder=True``: a fact about the encoder alone, so
    the encoder-only rows timed in those cells carry it too."""

    symbol: str
    label: str
    value: Any
    meaning: str
    encoder: bool = False

    def applies(self, labels: dict[str, Any]) -> bool:
        return labels.get(self.label) == self.value


@dataclass(frozen=True)
class Presentation:
    """A method's ``display_name``, ``marks`` and ``encoder_row`` (see ``AnomalyMethod``)."""

    display_name: str = ""
    marks: tuple[Mark, ...] = ()
    encoder_row: str = ""

    @classmethod
    def of(cls, method_class: Any) -> Presentation:
        return cls(method_class.display_name, tuple(method_class.marks), method_class.encoder_row)


SHORT_SCHEDULE = Mark("§", "schedule", "short",
                      "short training schedule (see the record's method_params), not the paper's.")
REFLECT_PADDING = Mark("¶", "encoder_padding", "reflect",
                       "encoder padded by reflection in its 7×7 stem and every 3×3 convolution, as the official "
                       "CFLOW-AD code's ResNet copy (timm's ResNets pad with zeros).", encoder=True)
HARD_PERMUTATION = Mark("‖", "permutation", "hard",
                        "hard channel permutations in the flow (permute_soft=False, anomalib's choice): a departure "
                        "from the official code's random orthogonal matrices.")
