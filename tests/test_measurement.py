"""Speed and memory measurement: what is timed, what is excluded, and empty-with-a-reason GPU fields."""

import mmap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from anobench.memory import PeakMemory
from anobench.methods import create_method
from anobench.speed import measure_speed
from tests.test_method_contract import batches

ENCODER_S, NETWORK_S, POST_S = 0.01, 0.03, 0.02


class Sleepy:
    """A stand-in method whose stages take known times; its first calls are slow (like a cold cache)."""

    def __init__(self):
        self.calls = 0

    def timed_encoder(self):
        return lambda images: time.sleep(ENCODER_S)

    def forward_scores(self, images):
        self.calls += 1
        time.sleep(0.3 if self.calls <= 2 else NETWORK_S)
        return images

    def postprocess(self, raw, size):
        time.sleep(POST_S)
        return raw, raw


def test_regions_measure_known_times_and_skip_warmup():
    result = measure_speed(Sleepy(), input_size=8, batch_sizes=[2], device="cpu", warmup=1, iterations=6)
    timings = result["batches"]["2"]
    assert timings["encoder"]["median_s"] == pytest.approx(ENCODER_S, abs=0.008)
    assert timings["network"]["median_s"] == pytest.approx(NETWORK_S, abs=0.008)
    # the second slow call is the first of the end-to-end warm-up, so no timed network call is slow
    assert timings["network"]["p90_s"] < 0.1
    assert timings["end_to_end"]["median_s"] == pytest.approx(NETWORK_S + POST_S, abs=0.01)
    assert timings["network"]["fps"] == pytest.approx(2 / timings["network"]["median_s"])
    assert timings["ratio_end_to_end_to_encoder"] == pytest.approx(ENCODER_S / (NETWORK_S + POST_S), rel=0.2)
    assert timings["network"]["fps_best"] >= timings["network"]["fps"]
    assert result["iterations"] == 6 and result["warmup"] == 1 and result["torch_threads"] >= 1


def test_post_processing_shows_only_end_to_end():
    timings = measure_speed(Sleepy(), 8, [1], "cpu", warmup=2, iterations=5)["batches"]["1"]
    assert timings["end_to_end"]["median_s"] - timings["network"]["median_s"] == pytest.approx(POST_S, abs=0.008)


def test_a_real_method_has_every_region(tiny_data):
    method = create_method("padim", encoder="resnet18", weights="random").fit(batches(tiny_data))
    timings = measure_speed(method, 64, [2], "cpu", warmup=1, iterations=3)["batches"]["2"]
    assert timings["encoder"]["median_s"] > 0 and timings["network"]["median_s"] > 0
    assert set(timings) >= {"encoder", "network", "end_to_end", "ratio_end_to_end_to_encoder"}


def fresh_pages(size: int) -> mmap.mmap:
    """``size`` bytes of newly mapped, touched memory: RSS must grow by it (a malloc'ed block may reuse
    pages the process already holds, as it did in a long test run)."""
    block = mmap.mmap(-1, size)
    np.frombuffer(block, dtype=np.uint8)[:] = 1
    return block


def test_host_peak_memory_sees_an_allocation():
    with PeakMemory("cpu") as memory:
        block = fresh_pages(200 * 2**20)
        time.sleep(0.1)
        block.close()
    assert memory.result["host_peak_rss_mb"] - memory.result["host_rss_start_mb"] > 150


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc/self/clear_refs")
def test_a_peak_between_two_polls_is_seen_through_the_kernels_high_water_mark():
    """A busy machine can delay the polling thread past a short peak; the kernel's VmHWM cannot miss it."""
    with PeakMemory("cpu", interval_s=60) as memory:  # the poller never wakes inside the block
        fresh_pages(200 * 2**20).close()
    assert memory.result["host_peak_rss_mb"] - memory.result["host_rss_start_mb"] > 150


def test_gpu_fields_are_empty_with_a_reason_without_cuda():
    with PeakMemory("cpu") as memory:
        pass
    assert memory.result["gpu_peak_allocated_mb"] is None and memory.result["gpu_device_used_peak_mb"] is None
    assert memory.result["gpu_reason"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_memory_and_speed_are_measured_on_cuda(tiny_data):
    with PeakMemory("cuda") as memory:
        block = torch.ones(64 * 2**20 // 4, device="cuda")
        del block
    assert memory.result["gpu_peak_allocated_mb"] >= 64
    method = create_method("padim", encoder="resnet18", weights="random", device="cuda").fit(batches(tiny_data))
    timings = measure_speed(method, 64, [4], "cuda", warmup=2, iterations=5)["batches"]["4"]
    assert timings["end_to_end"]["median_s"] >= timings["network"]["median_s"] * 0.5 > 0


def test_cpu_timing_runs_with_the_suites_thread_count_and_restores_the_processs():
    class Counting(Sleepy):
        def timed_encoder(self):
            return lambda images: setattr(self, "threads", torch.get_num_threads())

    before = torch.get_num_threads()
    method = Counting()
    result = measure_speed(method, 8, [1], "cpu", warmup=0, iterations=1, threads=1)
    assert method.threads == 1 and result["torch_threads"] == 1
    assert torch.get_num_threads() == before
