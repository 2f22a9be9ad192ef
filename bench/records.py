"""Records: one JSON object per cell, appended to ``records.jsonl`` in a run folder.

Each line is written with a single ``write`` and fsynced, so a killed run leaves at worst one partial
last line, which readers ignore and the next run cuts off before appending. A line damaged anywhere else
(a disk or copy fault) is skipped with a warning and left in place; its cell counts as not done. A cell
may have several records (a retried failure); the last one counts.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypedDict

SCHEMA_VERSION = 1
RECORDS_FILE = "records.jsonl"
RUN_FILE = "run.json"  # beside the records: the suite as resolved, the plan, the command


class Record(TypedDict, total=False):
    """The schema of a record (all plain data)."""

    schema_version: int
    bench_version: str
    cell_id: str
    suite: dict[str, Any]  # name, version
    config: dict[str, Any]  # dataset, class, method, params, encoder, resolution, seed, weights, protocol
    labels: dict[str, Any]  # facts reports must show: random weights, protocol, schedule, test-set dependence
    status: str  # "ok" or "failed"
    error: str
    traceback: str
    metrics: dict[str, float | None]
    n_images: dict[str, int]
    timings: dict[str, Any]
    size: dict[str, Any]
    memory: dict[str, Any]
    speed: dict[str, Any]
    weights: dict[str, Any]
    dataset: dict[str, Any]  # the source as opened on this machine (root path, generator parameters)
    method_params: dict[str, Any]  # get_params() of the fitted method, defaults included
    fit_stats: dict[str, Any]  # what training did (steps, fibers/s, losses)
    feature_cache: dict[str, Any]  # encoder batches served from the run's feature cache (hits) or computed
    device: dict[str, Any]
    precision: dict[str, Any]  # inference precision (float32 or bf16 autocast) and torch.compile on/off
    artifacts: dict[str, str]
    machine_info: dict[str, Any]
    commit_info: dict[str, Any]
    started_at: str
    finished_at: str


def _json_safe(value: Any) -> Any:
    """NaN and infinities become null (JSON has no NaN); tuples become lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def records_path(location: str | Path) -> Path:
    """``location`` is a run folder or a records file."""
    path = Path(location)
    return path / RECORDS_FILE if path.is_dir() else path


def _cut_partial_tail(path: Path) -> None:
    """Remove a last line that a killed writer left without its newline."""
    with open(path, "rb+") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        data = f.read()
        f.truncate(data.rfind(b"\n") + 1)


def append_record(location: str | Path, record: Record) -> None:
    """Append one record atomically (one write of one complete line, then fsync)."""
    path = records_path(location)
    if path.exists():
        _cut_partial_tail(path)
    line = (json.dumps(_json_safe(record), sort_keys=True, allow_nan=False) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, line)
        while written < len(line):  # a short write (the disk filling up): the next one raises ENOSPC
            written += os.write(fd, line[written:])
        os.fsync(fd)
    finally:
        os.close(fd)


def read_records(location: str | Path) -> list[Record]:
    """All complete records in file order. A partial last line (a killed writer's) is ignored; any other line
    that is not a JSON object with a cell id in UTF-8 (a disk or copy fault) is skipped with one warning
    naming it: the cell it held counts as not done, so a resumed run reruns it. The line stays in the file."""
    path = records_path(location)
    if not path.is_file():
        return []
    records, damaged = [], []
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.endswith(b"\n"):
                break
            try:
                record = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError:
                damaged.append(f"line {number} (not valid UTF-8)")
                continue
            except json.JSONDecodeError:
                damaged.append(f"line {number} (not valid JSON)")
                continue
            if isinstance(record, dict) and isinstance(record.get("cell_id"), str):
                records.append(record)
            else:
                damaged.append(f"line {number} (not a record)")
    if damaged:
        one = len(damaged) == 1
        _warn_once(f"warning: {path}: skipped {', '.join(damaged)}; "
                   + ("the cell it held counts" if one else "the cells they held count")
                   + " as not done (a resumed run reruns it) and "
                   + ("the damaged line stays" if one else "the damaged lines stay") + " in the file.")
    return records


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    """Print a warning once per process (a command may read the same records more than once)."""
    if message not in _WARNED:
        _WARNED.add(message)
        print(message, file=sys.stderr)


def latest_by_cell(records: Iterable[Record]) -> dict[str, Record]:
    """The last record of each cell, in first-seen cell order."""
    latest: dict[str, Record] = {}
    for record in records:
        latest[record["cell_id"]] = record
    return latest
