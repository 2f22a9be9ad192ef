"""Many run folders, one view: their cells matched by configuration, and per dataset and metric a ranking.

A row is one model setting (method, encoder, parameters, weights, protocol, one-class or multi-class,
input size) on one device: records of different devices or weights never share a row. A row gathers its
cells from every folder given (classes or seeds run in different folders), but only where the same class
was scored on the same test images with the same bootstrap settings in each (equal test-set fingerprints);
otherwise each folder keeps its own row and the row says why. A configuration (one cell id on one device)
recorded in several folders is never merged: each run keeps its own row, unless ``latest`` keeps only the
newest record of each. Means, seeds' spread, intervals and paired differences are the single-run report's
own (``aggregate.combine``, ``accuracy.paired_difference``), reading each record's resamples from its folder.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from anobench.aggregate import Estimate, median_over_cells
from anobench.core import BenchError
from anobench.metrics import metric_info
from anobench.records import Record, check_run_folder
from anobench.reports.accuracy import paired_difference, reference_partner
from anobench.reports.complexity import cell_fps
from anobench.reports.rows import (
    RunData,
    dataset_title,
    load_run,
    metric_display,
    metric_estimate,
    resolutions,
    row_key,
    row_name,
    seed_count,
)
from anobench.suites import DEFAULT_TABLE_METRICS

REPORT_FILES = ("report.html", "report.md")
FPS = "fps"  # the speed ranking: end-to-end images/s at the largest batch timed (median over the row's cells)


class Runs(RunData):
    """Several run folders read as one: each record's resamples come from its own folder."""

    def __init__(self, folders: Sequence[RunData]):
        super().__init__(Path("."), [r for run in folders for r in run.records], None, {})
        self.folders = list(folders)
        self._folder_of = {id(r): run for run in folders for r in run.records}

    def folder(self, record: Record) -> RunData:
        return self._folder_of[id(record)]

    def replicates(self, record: Record) -> dict[str, np.ndarray]:
        return self.folder(record).replicates(record)


def load_runs(run_dirs: Sequence[str | Path]) -> Runs:
    """Every folder's latest record of each cell (refused in one sentence where one is not a run folder)."""
    if not run_dirs:
        raise BenchError("Pass at least one run folder.")
    return Runs([load_run(check_run_folder(d)) for d in run_dirs])


def device_name(record: Record) -> str:
    return record.get("device", {}).get("name") or record.get("device", {}).get("requested") or "unknown device"


def newest_first(runs: Runs, records: list[Record]) -> list[Record]:
    """Records of one configuration, newest first (by finish time, then the later folder on the command line)."""
    order = {id(run): i for i, run in enumerate(runs.folders)}
    return sorted(records, key=lambda r: (r.get("finished_at", ""), order[id(runs.folder(r))]), reverse=True)


@dataclass
class ResultRow:
    """One model setting on one device, and the records (from one or several folders) that measured it."""

    dataset: str
    records: list[Record]
    folders: list[RunData]
    note: str = ""  # why this row stands apart from another of the same setting

    @property
    def setting(self) -> str:
        return self.records[0]["config"].get("setting", "one-class")

    @property
    def device(self) -> str:
        return device_name(self.records[0])


@dataclass
class Results:
    runs: Runs
    rows: list[ResultRow] = field(default_factory=list)
    latest: bool = False


def _bootstrap_spec(record: Record) -> tuple:
    boot = record.get("bootstrap", {})
    return boot.get("resamples"), boot.get("seed"), boot.get("confidence")


def _why_apart(records: list[Record]) -> str:
    """Why cells of one setting from several folders cannot be combined ('' where they can)."""
    fingerprints: dict[str, set] = defaultdict(set)
    for record in (r for r in records if not r["config"].get("measure_only")):  # timed only: no test set
        fingerprints[record["config"]["class"]].add(record.get("test_set", {}).get("fingerprint"))
    differing = sorted(c for c, prints in fingerprints.items() if len(prints) > 1)
    if differing:
        return (f"test sets differ between run folders ({', '.join(differing)}: other test-set fingerprints), so "
                "they are not combined")
    if any(None in prints for prints in fingerprints.values()):
        return "a record has no test-set fingerprint (schema 1), so folders cannot be shown to share test images"
    if len({_bootstrap_spec(r) for r in records if "bootstrap" in r}) > 1:
        return "bootstrap settings differ between run folders, so their intervals are not combined"
    return ""


def gather(runs: Runs, latest: bool = False) -> Results:
    """Rows of every ok cell of every folder (see the module's docstring for what shares a row)."""
    groups: dict[tuple, list[Record]] = defaultdict(list)
    for record in runs.ok:
        c = record["config"]
        groups[(c["dataset"], row_key(record), device_name(record), c["resolution"])].append(record)
    results = Results(runs, latest=latest)
    for (dataset, *_), members in groups.items():
        by_cell: dict[str, list[Record]] = defaultdict(list)
        for record in members:
            by_cell[record["cell_id"]].append(record)
        if latest:
            members = [newest_first(runs, same)[0] for same in by_cell.values()]
        folders = list({id(f): f for f in map(runs.folder, members)}.values())  # RunData is unhashable
        repeated = max(len(same) for same in by_cell.values()) > 1 and not latest
        reason = ("the same configuration was run in several folders: one row per run (--latest keeps the newest)"
                  if repeated else _why_apart(members) if len(folders) > 1 else "")
        if not reason:
            results.rows.append(ResultRow(dataset, members, folders))
            continue
        for folder in folders:
            own = [r for r in members if runs.folder(r) is folder]
            results.rows.append(ResultRow(dataset, own, [folder], reason))
    return results


# ----------------------------------------------------------------------------------------------------------
# rankings


@dataclass
class Entry:
    """One row's place in one ranking."""

    row: ResultRow
    value: Estimate | float
    difference: Estimate | None  # paired difference to the leader, where they share test images


@dataclass
class Ranking:
    dataset: str
    metric: str  # a record metric, or FPS
    title: str
    entries: list[Entry]
    notes: list[str] = field(default_factory=list)


def _sort_value(value: Estimate | float) -> float:
    return value.value if isinstance(value, Estimate) else value


def _pairs(leader: ResultRow, row: ResultRow) -> list[tuple[Record, Record]]:
    """Each cell of ``row`` with the leader's cell scored on the same test images."""
    pairs = []
    for record in row.records:
        same_class = [r for r in leader.records if r["config"]["class"] == record["config"]["class"]]
        partner = reference_partner(record, same_class)
        if partner is not None:
            pairs.append((record, partner))
    return pairs


def metric_ranking(results: Results, dataset: str, metric: str) -> Ranking | None:
    rows = [r for r in results.rows if r.dataset == dataset]
    scored = [(row, value) for row in rows if (value := metric_estimate(results.runs, row.records, metric)) is not None]
    if not scored:
        return None
    info = metric_info(metric)
    higher = info is None or info.higher_is_better
    scored.sort(key=lambda item: _sort_value(item[1]), reverse=higher)
    leader = scored[0][0]
    entries, unpaired = [], []
    for row, value in scored:
        pairs = _pairs(leader, row) if row is not leader else []
        difference = paired_difference(results.runs, pairs, metric) if pairs else None
        if row is not leader and difference is None:
            unpaired.append(row_label(row))
        entries.append(Entry(row, value, difference))
    records = [r for row, _ in scored for r in row.records]
    unit = " (%)" if info is None or info.percent else ""
    ranking = Ranking(dataset, metric, f"{metric_display(metric)}{unit} on {dataset_title(records)}", entries)
    ranking.notes.append(f"Ranked by the mean over classes (and seeds); {'higher' if higher else 'lower'} is better.")
    if unpaired:
        ranking.notes.append("No paired difference to the leader for " + "; ".join(unpaired) + ": no cell scored "
                             "on the same test images (class, seed, test-set fingerprint and bootstrap settings).")
    return ranking


def fps_ranking(results: Results, dataset: str) -> Ranking | None:
    rows = [r for r in results.rows if r.dataset == dataset]
    timed = [(row, fps) for row in rows if (fps := median_over_cells(cell_fps(r) for r in row.records)) is not None]
    if not timed:
        return None
    timed.sort(key=lambda item: (item[0].device, -item[1]))
    records = [r for row, _ in timed for r in row.records]
    ranking = Ranking(dataset, FPS, f"Throughput (images/s) on {dataset_title(records)}",
                      [Entry(row, fps, None) for row, fps in timed])
    ranking.notes.append("End-to-end images/s at the largest batch each cell timed (median over the row's cells); "
                         "ranked within each device only: fps from different devices are not comparable.")
    return ranking


def rankings(results: Results, metrics: Sequence[str] | None = None) -> list[Ranking]:
    """Per dataset: one ranking per accuracy metric measured (the reports' table metrics first), then the
    throughput ranking."""
    out = []
    for dataset in dict.fromkeys(r.dataset for r in results.rows):
        records = [r for row in results.rows if row.dataset == dataset for r in row.records]
        measured = {m for r in records for m, v in r.get("metrics", {}).items()
                    if v is not None and metric_info(m) is not None}
        names = metrics or sorted(measured, key=lambda m: (m not in DEFAULT_TABLE_METRICS,
                                                           list(DEFAULT_TABLE_METRICS).index(m)
                                                           if m in DEFAULT_TABLE_METRICS else 0, m))
        out += [r for m in names if (r := metric_ranking(results, dataset, m)) is not None]
        fps = fps_ranking(results, dataset)
        if fps is not None:
            out.append(fps)
    return out


# ----------------------------------------------------------------------------------------------------------
# what a row shows beside its number


def row_label(row: ResultRow) -> str:
    return f"{row_name(row.records)} on {row.device}"


def run_label(folder: RunData) -> str:
    return folder.run_dir.name or str(folder.run_dir)


def report_of(folder: RunData) -> Path | None:
    """The run's own report (HTML, else markdown); None where it has not been rendered."""
    return next((folder.run_dir / name for name in REPORT_FILES if (folder.run_dir / name).is_file()), None)


def relative_link(target: Path, page_dir: Path) -> str:
    """``target`` as a link from a page written into ``page_dir`` (forward slashes, as URLs want)."""
    return Path(os.path.relpath(target.resolve(), page_dir.resolve())).as_posix()


TEXT_COLUMNS = ("Model", "Setting", "Weights", "Protocol", "Device", "Run")
COLUMNS = ["Rank", "Model", "Setting", "Weights", "Protocol", "Device", "Input", "Classes", "n", "Value",
           "Δ to #1", "Run"]


def entry_cells(ranking: Ranking, rank: int, entry: Entry) -> list[Any]:
    """The plain cells of one ranking row (the run column is added by each format, as a link)."""
    row = entry.row
    c = row.records[0]["config"]
    n_classes = len({r["config"]["class"] for r in row.records})
    value: Any = entry.value if ranking.metric != FPS else f"{entry.value:.1f}"
    return [rank, row_name(row.records, with_params=True), row.setting, c["weights"], c["protocol"], row.device,
            resolutions(row.records), n_classes, seed_count(row.records), value, entry.difference]


def rank_numbers(ranking: Ranking) -> list[int]:
    """1, 2, ... (ties share a rank); throughput restarts at 1 on each device."""
    ranks: list[int] = []
    previous, previous_value, position = None, None, 0
    for entry in ranking.entries:
        group = entry.row.device if ranking.metric == FPS else None
        value = round(_sort_value(entry.value), 6)
        position = 1 if group != previous else position + 1
        ranks.append(ranks[-1] if ranks and group == previous and value == previous_value else position)
        previous, previous_value = group, value
    return ranks


def row_notes(results: Results) -> list[str]:
    """Why rows of one setting stand apart, each reason once."""
    notes = dict.fromkeys(f"{row_label(row)}: {row.note}." for row in results.rows if row.note)
    if results.latest:
        notes[("--latest: a configuration recorded in several folders shows only its newest record.")] = None
    return list(notes)


def folders_line(results: Results) -> str:
    return (f"{len(results.runs.folders)} run folder(s), {len(results.runs.ok)} ok cell(s), "
            f"{len(results.runs.failed)} failed; every number comes from their records.jsonl.")
