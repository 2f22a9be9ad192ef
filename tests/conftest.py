"""Shared fixtures: tiny generated datasets, the real small datasets in ../shared (skipped where absent)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from datasets.synthetic import SynthSpec, write_dataset

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ANOBENCH_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Generated datasets go to a per-session cache, never the user's home."""
    monkeypatch.setenv("ANOBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("ANOBENCH_PROGRESS", "0")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """Two generated classes at 64 px: enough images for every method, seconds to fit."""
    root = tmp_path_factory.mktemp("tiny")
    write_dataset(root, SynthSpec(seed=0, size=64, classes=("stripes", "disc"), train=12, test_good=4,
                                  test_per_defect=2))
    return root


def shared_dataset(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} is absent (the real small datasets live in ../shared/data beside the checkout)")
    return path


def run_bench(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the CLI in a subprocess, as a user would."""
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "ANOBENCH_PROGRESS": "0", **(env or {})}, timeout=900)
