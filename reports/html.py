"""One self-contained HTML report: inline style, inline sorting script, figures as PNG data URIs.

Nothing is fetched from the network (no external scripts, fonts or stylesheets), so the file can be
mailed, archived, or opened on an air-gapped machine.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from anobench.aggregate import Estimate
from anobench.reports.markdown import format_cell, summary_line
from anobench.reports.plots import Plot, png_bytes
from anobench.reports.rows import RunData, Table
from anobench.reports.tables import all_tables, definitions, environment_lines

STYLE = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; } h2 { font-size: 1.3em; border-bottom: 1px solid #ddd; padding-bottom: .2em; }
h3 { font-size: 1.1em; }
nav ol { columns: 2; font-size: .9em; }
table { border-collapse: collapse; margin: .5em 0; font-size: .85em; }
th, td { border-bottom: 1px solid #ddd; padding: .25em .6em; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
th { background: #f4f4f4; cursor: pointer; user-select: none; }
th.sorted-asc::after { content: ' ▲'; } th.sorted-desc::after { content: ' ▼'; }
tbody tr:hover { background: #fafafa; }
.caption, .notes { font-size: .85em; color: #555; max-width: 1000px; }
figure { margin: 1em 0; } figcaption { font-size: .9em; color: #444; }
img { max-width: 100%; height: auto; }
code { background: #f4f4f4; padding: 0 .2em; }
.interval { font-size: .85em; color: #666; }
details > summary { cursor: pointer; color: #555; font-size: .9em; }
"""

SORT_SCRIPT = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('th').forEach(function (th, column) {
    th.addEventListener('click', function () {
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      var ascending = !th.classList.contains('sorted-asc');
      table.querySelectorAll('th').forEach(function (h) { h.classList.remove('sorted-asc', 'sorted-desc'); });
      th.classList.add(ascending ? 'sorted-asc' : 'sorted-desc');
      rows.sort(function (a, b) {
        var x = a.cells[column].textContent, y = b.cells[column].textContent;
        var nx = parseFloat(x), ny = parseFloat(y);
        var cmp = (isNaN(nx) || isNaN(ny)) ? x.localeCompare(y) : nx - ny;
        return ascending ? cmp : -cmp;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""


def anchor(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", key).strip("-")


def table_html(table: Table) -> str:
    parts = [f'<h3 id="{anchor(table.key)}">{html.escape(table.title)}</h3>']
    if table.caption:
        parts.append(f'<p class="caption">{html.escape(table.caption)}</p>')
    parts.append(f'<table class="sortable" data-table="{html.escape(table.key)}"><thead><tr>')
    parts += [f"<th>{html.escape(c)}</th>" for c in table.columns]
    parts.append("</tr></thead><tbody>")
    for row in table.rows:
        cells = [cell_html(v, table.decimals.get(col)) for v, col in zip(row, table.columns, strict=True)]
        parts.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    parts.append("</tbody></table>")
    if table.footnotes:
        parts.append('<div class="notes">' + "".join(f"<p>{html.escape(n)}</p>" for n in table.footnotes) + "</div>")
    if table.collapsed:  # the title stays a heading (the contents link to it); the table opens on demand
        return f'{parts[0]}\n<details><summary>show the table</summary>\n{chr(10).join(parts[1:])}\n</details>'
    return "\n".join(parts)


def cell_html(value, decimals: int | None) -> str:
    """A number, and under it its interval in small type where it has one."""
    if not isinstance(value, Estimate):
        return html.escape(format_cell(value, decimals))
    decimals = 2 if decimals is None else decimals
    interval = value.interval_text(decimals)
    below = f'<br><span class="interval">{html.escape(interval)}</span>' if interval else ""
    return html.escape(value.main_text(decimals)) + below


def figure_html(plot: Plot) -> str:
    data = base64.b64encode(png_bytes(plot)).decode("ascii")
    return (f'<figure id="{anchor(plot.key)}"><img alt="{html.escape(plot.title)}" '
            f'src="data:image/png;base64,{data}"><figcaption>{html.escape(plot.title)}</figcaption></figure>')


def render(run: RunData, plots: list[Plot]) -> str:
    title = run.info.get("suite", {}).get("name", run.run_dir.name)
    tables = all_tables(run)
    toc = [f'<li><a href="#{anchor(t.key)}">{html.escape(t.title)}</a></li>' for t in tables]
    toc.append('<li><a href="#definitions">Definitions</a></li>')
    toc += [f'<li><a href="#{anchor(p.key)}">{html.escape(p.title)}</a></li>' for p in plots]
    toc.append('<li><a href="#environment">Environment</a></li>')
    body = [f"<h1>Report: {html.escape(title)}</h1>"]
    if run.suite and run.suite.description:
        body.append(f"<p>{html.escape(run.suite.description)}</p>")
    body.append(f"<p>{html.escape(summary_line(run))}</p>")
    body.append("<nav><h2>Contents</h2><ol>" + "".join(toc) + "</ol></nav>")
    body.append("<h2>Tables</h2>")
    body += [table_html(t) for t in tables]
    terms = definitions(tables)
    if terms:
        body.append('<h3 id="definitions">Definitions</h3><dl class="notes">')
        body += [f"<dt>{html.escape(term)}</dt><dd>{html.escape(meaning)}</dd>" for term, meaning in terms]
        body.append("</dl>")
    if plots:
        body.append("<h2>Figures</h2>")
        body += [figure_html(p) for p in plots]
    body.append('<h2 id="environment">Environment</h2><ul>')
    body += [f"<li>{html.escape(line)}</li>" for line in environment_lines(run)]
    body.append("</ul>")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)} report</title><style>{STYLE}</style></head>\n<body>\n"
            + "\n".join(body) + f"\n<script>{SORT_SCRIPT}</script>\n</body></html>\n")


def write(run: RunData, out_dir: Path, plots: list[Plot]) -> Path:
    path = out_dir / "report.html"
    path.write_text(render(run, plots), encoding="utf-8")
    return path
