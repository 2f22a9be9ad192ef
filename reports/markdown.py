"""Markdown reports (for READMEs and pull-request comments)."""

from __future__ import annotations

from pathlib import Path

from reports.tables import (
    RunData,
    Table,
    accuracy_tables,
    complexity_table,
    environment_lines,
    failures_table,
)


def format_cell(value, decimals: int | None) -> str:
    if value is None:
        return ""
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


def tables_for(run: RunData) -> list[Table]:
    tables = [t for t in [complexity_table(run), *accuracy_tables(run), failures_table(run)] if t is not None]
    return tables


def render(run: RunData) -> str:
    title = run.info.get("suite", {}).get("name", run.run_dir.name)
    parts = [f"# Report: {title}", ""]
    if run.suite and run.suite.description:
        parts += [run.suite.description, ""]
    ok, failed = len(run.ok), len(run.failed)
    parts += [f"{ok} cell(s) ok, {failed} failed. Every number below comes from `records.jsonl` in this folder.", ""]
    for table in tables_for(run):
        parts += [table_markdown(table), ""]
    parts += ["## Environment", ""] + [f"- {line}" for line in environment_lines(run)] + [""]
    return "\n".join(parts)


def write(run: RunData, out_dir: Path) -> Path:
    path = out_dir / "report.md"
    path.write_text(render(run), encoding="utf-8")
    return path
