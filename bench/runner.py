"""The runner: suite → cells → (dataset + method) → scores → metrics and measurements → records.

A run folder holds ``run.json`` (the suite as resolved and the plan), ``records.jsonl`` and, later, the
reports. Running into an existing folder continues it: cells that have a record are skipped. A cell that
raises is recorded as failed with the reason and the others still run.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import inspect
import json
import os
import random
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import datasets
import methods
from bench import __version__, artifacts, metrics
from bench.cells import Cell, expand
from bench.environment import commit_info, device_name, machine_info
from bench.errors import BenchError
from bench.memory import PeakMemory
from bench.progress import progress
from bench.records import SCHEMA_VERSION, Record, append_record, latest_by_cell, read_records
from bench.speed import measure_speed
from bench.suites import DatasetSpec, Suite, parse_suite
from datasets import AnomalyDataset, DatasetSource, Geometry
from methods.base import AnomalyMethod, Prediction
from methods.encoders import check_encoder_name
from methods.feature_cache import FeatureCache

RUN_FILE = "run.json"
MB, MIB = 1e6, 2**20


@dataclass
class RunOptions:
    device: str = "cpu"
    data_root: str | None = None
    weights: str | None = None  # overrides the suite's weights
    dataset: str | None = None  # overrides the suite's dataset (its options then do not apply)
    classes: tuple[str, ...] | None = None  # overrides the suite's classes
    retry_failed: bool = False
    feature_cache_mb: int = 4096  # encoder features shared between the cells of a run (0: off)
    allow_random: bool = False  # permits random weights in suites that reproduce published numbers
    command: str = ""


@dataclass
class RunSummary:
    run_dir: Path
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    failures: list[str] = field(default_factory=list)


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------------------------------------
# planning


def open_source(suite: Suite, data_root: str | None) -> DatasetSource:
    spec = suite.dataset
    return datasets.create_dataset(spec.name, data_root or spec.root, **spec.options)


def check_names(suite: Suite) -> None:
    """Every method, encoder and dataset the suite names exists (else one sentence naming the file)."""
    where = f"suite {suite.path.name}"
    for block in suite.grid:
        for name in block.methods:
            methods.METHODS.get(name, where)
        for name in block.encoders:
            check_encoder_name(name, where)
    datasets.DATASETS.get(suite.dataset.name, where)


def apply_overrides(suite: Suite, options: RunOptions) -> Suite:
    """The suite with the command line's weights, dataset and classes in it (raw data included, so that a
    run folder records what actually ran and resumes the same way)."""
    raw = dict(suite.raw)
    dataset = suite.dataset
    if options.dataset and options.dataset != dataset.name:
        dataset = DatasetSpec(name=options.dataset, classes=None)
    if options.classes:
        dataset = dataclasses.replace(dataset, classes=tuple(options.classes))
    if dataset != suite.dataset:
        raw["dataset"] = {k: v for k, v in {"name": dataset.name, "classes": list(dataset.classes or []) or "all",
                                            "root": dataset.root, "options": dataset.options}.items() if v is not None}
    weights = options.weights or suite.weights
    raw["weights"] = weights
    return dataclasses.replace(suite, dataset=dataset, weights=weights, raw=raw)


def plan(suite: Suite, options: RunOptions) -> tuple[DatasetSource, list[Cell]]:
    """Resolve every name and check every class folder before any work starts (BenchError on a problem).
    ``suite`` must already carry the command line's overrides (``apply_overrides``)."""
    if suite.weights == "random" and not (suite.allow_random_weights or options.allow_random):
        raise BenchError(f"Suite {suite.name} reproduces published numbers and needs pretrained weights; pass "
                         f"--weights imagenet or --weights PATH, or --allow-random to run it with random weights.")
    check_names(suite)
    source = open_source(suite, options.data_root)
    classes = list(suite.dataset.classes or source.classes())
    for class_name in classes:
        source.validate(class_name)
    return source, expand(suite, classes)


# ----------------------------------------------------------------------------------------------------------
# one cell


class ImageBatches:
    """Re-iterable image batches of a dataset (methods that train for several epochs iterate again)."""

    def __init__(self, dataset: AnomalyDataset, batch_size: int, shuffle_seed: int | None = None):
        generator = torch.Generator().manual_seed(shuffle_seed) if shuffle_seed is not None else None
        self.loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=generator is not None,
                                                  generator=generator, num_workers=0)

    def __iter__(self) -> Iterator[torch.Tensor]:
        for batch in self.loader:
            yield batch["image"]

    def __len__(self) -> int:
        return len(self.loader)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_method(cell: Cell, device: str) -> AnomalyMethod:
    cls = methods.METHODS.get(cell.method)
    params = {"encoder": cell.encoder, "weights": cell.weights, "seed": cell.seed, "device": device, **cell.params}
    if "protocol" in inspect.signature(cls).parameters:
        params.setdefault("protocol", cell.protocol)
    try:
        return cls(**params)
    except TypeError as exc:
        raise BenchError(f"Method '{cell.method}' does not take these parameters ({exc}); check [grid.params].") from None


def compute_metrics(labels: np.ndarray, masks: list[np.ndarray] | np.ndarray, prediction: Prediction,
                    maps: list[np.ndarray] | np.ndarray) -> tuple[dict[str, float | None], dict[str, float]]:
    """Detection and localization metrics (pixel ones only where the test set has defect pixels), and the
    F1-max thresholds (for figures, never for the metrics)."""
    result: dict[str, float | None] = {"image_auroc": metrics.image_auroc(labels, prediction.image_scores)}
    thresholds: dict[str, float] = {}
    if labels.any():
        result["image_f1_max"], thresholds["image"] = metrics.f1_max(labels, prediction.image_scores)
    if any(m.any() for m in masks):
        result["pixel_auroc"] = metrics.pixel_auroc(masks, maps)
        result["aupro"] = metrics.aupro(masks, maps)
        result["pixel_f1_max"], thresholds["pixel"] = metrics.f1_max(masks, maps)
    return result, thresholds


def original_resolution(source: DatasetSource, test: AnomalyDataset, maps: np.ndarray):
    """Masks at each image's original size, and the maps bilinearly resized to them."""
    if test.geometry.crop != test.geometry.resize:
        raise BenchError("Metrics at the original resolution need maps that cover the whole image; set the "
                         "grid's resize equal to its resolution (no centre crop).")
    masks, resized = [], []
    for ref, amap in zip(test.refs, maps, strict=True):
        mask = source.original_mask(ref)
        masks.append(mask)
        resized.append(F.interpolate(torch.from_numpy(amap)[None, None], size=mask.shape, mode="bilinear",
                                     align_corners=False)[0, 0].numpy())
    return masks, resized


def size_record(method: AnomalyMethod) -> dict[str, Any]:
    breakdown = method.size_breakdown()
    total = sum(breakdown.values())
    return {"total_bytes": total, "total_mb": total / MB, "total_mib": total / MIB, "breakdown_bytes": breakdown,
            "counts": "everything needed to score: encoder up to its last tapped level + fitted state"}


def base_record(cell: Cell, device: str) -> Record:
    return Record(
        schema_version=SCHEMA_VERSION, bench_version=__version__, cell_id=cell.cell_id,
        suite={"name": cell.suite}, config=cell.config(),
        labels={"random_weights": cell.weights == "random", "protocol": cell.protocol},
        device={"requested": device, "name": device_name(device), "torch_threads": torch.get_num_threads()},
        machine_info=machine_info(), commit_info=commit_info(), started_at=now(),
    )


def run_cell(cell: Cell, source: DatasetSource, device: str,
             cache: FeatureCache | None = None) -> tuple[Record, dict[str, np.ndarray]]:
    """Fit and evaluate one cell: its record and its artifacts (for figures). Never raises for a problem
    inside the cell: it is recorded as failed, with the reason."""
    record = base_record(cell, device)
    arrays: dict[str, np.ndarray] = {}
    try:
        result, arrays = _evaluate(cell, source, device, cache or FeatureCache(0))
        record.update(result)
        record["status"] = "ok"
    except Exception as exc:  # isolate the cell: the suite goes on
        record["status"] = "failed"
        record["error"] = f"{type(exc).__name__}: {exc}"
        record["traceback"] = "".join(traceback.format_exception(exc)[-6:])
    record["finished_at"] = now()
    return record, arrays


def _counted(cache: FeatureCache, work):
    """Run ``work()`` with the feature cache active; return its result and the cache hits/misses it caused."""
    before = cache.counters()
    with cache.active():
        value = work()
    after = cache.counters()
    return value, {k: after[k] - before[k] for k in after}


def _evaluate(cell: Cell, source: DatasetSource, device: str,
              cache: FeatureCache) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    seed_everything(cell.seed)
    geometry = Geometry(cell.resize, cell.resolution)
    train = AnomalyDataset(source.samples(cell.class_name, "train"), geometry)
    method = build_method(cell, device)
    arrays: dict[str, np.ndarray] = {}
    result: dict[str, Any] = {"n_images": {"train": len(train)}, "memory": {}, "feature_cache": {}, "timings": {
        "note": "wall clock of fit() and of predict over the test set, data loading included; "
                "see 'speed' for the timed network/end-to-end regions"}}

    with PeakMemory(device) as memory:
        start = time.perf_counter()
        _, result["feature_cache"]["fit"] = _counted(
            cache, lambda: method.fit(ImageBatches(train, cell.batch_size, shuffle_seed=cell.seed)))
        result["timings"]["fit_s"] = time.perf_counter() - start
    result["memory"]["fit"] = memory.result

    if not cell.measure_only:
        test = AnomalyDataset(source.samples(cell.class_name, "test"), geometry)
        with PeakMemory(device) as memory:
            start = time.perf_counter()
            prediction, result["feature_cache"]["predict"] = _counted(
                cache, lambda: method.predict_dataset(ImageBatches(test, cell.batch_size)))
            predict_s = time.perf_counter() - start
        result["memory"]["predict"] = memory.result
        result["timings"].update(predict_s=predict_s, predict_wall_images_per_s=len(test) / predict_s)
        labels = test.labels()
        result["n_images"].update(test=len(test), test_anomalous=int(labels.sum()))
        if cell.metrics_resolution == "original":
            masks, maps = original_resolution(source, test, prediction.maps)
        else:
            masks, maps = np.stack([test[i]["mask"].numpy() for i in range(len(test))]), prediction.maps
        result["metrics"], thresholds = compute_metrics(labels, masks, prediction, maps)
        chosen = artifacts.qualitative_indices(labels)
        arrays = artifacts.collect([test.image_u8(i) for i in chosen], labels, [r.defect_type for r in test.refs],
                                   masks, maps, prediction.image_scores, thresholds.get("pixel"))

    if cell.measure.speed:
        batch_sizes, warmup, iterations = cell.measure.on(device)
        with PeakMemory(device) as memory:
            result["speed"] = measure_speed(method, cell.resolution, batch_sizes, device, warmup, iterations,
                                            seed=cell.seed)
        result["memory"]["speed"] = memory.result

    result.update({
        "labels": {"random_weights": cell.weights == "random", "protocol": cell.protocol,
                   "test_set_dependent": method.test_set_dependent, **method.labels()},
        "method_params": method.get_params(),
        "fit_stats": method.fit_stats(),
        "size": size_record(method),
        "weights": method.encoder_.weights_info(),
        "dataset": source.describe(),
    })
    return result, arrays


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


def _write_run_file(run_dir: Path, suite: Suite, cells: list[Cell], options: RunOptions) -> None:
    info = {"created_at": now(), "command": options.command,
            "suite": {"name": suite.name, "version": suite.version, "path": str(suite.path), "raw": suite.raw},
            "options": {"device": options.device, "data_root": options.data_root,
                        "allow_random": options.allow_random},
            "plan": [{"cell_id": c.cell_id, "config": c.config()} for c in cells]}
    tmp = run_dir / (RUN_FILE + ".tmp")
    tmp.write_text(json.dumps(info, indent=1, sort_keys=True))
    os.replace(tmp, run_dir / RUN_FILE)


def run_suite(suite: Suite, run_dir: Path, options: RunOptions) -> RunSummary:
    """Run every cell of ``suite`` that ``run_dir`` has no record of; return counts."""
    suite = apply_overrides(suite, options)
    source, cells = plan(suite, options)
    run_dir.mkdir(parents=True, exist_ok=True)
    if (run_dir / RUN_FILE).exists():
        recorded = json.loads((run_dir / RUN_FILE).read_text())["suite"]["name"]
        if recorded != suite.name:
            raise BenchError(f"Run folder {run_dir} belongs to suite '{recorded}', not '{suite.name}'; "
                             f"pass another --out.")
    else:
        _write_run_file(run_dir, suite, cells, options)

    cache = FeatureCache(options.feature_cache_mb * 2**20)
    done = latest_by_cell(read_records(run_dir))
    todo = [c for c in cells if c.cell_id not in done
            or (options.retry_failed and done[c.cell_id].get("status") != "ok")]
    summary = RunSummary(run_dir, skipped=len(cells) - len(todo))
    if summary.skipped:
        print(f"Resuming {run_dir}: {summary.skipped} of {len(cells)} cells already have records.", file=sys.stderr)
    bar = progress(todo, f"{suite.name}", total=len(todo), leave=True)
    for cell in bar:
        bar.set_postfix_str(cell.label)
        record, arrays = run_cell(cell, source, options.device, cache)
        if arrays:
            record["artifacts"] = {"file": artifacts.write(run_dir, record["cell_id"], arrays)}
        append_record(run_dir, record)
        if record["status"] == "ok":
            summary.ok += 1
        else:
            summary.failed += 1
            summary.failures.append(f"{cell.label}: {record['error']}")
            print(f"cell failed: {cell.label}: {record['error']}", file=sys.stderr)
    return summary
