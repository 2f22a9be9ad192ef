"""Reports rendered from a run folder's records: markdown (more formats register in FORMATS)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from bench.errors import BenchError
from reports import markdown
from reports.tables import RunData, load_run

FORMATS: dict[str, Callable[[RunData, Path], Path]] = {"md": markdown.write}
DEFAULT_FORMATS = ("md",)


def write_reports(run_dir: str | Path, formats: Sequence[str] = DEFAULT_FORMATS) -> list[Path]:
    """Render the run folder's records in each format; returns the files written."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise BenchError(f"Run folder {run_dir} does not exist; pass a folder that `bench run` wrote.")
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise BenchError(f"Unknown report format '{unknown[0]}'; valid formats: {', '.join(FORMATS)}.")
    run = load_run(run_dir)
    if not run.records:
        raise BenchError(f"Run folder {run_dir} has no records yet; run a suite into it first.")
    return [FORMATS[f](run, run_dir) for f in formats]
