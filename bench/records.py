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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

from anobench.core import BenchError

SCHEMA_VERSION = 2
#: What each version added; a reader reads every version up to its own (later fields are optional).
SCHEMA_CHANGES = {
    1: "configuration, metrics, timings, size, memory, speed, environment, status",
    2: "display names; bootstrap intervals, per-defect metrics and the test-set fingerprint; FLOPs",
}
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
    display: dict[str, str]  # the names a report prints: method (its class's display_name), encoder (short)
    status: str  # "ok" or "failed"
    error: str
    traceback: str
    metrics: dict[str, float | None]
    metric_notes: dict[str, str]  # why a metric is None (undefined on this test set)
    intervals: dict[str, list[float] | None]  # bootstrap interval [lo, hi] of each metric
    bootstrap: dict[str, Any]  # resamples, seed, confidence, method; the resamples' values are in the artifacts
    per_defect: dict[str, dict[str, Any]]  # defect type → n_images, metrics, intervals (against the good images)
    test_set: dict[str, Any]  # fingerprint of the images scored (equal → paired comparisons), good/defective counts
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
    variation: dict[str, Any]  # baselines only: the cell's accuracy under other kernel settings (compare)
    started_at: str
    finished_at: str


# ----------------------------------------------------------------------------------------------------------
# typed views of the nested parts that readers pick apart (speed), so that compare and the tables read one
# schema instead of string paths; parsing is tolerant of fields older records lack.


@dataclass(frozen=True)
class RegionTiming:
    """One timed region (encoder, network or end_to_end) at one batch size."""

    fps: float | None  # images / median iteration time
    fps_best: float | None  # images / fastest iteration (the one a busy machine disturbs least)
    latency_ms: float | None  # the median iteration, in ms
    times_s: tuple[float, ...]  # every timed iteration; empty in records written before they were kept

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> RegionTiming:
        return cls(fps=data.get("fps"), fps_best=data.get("fps_best", data.get("fps")),
                   latency_ms=data.get("latency_ms"), times_s=tuple(data.get("times_s") or ()))


@dataclass(frozen=True)
class BatchTiming:
    """Every region timed at one batch size, and the paired end-to-end/encoder fps ratio."""

    batch: int
    regions: Mapping[str, RegionTiming]
    ratio_to_encoder: float | None  # median over iterations of end-to-end fps / encoder fps

    def region(self, name: str) -> RegionTiming | None:
        return self.regions.get(name)

    def fps_best(self, region: str = "end_to_end") -> float | None:
        timing = self.regions.get(region)
        return timing.fps_best if timing else None


@dataclass(frozen=True)
class SpeedRecord:
    """A record's ``speed``: the batches measured (ascending) and how (CPU threads)."""

    batches: tuple[BatchTiming, ...]
    torch_threads: int | None
    iterations: int | None  # timed iterations per region and batch, after ``warmup`` untimed ones
    warmup: int | None

    @classmethod
    def of(cls, record: Mapping[str, Any]) -> SpeedRecord | None:
        """The record's speed measurement; None for a cell that was not timed."""
        speed = record.get("speed")
        if not speed or not speed.get("batches"):
            return None
        batches = tuple(
            BatchTiming(batch=int(b), ratio_to_encoder=t.get("ratio_end_to_end_to_encoder"),
                        regions={name: RegionTiming.parse(v) for name, v in t.items() if isinstance(v, dict)})
            for b, t in sorted(speed["batches"].items(), key=lambda item: int(item[0])))
        return cls(batches=batches, torch_threads=speed.get("torch_threads"), iterations=speed.get("iterations"),
                   warmup=speed.get("warmup"))

    def at(self, batch: int) -> BatchTiming | None:
        return next((b for b in self.batches if b.batch == batch), None)

    @property
    def largest(self) -> BatchTiming:
        return self.batches[-1]

    def fps(self, region: str = "end_to_end") -> float | None:
        """fps of ``region`` at the largest batch measured (the throughput figure tables print)."""
        timing = self.largest.region(region)
        return timing.fps if timing else None

    def latency_ms(self, region: str = "end_to_end", batch: int = 1) -> float | None:
        timing = self.at(batch)
        region_timing = timing.region(region) if timing else None
        return region_timing.latency_ms if region_timing else None


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
                check_schema_version(record, path, number)
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


def check_schema_version(record: dict, path: Path, line: int) -> None:
    """A record from a newer anobench may mean something this one cannot tell: refuse it rather than guess."""
    version = record.get("schema_version", 1)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise BenchError(f"{path}, line {line}: record schema version {version!r} is newer than this anobench "
                         f"reads (up to {SCHEMA_VERSION}); upgrade anobench (pip install -U anobench) to read it.")


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
