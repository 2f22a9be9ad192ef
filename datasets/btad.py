"""BTAD (beanTech Anomaly Detection, Mishra et al. 2021) as ``btad.zip`` extracts::

    BTech_Dataset_transformed/<01|02|03>/train/ok/*, test/{ok,ko}/*, ground_truth/ko/<stem>.<png|bmp>

``ok`` is defect-free and ``ko`` defective; images and masks mix ``.bmp`` and ``.png`` (class 03 stores both
as ``.bmp``); a mask has its image's stem and no suffix. anomalib's copy, converted to ``.png``, reads too.
"""

from __future__ import annotations

from pathlib import Path

from anobench.datasets.mvtec import FolderLayout, MVTecStyleSource

BTAD_CLASSES = ("01", "02", "03")
BTAD = FolderLayout("ok", (".png", ".bmp"), "<root>/<01|02|03>/train/ok/*, <root>/<class>/test/{ok,ko}/* and "
                                            "<root>/<class>/ground_truth/ko/<stem>.png (or .bmp)")


class BTAD(MVTecStyleSource):
    """BTAD: three industrial products (01, 02, 03), ok/ko folders, mixed .bmp/.png."""

    name = "btad"
    class_names = BTAD_CLASSES
    class_noun = "a BTAD class"
    hint = "the BTech_Dataset_transformed folder from btad.zip (or the folder holding it)"
    layout = BTAD

    def locate(self, root: Path) -> Path:
        inner = root / "BTech_Dataset_transformed"
        return inner if inner.is_dir() else root
