"""The record schema (anobench.records) is checked by mypy against the modules that write and read records,
so that a misspelt record key fails here instead of silently reading None in a report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
# The writers and readers of records (compare, reports and export read them through the schema).
CHECKED = ["anobench.records", "anobench.cells", "anobench.environment", "anobench.memory", "anobench.speed",
           "anobench.flops", "anobench.evaluation", "anobench.executors", "anobench.runner", "anobench.compare",
           "anobench.export", "anobench.reports.tables", "anobench.reports.plots", "anobench.reports.markdown",
           "anobench.reports.html", "anobench.reports.latex"]


def import_tree(where: Path) -> Path:
    """The ``anobench`` package as an importable folder of links, from pyproject's package-dir mapping (mypy
    cannot follow the import hook of an editable install that maps ``anobench`` to ``bench/``)."""
    package_dir = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    top = where / "anobench"
    top.mkdir(parents=True)
    for entry in (ROOT / package_dir["anobench"]).iterdir():
        if entry.name != "__pycache__":
            (top / entry.name).symlink_to(entry)
    for package, folder in package_dir.items():
        if package != "anobench":
            (where / package.replace(".", "/")).symlink_to(ROOT / folder)
    return where


def run_mypy(where: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
                           "--cache-dir", str(where / ".mypy_cache"), *args],
                          cwd=where, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    pytest.importorskip("mypy", reason="mypy is not installed (pip install -e '.[dev]')")
    return import_tree(tmp_path_factory.mktemp("mypy"))


def test_record_writers_and_readers_type_check(tree):
    result = run_mypy(tree, *[arg for module in CHECKED for arg in ("-m", module)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_misspelt_record_key_fails_the_check(tree):
    (tree / "misspelt.py").write_text(
        "from anobench.records import Record\n\n\n"
        "def resolution(record: Record) -> int:\n"
        "    return record['config']['resolutoin']\n\n\n"
        "def confidence(record: Record) -> float | None:\n"
        "    return record.get('bootstrap', {}).get('confidance')\n")
    result = run_mypy(tree, "misspelt.py")
    assert result.returncode == 1
    assert '"resolutoin"' in result.stdout and '"confidance"' in result.stdout, result.stdout

