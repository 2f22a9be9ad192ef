"""MPDD (Metal Parts Defect Detection, Jezek et al. 2021): six classes in MVTec AD's layout
(``<class>/ground_truth/<defect>/<stem>_mask.png``). No stable download: see ``bench data fetch mpdd``.
"""

from __future__ import annotations

from anobench.datasets.mvtec import MVTecStyleSource

MPDD_CLASSES = ("bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate", "tubes")


class MPDD(MVTecStyleSource):
    """MPDD: six metal-part classes in MVTec AD layout."""

    name = "mpdd"
    class_names = MPDD_CLASSES
    class_noun = "an MPDD class"
    hint = "the MPDD folder that holds bracket_black/, ..., tubes/"
