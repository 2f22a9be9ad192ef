"""Markdown reports (READMEs, pull-request comments), with the figures as PNG files beside them."""

from __future__ import annotations

import re
from pathlib import Path

from anobench.aggregate import Estimate
from anobench.reports.plots import Plot, png_bytes
from anobench.reports.rows import RunData, Table
from anobench.reports.tables import all_tables, definitions, environment_lines

FIGURES_DIR = "figures"


def format_cell(value, decimals: int | None) -> str:
    if value is None:
        return ""
    if isinstance(value, Estimate):
        return value.text(decimals if decimals is not None else 2)
    if isinstance(value, float):
        return f"{value:.{decimals if decimals is not None else 2}f}"
    return str(value)


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def table_markdown(table: Table) -> str:
    lines = [f"### {table.title}", ""]
    if table.caption:
        lines += [table.caption, ""]
    lines.append("| " + " | ".join(_escape(c) for c in table.columns) + " |")
    lines.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(table.columns))) + "|")
    for row in table.rows:
        cells = [_escape(format_cell(v, table.decimals.get(col))) for v, col in zip(row, table.columns, strict=True)]
        lines.append("| " + " | ".join(cells) + " |")
    if table.footnotes:
        lines.append("")
        lines += [f"{note}  " for note in table.footnotes]
    return "\n".join(lines)


def figure_file(plot: Plot) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", plot.key) + ".png"


def summary_line(run: RunData) -> str:
    return (f"{len(run.ok)} cell(s) ok, {len(run.failed)} failed. Every number below comes from `records.jsonl` "
            "in this folder.")


def render(run: RunData, plots: list[Plot]) -> str:
    title = run.info.get("suite", {}).get("name", run.run_dir.name)
    parts = [f"# Report: {title}", ""]
    if run.suite and run.suite.description:
        parts += [run.suite.description, ""]
    parts += [summary_line(run), ""]
    tables = all_tables(run)
    for table in tables:
        parts += [table_markdown(table), ""]
    terms = definitions(tables)
    if terms:
        parts += ["### Definitions", ""] + [f"- **{term}**: {meaning}" for term, meaning in terms] + [""]
    if plots:
        parts += ["## Figures", ""]
        parts += [f"![{plot.title}]({FIGURES_DIR}/{figure_file(plot)})\n" for plot in plots]
    parts += ["## Environment", ""] + [f"- {line}" for line in environment_lines(run)] + [""]
    return "\n".join(parts)


def write(run: RunData, out_dir: Path, plots: list[Plot]) -> Path:
    if plots:
        (out_dir / FIGURES_DIR).mkdir(exist_ok=True)
        for plot in plots:
            (out_dir / FIGURES_DIR / figure_file(plot)).write_bytes(png_bytes(plot))
    path = out_dir / "report.md"
    path.write_text(render(run, plots), encoding="utf-8")
    return path
