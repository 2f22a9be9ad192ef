"""Dataset sources by name.

Importing this package imports no torch: the registry holds where each built-in lives and loads it on
first use. Adding a source is one file with a ``DatasetSource`` subclass plus one ``DATASETS.add`` line
below; other packages add theirs through the ``anobench.datasets`` entry-point group, or a suite names a
class directly as ``"package.module:Class"``.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from anobench.core import Reference, Registry

if TYPE_CHECKING:
    from anobench.datasets.base import DatasetSource


def _is_source_class(value: Any) -> bool:
    from anobench.datasets.base import DatasetSource

    return isinstance(value, type) and issubclass(value, DatasetSource)


DATASETS: Registry[type[DatasetSource]] = Registry(
    "dataset", group="anobench.datasets", references=True,
    accepts=("a subclass of anobench.datasets.base.DatasetSource", _is_source_class))
DATASETS.add("mvtec", Reference("anobench.datasets.mvtec:MVTecAD"))
DATASETS.add("folder", Reference("anobench.datasets.mvtec:MVTecLayoutFolder"))
DATASETS.add("synthetic", Reference("anobench.datasets.synthetic:SyntheticDataset"))
DATASETS.add("stc", Reference("anobench.datasets.stc:ShanghaiTechCampus"))
DATASETS.add("visa", Reference("anobench.datasets.visa:VisA"))
DATASETS.add("mpdd", Reference("anobench.datasets.mpdd:MPDD"))
DATASETS.add("btad", Reference("anobench.datasets.btad:BTAD"))
DATASETS.add("mvtec_loco", Reference("anobench.datasets.mvtec_loco:MVTecLOCO"))
DATASETS.add("mvtec_ad2", Reference("anobench.datasets.mvtec_ad2:MVTecAD2"))
DATASETS.add("ksdd2", Reference("anobench.datasets.ksdd2:KolektorSDD2"))
DATASETS.add("realiad", Reference("anobench.datasets.realiad:RealIAD"))
register_dataset = DATASETS.register


def create_dataset(name: str, root=None, **options) -> DatasetSource:
    """Build a registered dataset source by name (an unknown name gives the list of valid ones, an option
    the source does not take names the options it does)."""
    from anobench.datasets.base import DatasetError

    cls = DATASETS.get(name)
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "root")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise DatasetError(f"Dataset '{name}' does not take the option '{unknown[0]}'; its options: "
                           f"{', '.join(accepted) or 'none'}.")
    return cls(root, **options)


def list_datasets(pattern: str = "*") -> list[str]:
    return DATASETS.names(pattern)


__all__ = ["DATASETS", "create_dataset", "list_datasets", "register_dataset"]
