"""The published runs render the same tables they were published with: a change to how reports are built
(rows, marks, names, columns, definitions) that alters a committed report.md fails here."""

from pathlib import Path

import pytest

from anobench.reports.markdown import table_markdown
from anobench.reports.rows import load_run
from anobench.reports.tables import all_tables, definitions

PUBLISHED = Path(__file__).resolve().parents[1] / "reports" / "published"
RUNS = sorted(p.parent for p in PUBLISHED.glob("*/report.md"))


def test_there_are_published_runs_to_compare():
    assert len(RUNS) >= 3


@pytest.mark.parametrize("run_dir", RUNS, ids=[p.name for p in RUNS])
def test_a_published_run_renders_its_committed_tables(run_dir):
    committed = (run_dir / "report.md").read_text(encoding="utf-8")
    tables = all_tables(load_run(run_dir))
    assert tables
    for table in tables:
        assert table_markdown(table) in committed, f"table {table.key!r} renders differently"
    for term, meaning in definitions(tables):
        assert f"- **{term}**: {meaning}" in committed, f"definition of {term!r} differs"
