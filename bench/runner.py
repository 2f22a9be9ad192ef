"""The runner: suite → cells → (dataset + method) → scores → metrics and measurements → records.

A run folder holds ``run.json`` (the suite as resolved and the plan), ``records.jsonl`` and, later, the
reports. Running into an existing folder continues it: cells that have a record are skipped. A cell that
raises is recorded as failed with the reason and the others still run.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anobench import artifacts, datasets, methods, metrics, planning
from anobench.cells import Cell, expand
from anobench.core import BenchError, progress, unknown_name
from anobench.datasets.base import DatasetSource
from anobench.deployment import check_runtimes
from anobench.evaluation import failed_record, now, open_source
from anobench.executors import LocalExecutor, Task
from anobench.methods.base import HARNESS_PARAMETERS
from anobench.methods.encoders import check_encoder_name, check_weights
from anobench.pixelstream import PIXEL_STREAM_PREFIX
from anobench.records import RUN_FILE, Record, append_record, latest_by_cell, read_records
from anobench.runfolder import RunFolderLock, folder_error
from anobench.suites import DatasetSpec, GridBlock, Suite, parse_suite, suite_source


@dataclass
class RunOptions:
    device: str = "cpu"
    data_root: str | None = None
    weights: str | None = None  # overrides the suite's weights
    dataset: str | None = None  # overrides the suite's dataset (its options then do not apply)
    classes: tuple[str, ...] | None = None  # overrides the suite's classes
    protocol: str | None = None  # overrides the suite's protocol
    metrics_resolution: str | None = None  # overrides the suite's metrics resolution
    retry_failed: bool = False
    feature_cache_mb: int | None = None  # encoder features shared between cells (None: the suite's; 0: off)
    allow_random: bool = False  # permits random weights in suites that reproduce published numbers
    image_labels_only: bool = False  # the dataset labels whole images only (pixel metrics stay empty)
    force_mixed: bool = False  # continue a run folder with another configuration (its report then mixes them)
    runtimes: tuple[str, ...] | None = None  # overrides the suite's [measure] runtimes
    command: str = ""


@dataclass
class RunSummary:
    run_dir: Path
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    failures: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------------
# planning


def check_suite(suite: Suite) -> None:
    """Everything about a suite that can be refused without data, for ``bench validate`` and ``bench run``
    alike: unknown method, encoder and dataset names, method parameters a method does not take, and
    resolutions below an encoder's smallest useful input. One sentence naming the file."""
    where = f"suite {suite.path.name}"
    for number, block in enumerate(suite.grid, 1):
        for name in block.methods:
            methods.METHODS.get(name, where)
        for name in block.encoders:
            check_encoder_name(name, where)
        place = f"Suite file {suite.path}, [[grid]] #{number}"
        for name in block.methods:
            _check_params(name, block.params, place)
            for encoder in block.encoders:
                _check_resolutions(name, encoder, block, place)
    datasets.DATASETS.get(suite.dataset.name, where)
    for name in suite.metrics:
        info = metrics.metric_info(name)
        if info is None or not info.level:
            raise unknown_name("metric", name, metrics.cell_metric_names(), f"{where} (metrics)")


def _check_params(method: str, params: dict[str, Any], place: str) -> None:
    accepted = methods.method_parameters(method)
    if accepted is None:  # a constructor taking **kwargs: only the method itself can tell
        return
    valid = accepted - set(HARNESS_PARAMETERS)
    for key in params:
        if key in HARNESS_PARAMETERS:
            raise BenchError(f"{place}: params sets '{key}', which comes from {HARNESS_PARAMETERS[key]}; "
                             f"remove it from params.")
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else "."
            raise BenchError(f"{place}: method '{method}' has no parameter '{key}'{hint} Its parameters: "
                             f"{', '.join(sorted(valid))}.")


def _check_resolutions(method: str, encoder: str, block: GridBlock, place: str) -> None:
    """Each resolution of the block must be one the method can use (``input_problem``: for an encoder-based
    method, at least its deepest tapped level's stride, and wider than a padded map's padding)."""
    try:
        instance = methods.build_method(method, {"encoder": encoder}, block.params)
    except (TypeError, ValueError) as exc:
        raise BenchError(f"{place}: method '{method}' rejects its params ({exc}).") from None
    for resolution in (*block.resolutions, *block.class_resolutions.values()):
        problem = instance.input_problem(resolution)
        if problem:
            raise BenchError(f"{place}: {problem}")


def apply_overrides(suite: Suite, options: RunOptions) -> Suite:
    """The suite with the command line's weights, dataset, classes, protocol and metrics resolution in it
    (raw data included, so that a run folder records what actually ran and resumes the same way)."""
    raw = dict(suite.raw)
    dataset = suite.dataset
    if options.dataset and options.dataset != dataset.name:
        dataset = DatasetSpec(name=options.dataset, classes=None)
    if options.classes:
        dataset = dataclasses.replace(dataset, classes=tuple(options.classes))
    if options.image_labels_only:
        dataset = dataclasses.replace(dataset, options={**dataset.options, "image_labels_only": True})
    if dataset != suite.dataset:
        raw["dataset"] = {k: v for k, v in {"name": dataset.name, "classes": list(dataset.classes or []) or "all",
                                            "root": dataset.root, "options": dataset.options}.items() if v is not None}
    measure = suite.measure
    if options.runtimes and options.runtimes != measure.runtimes:
        measure = dataclasses.replace(measure, runtimes=tuple(options.runtimes))
        raw["measure"] = {**raw.get("measure", {}), "runtimes": list(options.runtimes)}
    weights = options.weights or suite.weights
    protocol = options.protocol or suite.protocol
    metrics_resolution = options.metrics_resolution or suite.metrics_resolution
    raw.update(weights=weights, protocol=protocol, metrics_resolution=metrics_resolution)
    return dataclasses.replace(suite, dataset=dataset, weights=weights, protocol=protocol,
                               metrics_resolution=metrics_resolution, measure=measure, raw=raw)


def plan(suite: Suite, options: RunOptions) -> tuple[DatasetSource, list[Cell]]:
    """Resolve every name and check every class folder before any work starts (BenchError on a problem).
    ``suite`` must already carry the command line's overrides (``apply_overrides``)."""
    if suite.weights == "random" and not (suite.allow_random_weights or options.allow_random):
        raise BenchError(f"Suite {suite.name} reproduces published numbers and needs pretrained weights; pass "
                         f"--weights imagenet or --weights PATH, or --allow-random to run it with random weights.")
    check_suite(suite)
    check_runtimes(suite.measure.runtimes, options.device, f"suite {suite.path.name}")
    source = open_source(suite.dataset, options.data_root)
    classes = list(suite.dataset.classes or source.classes())
    for class_name in classes:
        source.validate(class_name)
    return source, expand(suite, classes)


# ----------------------------------------------------------------------------------------------------------
# a run folder


def next_run_dir(root: Path, suite_name: str) -> Path:
    """``runs/NNNN-<suite>``: a new folder per run, never overwriting an old one."""
    root.mkdir(parents=True, exist_ok=True)
    numbers = [int(p.name.split("-", 1)[0]) for p in root.iterdir() if p.name[:4].isdigit()]
    return root / f"{max(numbers, default=0) + 1:04d}-{suite_name}"


def recorded_run(run_dir: Path) -> tuple[Suite, dict[str, Any]]:
    """The suite exactly as the run folder recorded it (overrides included) and the options it ran with,
    so that a resumed run has the same plan."""
    info = json.loads((run_dir / RUN_FILE).read_text())
    return parse_suite(info["suite"]["raw"], Path(info["suite"]["path"])), info["options"]


def absolute(path: str | None) -> str | None:
    """A data root as an absolute path: a run folder continued from another directory reads the same data."""
    return str(Path(path).expanduser().resolve()) if path else None


def run_configuration(suite: Suite, device: str, data_root: str | None) -> dict[str, Any]:
    """What every record of a run folder shares and a report's title speaks for: the suite's version, the
    data (where from, which classes, with which options), weights, protocol and the kind of device."""
    return {"suite version": suite.version, "dataset": suite.dataset.name,
            "data root": absolute(data_root or suite.dataset.root),
            "classes": ",".join(suite.dataset.classes) if suite.dataset.classes else "all",
            "dataset options": json.dumps(suite.dataset.options, sort_keys=True), "weights": suite.weights,
            "protocol": suite.protocol, "metrics resolution": suite.metrics_resolution,
            "device": device.split(":")[0]}


def check_same_configuration(run_dir: Path, suite: Suite, options: RunOptions) -> None:
    """A run folder holds one configuration: continuing it with another (data root, dataset options or
    classes, suite version, weights, protocol, device kind) is refused in one sentence naming what changed,
    unless ``options.force_mixed``; ``suite`` carries the command line's overrides already."""
    recorded_suite, recorded_options = recorded_run(run_dir)
    before = run_configuration(recorded_suite, recorded_options.get("device", "cpu"),
                               recorded_options.get("data_root"))
    current = run_configuration(suite, options.device, options.data_root)
    changes = [f"{key} {before[key]} (now {current[key]})" for key in before if before[key] != current[key]]
    if not changes:
        return
    if not options.force_mixed:
        raise BenchError(f"Run folder {run_dir} was run with {'; '.join(changes)}; pass --out with a new "
                         f"folder, or --force-mixed to add these cells to it anyway.")
    print(f"--force-mixed: {run_dir} now mixes configurations: {'; '.join(changes)}.", file=sys.stderr)


def _write_run_file(run_dir: Path, suite: Suite, cells: list[Cell], options: RunOptions) -> None:
    info = {"created_at": now(), "command": options.command,
            "suite": {"name": suite.name, "version": suite.version, "path": suite_source(suite.path), "raw": suite.raw},
            "options": {"device": options.device, "data_root": absolute(options.data_root),
                        "allow_random": options.allow_random},
            "plan": [{"cell_id": c.cell_id, "config": c.config()} for c in cells]}
    tmp = run_dir / (RUN_FILE + ".tmp")
    try:
        tmp.write_text(json.dumps(info, indent=1, sort_keys=True))
        os.replace(tmp, run_dir / RUN_FILE)
    except OSError as exc:
        raise folder_error(run_dir, exc) from None


def _judged(source: DatasetSource, cells: list[Cell], device: str) -> list[planning.CellPlan]:
    """Every cell's memory estimate, with a refusal where it cannot fit or cannot be evaluated as asked."""
    plans = [planning.estimate(cell, source, device) for cell in cells]
    planning.judge(plans, device)
    return plans


def memory_plans(suite: Suite, options: RunOptions) -> list[planning.CellPlan]:
    """Every cell's memory estimate and verdict, without running anything (``bench run --plan``)."""
    source, cells = plan(apply_overrides(suite, options), options)
    return _judged(source, cells, options.device)


def run_suite(suite: Suite, run_dir: Path, options: RunOptions, executor=None,
              on_record: Callable[[Record], None] | None = None) -> RunSummary:
    """Run every cell of ``suite`` that ``run_dir`` has no record of (on ``executor``, local by default);
    return counts. Cells whose memory plan cannot fit are recorded as failed with the reason, unrun.
    ``on_record`` sees each record once it is written (``bench run --track`` exports it)."""
    suite = apply_overrides(suite, options)
    source, cells = plan(suite, options)
    for encoder in sorted({c.encoder for c in cells}):
        check_weights(encoder, suite.weights)
    refusals = {p.cell: p.refusal for p in _judged(source, cells, options.device) if p.refusal}
    with RunFolderLock(run_dir):  # one writer per folder, from run.json to the last record
        return _run_in_folder(suite, run_dir, options, executor, cells, refusals, on_record)


def _run_in_folder(suite: Suite, run_dir: Path, options: RunOptions, executor, cells: list[Cell],
                   refusals: dict[Cell, str], on_record: Callable[[Record], None] | None) -> RunSummary:
    """The part of a run that writes into its folder; the caller holds the folder's lock."""
    if (run_dir / RUN_FILE).exists():
        recorded = json.loads((run_dir / RUN_FILE).read_text())["suite"]["name"]
        if recorded != suite.name:
            raise BenchError(f"Run folder {run_dir} belongs to suite '{recorded}', not '{suite.name}'; "
                             f"pass another --out.")
        check_same_configuration(run_dir, suite, options)
    else:
        _write_run_file(run_dir, suite, cells, options)

    for stale in run_dir.glob(f"{PIXEL_STREAM_PREFIX}*"):  # an evaluation's pixels, left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    done = latest_by_cell(read_records(run_dir))
    todo = [c for c in cells if c.cell_id not in done
            or (options.retry_failed and done[c.cell_id].get("status") != "ok")]
    summary = RunSummary(run_dir, skipped=len(cells) - len(todo))
    if summary.skipped:
        print(f"Resuming {run_dir}: {summary.skipped} of {len(cells)} cells already have records.", file=sys.stderr)
    for cell in (c for c in todo if c in refusals):
        _keep(run_dir, summary, cell, failed_record(cell, options.device, f"refused up front: {refusals[cell]}"), {},
              on_record)
    cache_mb = suite.feature_cache_mb if options.feature_cache_mb is None else options.feature_cache_mb
    tasks = [Task(c, suite.dataset, options.data_root, options.device, cache_mb, output_dir=str(run_dir))
             for c in todo if c not in refusals]
    executor = executor or LocalExecutor()
    bar = progress(executor.run(tasks), f"{suite.name} ({executor.name})", total=len(tasks), leave=True)
    try:
        for cell, record, arrays in bar:
            _keep(run_dir, summary, cell, record, arrays, on_record)
            bar.set_postfix_str(f"ok {summary.ok}, failed {summary.failed}, running {executor.running}")
    finally:
        executor.close()
    return summary


def _keep(run_dir: Path, summary: RunSummary, cell: Cell, record: Record, arrays: dict,
          on_record: Callable[[Record], None] | None) -> None:
    """The driver's part: artifacts first, then the record that points at them (one atomic line)."""
    try:
        if arrays:
            record["artifacts"] = {"file": artifacts.write(run_dir, record["cell_id"], arrays)}
        append_record(run_dir, record)
    except OSError as exc:  # no space left, say: the records before this one are whole
        raise folder_error(run_dir, exc) from None
    if on_record is not None:
        on_record(record)
    if record["status"] == "ok":
        summary.ok += 1
    else:
        summary.failed += 1
        summary.failures.append(f"{cell.label}: {record['error']}")
        print(f"cell failed: {cell.label}: {record['error']}", file=sys.stderr)
