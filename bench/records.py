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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, cast

from anobench.core import BenchError

SCHEMA_VERSION = 2
#: What each version added; a reader reads every version up to its own (later fields are optional).
SCHEMA_CHANGES = {
    1: "configuration, metrics, timings, size, memory, speed, environment, status",
    2: "display names; bootstrap intervals, per-defect metrics and the test-set fingerprint; FLOPs",
}
RECORDS_FILE = "records.jsonl"
RUN_FILE = "run.json"  # beside the records: the suite as resolved, the plan, the command


# ----------------------------------------------------------------------------------------------------------
# The schema of a record, block by block. Every block is total=False: records of older schema versions lack
# later fields, and a failed cell has only the blocks written before it failed. Metric names are data
# (dict[str, float | None]); every other key is declared here, so a type checker (mypy, see
# tests/test_record_schema.py) catches a reader or writer that misspells one. The JSON on disk is these
# dicts as they are.


class SuiteInfo(TypedDict, total=False):
    name: str
    version: str


# "class" is a Python keyword, hence the functional form.
CellConfig = TypedDict("CellConfig", {
    "dataset": str, "class": str, "method": str, "encoder": str, "resolution": int, "resize": int, "seed": int,
    "weights": str,  # "imagenet", "random" or a weights file
    "protocol": str,  # "strict" or "paper"
    "metrics_resolution": str,  # "input" or "original"
    "batch_size": int, "measure_only": bool,
    "params": dict[str, Any],  # the method's parameters from the suite (names are the method's)
    "dataset_options": dict[str, Any],
    "setting": str,  # only in multi-class cells: "multi-class"
    "train_classes": list[str],  # only in multi-class cells
}, total=False)


class Labels(TypedDict, total=False):
    """Facts a report must show beside a cell's numbers; a method's ``labels()`` adds its own (schedule, ...)."""

    random_weights: bool
    protocol: str
    setting: str
    test_set_dependent: bool
    encoder_padding: str
    schedule: str  # CFLOW-AD: "short" marks a shortened training schedule
    permutation: str  # CFLOW-AD: "hard" marks hard channel permutations
    flow_steps: int
    hidden_ratio: float
    image_score: str
    inference_autocast_bf16: bool
    inference_compiled: bool


class Display(TypedDict, total=False):
    """The names a report prints."""

    method: str  # the method class's display_name
    encoder: str  # the encoder's short name


class TestSet(TypedDict, total=False):
    """Which images were scored: equal fingerprints make paired comparisons valid."""

    fingerprint: str
    good: int
    defective: int


class ImageCounts(TypedDict, total=False):
    train: int
    test: int
    test_anomalous: int


class Timings(TypedDict, total=False):
    note: str
    fit_s: float
    predict_s: float
    predict_wall_images_per_s: float
    evaluate_s: float  # metrics, per-defect metrics, protocols, artifacts and bootstrap, after scoring


class Size(TypedDict, total=False):
    total_bytes: int
    total_mb: float
    total_mib: float
    breakdown_bytes: dict[str, int]  # component ("encoder", the fitted state, ...) → bytes
    counts: str  # what the total counts


class PeakMemoryResult(TypedDict, total=False):
    """Peak memory of one phase (bench/memory.py); None with a reason where it cannot be measured."""

    host_rss_start_mb: float
    host_peak_rss_mb: float
    host_peak_rss_increase_mb: float
    gpu_peak_allocated_mb: float | None
    gpu_peak_reserved_mb: float | None
    gpu_device_used_peak_mb: float | None
    gpu_device_reason: str
    gpu_reason: str


class Memory(TypedDict, total=False):
    fit: PeakMemoryResult
    predict: PeakMemoryResult
    evaluate: PeakMemoryResult
    speed: PeakMemoryResult


class Speed(TypedDict, total=False):
    """What bench/speed.py measured; ``SpeedRecord`` below is its typed view for readers."""

    input_size: int
    device: str
    warmup: int
    iterations: int
    torch_threads: int
    timer: str
    regions: dict[str, str]  # region → what it times
    # batch size (a string: JSON keys) → region name → {fps, fps_best, latency_ms, times_s, ...}, and the
    # paired ratios (ratio_end_to_end_to_encoder, ratio_network_to_encoder) as numbers
    batches: dict[str, dict[str, Any]]
    ratio: str


class RuntimeParity(TypedDict, total=False):
    """A runtime's scores against eager PyTorch's on the same test set (anobench.deployment)."""

    map_max_abs: float
    map_max_rel: float  # map_max_abs / the largest |value| of PyTorch's maps
    score_max_abs: float
    score_max_rel: float  # score_max_abs / the largest |image score| of PyTorch's
    metrics: dict[str, float | None]  # every metric, computed from this runtime's scores
    metric_difference_pp: dict[str, float | None]  # runtime − PyTorch, percentage points
    within_tolerance: bool
    tolerance: str
    reason: str  # why there is no parity (a measure-only cell, no labels)


class RuntimeResult(TypedDict, total=False):
    """One deployment runtime of a cell: how it was built, its speed, memory and parity."""

    status: str  # "ok", "failed" (with the error) or "unavailable" (the method declares no export)
    reason: str
    precision: str
    provider: str  # the runtime and where it runs (execution provider, OpenVINO device)
    export_s: float  # seconds to export the ONNX graph(s) this runtime loads
    export_bytes: int  # ONNX graph and external data, at the test batch size
    build_s: float  # session creation, compilation, quantization (all batch sizes)
    calibration_images: int  # int8: training images that calibrated the quantization
    memory: PeakMemoryResult  # building the runtime and scoring the test set through it
    batches: dict[str, dict[str, Any]]  # batch → timing summary (speed.summarize) and ratio_to_torch
    parity: RuntimeParity


class Deployment(TypedDict, total=False):
    """The same fitted detector under each runtime of ``[measure] runtimes`` (anobench.deployment)."""

    protocol: str  # the timing protocol: "interleaved" or "mvtec-ad2"
    timing: str  # what the protocol times, in words
    warmup: int
    iterations: int
    threads: int | None  # threads given to every runtime on a CPU (None: each runtime's default)
    test_batch: int  # the batch the test set is scored in (the last one padded)
    graph: str  # what is exported
    runtimes: dict[str, RuntimeResult]


class WeightsInfo(TypedDict, total=False):
    source: str  # "imagenet", "random" or "file"
    tag: str | None
    hf_hub_id: str | None
    url: str | None
    path: str
    sha256: str


class DeviceInfo(TypedDict, total=False):
    requested: str
    name: str
    torch_threads: int


class Precision(TypedDict, total=False):
    inference: str  # "float32" or "bf16 autocast"
    compiled: bool


class Bootstrap(TypedDict, total=False):
    """How the intervals were resampled; the resamples' values are in the artifacts."""

    resamples: int
    seed: int
    confidence: float
    interval: str
    strata: str
    pixel_grid_bins: int
    undefined_resamples: dict[str, int]
    seconds: float
    replicates: str


class DefectResult(TypedDict, total=False):
    """One defect type's images against the good images of the class."""

    n_images: int
    metrics: dict[str, float | None]
    metric_notes: dict[str, str]
    intervals: dict[str, Sequence[float] | None]


class FlopsComponent(TypedDict, total=False):
    flops: int
    counted_by: str
    terms: dict[str, float]  # a formula's terms, where the method gives one
    counter_flops: int


class Flops(TypedDict, total=False):
    input_size: int
    batch: int
    unit: str
    counter_scope: str
    components: dict[str, FlopsComponent]  # encoder, the method's head, postprocess
    total_flops: int | None
    reason: str  # why total_flops is None


class GpuInfo(TypedDict, total=False):
    nvml: bool
    reason: str
    name: str
    driver: str
    memory_total_mb: float
    index: int


class MachineInfo(TypedDict, total=False):
    hostname: str
    python: str
    platform: str
    cpu: str
    cpu_count: int | None
    torch: str
    torchvision: str
    timm: str
    freia: str
    numpy: str
    scikit_learn: str
    anobench: str
    cpu_capability: str
    kernel_env: dict[str, str]
    cuda_available: bool
    cuda: str | None
    cudnn: int | None
    gpu: GpuInfo


class CommitInfo(TypedDict, total=False):
    id: str
    short: str
    dirty: bool
    branch: str
    time: str
    error: str


class MultiClass(TypedDict, total=False):
    train_classes: list[str]
    fitted_in: str  # the cell that fitted the shared model


class DatasetProtocol(TypedDict, total=False):
    """A dataset's own protocol (MVTec LOCO, MVTec AD 2, ...): its headline metrics and notes."""

    metrics: list[str]
    notes: list[str]
    outputs: dict[str, Any]


class FeatureCacheUse(TypedDict, total=False):
    fit: dict[str, int]  # hits, misses
    predict: dict[str, int]


class Variation(TypedDict, total=False):
    """Baselines only: the cell's accuracy under other kernel settings (compare)."""

    runs: list[str]
    metrics: dict[str, list[float]]


class Record(TypedDict, total=False):
    """The schema of a record (all plain data)."""

    schema_version: int
    bench_version: str
    cell_id: str
    suite: SuiteInfo
    config: CellConfig
    labels: Labels
    display: Display
    status: str  # "ok" or "failed"
    error: str
    traceback: str
    metrics: dict[str, float | None]
    metric_notes: dict[str, str]  # why a metric is None (undefined on this test set)
    intervals: dict[str, Sequence[float] | None]  # bootstrap interval [lo, hi] of each metric
    bootstrap: Bootstrap
    per_defect: dict[str, DefectResult]  # defect type → its result against the good images
    test_set: TestSet
    n_images: ImageCounts
    timings: Timings
    size: Size
    memory: Memory
    speed: Speed
    deployment: Deployment  # [measure] runtimes other than eager PyTorch, or the MVTec AD 2 timing protocol
    flops: Flops
    weights: WeightsInfo
    dataset: dict[str, Any]  # the source as opened on this machine (name, root, ...: each source its own)
    dataset_protocol: DatasetProtocol
    multi_class: MultiClass
    method_params: dict[str, Any]  # get_params() of the fitted method, defaults included
    fit_stats: dict[str, Any]  # what training did (steps, fibers/s, losses): each method its own
    feature_cache: FeatureCacheUse  # encoder batches served from the run's feature cache (hits) or computed
    device: DeviceInfo
    precision: Precision  # inference precision (float32 or bf16 autocast) and torch.compile on/off
    artifacts: dict[str, str]
    machine_info: MachineInfo
    commit_info: CommitInfo
    variation: Variation
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


def check_run_folder(location: str | Path) -> Path:
    """``location`` as a run folder (one that holds records): one sentence where it is none."""
    path = Path(location)
    if not path.is_dir() or not (path / RECORDS_FILE).is_file():
        what = ("does not exist" if not path.exists() else "is a file" if not path.is_dir()
                else f"has no {RECORDS_FILE}")
        raise BenchError(f"{path} is not a run folder ({what}); pass folders that bench run wrote.")
    return path


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
    records: list[Record] = []
    damaged: list[str] = []
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
                records.append(cast(Record, record))  # JSON as written; older versions lack later fields
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
