"""`bench track --to mlflow`: one MLflow run per cell, read back with ``mlflow.search_runs`` into pandas, from a
local SQLite store and from an ``mlflow server`` on 127.0.0.1; exporting twice adds nothing."""

import importlib.util
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from anobench.core import BenchError
from anobench.records import read_records
from anobench.track import KEY_TAG, MlflowTracker, track
from tests.conftest import run_bench, write_suite

mlflow = pytest.importorskip("mlflow", reason="MLflow comes with the track extra: pip install 'anobench[track]'")


def sqlite_uri(path):
    return f"sqlite:///{path}"


def exported(uri, experiment="anobench"):
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=[experiment])


def check_runs_hold_the_records(frame, run_dirs):
    records = {r["cell_id"] + d.name: r for d in run_dirs for r in read_records(d)}
    assert len(frame) == len(records)
    for _, run in frame.iterrows():
        record = records[run["tags.anobench.cell_id"] + run["tags.anobench.run_dir"].rsplit("/", 1)[-1]]
        for metric, value in record["metrics"].items():
            if value is not None:
                assert run[f"metrics.{metric.replace('@', '_at_')}"] == pytest.approx(value)
        lo, hi = record["intervals"]["image_auroc"]
        assert (run["metrics.image_auroc_lo"], run["metrics.image_auroc_hi"]) == pytest.approx((lo, hi))
        assert run["params.method"] == record["config"]["method"] and run["params.seed"] == str(record["config"]["seed"])
        assert run["tags.anobench.device"] == record["device"]["name"]
        assert run["tags.anobench.weights"] == "random" and run["tags.anobench.random_weights"] == "true"
        assert run["tags.anobench.protocol"] == "strict" and run["status"] == "FINISHED"


def test_export_to_a_local_store_reads_back_the_records_numbers_and_twice_adds_nothing(folders, tmp_path):
    uri = sqlite_uri(tmp_path / "store" / "mlflow.db")
    (tmp_path / "store").mkdir()
    run_dirs = [folders["first"], folders["rerun"]]
    tracker, summary = track(run_dirs, uri)
    assert (summary.exported, summary.already) == (3, 0)
    frame = exported(uri)
    check_runs_hold_the_records(frame, run_dirs)
    assert frame["tags.anobench.cell_id"].value_counts().max() == 2  # the rerun's record is its own run
    run_id = frame["run_id"].iloc[0]
    assert {a.path for a in tracker.client.list_artifacts(run_id)} == {"record.json", "report"}
    assert [a.path for a in tracker.client.list_artifacts(run_id, "report")] == ["report/report.html"]
    assert (tmp_path / "store" / "mlartifacts").is_dir()  # artifacts beside the database

    _, again = track(run_dirs, uri)
    assert (again.exported, again.already) == (0, 3)
    assert len(exported(uri)) == 3 and exported(uri)[f"tags.{KEY_TAG}"].nunique() == 3


def test_a_relative_sqlite_uri_keeps_the_artifacts_beside_the_database(folders, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    track([folders["second_seed"]], "sqlite:///relative.db")
    assert (tmp_path / "relative.db").is_file() and (tmp_path / "mlartifacts" / "anobench").is_dir()


def test_an_unreachable_tracking_uri_is_one_sentence_and_nothing_is_written(folders, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    result = run_bench("track", str(folders["first"]), "--to", "mlflow", "--tracking-uri",
                       f"http://127.0.0.1:{closed_port}", cwd=tmp_path)
    assert result.returncode == 2 and "cannot be reached" in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_folder_that_is_not_a_run_folder_is_refused_before_anything_is_exported(folders, tmp_path):
    result = run_bench("track", str(folders["first"]), str(tmp_path / "missing"), "--to", "mlflow", cwd=tmp_path)
    assert result.returncode == 2 and "is not a run folder" in result.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_without_mlflow_one_sentence_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    with pytest.raises(BenchError, match=r"needs the track extra; install it with pip install 'anobench\[track\]'"):
        MlflowTracker("sqlite:///unused.db")


def test_run_with_track_exports_each_cell_and_then_its_report(tmp_path, tiny_data):
    suite = write_suite(tmp_path / "tracked.toml", tiny_data, classes=("stripes",))
    result = run_bench("run", "--suite", str(suite), "--out", str(tmp_path / "r"), "--track", "mlflow", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "MLflow: 0 run(s) exported, 1 already there" in result.stdout  # exported as each cell finished
    frame = exported(sqlite_uri(tmp_path / "mlflow.db"))  # the default store, in the working directory
    check_runs_hold_the_records_without_intervals(frame, tmp_path / "r")
    client = mlflow.tracking.MlflowClient(sqlite_uri(tmp_path / "mlflow.db"))
    for run_id in frame["run_id"]:
        assert {a.path for a in client.list_artifacts(run_id, "report")} == {"report/report.html", "report/report.md"}


def check_runs_hold_the_records_without_intervals(frame, run_dir):
    records = {r["cell_id"]: r for r in read_records(run_dir)}
    assert sorted(frame["tags.anobench.cell_id"]) == sorted(records)
    for _, run in frame.iterrows():
        record = records[run["tags.anobench.cell_id"]]
        assert run["metrics.image_auroc"] == pytest.approx(record["metrics"]["image_auroc"])
        assert run["tags.anobench.suite"] == "tracked"


MLFLOW_SERVER = shutil.which("mlflow") if importlib.util.find_spec("flask") else None


@pytest.fixture
def mlflow_server(tmp_path):
    """``mlflow server`` on 127.0.0.1 (a free port), its store and artifacts in tmp_path."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen([MLFLOW_SERVER, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                                "--backend-store-uri", sqlite_uri(tmp_path / "server.db"),
                                "--artifacts-destination", str(tmp_path / "artifacts")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path)
    uri = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=1):
                    break
            except OSError:
                if process.poll() is not None:
                    pytest.fail(f"mlflow server exited: {process.stderr.read().decode()[-2000:]}")
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not answer within 60 s")
        yield uri
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.skipif(MLFLOW_SERVER is None, reason="`mlflow server` needs the full mlflow package (pip install "
                                                   "mlflow; CI installs it), not only mlflow-skinny")
def test_export_to_an_mlflow_server_on_localhost(folders, mlflow_server):
    run_dirs = [folders["first"], folders["gpu"]]
    result = run_bench("track", *map(str, run_dirs), "--to", "mlflow", "--tracking-uri", mlflow_server)
    assert result.returncode == 0, result.stderr
    assert "3 run(s) exported, 0 already there" in result.stdout
    check_runs_hold_the_records(exported(mlflow_server), run_dirs)
    again = run_bench("track", *map(str, run_dirs), "--to", "mlflow", "--tracking-uri", mlflow_server)
    assert "0 run(s) exported, 3 already there" in again.stdout and len(exported(mlflow_server)) == 3
