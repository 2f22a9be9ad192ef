import dataclasses
import json
import shutil

import pytest

from anobench.core import BenchError
from anobench.records import append_record, read_records
from anobench.runner import RunOptions, run_suite
from anobench.suites import load_suite
from tests.conftest import write_suite


def tiny_suite(tmp_path, tiny_data, grid_extra=""):
    return load_suite(str(write_suite(tmp_path / "tiny.toml", tiny_data, extra=grid_extra)))


def test_a_run_writes_one_record_per_cell_and_resumes_without_duplicates(tmp_path, tiny_data):
    suite = tiny_suite(tmp_path, tiny_data)
    run_dir = tmp_path / "run"
    summary = run_suite(suite, run_dir, RunOptions())
    assert (summary.ok, summary.failed) == (2, 0)
    records = read_records(run_dir)
    assert sorted(r["config"]["class"] for r in records) == ["disc", "stripes"]
    for record in records:
        assert record["status"] == "ok"
        assert record["labels"]["random_weights"] is True
        assert 0.5 < record["metrics"]["pixel_auroc"] <= 1.0
        assert record["machine_info"]["torch"] and record["commit_info"]["id"]
        assert record["weights"] == {"source": "random"} and record["config"]["seed"] == 0
        assert record["size"]["total_bytes"] == sum(record["size"]["breakdown_bytes"].values())
        assert record["memory"]["fit"]["gpu_peak_allocated_mb"] is None  # no CUDA: empty with a reason
    again = run_suite(suite, run_dir, RunOptions())
    assert (again.ok, again.skipped) == (0, 2)
    assert len(read_records(run_dir)) == 2


def test_a_failing_cell_is_recorded_and_the_others_run(tmp_path, tiny_data):
    suite = tiny_suite(tmp_path, tiny_data, '[[grid]]\nmethods = ["padim"]\nencoders = ["resnet18"]\n'
                                            'resolutions = [64]\nparams = { d_reduced = 100000 }\n')
    summary = run_suite(suite, tmp_path / "run", RunOptions())
    assert (summary.ok, summary.failed) == (2, 2)
    failed = [r for r in read_records(tmp_path / "run") if r["status"] == "failed"]
    assert len(failed) == 2 and all("d_reduced=100000" in r["error"] for r in failed)
    assert all(r["config"]["params"] == {"d_reduced": 100000} for r in failed)


def test_retry_failed_runs_only_failed_cells_again(tmp_path, tiny_data):
    suite = load_suite(str(write_suite(tmp_path / "tiny.toml", tiny_data, params="params = { d_reduced = 100000 }")))
    run_dir = tmp_path / "run"
    run_suite(suite, run_dir, RunOptions())
    again = run_suite(suite, run_dir, RunOptions(retry_failed=True))
    assert again.failed == 2 and again.skipped == 0


def test_partial_last_line_is_ignored_then_cut(tmp_path):
    path = tmp_path / "records.jsonl"
    append_record(path, {"cell_id": "a", "status": "ok"})
    with open(path, "a") as f:
        f.write('{"cell_id": "b", "sta')  # a writer killed mid-line
    assert [r["cell_id"] for r in read_records(path)] == ["a"]
    append_record(path, {"cell_id": "c", "status": "ok"})
    assert [r["cell_id"] for r in read_records(path)] == ["a", "c"]
    assert all(json.loads(line) for line in path.read_text().splitlines())


def test_nan_metrics_become_null(tmp_path):
    append_record(tmp_path / "r.jsonl", {"cell_id": "a", "metrics": {"aupro": float("nan")}})
    assert read_records(tmp_path / "r.jsonl")[0]["metrics"]["aupro"] is None


def test_random_weights_refused_where_the_suite_reproduces_papers(tmp_path, tiny_data):
    suite = tiny_suite(tmp_path, tiny_data)
    strict = dataclasses.replace(suite, allow_random_weights=False)
    with pytest.raises(BenchError, match="--allow-random"):
        run_suite(strict, tmp_path / "run", RunOptions())
    assert run_suite(strict, tmp_path / "run", RunOptions(allow_random=True)).ok == 2


def test_a_run_folder_belongs_to_one_configuration(tmp_path, tiny_data):
    other_root = tmp_path / "other"
    shutil.copytree(tiny_data, other_root)
    suite = tiny_suite(tmp_path, tiny_data)
    run_dir = tmp_path / "run"
    assert run_suite(suite, run_dir, RunOptions(classes=("disc",))).ok == 1
    with pytest.raises(BenchError, match=rf"was run with data root {tiny_data} \(now {other_root}\); "
                                         "pass --out with a new folder, or --force-mixed"):
        run_suite(suite, run_dir, RunOptions(classes=("disc",), data_root=str(other_root)))
    with pytest.raises(BenchError, match=r"classes disc \(now disc,stripes\); protocol strict \(now paper\)"):
        run_suite(suite, run_dir, RunOptions(classes=("disc", "stripes"), protocol="paper"))
    with pytest.raises(BenchError, match=r"suite version 1 \(now 2\)"):
        run_suite(dataclasses.replace(suite, version=2), run_dir, RunOptions(classes=("disc",)))
    mixed = run_suite(suite, run_dir, RunOptions(classes=("disc", "stripes"), force_mixed=True))
    assert (mixed.ok, mixed.skipped) == (1, 1)
    assert run_suite(suite, run_dir, RunOptions(classes=("disc",))).skipped == 1  # the recorded configuration
