"""anobench: a benchmarking and reproducibility harness for unsupervised visual anomaly detection."""

__version__ = "0.1.0"
