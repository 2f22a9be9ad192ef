"""Dataset sources by name: ``mvtec``, ``folder``, ``synthetic``, ``stc``, ``visa``, ``mpdd``, ``btad``,
``mvtec_loco``, ``mvtec_ad2``, ``ksdd2``, ``realiad`` (a new one is one file that registers itself, plus
its import here).
"""

import inspect

from anobench.datasets import (  # noqa: F401  (registers the sources)
    btad,
    ksdd2,
    mpdd,
    mvtec,
    mvtec_ad2,
    mvtec_loco,
    realiad,
    stc,
    synthetic,
    visa,
)
from anobench.datasets.base import DATASETS, AnomalyDataset, DatasetError, DatasetSource, Geometry, SampleRef


def create_dataset(name: str, root=None, **options) -> DatasetSource:
    """Build a registered dataset source by name (an unknown name gives the list of valid ones, an option
    the source does not take names the options it does)."""
    cls = DATASETS.get(name)
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "root")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise DatasetError(f"Dataset '{name}' does not take the option '{unknown[0]}'; its options: "
                           f"{', '.join(accepted) or 'none'}.")
    return cls(root, **options)


def list_datasets(pattern: str = "*") -> list[str]:
    return DATASETS.names(pattern)


__all__ = ["AnomalyDataset", "DatasetError", "DatasetSource", "Geometry", "SampleRef", "create_dataset",
           "list_datasets"]
