"""One cell: dataset + method → scores → metrics and measurements → a record (and its artifacts).

Whatever goes wrong inside a cell is caught here and recorded as a failed cell with the reason, so the
suite goes on. This module knows nothing of run folders or executors: it is what a worker runs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F

from anobench import __version__, artifacts, datasets, metrics, pixel_metrics, statistics
from anobench.cells import Cell, build_method
from anobench.core import BenchError
from anobench.datasets.base import AnomalyDataset, DatasetSource, Geometry
from anobench.deployment import DeploymentJob, deploy
from anobench.environment import commit_info, device_name, machine_info
from anobench.flops import flops_record
from anobench.memory import PeakMemory
from anobench.methods import encoder_short_name
from anobench.methods.base import AnomalyMethod, Prediction
from anobench.methods.feature_cache import FeatureCache
from anobench.pixelstream import PixelStream
from anobench.protocols import ProtocolInput, run_protocols
from anobench.records import SCHEMA_VERSION, DefectResult, Labels, Record, Size, WeightsInfo
from anobench.speed import measure_speed
from anobench.suites import DatasetSpec

MB, MIB = 1e6, 2**20


def open_source(spec: DatasetSpec, data_root: str | None) -> DatasetSource:
    """The dataset source, opened where this process runs (a worker resolves paths on its own node)."""
    return datasets.create_dataset(spec.name, data_root or spec.root, **spec.options)


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


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


STANDARD_METRICS = ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro",
                    "aupro@0.05", "aupimo")  # every cell computes these (AUPRO@0.05 as MVTec AD 2 reports it)
DEFECT_METRICS = ("image_auroc", "pixel_auroc", "aupro")  # per defect type, against the good images


IMAGE_METRIC_FUNCTIONS: dict[str, Callable[[np.ndarray, np.ndarray], float | tuple[float, float]]] = {
    "image_auroc": metrics.image_auroc, "image_ap": metrics.average_precision, "image_f1_max": metrics.f1_max}


def computable(name: str) -> bool:
    """Whether this module computes metric ``name`` from labels, image scores, masks and maps."""
    return name in STANDARD_METRICS or metrics.aupro_limit(name) is not None


def image_metrics(labels: np.ndarray, image_scores: np.ndarray, names: Sequence[str]
                  ) -> tuple[dict[str, float | None], dict[str, str], float | None]:
    """The image-level metrics of ``names``, the reason for each undefined one, and the F1-max threshold."""
    values: dict[str, float | None] = {}
    notes: dict[str, str] = {}
    threshold = None
    for name in dict.fromkeys(n for n in names if n in IMAGE_METRIC_FUNCTIONS):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = IMAGE_METRIC_FUNCTIONS[name](labels, image_scores)
        value, found = result if isinstance(result, tuple) else (result, None)
        threshold = found if found is not None else threshold
        values[name] = value if np.isfinite(value) else None
        if values[name] is None:
            notes[name] = str(caught[-1].message).removesuffix("; returning nan") if caught else "undefined here"
    return values, notes, threshold if values.get("image_f1_max") is not None else None


def image_groups(labels: np.ndarray, defect_types: Sequence[str]) -> tuple[list[int], dict[str, list[int]]]:
    """Each image's group for the pixel stream (good images one group, each defect type one), and for each
    defect type the groups its per-defect metrics take (its images and the good ones)."""
    names = sorted({"good" if label == 0 else t for label, t in zip(labels, defect_types, strict=True)})
    index = {name: i for i, name in enumerate(names)}
    groups = [index["good" if label == 0 else t] for label, t in zip(labels, defect_types, strict=True)]
    good = [index["good"]] if "good" in index else []
    return groups, {t: PixelStream.groups_of([index[t], *good]) for t in names if t != "good"}


def pixel_stream(pairs: Iterable[tuple[np.ndarray, np.ndarray]], groups: Sequence[int], folder: Path | None = None
                 ) -> PixelStream:
    """Every (mask, map) pair's pixels, checked image by image, in a stream on disk (``folder``: where its
    temporary files go; the system's temporary folder by default)."""
    stream = PixelStream(folder)
    try:
        for i, ((mask, amap), group) in enumerate(zip(pairs, groups, strict=True)):
            mask, amap = metrics.checked_pair(i, mask, amap)
            if amap.dtype != np.float32:
                single = amap.astype(np.float32)
                if not np.array_equal(single, amap):
                    raise ValueError("maps must hold float32 values (pixel scores are compared as float32)")
                amap = single
            stream.add(mask, amap, group)
    except BaseException:
        stream.close()
        raise
    return stream


def evaluate_pixels(stream: PixelStream, subsets: dict[str, list[int]], names: Sequence[str], *,
                    bootstrap: bool = False) -> pixel_metrics.PixelResult:
    """The pixel metrics of ``names`` (and, per subset, ``DEFECT_METRICS``' pixel ones) from the stream."""
    return pixel_metrics.evaluate(
        stream, subsets, [n for n in dict.fromkeys(names) if computable(n) and n not in IMAGE_METRIC_FUNCTIONS],
        aupro_limit=metrics.aupro_limit, aupimo_bounds=metrics.AUPIMO_FPR_BOUNDS, bootstrap=bootstrap)


def compute_metrics(labels: np.ndarray, masks: Iterable[np.ndarray], image_scores: np.ndarray,
                    maps: Iterable[np.ndarray], names: Sequence[str] = STANDARD_METRICS
                    ) -> tuple[dict[str, float | None], dict[str, str], dict[str, float]]:
    """Each metric of ``names`` (pixel ones only where the test set has defect pixels), the reason for each
    one that is undefined here (its value is None), and the F1-max thresholds (for figures, never metrics).
    ``masks`` and ``maps`` may be any iterables, made one image at a time: only one pair is held at once."""
    values, notes, image_threshold = image_metrics(labels, image_scores, names)
    with pixel_stream(zip(masks, maps, strict=True), [0] * len(labels)) as stream:
        pixels = evaluate_pixels(stream, {}, names)
    values.update(pixels.values)
    notes.update(pixels.notes)
    thresholds = {level: t for level, t in (("image", image_threshold), ("pixel", pixels.threshold)) if t is not None}
    return values, notes, thresholds


def fingerprint_test_set(cell: Cell, test: AnomalyDataset) -> str:
    """Which images, labels and geometry a cell was scored on: equal fingerprints make paired comparisons valid."""
    items = [f"{r.defect_type}/{r.image_path.name}:{r.mask_frame}:{r.label}" for r in test.refs]
    identity = [cell.dataset, cell.class_name, cell.resize, cell.resolution, cell.metrics_resolution, *items]
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]


def per_defect_metrics(labels: np.ndarray, defect_types: list[str], image_scores: np.ndarray,
                       pixels: pixel_metrics.PixelResult) -> dict[str, DefectResult]:
    """``DEFECT_METRICS`` of each defect type on its images and the good ones (the pixel ones from the
    stream's per-type accumulators, where the type has defect pixels)."""
    out: dict[str, DefectResult] = {}
    types = np.asarray(defect_types)
    for defect in sorted({d for d, label in zip(defect_types, labels, strict=True) if label}):
        rows = np.flatnonzero((labels == 0) | (types == defect))
        values, notes, _ = image_metrics(labels[rows], image_scores[rows], DEFECT_METRICS)
        for name, value in pixels.per_defect.get(defect, {}).items():
            values[name] = value
            if value is None:
                notes[name] = "undefined for this defect type's images"
        out[defect] = {"n_images": int((types == defect).sum()), "metrics": values}
        if notes:
            out[defect]["metric_notes"] = notes
    return out


def bootstrap_intervals(cell: Cell, fingerprint: str, labels: np.ndarray, defect_types: list[str],
                        image_scores: np.ndarray, pixel_counts: statistics.BinnedCounts | None,
                        result: Record) -> dict[str, np.ndarray]:
    """Add intervals to ``result``'s metrics and per-defect metrics; return the resampled values for the
    artifacts (what paired comparisons and means over classes or seeds resample from). ``pixel_counts``:
    each image's pixels in the bootstrap grid (``evaluate_pixels(..., bootstrap=True)``)."""
    spec = cell.bootstrap
    start = time.perf_counter()
    names = [m for m, v in result["metrics"].items() if v is not None and statistics.has_bootstrap(m)]
    boot = statistics.bootstrap_cell(labels, image_scores, pixel_counts, defect_types, names, DEFECT_METRICS,
                                     resamples=spec.resamples, seed=spec.seed, fingerprint=fingerprint,
                                     confidence=spec.confidence)
    result["intervals"] = {m: boot.intervals[m] for m in names}
    for defect, entry in result["per_defect"].items():
        entry["intervals"] = {m: boot.intervals.get(statistics.defect_key(defect, m))
                              for m, v in entry["metrics"].items() if v is not None}
    result["bootstrap"] = {
        "resamples": spec.resamples, "seed": spec.seed, "confidence": spec.confidence, "interval": "percentile",
        "strata": "good and defective images resampled separately (per defect type: its images and the good ones)",
        "pixel_grid_bins": boot.pixel_bins, "undefined_resamples": boot.undefined,
        "seconds": time.perf_counter() - start, "replicates": "artifacts: bootstrap_names, bootstrap_replicates",
    }
    kept = [k for k in boot.replicates if k in names or k.startswith("defect/")]
    if not kept:
        return {}
    return {"bootstrap_names": np.array(kept), "bootstrap_replicates": np.stack([boot.replicates[k] for k in kept],
                                                                              axis=1).astype(np.float32)}


class EvaluatedPixels(Sequence):
    """The test set's masks and maps at the resolution its metrics are computed at, made one image at a
    time when asked for (at the original resolution: the image's mask as stored, and its map resized to it
    bilinearly), so that no more than one full-size map is held at once. The last image asked for is kept,
    so that masks and maps read in step (``zip(p.masks(), p.evaluated_maps())``) are made once."""

    def __init__(self, source: DatasetSource, test: AnomalyDataset, maps: np.ndarray, original: bool):
        if original and test.geometry.crop != test.geometry.resize:
            raise BenchError("Metrics at the original resolution need maps that cover the whole image; set the "
                             "grid's resize equal to its resolution (no centre crop).")
        self.source, self.test, self.maps, self.original = source, test, maps, original
        self._last: tuple[int, tuple[np.ndarray, np.ndarray]] | None = None

    def __len__(self) -> int:
        return len(self.test)

    def __getitem__(self, index):
        if self._last is None or self._last[0] != index:
            if self.original:
                mask = self.source.original_mask(self.test.refs[index])
            else:
                mask = self.test[index]["mask"].numpy().astype(bool)
            self._last = index, (mask, self.evaluated_map(index, mask.shape))
        return self._last[1]

    def evaluated_map(self, index: int, shape: tuple[int, ...]) -> np.ndarray:
        """The map of image ``index`` at the evaluated resolution (``shape``: the image's, when original)."""
        if not self.original:
            return self.maps[index]
        return F.interpolate(torch.from_numpy(self.maps[index])[None, None], size=tuple(shape), mode="bilinear",
                             align_corners=False)[0, 0].numpy()

    def masks(self) -> Iterator[np.ndarray]:
        return (self[i][0] for i in range(len(self)))

    def evaluated_maps(self) -> Iterator[np.ndarray]:
        return (self[i][1] for i in range(len(self)))


def scored_metrics(cell: Cell, source: DatasetSource, test: AnomalyDataset, prediction: Prediction
                   ) -> dict[str, float | None]:
    """The cell's metrics from another prediction of its test set (a deployment runtime's, for parity),
    evaluated as the cell's own were (same masks, same resolution, streamed); empty where the dataset has no
    labels, image metrics only where it labels whole images."""
    truth, _ = source.ground_truth(cell.class_name)
    if truth == "none":
        return {}
    pixels = EvaluatedPixels(source, test, prediction.maps, cell.metrics_resolution == "original")
    values, _, _ = compute_metrics(test.labels(), pixels.masks(), prediction.image_scores, pixels.evaluated_maps(),
                                   (*STANDARD_METRICS, *cell.metrics))
    if truth == "image":
        return {k: v for k, v in values.items() if (info := metrics.metric_info(k)) and info.level != "pixel"}
    return values


def train_set(cell: Cell, source: DatasetSource, geometry: Geometry) -> AnomalyDataset:
    """The cell's training images (every training class's in the multi-class setting)."""
    return AnomalyDataset(cell.training_samples(source), geometry, source.read_mask)


def size_record(method: AnomalyMethod) -> Size:
    breakdown = method.size_breakdown()
    total = sum(breakdown.values())
    return {"total_bytes": total, "total_mb": total / MB, "total_mib": total / MIB, "breakdown_bytes": breakdown,
            "counts": "everything needed to score: encoder up to its last tapped level + fitted state"}


def base_record(cell: Cell, device: str) -> Record:
    return Record(
        schema_version=SCHEMA_VERSION, bench_version=__version__, cell_id=cell.cell_id,
        suite={"name": cell.suite}, config=cell.config(),
        labels={"random_weights": cell.weights == "random", "protocol": cell.protocol,
                "setting": cell.setting},
        device={"requested": device, "name": device_name(device), "torch_threads": torch.get_num_threads()},
        machine_info=machine_info(), commit_info=commit_info(), started_at=now(),
    )


def run_cell(cell: Cell, source: DatasetSource, device: str, cache: FeatureCache | None = None,
             output_dir: Path | None = None) -> tuple[Record, dict[str, np.ndarray]]:
    """Fit and evaluate one cell: its record and its artifacts (for figures). Never raises for a problem
    inside the cell: it is recorded as failed, with the reason. ``output_dir`` receives files a dataset's
    protocol writes for an external evaluation (MVTec AD 2's private test sets)."""
    record = base_record(cell, device)
    arrays: dict[str, np.ndarray] = {}
    try:
        result, arrays = _evaluate(cell, source, device, cache or FeatureCache(0), output_dir)
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


# The multi-class setting's fitted model, shared by the cells that evaluate it on each class (cells of one
# model run one after another): model key → (id of the cell that fitted it, the fitted method).
_SHARED_MODEL: dict[str, tuple[str, AnomalyMethod]] = {}


def _fit(cell: Cell, source: DatasetSource, device: str, cache: FeatureCache, geometry: Geometry,
         result: Record) -> AnomalyMethod:
    """Fit the cell's method on its training images, or reuse the multi-class model another cell fitted."""
    train = train_set(cell, source, geometry)
    result["n_images"] = {"train": len(train)}
    if cell.setting == "multi-class":
        result["multi_class"] = {"train_classes": list(cell.train_classes)}
        if cell.model_key in _SHARED_MODEL:
            fitted_in, method = _SHARED_MODEL[cell.model_key]
            result["multi_class"]["fitted_in"] = fitted_in
            return method
    method = build_method(cell, device)
    with PeakMemory(device) as memory:
        start = time.perf_counter()
        _, result["feature_cache"]["fit"] = _counted(
            cache, lambda: method.fit(ImageBatches(train, cell.batch_size, shuffle_seed=cell.seed)))
        result["timings"]["fit_s"] = time.perf_counter() - start
    result["memory"]["fit"] = memory.result
    if cell.setting == "multi-class":
        _SHARED_MODEL.clear()  # one model at a time: a group's cells are consecutive
        _SHARED_MODEL[cell.model_key] = (cell.cell_id, method)
        result["multi_class"]["fitted_in"] = cell.cell_id
    return method


def _metrics(cell: Cell, source: DatasetSource, test: AnomalyDataset, prediction: Prediction, labels: np.ndarray,
             truth: str, reason: str, output_dir: Path | None, predict, result: Record) -> dict[str, np.ndarray]:
    """Metrics, per-defect metrics, the dataset's protocol, intervals and figures' arrays of a scored test set;
    pixels are streamed through disk, so host memory does not grow with the number of test images."""
    unavailable: dict[str, str] = {}
    names = (*STANDARD_METRICS, *cell.metrics)
    scores, defect_types = prediction.image_scores, [r.defect_type for r in test.refs]
    pixels = EvaluatedPixels(source, test, prediction.maps, cell.metrics_resolution == "original")
    evaluated = None
    if truth == "none":  # no labels at all: nothing to score against
        result["metrics"] = {}
        unavailable.update(dict.fromkeys(names, reason))
    else:
        result["metrics"], notes, _ = image_metrics(labels, scores, names)
        groups, subsets = image_groups(labels, defect_types)
        with pixel_stream(pixels, groups, output_dir) as stream:
            evaluated = evaluate_pixels(stream, subsets, names, bootstrap=bool(cell.bootstrap.resamples))
        result["metrics"].update(evaluated.values)
        unavailable.update(notes)
        unavailable.update(evaluated.notes)
        if truth == "image":  # image labels only: no pixel metric is defined
            pixel = [n for n in names if (info := metrics.metric_info(n)) and info.level == "pixel"]
            result["metrics"].update(dict.fromkeys(pixel))
            unavailable.update(dict.fromkeys(pixel, reason))
        result["per_defect"] = per_defect_metrics(labels, defect_types, scores, evaluated)
    if source.protocol_metrics:
        protocol = run_protocols(ProtocolInput(
            cell=cell, source=source, geometry=test.geometry, refs=test.refs, labels=labels, image_scores=scores,
            pixels=pixels, original=pixels.original, input_maps=prediction.maps,
            predict_maps=lambda refs: predict(AnomalyDataset(refs, test.geometry, source.read_mask)).maps,
            output_dir=output_dir))
        result["metrics"].update(protocol.metrics)
        unavailable.update(protocol.unavailable)
        result["dataset_protocol"] = {"metrics": protocol.headline, "notes": protocol.notes,
                                      "outputs": protocol.outputs}
    if unavailable:  # a value that cannot be computed stays empty, with its reason
        result["metrics"].update(dict.fromkeys(unavailable))
        result["metric_notes"] = unavailable
    fingerprint = fingerprint_test_set(cell, test)
    result["test_set"] = {"fingerprint": fingerprint, "good": int((labels == 0).sum()),
                          "defective": int((labels == 1).sum())}
    chosen = artifacts.qualitative_indices(labels)
    arrays = artifacts.collect([test.image_u8(i) for i in chosen], labels, defect_types,
                               [pixels[i] for i in chosen] if evaluated else [], scores,
                               evaluated.curves if evaluated else {}, evaluated.threshold if evaluated else None)
    if cell.bootstrap.resamples and evaluated is not None:
        arrays.update(bootstrap_intervals(cell, fingerprint, labels, defect_types, scores, evaluated.counts, result))
    return arrays


def _evaluate(cell: Cell, source: DatasetSource, device: str, cache: FeatureCache,
              output_dir: Path | None = None) -> tuple[Record, dict[str, np.ndarray]]:
    seed_everything(cell.seed)
    geometry = Geometry(cell.resize, cell.resolution)
    arrays: dict[str, np.ndarray] = {}
    result: Record = {"memory": {}, "feature_cache": {}, "timings": {
        "note": "wall clock of fit() and of predict over the test set, data loading included; "
                "see 'speed' for the timed network/end-to-end regions"}}
    method = _fit(cell, source, device, cache, geometry, result)

    def predict(dataset: AnomalyDataset) -> Prediction:
        return method.predict_dataset(ImageBatches(dataset, cell.batch_size))

    if not cell.measure_only:
        test = AnomalyDataset(source.samples(cell.class_name, "test"), geometry, source.read_mask)
        with PeakMemory(device) as memory:
            start = time.perf_counter()
            prediction, result["feature_cache"]["predict"] = _counted(cache, lambda: predict(test))
            predict_s = time.perf_counter() - start
        result["memory"]["predict"] = memory.result
        result["timings"]["predict_s"] = predict_s
        result["timings"]["predict_wall_images_per_s"] = len(test) / predict_s
        labels = test.labels()
        truth, reason = source.ground_truth(cell.class_name)
        result["n_images"]["test"], result["n_images"]["test_anomalous"] = len(test), int((labels == 1).sum())
        with PeakMemory(device) as memory:
            start = time.perf_counter()
            arrays = _metrics(cell, source, test, prediction, labels, truth, reason, output_dir, predict, result)
            result["timings"]["evaluate_s"] = time.perf_counter() - start
        result["memory"]["evaluate"] = memory.result

    if cell.measure.deploys:
        batch_sizes, warmup, iterations = cell.measure.on(device)
        job = DeploymentJob(method=method, runtimes=cell.measure.runtimes, protocol=cell.measure.protocol,
                            input_size=cell.resolution, batch_sizes=batch_sizes, warmup=warmup, iterations=iterations,
                            threads=cell.measure.cpu_threads, device=device, seed=cell.seed,
                            training_images=lambda: ImageBatches(train_set(cell, source, geometry), cell.batch_size))
        if not cell.measure_only:
            job.test_images, job.reference = (lambda: ImageBatches(test, cell.batch_size)), prediction
            job.metrics_of = lambda scored: scored_metrics(cell, source, test, scored)
        result["deployment"] = deploy(job)

    if cell.measure.speed:
        batch_sizes, warmup, iterations = cell.measure.on(device)
        with PeakMemory(device) as memory:
            result["speed"] = measure_speed(method, cell.resolution, batch_sizes, device, warmup, iterations,
                                            seed=cell.seed, threads=cell.measure.cpu_threads)
        result["memory"]["speed"] = memory.result

    weights = method.weights_info()  # None for a method without pretrained weights
    encoder = method.encoder_name()
    result.update({
        "labels": cast(Labels, {"random_weights": weights is not None and weights.get("source") == "random",
                                "protocol": cell.protocol, "setting": cell.setting,
                                "test_set_dependent": method.test_set_dependent,
                                **method.labels()}),  # a method's labels are its own (plugins' too)
        "precision": {"inference": "bf16 autocast" if method.labels().get("inference_autocast_bf16") else "float32",
                      "compiled": bool(method.labels().get("inference_compiled"))},
        "display": {"method": method.display_name or method.name,
                    "encoder": encoder_short_name(encoder) if encoder else ""},
        "method_params": method.get_params(),
        "fit_stats": method.fit_stats(),
        "size": size_record(method),
        "flops": flops_record(method, cell.resolution, device, seed=cell.seed),
        "dataset": source.describe(),
    })
    if weights is not None:
        result["weights"] = cast(WeightsInfo, weights)
    return result, arrays


def failed_record(cell: Cell, device: str, reason: str, details: str = "") -> Record:
    """The record of a cell that failed outside ``run_cell`` (refused up front, or its worker died)."""
    record = base_record(cell, device)
    record["status"], record["error"], record["finished_at"] = "failed", reason, now()
    if details:
        record["traceback"] = details
    return record
