"""Reports rendered from a run folder's records: markdown, self-contained HTML, LaTeX tables."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from anobench.core import BenchError
from anobench.reports import html, latex, markdown
from anobench.reports.plots import Plot, all_plots
from anobench.reports.rows import RunData, load_run

FORMATS: dict[str, Callable[[RunData, Path, list[Plot]], Path]] = {
    "md": markdown.write, "html": html.write, "latex": latex.write,
}
DEFAULT_FORMATS = ("md", "html")
NEEDS_PLOTS = {"md", "html"}


def write_reports(run_dir: str | Path, formats: Sequence[str] = DEFAULT_FORMATS) -> list[Path]:
    """Render the run folder's records in each format; returns the files (or folder, for LaTeX) written."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise BenchError(f"Run folder {run_dir} does not exist; pass a folder that `bench run` wrote.")
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise BenchError(f"Unknown report format '{unknown[0]}'; valid formats: {', '.join(FORMATS)}.")
    run = load_run(run_dir)
    if not run.records:
        raise BenchError(f"Run folder {run_dir} has no records yet; run a suite into it first.")
    plots = all_plots(run) if NEEDS_PLOTS & set(formats) else []
    return [FORMATS[f](run, run_dir, plots) for f in formats]
