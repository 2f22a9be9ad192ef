"""The record schema (anobench.records) is checked by mypy against the modules that write and read records,
so that a misspelt record key fails here instead of silently reading None in a report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import get_args, get_origin, get_type_hints, is_typeddict

import pytest

from anobench.records import Record, read_records
from tests.conftest import REPO, run_bench, write_suite

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
# The writers and readers of records (compare, reports and export read them through the schema).
CHECKED = ["anobench.records", "anobench.cells", "anobench.environment", "anobench.memory", "anobench.speed",
           "anobench.flops", "anobench.deployment", "anobench.evaluation", "anobench.executors", "anobench.runner", "anobench.compare",
           "anobench.export", "anobench.aggregate", "anobench.reports.rows", "anobench.reports.accuracy",
           "anobench.reports.complexity", "anobench.reports.tables", "anobench.reports.plots", "anobench.reports.markdown",
           "anobench.reports.deployment", "anobench.reports.html", "anobench.reports.latex", "anobench.reports.results",
           "anobench.reports.leaderboard", "anobench.track"]


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



def undeclared_keys(value, schema, where: str = "") -> list[str]:
    """Keys of ``value`` that the TypedDict ``schema`` (recursively) does not declare."""
    if not (isinstance(value, dict) and is_typeddict(schema)):
        if get_origin(schema) is dict and isinstance(value, dict):  # dict[str, Block]: check each block
            block = get_args(schema)[1]
            return [k for name, item in value.items() for k in undeclared_keys(item, block, f"{where}{name}.")]
        return []
    fields = get_type_hints(schema)
    found = [f"{where}{key}" for key in value if key not in fields]
    for key, item in value.items():
        if key in fields:
            found += undeclared_keys(item, fields[key], f"{where}{key}.")
    return found


def test_written_records_hold_only_declared_keys(tiny_data, tmp_path):
    """The runtime side of the schema: what a run writes today, and the published run, match it."""
    assert undeclared_keys({"config": {"resolutoin": 64}, "per_defect": {"crack": {"n_image": 2}}}, Record) == [
        "config.resolutoin", "per_defect.crack.n_image"]
    suite = write_suite(tmp_path / "schema.toml", tiny_data, classes=("disc",),
                        extra="[bootstrap]\nresamples = 100\n[measure]\nspeed = true\nbatch_sizes = [1]\nwarmup = 1\n"
                        "iterations = 2\n")
    result = run_bench("run", "--suite", str(suite), "--out", str(tmp_path / "run"), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    fresh = read_records(tmp_path / "run")
    assert fresh and fresh[0]["status"] == "ok" and fresh[0].get("bootstrap") and fresh[0].get("speed")
    published = read_records(REPO / "reports" / "published" / "paper-table6-cpu-2core")
    for record in fresh + published:
        assert undeclared_keys(record, Record) == [], record["cell_id"]
