"""Inference speed of a fitted method and of its encoder alone, on a ready tensor.

Timed regions (each recorded with its name):

- ``encoder``: the encoder alone, at the method's tapped levels (``method.timed_encoder()``; a method
  without an encoder has no such region, nor the ratios to it);
- ``network``: encoder + decoders / statistics (``method.forward_scores``);
- ``end_to_end``: ``network`` plus post-processing (upsampling, blur, image score).

Inputs are random tensors already on the device: data loading is never inside a timed region. Warm-up
iterations run first and are not timed; the regions are then timed in turn, iteration by iteration. On CUDA the device is synchronized before and after every timed
iteration; on the CPU ``perf_counter`` is used and the thread count is recorded.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from anobench.records import Speed

REGIONS = ("encoder", "network", "end_to_end")
REGION_NOTES = {
    "encoder": "encoder forward only (the method's tapped levels), input already on the device",
    "network": "encoder + decoders/statistics on a ready tensor; no post-processing, no data loading",
    "end_to_end": "network + score-map post-processing (upsampling, blur, image score); no data loading",
}


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_interleaved(calls: dict[str, Callable[[], Any]], device: str, warmup: int,
                     iterations: int) -> dict[str, list[float]]:
    """Seconds per call of each region, timed round-robin (region A, B, C, A, B, C, ...) after ``warmup``
    untimed calls of each, so that a machine slowing down mid-measurement slows every region alike and
    their ratio stays meaningful."""
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(iterations):
        for name, fn in calls.items():
            _synchronize(device)
            start = time.perf_counter()
            fn()
            _synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times


def time_last_half(call: Callable[[], Any], device: str, warmup: int, runs: int) -> list[float]:
    """MVTec AD 2's timing: ``warmup`` untimed calls, then ``2 * runs`` timed ones, of which the last ``runs``
    are kept (its script reports their mean), so that caches and clocks have settled."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(2 * runs):
        _synchronize(device)
        start = time.perf_counter()
        call()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return times[runs:]


def summarize(times: Sequence[float], images: int) -> dict[str, Any]:
    """fps from the median time; ``fps_best`` from the fastest iteration (the steadier one on a shared machine);
    every iteration's time, to the microsecond (``bench compare`` tests whether two distributions differ)."""
    median, best = float(np.median(times)), float(np.min(times))
    return {"iterations": len(times), "median_s": median, "mean_s": float(np.mean(times)), "p90_s": float(np.percentile(times, 90)), "min_s": best,
            "fps": images / median if median > 0 else None, "fps_best": images / best if best > 0 else None,
            "latency_ms": 1000 * median, "times_s": [round(float(t), 6) for t in times]}


def paired_ratio(numerator_times: Sequence[float], denominator_times: Sequence[float]) -> float:
    """Median over iterations of the fps ratio of two regions timed back to back (t_denominator_i / t_numerator_i
    is fps_numerator / fps_denominator): a slow spell of the machine cancels out within each pair."""
    return float(np.median(np.asarray(denominator_times) / np.asarray(numerator_times)))


def region_calls(method, images: torch.Tensor) -> dict[str, Callable[[], Any]]:
    """The timed regions as zero-argument calls on one ready batch; no encoder region for a method without
    an encoder (``timed_encoder()`` is None)."""
    size = tuple(images.shape[-2:])
    encoder = method.timed_encoder()
    calls: dict[str, Callable[[], Any]] = {} if encoder is None else {"encoder": lambda: encoder(images)}
    calls["network"] = lambda: method.forward_scores(images)
    calls["end_to_end"] = lambda: method.postprocess(method.forward_scores(images), size)
    return calls


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """Run with ``threads`` torch threads (None: unchanged), then restore the process's count."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def measure_speed(method, input_size: int, batch_sizes: Sequence[int], device: str, warmup: int,
                  iterations: int, seed: int = 0, threads: int | None = None) -> Speed:
    """Time the three regions at each batch size; fps = images / median time. Returns plain data.

    ``threads`` fixes the torch threads on the CPU while timing: one thread makes the method/encoder ratio
    hold on a loaded machine, where two threads of small operations wait on each other's preemption."""
    with torch_threads(threads if device == "cpu" else None):
        return _measure(method, input_size, batch_sizes, device, warmup, iterations, seed)


@torch.inference_mode()
def _measure(method, input_size: int, batch_sizes: Sequence[int], device: str, warmup: int, iterations: int,
             seed: int) -> Speed:
    generator = torch.Generator().manual_seed(seed)
    result: Speed = {
        "input_size": input_size, "device": device, "warmup": warmup, "iterations": iterations,
        "torch_threads": torch.get_num_threads(),
        "timer": "cuda synchronize + perf_counter" if device.startswith("cuda") else "perf_counter",
        "regions": REGION_NOTES, "batches": {},
        "ratio": "median over iterations of the paired fps ratio (each region timed right after the other)",
    }
    for batch in batch_sizes:
        images = torch.rand(batch, 3, input_size, input_size, generator=generator).to(device)
        times = time_interleaved(region_calls(method, images), device, warmup, iterations)
        timings: dict[str, Any] = {region: summarize(times[region], batch) for region in REGIONS if region in times}
        if "encoder" in times:
            timings["ratio_end_to_end_to_encoder"] = paired_ratio(times["end_to_end"], times["encoder"])
            timings["ratio_network_to_encoder"] = paired_ratio(times["network"], times["encoder"])
        result["batches"][str(batch)] = timings
    return result
