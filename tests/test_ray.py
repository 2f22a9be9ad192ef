"""The Ray executor on a local Ray instance with 2 CPUs (skipped where the `ray` extra is not installed)."""

import json
import os
import socket
import sys
import time

import pytest

from anobench.core import BenchError
from anobench.executors import RayExecutor, Task, execute
from anobench.records import latest_by_cell, read_records
from anobench.runfolder import RunFolderLock
from anobench.runner import RunOptions, run_suite
from anobench.suites import load_suite
from tests.conftest import kill_when_recorded, run_bench, write_suite

ray = pytest.importorskip("ray", reason="the `ray` extra is not installed (pip install -e '.[ray]')")
pytestmark = pytest.mark.slow


def test_killing_the_driver_then_rerunning_completes_without_duplicates(tmp_path, tiny_data):
    path = write_suite(tmp_path / "s.toml", tiny_data, seeds=(0, 1, 2))
    run_dir = tmp_path / "run"
    before = kill_when_recorded([sys.executable, "-m", "anobench", "run", "--suite", str(path), "--out", str(run_dir),
                                 "--no-report", "--executor", "ray"], run_dir, at_least=1)
    assert 1 <= before < 6
    result = run_bench("run", "--out", str(run_dir), "--no-report", "--executor", "ray")
    assert result.returncode == 0, result.stderr[-2000:]
    final = read_records(run_dir)
    assert len(final) == 6 == len(latest_by_cell(final))
    assert all(json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines())


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    cache = str(tmp_path_factory.getbasetemp() / "cache")  # the same generated-data cache as the tests'
    ray.init(num_cpus=2, log_to_driver=False, include_dashboard=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
                                       "ANOBENCH_CACHE": cache, "ANOBENCH_PROGRESS": "0"}})
    yield
    ray.shutdown()


def test_smoke_gives_the_same_records_on_ray_as_locally(tmp_path, local_ray):
    suite = load_suite("smoke")
    options = RunOptions(classes=("stripes",))  # the smoke grid on one class: a PaDiM and a CFLOW cell
    start = time.perf_counter()
    run_suite(suite, tmp_path / "local", options)
    local_s = time.perf_counter() - start
    start = time.perf_counter()
    run_suite(suite, tmp_path / "ray", options, RayExecutor())
    ray_s = time.perf_counter() - start
    print(f"smoke (stripes) wall time: local {local_s:.1f} s, ray {ray_s:.1f} s")
    local = latest_by_cell(read_records(tmp_path / "local"))
    remote = latest_by_cell(read_records(tmp_path / "ray"))
    assert len(read_records(tmp_path / "ray")) == len(remote) == len(local) == 2
    for cell_id, record in local.items():
        assert remote[cell_id]["config"] == record["config"] and remote[cell_id]["status"] == "ok"
        # Ray runs each task with the CPUs it asked for (1 thread here, 2 locally): float sums may differ
        for metric, value in record["metrics"].items():
            assert remote[cell_id]["metrics"][metric] == pytest.approx(value, abs=2e-3), (cell_id, metric)
        assert remote[cell_id]["artifacts"]["file"]  # written by the driver


def crash_one(task: Task):
    """A task function that kills its worker process for one class and runs the others normally."""
    if task.cell.class_name == "disc":
        os._exit(1)
    return execute(task)


def raise_outside_the_cell(task: Task):
    if task.cell.class_name == "disc":
        raise RuntimeError("dataset mount vanished on this node")
    return execute(task)


@pytest.mark.parametrize("work,reason", [(crash_one, "WorkerCrashedError"),
                                         (raise_outside_the_cell, "dataset mount vanished")])
def test_a_failed_task_is_recorded_and_the_others_complete(tmp_path, tiny_data, local_ray, work, reason):
    path = write_suite(tmp_path / "s.toml", tiny_data)
    summary = run_suite(load_suite(str(path)), tmp_path / "run", RunOptions(), RayExecutor(work=work))
    assert (summary.ok, summary.failed) == (1, 1)
    records = {r["config"]["class"]: r for r in read_records(tmp_path / "run")}
    assert records["stripes"]["status"] == "ok"
    assert records["disc"]["status"] == "failed" and reason in records["disc"]["error"]  # not retried: one record


def test_the_driver_holds_the_run_folders_lock_while_ray_tasks_run(tmp_path, tiny_data, local_ray):
    """A task tries to take the run folder's lock from its worker process: refused, naming the driver."""
    run_dir = tmp_path / "run"

    def probe_the_lock(task: Task):
        try:
            with RunFolderLock(run_dir):
                probe = "free"
        except BenchError as exc:
            probe = str(exc)
        record, arrays = execute(task)
        record["lock_probe"] = probe
        return record, arrays

    path = write_suite(tmp_path / "s.toml", tiny_data)
    run_suite(load_suite(str(path)), run_dir, RunOptions(), RayExecutor(work=probe_the_lock))
    assert {r["lock_probe"] for r in read_records(run_dir)} == {
        f"Run folder {run_dir} is in use by another bench run (PID {os.getpid()} on host {socket.gethostname()}); "
        f"wait for it to finish, or pass another --out."}
