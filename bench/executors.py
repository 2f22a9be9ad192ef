"""Executors: where cells run. The driver (the runner) stays the only writer of records and artifacts.

- ``local``: one cell after another in a child process of this one (a worker that keeps its feature cache
  from cell to cell). When the kernel kills the worker (out of memory, ``kill -9``) the cell it was running
  is recorded as failed with the signal and the worker's peak memory so far, a new worker takes the next
  cell, and the run goes on. Workers are forked from a server process that has imported the harness but
  run nothing (a process that has run OpenMP-parallel torch code cannot be forked safely), so a worker
  starts in milliseconds; it dies with the driver.
- ``inline``: one cell after another in this process (for a debugger, or a test that patches the process).
- ``ray``: each cell is a Ray task asking for one GPU when the device is CUDA (CPUs otherwise), so Ray
  places cells on free GPUs across nodes; each worker process keeps its own feature cache. Data paths
  are resolved on the worker: the dataset must be on a shared filesystem or at the same path on every
  node. A task whose worker dies is recorded as failed with the reason, not retried (a crash that
  killed a worker, such as running out of host memory, would most likely kill the retry too).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import multiprocessing
import os
import signal
import sys
import threading
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
from tqdm import tqdm

from anobench.cells import Cell
from anobench.core import BenchError
from anobench.evaluation import failed_record, open_source, run_cell
from anobench.methods.feature_cache import FeatureCache
from anobench.records import Record
from anobench.suites import DatasetSpec

Outcome = tuple[Cell, Record, dict[str, np.ndarray]]


@dataclass(frozen=True)
class Task:
    """Everything a worker needs to run one cell, as plain, picklable data."""

    cell: Cell
    dataset: DatasetSpec
    data_root: str | None
    device: str
    feature_cache_mb: int
    threads: int | None = None  # torch threads for the cell (a Ray task uses the CPUs it asked for)
    output_dir: str | None = None  # the run folder, for files a dataset's protocol writes (shared filesystem)


_WORKER_CACHES: dict[int, FeatureCache] = {}


def worker_cache(max_mb: int) -> FeatureCache:
    """This process's feature cache (one per worker, reused by the cells it runs; 0 MB stores nothing)."""
    if max_mb not in _WORKER_CACHES:
        _WORKER_CACHES[max_mb] = FeatureCache(max_mb * 2**20)
    return _WORKER_CACHES[max_mb]


def execute(task: Task) -> tuple[Record, dict[str, np.ndarray]]:
    """Run one cell where this process is: open the dataset here, then fit, score and measure."""
    if task.threads:
        torch.set_num_threads(task.threads)
    source = open_source(task.dataset, task.data_root)
    return run_cell(task.cell, source, task.device, worker_cache(task.feature_cache_mb),
                    Path(task.output_dir) if task.output_dir else None)


def _worker_loop(connection) -> None:
    """A local worker: run the tasks the driver sends, one at a time, until it sends None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole terminal group: the driver decides
    tqdm.set_lock(threading.RLock())  # not tqdm's default multiprocessing lock: a killed worker would leak it
    if sys.platform.startswith("linux"):  # die with the process that forked this one (PR_SET_PDEATHSIG, SIGKILL)
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    while (task := connection.recv()) is not None:
        try:
            connection.send(execute(task))
        except Exception as exc:  # outside the cell (opening the dataset, say): the driver raises it as before
            connection.send(exc)


def death_reason(exit_code: int | None, peak_rss: int) -> str:
    """One sentence for a worker that ended without returning its cell's result."""
    peak = f"; peak RSS so far {peak_rss / 2**20:,.0f} MiB" if peak_rss else ""
    if exit_code is not None and exit_code < 0:
        signal_number = -exit_code
        name = signal.Signals(signal_number).name if signal_number in signal.Signals._value2member_map_ else "?"
        likely = ", most likely out of memory (the kernel's OOM killer sends it)" if signal_number == signal.SIGKILL else ""
        return f"worker killed by signal {signal_number} ({name}){likely}{peak}"
    return f"worker exited with code {exit_code} before returning its result{peak}"


@dataclass
class InlineExecutor:
    """Cells one after another in this very process: a debugger can step into them and a test's patches
    apply, but a cell that kills the process ends the run."""

    name: str = "inline"
    running: int = 0

    def run(self, tasks: list[Task]) -> Iterator[Outcome]:
        for task in tasks:
            self.running = 1
            record, arrays = execute(task)
            self.running = 0
            yield task.cell, record, arrays

    def close(self) -> None:
        pass


@dataclass
class LocalExecutor:
    """Cells one after another in a child process; a worker that dies fails its cell, not the run."""

    name: str = "local"
    running: int = 0
    poll_s: float = 0.2  # how often the driver samples the worker's memory while it waits
    _process: Any = field(default=None, repr=False)
    _connection: Any = field(default=None, repr=False)

    def _worker(self):
        if self._process is None or not self._process.is_alive():
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(["anobench.evaluation"])
            self._connection, child = context.Pipe()
            self._process = context.Process(target=_worker_loop, args=(child,), daemon=True, name="anobench-cell")
            self._process.start()
            child.close()
        return self._process, self._connection

    def _result(self, task: Task) -> tuple[Record, dict[str, np.ndarray]]:
        process, connection = self._worker()
        connection.send(task)
        peak = 0
        watched = psutil.Process(process.pid)
        while not connection.poll(self.poll_s):
            try:
                peak = max(peak, watched.memory_info().rss)
            except psutil.Error:  # gone between two samples
                continue
            if not process.is_alive():
                break
        try:
            result = connection.recv()
        except (EOFError, OSError):  # the worker died: nothing (or only part of a message) came back
            process.join()
            self.close()
            return failed_record(task.cell, task.device, death_reason(process.exitcode, peak)), {}
        if isinstance(result, Exception):
            raise result
        return result

    def run(self, tasks: list[Task]) -> Iterator[Outcome]:
        for task in tasks:
            self.running = 1
            record, arrays = self._result(task)
            self.running = 0
            yield task.cell, record, arrays

    def close(self) -> None:
        """Stop the worker: asked to at the end of a run, killed when the run is interrupted or it died."""
        if self._process is not None:
            if self._process.is_alive():
                with contextlib.suppress(OSError):
                    self._connection.send(None)
                self._process.join(timeout=5 if self.running == 0 else 0)
                if self._process.is_alive():
                    self._process.kill()
                    self._process.join()
            self._connection.close()
        self._process = self._connection = None


@dataclass
class RayExecutor:
    """Cells as Ray tasks; results come back as they finish, in any order."""

    address: str | None = None
    cpus_per_cell: float = 1.0
    work: Any = execute  # what a task runs (tests substitute a function that crashes its worker)
    name: str = "ray"
    running: int = 0
    _ray: Any = field(default=None, repr=False)  # the module, once connected
    _started: bool = field(default=False, repr=False)

    def _connect(self):
        try:
            import ray  # an optional extra: imported only when asked for
        except ImportError:
            raise BenchError("--executor ray needs Ray; install it with: pip install -e \".[ray]\"") from None
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"address": self.address} if self.address else {}
            # Workers import this checkout's packages: pass on the driver's import path.
            kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}}
            ray.init(log_to_driver=False, **kwargs)
            self._started = True
        self._ray = ray
        return ray

    def run(self, tasks: list[Task]) -> Iterator[Outcome]:
        if not tasks:
            return
        ray = self._connect()
        remote = ray.remote(max_retries=0)(self.work)
        pending = {}
        for task in tasks:
            gpus = 1 if task.device.startswith("cuda") else 0
            task = dataclasses.replace(task, threads=max(1, int(self.cpus_per_cell)))
            ref = remote.options(num_cpus=self.cpus_per_cell, num_gpus=gpus).remote(task)
            pending[ref] = task
        while pending:
            self.running = len(pending)
            done, _ = ray.wait(list(pending), num_returns=1)
            task = pending.pop(done[0])
            try:
                record, arrays = ray.get(done[0])
            except ray.exceptions.RayError as exc:  # the task raised outside its cell, or its worker died
                cause = getattr(exc, "cause", None)  # what a RayTaskError wraps
                lines = str(exc).strip().splitlines()
                reason = f"{type(cause).__name__}: {cause}" if cause else (lines[0] if lines else "")
                record, arrays = failed_record(task.cell, task.device, f"{type(exc).__name__} ({reason})",
                                               "".join(traceback.format_exception(exc)[-6:])), {}
            yield task.cell, record, arrays
        self.running = 0

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()
            self._started = False


def make_executor(name: str, address: str | None = None, cpus_per_cell: float = 1.0):
    if name == "local":
        return LocalExecutor()
    if name == "inline":
        return InlineExecutor()
    if name == "ray":
        return RayExecutor(address=address, cpus_per_cell=cpus_per_cell)
    raise BenchError(f"Unknown executor '{name}'; valid executors: local, inline, ray.")
