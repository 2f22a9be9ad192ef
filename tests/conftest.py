"""Shared fixtures: tiny generated datasets, the real small datasets in ../shared (skipped where absent)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from anobench.datasets.synthetic import SynthSpec, write_dataset
from anobench.records import read_records

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
    return subprocess.run([sys.executable, "-m", "anobench", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "ANOBENCH_PROGRESS": "0", **(env or {})}, timeout=900)


def write_suite(path: Path, root: Path, *, dataset: str = "folder", classes: tuple[str, ...] | None = None,
                seeds: tuple[int, ...] = (0,), methods: tuple[str, ...] = ("padim",), params: str = "",
                extra: str = "") -> Path:
    """A small suite file: ResNet-18 with random weights at 64 px on the data at ``root``."""
    class_line = f"classes = {list(classes)!r}\n".replace("'", '"') if classes else ""
    methods_list = ", ".join(f'"{m}"' for m in methods)
    path.write_text(f'name = "{path.stem}"\nversion = 1\nweights = "random"\nbatch_size = 8\nseeds = {list(seeds)}\n'
                    f'[dataset]\nname = "{dataset}"\nroot = "{root}"\n{class_line}'
                    f'[[grid]]\nmethods = [{methods_list}]\nencoders = ["resnet18"]\nresolutions = [64]\n'
                    f'{params}\n{extra}')
    return path


def kill_when_recorded(command: list[str], run_dir: Path, at_least: int, timeout: float = 300) -> int:
    """Start ``command``, SIGKILL its whole process group once ``run_dir`` has ``at_least`` records, and
    return how many records it had written by then. The group includes any local Ray instance the command
    started (its raylet and workers), so nothing is left behind."""
    process = subprocess.Popen(command, env={**os.environ, "ANOBENCH_PROGRESS": "0"}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + timeout
    while time.time() < deadline and len(read_records(run_dir)) < at_least:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return len(read_records(run_dir))


# ----------------------------------------------------------------------------------------------------------
# run folders of seeded records, for the views over many folders (bench results, bench track, the leaderboard)

TEST_IMAGES = {"same": 11, "other": 99}  # test-set seeds: equal seeds, equal images and fingerprints


def seeded_run_folder(root: Path, name: str, cells, device: str = "CPU: test",
                      finished: str = "2026-12-01T10:00:00+00:00") -> Path:
    """A run folder of seeded records and its HTML report: ``cells`` are (method, seed, test images) on class
    ``a``."""
    from anobench.records import append_record
    from anobench.reports import write_reports
    from tests.test_reports import seeded_record

    run = root / name
    run.mkdir()
    for method, seed, test_images in cells:
        record = seeded_record(run, method, "a", seed, TEST_IMAGES[test_images])
        record["device"]["name"] = device
        record["finished_at"] = finished
        append_record(run, record)
    write_reports(run, ["html"])
    return run


@pytest.fixture(scope="session")
def folders(tmp_path_factory) -> dict[str, Path]:
    """Run folders that share, repeat or differ in configuration, device and test set."""
    root = tmp_path_factory.mktemp("folders")
    return {
        "first": seeded_run_folder(root, "first", [("padim", 0, "same"), ("spade", 0, "same")]),
        "second_seed": seeded_run_folder(root, "second_seed", [("padim", 1, "same")]),
        "rerun": seeded_run_folder(root, "rerun", [("padim", 0, "same")], finished="2026-12-02T10:00:00+00:00"),
        "gpu": seeded_run_folder(root, "gpu", [("padim", 0, "same")], device="GPU: test"),
        "other_test": seeded_run_folder(root, "other_test", [("padim", 1, "other")]),
    }
