"""Deployment runtimes: the fitted detector exported to ONNX and run under ONNX Runtime or OpenVINO, timed as
eager PyTorch is, and checked against it.

For each cell and runtime other than ``torch``: the method's scoring graph (``AnomalyMethod.scoring_graph``:
images → image scores and maps, post-processing included) is exported once per batch size to ONNX, with its
constants as external data (so that graphs above protobuf's 2 GB limit export too); the whole test set is
scored through the runtime, and its maps, image scores and metrics are compared with eager PyTorch's
(**parity**). Timing follows ``anobench.speed``: random inputs in host memory, warm-up, then the runtimes
timed round-robin (``interleaved``) so that their ratio to PyTorch holds on a busy machine; or MVTec AD 2's
protocol (``mvtec-ad2``): batch 1, a decoded image in host memory to the map in host memory, warm-up, the
mean of the last N of 2N runs. A runtime that cannot be built or fails is recorded with its reason; the
cell goes on.

OpenVINO's CPU plugin computes in bfloat16 by default on CPUs that have it: ``openvino`` sets the precision
hint to f32, so that it is the same fp32 detector; ``openvino-int8`` is NNCF's post-training quantization,
calibrated on training images only, and its accuracy change is its parity.
"""

from __future__ import annotations

import functools
import importlib
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anobench.core import BenchError, unknown_name
from anobench.memory import PeakMemory
from anobench.methods.base import AnomalyMethod, Prediction
from anobench.records import Deployment, RuntimeParity, RuntimeResult
from anobench.runtimes import EXTRA, MAP_TOLERANCE_REL, METRIC_TOLERANCE_PP, RUNTIMES, TIMING
from anobench.speed import paired_ratio, summarize, time_interleaved, time_last_half, torch_threads

CUDA_PROVIDERS = {"onnxruntime-cuda": "CUDAExecutionProvider",
                  "onnxruntime-tensorrt-fp16": "TensorrtExecutionProvider"}


def check_runtimes(names: Sequence[str], device: str, where: str) -> None:
    """Refuse, before any work, a runtime that is unknown, not installed, or not for ``device``."""
    for name in names:
        if name not in RUNTIMES:
            raise unknown_name("runtime", name, RUNTIMES, where)
        runtime = RUNTIMES[name]
        missing = [m for m in runtime.modules if not _importable(m)]
        if missing:
            raise BenchError(f"Runtime '{name}' ({where}) needs the deploy extra ({', '.join(missing)} not "
                             f"installed); install it with {EXTRA}, or leave it out of runtimes.")
        if runtime.device == "cuda" and not device.startswith("cuda"):
            raise BenchError(f"Runtime '{name}' ({where}) runs on a CUDA device; pass --device cuda, or leave it "
                             f"out of runtimes.")
        if name in CUDA_PROVIDERS and CUDA_PROVIDERS[name] not in _onnxruntime_providers():
            raise BenchError(f"Runtime '{name}' ({where}) needs ONNX Runtime's {CUDA_PROVIDERS[name]}, which this "
                             f"onnxruntime does not have; install onnxruntime-gpu, or leave it out of runtimes.")


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def _onnxruntime_providers() -> list[str]:
    import onnxruntime

    return onnxruntime.get_available_providers()


# ----------------------------------------------------------------------------------------------------------
# export and runtimes: each built runtime is a function from a host batch (numpy) to host outputs


Scorer = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def export_onnx(graph: torch.nn.Module, batch: int, size: int, device: str, folder: Path) -> Path:
    """The scoring graph as ONNX at a fixed batch and size, its constants as external data beside it."""
    path = folder / f"scoring-b{batch}.onnx"
    example = torch.rand(batch, 3, size, size, device=device)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's notes on traced operators
        torch.onnx.export(graph, (example,), str(path), dynamo=True, external_data=True, verbose=False,
                          input_names=["images"], output_names=["image_scores", "maps"])
    return path


def files_bytes(onnx_path: Path) -> int:
    """The ONNX graph and its external data files."""
    return sum(p.stat().st_size for p in onnx_path.parent.iterdir() if p.name.startswith(onnx_path.name))


def _onnxruntime(path: Path, providers: list[Any], threads: int | None) -> Scorer:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = onnxruntime.InferenceSession(str(path), options, providers=providers)

    def score(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores, maps = session.run(None, {"images": images})
        return scores, maps

    return score


def _openvino(path: Path, threads: int | None, calibration: list[np.ndarray] | None) -> Scorer:
    import openvino

    core = openvino.Core()
    model = core.read_model(str(path))
    if calibration is not None:
        import nncf

        # matrix products stay f32: in these graphs they are distances to stored features (PaDiM, SPADE,
        # PatchCore) or the flows' linear layers (CFLOW-AD), whose int8 rounding changes the scores themselves
        model = nncf.quantize(model, nncf.Dataset(calibration), subset_size=len(calibration),
                              ignored_scope=nncf.IgnoredScope(types=["MatMul"], validate=False))
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = core.compile_model(model, "CPU", config)

    def score(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = compiled(images)
        return out[0], out[1]

    return score


def build(name: str, path: Path, threads: int | None, calibration: list[np.ndarray] | None) -> Scorer:
    """Runtime ``name`` loaded with the ONNX graph at ``path`` (int8: quantized with ``calibration``)."""
    if name == "onnxruntime":
        return _onnxruntime(path, ["CPUExecutionProvider"], threads)
    if name == "onnxruntime-cuda":
        return _onnxruntime(path, ["CUDAExecutionProvider"], threads)
    if name == "onnxruntime-tensorrt-fp16":
        return _onnxruntime(path, [("TensorrtExecutionProvider", {"trt_fp16_enable": True}),
                                   "CUDAExecutionProvider"], threads)
    return _openvino(path, threads, calibration if name == "openvino-int8" else None)


def calibration_batches(images: Iterable[torch.Tensor], batch: int) -> list[np.ndarray]:
    """Calibration inputs of the graph's fixed batch from ``images`` (training images only): whole batches, a
    short last one left out; fewer images than one batch are repeated to fill it."""
    flat = torch.cat([b.float().cpu() for b in images]).numpy()
    return [flat[i:i + batch] for i in range(0, len(flat) - batch + 1, batch)] or [
        np.concatenate([flat] * -(-batch // len(flat)))[:batch]]


def score_batches(score: Scorer, batches: Iterable[torch.Tensor], batch: int) -> Prediction:
    """A whole test set through a runtime of fixed batch ``batch``: a short last batch is padded with copies
    of its last image, whose results are dropped (an image's scores do not depend on its batch)."""
    parts = []
    for images in batches:
        array = images.float().cpu().numpy()
        n = len(array)
        for start in range(0, n, batch):
            chunk = array[start:start + batch]
            padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), axis=0)])
            scores, maps = score(padded)
            parts.append(Prediction(np.asarray(scores[:len(chunk)], np.float32),
                                    np.asarray(maps[:len(chunk)], np.float32)))
    return Prediction.concatenate(parts)


# ----------------------------------------------------------------------------------------------------------
# parity


def _largest_difference(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float]:
    absolute = float(np.max(np.abs(candidate.astype(np.float64) - reference))) if reference.size else 0.0
    scale = float(np.max(np.abs(reference))) if reference.size else 0.0
    return absolute, absolute / scale if scale > 0 else (0.0 if absolute == 0 else float("inf"))


def parity(reference: Prediction, candidate: Prediction, reference_metrics: dict[str, float | None],
           candidate_metrics: dict[str, float | None]) -> RuntimeParity:
    """The largest absolute and relative differences of maps and image scores (relative to the largest
    |value| of PyTorch's), and every metric's difference in percentage points."""
    map_abs, map_rel = _largest_difference(reference.maps, candidate.maps)
    score_abs, score_rel = _largest_difference(reference.image_scores, candidate.image_scores)
    differences = {name: (None if value is None or candidate_metrics.get(name) is None
                          else 100 * (candidate_metrics[name] - value))  # type: ignore[operator]
                   for name, value in reference_metrics.items()}
    within = map_rel <= MAP_TOLERANCE_REL and all(d is None or abs(d) <= METRIC_TOLERANCE_PP
                                                  for d in differences.values())
    return {"map_max_abs": map_abs, "map_max_rel": map_rel, "score_max_abs": score_abs, "score_max_rel": score_rel,
            "metrics": candidate_metrics, "metric_difference_pp": differences, "within_tolerance": within,
            "tolerance": f"maps within {MAP_TOLERANCE_REL:g} relative and every metric within "
                         f"{METRIC_TOLERANCE_PP:g} pp"}


# ----------------------------------------------------------------------------------------------------------
# one cell


@dataclass
class DeploymentJob:
    """What a cell hands this module: the fitted method, the measurement settings, and (unless the cell
    measures only) its test set, PyTorch's prediction of it and how metrics are computed from a prediction."""

    method: AnomalyMethod
    runtimes: tuple[str, ...]
    protocol: str
    input_size: int
    batch_sizes: tuple[int, ...]
    warmup: int
    iterations: int
    threads: int | None
    device: str
    seed: int
    training_images: Callable[[], Iterable[torch.Tensor]]  # int8 calibration: training images only
    test_images: Callable[[], Iterable[torch.Tensor]] | None = None
    reference: Prediction | None = None
    metrics_of: Callable[[Prediction], dict[str, float | None]] | None = None


def deploy(job: DeploymentJob) -> Deployment:
    """Every runtime of ``job``: built, scored on the test set (parity), and timed beside eager PyTorch."""
    batch_sizes = (1,) if job.protocol == "mvtec-ad2" else job.batch_sizes
    threads = job.threads if job.device == "cpu" else None
    result: Deployment = {"protocol": job.protocol, "timing": TIMING[job.protocol], "warmup": job.warmup,
                          "iterations": job.iterations, "threads": threads, "test_batch": max(batch_sizes),
                          "graph": "the method's scoring_graph(): images → image scores and maps, post-processing "
                                   "included, exported per batch size",
                          "runtimes": {}}
    scorers: dict[str, dict[int, Scorer]] = {}
    refusal = job.method.export_refusal()
    scored = job.test_images is not None and job.reference is not None and job.metrics_of is not None
    reference_metrics = job.metrics_of(job.reference) if scored else {}  # type: ignore[misc,arg-type]
    with tempfile.TemporaryDirectory(prefix="anobench-onnx-") as folder:
        exported: dict[int, tuple[Path, float]] = {}  # batch → ONNX file, seconds to export it
        for name in (r for r in job.runtimes if r != "torch"):
            runtime = RUNTIMES[name]
            entry: RuntimeResult = {"precision": runtime.precision, "provider": runtime.provider}
            result["runtimes"][name] = entry
            if refusal:
                entry["status"], entry["reason"] = "unavailable", f"{job.method.name} cannot be exported: {refusal}"
                continue
            try:
                scorers[name] = _prepare(job, name, batch_sizes, Path(folder), exported, entry, reference_metrics)
                entry["status"] = "ok"
            except Exception as exc:  # one runtime failing leaves the others and the cell whole
                entry["status"], entry["reason"] = "failed", f"{type(exc).__name__}: {exc}"
        _time(job, batch_sizes, threads, scorers, result)
    return result


def _prepare(job: DeploymentJob, name: str, batch_sizes: tuple[int, ...], folder: Path,
             exported: dict[int, tuple[Path, float]],
             entry: RuntimeResult, reference_metrics: dict[str, float | None]) -> dict[int, Scorer]:
    """Export (once per batch size, shared by the runtimes), build, and score the test set for parity."""
    for batch in batch_sizes:
        if batch not in exported:
            sub = folder / f"b{batch}"
            sub.mkdir()
            start = time.perf_counter()
            path = export_onnx(job.method.scoring_graph().eval(), batch, job.input_size, job.device, sub)
            exported[batch] = path, time.perf_counter() - start
    entry["export_s"] = sum(exported[b][1] for b in batch_sizes)  # shared by the runtimes that load them
    test_batch = max(batch_sizes)
    entry["export_bytes"] = files_bytes(exported[test_batch][0])
    with PeakMemory(job.device) as memory:
        start = time.perf_counter()
        scorers = {}
        for batch in batch_sizes:
            calibration = calibration_batches(job.training_images(), batch) if name == "openvino-int8" else None
            if calibration is not None:
                entry["calibration_images"] = sum(len(c) for c in calibration)
            scorers[batch] = build(name, exported[batch][0], job.threads if job.device == "cpu" else None, calibration)
        entry["build_s"] = time.perf_counter() - start
        if job.test_images is None or job.reference is None or job.metrics_of is None:
            entry["parity"] = {"reason": "a measure-only cell scores no test set"}
        else:
            prediction = score_batches(scorers[test_batch], job.test_images(), test_batch)
            entry["parity"] = parity(job.reference, prediction, reference_metrics, job.metrics_of(prediction))
    entry["memory"] = memory.result
    return scorers


@torch.inference_mode()
def _time(job: DeploymentJob, batch_sizes: tuple[int, ...], threads: int | None, scorers: dict[str, dict[int, Scorer]],
          result: Deployment) -> None:
    """Time eager PyTorch and every built runtime at each batch size; ratio_to_torch = fps / PyTorch's fps."""
    method, generator = job.method, torch.Generator().manual_seed(job.seed)
    torch_entry: RuntimeResult = {"status": "ok", "precision": RUNTIMES["torch"].precision,
                                  "provider": RUNTIMES["torch"].provider, "batches": {}}
    result["runtimes"] = {"torch": torch_entry, **result["runtimes"]}
    with torch_threads(threads):
        for batch in batch_sizes:
            host = torch.rand(batch, 3, job.input_size, job.input_size, generator=generator)
            calls = {"torch": _torch_call(method, host, job.device, job.protocol)}
            for name, by_batch in scorers.items():
                calls[name] = functools.partial(by_batch[batch], host.numpy())
            if job.protocol == "mvtec-ad2":
                times = {name: time_last_half(call, job.device, job.warmup, job.iterations)
                         for name, call in calls.items()}
            else:
                times = time_interleaved(calls, job.device, job.warmup, job.iterations)
            for name, region_times in times.items():
                timing = summarize(region_times, batch)
                if job.protocol == "mvtec-ad2":  # its figure is the mean of the kept runs, timed one runtime at a time
                    timing.update(fps=batch / timing["mean_s"], latency_ms=1000 * timing["mean_s"])
                    ratio = float(np.mean(times["torch"]) / np.mean(region_times))
                else:
                    ratio = paired_ratio(region_times, times["torch"])
                if name != "torch":
                    timing["ratio_to_torch"] = ratio
                result["runtimes"][name].setdefault("batches", {})[str(batch)] = timing


def _torch_call(method: AnomalyMethod, host: torch.Tensor, device: str, protocol: str) -> Callable[[], Any]:
    """Eager PyTorch's timed call: on a ready tensor (interleaved, as bench/speed.py's end-to-end region), or
    from host memory to the map in host memory (mvtec-ad2)."""
    size = tuple(host.shape[-2:])
    if protocol == "mvtec-ad2":
        return lambda: method.postprocess(method.forward_scores(host.to(device)), size)[1].cpu()
    ready = host.to(device)
    return lambda: method.postprocess(method.forward_scores(ready), size)
