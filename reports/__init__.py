"""Reports rendered from a run folder's records: markdown, self-contained HTML, LaTeX tables; and the view of
many run folders (``write_results``: a leaderboard page, or one flat table of their cells)."""

from __future__ import annotations

import os
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


RESULT_FORMATS = ("md", "html", "csv", "parquet")
RESULT_FILES = {"html": "leaderboard.html", "parquet": "results.parquet"}  # formats that never go to stdout


def write_results(run_dirs: Sequence[str | Path], fmt: str = "md", output: str | Path | None = None,
                  latest: bool = False) -> tuple[Path | None, str]:
    """Several run folders as one view: the leaderboard (``md``, ``html``) or the flat table of their cells
    (``csv``, ``parquet``). Written to ``output`` whole or not at all; without it, ``md`` and ``csv`` are
    returned as text (the path is None) and the others go to ``leaderboard.html`` / ``results.parquet``."""
    from anobench.export import load_records, write_frame
    from anobench.records import check_run_folder
    from anobench.reports.leaderboard import render_html, render_markdown
    from anobench.reports.results import gather, load_runs

    if fmt not in RESULT_FORMATS:
        raise BenchError(f"Unknown results format '{fmt}'; valid formats: {', '.join(RESULT_FORMATS)}.")
    folders = [check_run_folder(d) for d in run_dirs]
    target = Path(output) if output else (Path(RESULT_FILES[fmt]) if fmt in RESULT_FILES else None)
    if fmt in ("csv", "parquet"):
        frame = load_records(*folders, latest=latest)
        if target is None:
            return None, frame.to_csv(index=False)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_frame(frame, fmt, target)
        return target, ""
    results = gather(load_runs(folders), latest=latest)
    page_dir = target.parent if target else Path(".")
    text = (render_html if fmt == "html" else render_markdown)(results, page_dir)
    if target is None:
        return None, text
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    try:
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target, ""
