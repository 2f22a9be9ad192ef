"""anobench: a benchmarking and reproducibility harness for unsupervised visual anomaly detection."""

__version__ = "0.1.0"

__all__ = ["__version__", "load_records"]


def __getattr__(name: str):
    """``anobench.load_records`` without importing pandas at ``import anobench``."""
    if name == "load_records":
        from anobench.export import load_records

        return load_records
    raise AttributeError(f"module 'anobench' has no attribute {name!r}")
