"""Dataset sources by name: ``mvtec``, ``folder``, ``synthetic``, ``stc`` (a new one is one file that
registers itself, plus its import here).
"""

from anobench.datasets import mvtec, stc, synthetic  # noqa: F401  (registers the sources)
from anobench.datasets.base import DATASETS, AnomalyDataset, DatasetError, DatasetSource, Geometry, SampleRef


def create_dataset(name: str, root=None, **options) -> DatasetSource:
    """Build a registered dataset source by name (an unknown name gives the list of valid ones)."""
    return DATASETS.get(name)(root, **options)


def list_datasets(pattern: str = "*") -> list[str]:
    return DATASETS.names(pattern)


__all__ = ["AnomalyDataset", "DatasetError", "DatasetSource", "Geometry", "SampleRef", "create_dataset",
           "list_datasets"]
