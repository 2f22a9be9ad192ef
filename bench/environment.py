"""What machine and code produced a result. Every probe is allowed to fail: it then records "unknown"
and the reason, never raises (the detectron2 ``collect_env`` / pytest-benchmark ``commit_info`` idea)."""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import pynvml
import torch

from anobench.core import BenchError
from anobench.records import CommitInfo, GpuInfo, MachineInfo

UNKNOWN = "unknown"
# Environment variables that choose CPU kernels, and so the float rounding of results (see bench compare).
KERNEL_ENV = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "OMP_NUM_THREADS",
              "MKL_NUM_THREADS")
SOURCE_DIR = Path(__file__).resolve().parent.parent


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return UNKNOWN


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or UNKNOWN


def gpu_info() -> GpuInfo:
    """GPU name, driver and memory from NVML; empty fields with a reason where there is none."""
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # no library, no driver, no GPU: all mean "no NVML here"
        return {"nvml": False, "reason": f"NVML unavailable ({type(exc).__name__}: {exc})"}
    try:
        index = torch.cuda.current_device() if torch.cuda.is_available() else 0
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        name = pynvml.nvmlDeviceGetName(handle)
        driver = pynvml.nvmlSystemGetDriverVersion()
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        return {"nvml": True, "name": name if isinstance(name, str) else name.decode(),
                "driver": driver if isinstance(driver, str) else driver.decode(),
                "memory_total_mb": memory.total / 1e6, "index": index}
    except Exception as exc:
        return {"nvml": False, "reason": f"NVML query failed ({type(exc).__name__}: {exc})"}
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


@functools.lru_cache(maxsize=1)
def machine_info() -> MachineInfo:
    """Hardware and software versions; cached per process."""
    cuda = torch.cuda.is_available()
    return {
        "hostname": platform.node(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "timm": _version("timm"),
        "freia": _version("FrEIA"),
        "numpy": _version("numpy"),
        "scikit_learn": _version("scikit-learn"),
        "anobench": _version("anobench"),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "kernel_env": {k: os.environ[k] for k in KERNEL_ENV if k in os.environ},
        "cuda_available": cuda,
        "cuda": torch.version.cuda or None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "gpu": gpu_info(),
    }


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=SOURCE_DIR, capture_output=True, text=True, timeout=10,
                          check=True).stdout.strip()


@functools.lru_cache(maxsize=1)
def commit_info() -> CommitInfo:
    """The git commit of the harness's source, and whether the tree had uncommitted changes."""
    try:
        return {"id": _git("rev-parse", "HEAD"), "short": _git("rev-parse", "--short", "HEAD"),
                "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
                "branch": _git("rev-parse", "--abbrev-ref", "HEAD"), "time": _git("log", "-1", "--format=%cI")}
    except Exception as exc:
        return {"id": UNKNOWN, "error": f"{type(exc).__name__}: {exc}"}


def device_name(device: str) -> str:
    """A human name for the device a result was measured on."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU: {cpu_model()}"


def resolve_device(requested: str) -> str:
    """The device a run uses, checked before any work: ``auto`` is CUDA where usable and the CPU otherwise;
    ``cuda`` or ``cuda:N`` must exist here and run a kernel (one sentence otherwise). An indexed device
    becomes the current one, so that torch's memory counters read that device."""
    if requested in ("auto", "cpu"):
        return "cuda" if requested == "auto" and torch.cuda.is_available() else "cpu"
    kind, _, index = requested.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise BenchError(f"Unknown device '{requested}'; pass auto, cpu, cuda or cuda:N.")
    if not torch.cuda.is_available():
        why = ("this PyTorch build has no CUDA support" if torch.version.cuda is None
               else f"PyTorch, built for CUDA {torch.version.cuda}, finds no usable NVIDIA driver and GPU")
        raise BenchError(f"--device {requested}: no usable CUDA device on this machine ({why}); pass --device cpu "
                         f"or auto.")
    count = torch.cuda.device_count()
    if index and int(index) >= count:
        raise BenchError(f"--device {requested}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}; "
                         f"pass one of them.")
    try:
        (torch.ones(1, device=requested) + 1).item()
        if index:
            torch.cuda.set_device(int(index))
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BenchError(f"--device {requested} cannot run ({reason}); pass --device cpu or another device.") from None
    return requested
