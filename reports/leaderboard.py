"""The leaderboard of many run folders: one self-contained HTML page (filter, sort, a link from each row to its
run's report; nothing fetched from the network, like report.html) and its markdown version."""

from __future__ import annotations

import html
from pathlib import Path

from anobench.reports.html import SORT_SCRIPT, STYLE, anchor, cell_html
from anobench.reports.markdown import format_cell
from anobench.reports.results import (
    COLUMNS,
    FPS,
    TEXT_COLUMNS,
    Ranking,
    Results,
    entry_cells,
    folders_line,
    rank_numbers,
    rankings,
    relative_link,
    report_of,
    row_notes,
    run_label,
)

TITLE = "anobench leaderboard"
DECIMALS = {"Value": 2, "Δ to #1": 2}

FILTER_STYLE = """
.filter { margin: 1em 0; } .filter input { font-size: 1em; padding: .3em .5em; width: 28em; }
tr.hidden, section.hidden { display: none; }
"""
# the text columns (model, setting, weights, protocol, device; run) read better left-aligned
TEXT_ALIGN = "".join(f"section.ranking td:nth-child({COLUMNS.index(c) + 1}) {{ text-align: left; }}\n"
                     for c in TEXT_COLUMNS)

# Hides the rows (and whole rankings) whose text does not contain every word typed.
FILTER_SCRIPT = """
document.getElementById('filter').addEventListener('input', function (event) {
  var words = event.target.value.toLowerCase().split(/\\s+/).filter(Boolean);
  document.querySelectorAll('section.ranking').forEach(function (section) {
    var heading = section.querySelector('h2').textContent.toLowerCase();
    var shown = 0;
    section.querySelectorAll('tbody tr').forEach(function (row) {
      var text = heading + ' ' + row.textContent.toLowerCase();
      var match = words.every(function (w) { return text.indexOf(w) >= 0; });
      row.classList.toggle('hidden', !match);
      shown += match ? 1 : 0;
    });
    section.classList.toggle('hidden', shown === 0);
  });
});
"""


def _links(entry_folders, page_dir: Path, markdown: bool) -> str:
    parts = []
    for folder in entry_folders:
        report = report_of(folder)
        label = run_label(folder)
        if report is None:
            parts.append(f"{label} (no report)" if markdown else html.escape(f"{label} (no report)"))
        elif markdown:
            parts.append(f"[{label}]({relative_link(report, page_dir)})")
        else:
            parts.append(f'<a href="{html.escape(relative_link(report, page_dir))}">{html.escape(label)}</a>')
    return ", ".join(parts)


def _notes(ranking: Ranking) -> list[str]:
    notes = list(ranking.notes)
    if ranking.metric != FPS:
        notes.append("[lo, hi]: bootstrap percentile interval over test images; Δ to #1: paired difference to the "
                     "first row on the same test images, * where its paired interval excludes 0.")
    return notes


def render_markdown(results: Results, page_dir: Path) -> str:
    parts = [f"# {TITLE}", "", folders_line(results), ""]
    for ranking in rankings(results):
        parts += [f"## {ranking.title}", "", "| " + " | ".join(COLUMNS) + " |",
                  "|" + "|".join("---" if c in TEXT_COLUMNS else "---:" for c in COLUMNS) + "|"]
        for rank, entry in zip(rank_numbers(ranking), ranking.entries, strict=True):
            cells = [format_cell(v, DECIMALS.get(col)) for v, col in zip(entry_cells(ranking, rank, entry), COLUMNS,
                                                                          strict=False)]
            cells.append(_links(entry.row.folders, page_dir, markdown=True))
            parts.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        parts += [""] + [f"{note}  " for note in _notes(ranking)] + [""]
    notes = row_notes(results)
    if notes:
        parts += ["## Rows kept apart", ""] + [f"- {note}" for note in notes] + [""]
    return "\n".join(parts)


def ranking_html(ranking: Ranking, page_dir: Path) -> str:
    key = anchor(f"{ranking.dataset}-{ranking.metric}")
    parts = [f'<section class="ranking" id="{key}"><h2>{html.escape(ranking.title)}</h2>',
             f'<table class="sortable" data-table="{html.escape(key)}"><thead><tr>']
    parts += [f"<th>{html.escape(c)}</th>" for c in COLUMNS]
    parts.append("</tr></thead><tbody>")
    for rank, entry in zip(rank_numbers(ranking), ranking.entries, strict=True):
        cells = [cell_html(v, DECIMALS.get(col)) for v, col in zip(entry_cells(ranking, rank, entry), COLUMNS,
                                                                    strict=False)]
        cells.append(_links(entry.row.folders, page_dir, markdown=False))
        parts.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    parts.append("</tbody></table>")
    parts.append('<div class="notes">' + "".join(f"<p>{html.escape(n)}</p>" for n in _notes(ranking)) + "</div>")
    return "\n".join(parts) + "</section>"


def render_html(results: Results, page_dir: Path) -> str:
    tables = rankings(results)
    body = [f"<h1>{html.escape(TITLE)}</h1>", f"<p>{html.escape(folders_line(results))}</p>",
            '<p class="filter"><input id="filter" type="search" placeholder="Filter rows: dataset, metric, model, '
            'device, weights, setting..." aria-label="Filter rows"></p>',
            "<nav><h2>Rankings</h2><ol>"
            + "".join(f'<li><a href="#{anchor(f"{t.dataset}-{t.metric}")}">{html.escape(t.title)}</a></li>'
                      for t in tables) + "</ol></nav>"]
    body += [ranking_html(t, page_dir) for t in tables]
    notes = row_notes(results)
    if notes:
        body.append('<h2>Rows kept apart</h2><ul class="notes">'
                    + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{TITLE}</title><style>{STYLE}{FILTER_STYLE}{TEXT_ALIGN}</style></head>\n<body>\n"
            + "\n".join(body) + f"\n<script>{SORT_SCRIPT}{FILTER_SCRIPT}</script>\n</body></html>\n")
