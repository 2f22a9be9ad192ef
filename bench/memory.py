"""Peak memory of a region of work: host RSS (sampled), torch's CUDA peaks, and NVML's device-level use.

Fields that cannot be measured on this machine are None with a reason, never 0.
"""

from __future__ import annotations

import threading
from pathlib import Path

import psutil
import pynvml
import torch

from anobench.records import PeakMemoryResult

MB = 1e6


class _NvmlSampler:
    """Device-level used memory (all processes, the CUDA context included), sampled for its peak."""

    def __init__(self, index: int):
        pynvml.nvmlInit()
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        self.peak = 0

    def sample(self) -> None:
        self.peak = max(self.peak, pynvml.nvmlDeviceGetMemoryInfo(self._handle).used)

    def close(self) -> None:
        pynvml.nvmlShutdown()


PROC_SELF = Path("/proc/self")


def _reset_rss_high_water_mark() -> bool:
    """Linux keeps the process's peak RSS (VmHWM) exactly; writing 5 to clear_refs restarts it from the current
    RSS. False where that is not possible (another OS, a restricted /proc): polling alone then."""
    try:
        (PROC_SELF / "clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _rss_high_water_mark() -> int | None:
    """VmHWM in bytes, or None where /proc does not say."""
    try:
        for line in (PROC_SELF / "status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


class PeakMemory:
    """Context manager measuring peak memory of the enclosed work on ``device``. Host RSS is polled, and on
    Linux also read from the kernel's exact high-water mark (restarted on entry), so that a short peak between
    two polls of a busy machine is not missed."""

    def __init__(self, device: str, interval_s: float = 0.02):
        self.device = device
        self.interval_s = interval_s
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._nvml: _NvmlSampler | None = None
        self._nvml_reason = ""
        self.result: PeakMemoryResult = {}
        self._rss_start = self._rss_peak = 0

    def _poll(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self) -> None:
        self._rss_peak = max(self._rss_peak, self._process.memory_info().rss)
        if self._nvml is not None:
            self._nvml.sample()

    def __enter__(self) -> PeakMemory:
        self._cuda = self.device.startswith("cuda") and torch.cuda.is_available()
        if self._cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            try:
                self._nvml = _NvmlSampler(torch.device(self.device).index or 0)
            except Exception as exc:
                self._nvml_reason = f"NVML unavailable ({type(exc).__name__}: {exc})"
        self._exact_peak = _reset_rss_high_water_mark()
        self._rss_start = self._rss_peak = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        if self._cuda:
            torch.cuda.synchronize()
        self._stop.set()
        self._thread.join()
        self._sample()
        high_water_mark = _rss_high_water_mark() if self._exact_peak else None
        if high_water_mark is not None:
            self._rss_peak = max(self._rss_peak, high_water_mark)
        result: PeakMemoryResult = {"host_rss_start_mb": self._rss_start / MB, "host_peak_rss_mb": self._rss_peak / MB,
                                  "host_peak_rss_increase_mb": (self._rss_peak - self._rss_start) / MB}
        if self._cuda:
            result["gpu_peak_allocated_mb"] = torch.cuda.max_memory_allocated() / MB
            result["gpu_peak_reserved_mb"] = torch.cuda.max_memory_reserved() / MB
            if self._nvml is not None:
                result["gpu_device_used_peak_mb"] = self._nvml.peak / MB
                self._nvml.close()
            else:
                result["gpu_device_used_peak_mb"] = None
                result["gpu_device_reason"] = self._nvml_reason
        else:
            reason = "not a CUDA run" if torch.cuda.is_available() else "no CUDA device on this machine"
            result.update({"gpu_peak_allocated_mb": None, "gpu_peak_reserved_mb": None,
                           "gpu_device_used_peak_mb": None, "gpu_reason": reason})
        self.result = result
