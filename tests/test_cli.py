"""The command line as a user meets it: exit codes, one-sentence errors, no tracebacks."""

import json
import subprocess
import sys

import pytest

from tests.conftest import run_bench, shared_dataset, write_suite


def assert_one_sentence(result, code, *fragments):
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("error: ")
    for fragment in fragments:
        assert fragment in message, message


def test_unknown_suite(tmp_path):
    result = run_bench("run", "--suite", "nope", "--out", str(tmp_path / "r"))
    assert_one_sentence(result, 2, "Unknown suite 'nope'", "Valid suites:", "smoke")


def test_missing_data_root(tmp_path):
    result = run_bench("run", "--suite", "real-smoke", "--out", str(tmp_path / "r"))
    assert_one_sentence(result, 2, "needs a data root; pass --data-root")


def test_folder_without_train_good(tmp_path):
    (tmp_path / "data/widget/test/good").mkdir(parents=True)
    (tmp_path / "data/widget/train").mkdir(parents=True)
    result = run_bench("run", "--suite", "real-smoke", "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "r"))
    assert_one_sentence(result, 2, "widget/train/good is missing or holds no images", "Expected layout")


def test_debug_shows_the_traceback(tmp_path):
    result = run_bench("--debug", "run", "--suite", "nope", "--out", str(tmp_path / "r"))
    assert result.returncode == 2 and "Traceback" in result.stderr


def test_list_and_validate():
    for kind, expected in [("suites", "smoke"), ("methods", "padim"), ("encoders", "wide_resnet50_2"),
                           ("datasets", "mvtec")]:
        result = run_bench("list", kind)
        assert result.returncode == 0 and expected in result.stdout, result.stderr
    result = run_bench("validate", "smoke")
    assert result.returncode == 0 and "ok" in result.stdout


def test_data_synth_writes_mvtec_layout(tmp_path):
    result = run_bench("data", "synth", "--out", str(tmp_path / "d"), "--size", "32", "--classes", "weave",
                       "--train", "2", "--test-good", "1", "--test-per-defect", "1")
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "d/weave/train/good").glob("*.png"))) == 2
    assert (tmp_path / "d/weave/ground_truth/scratch/000_mask.png").is_file()


def test_run_writes_records_and_a_report_whose_numbers_are_the_records(tmp_path, tiny_data):
    suite = write_suite(tmp_path / "tiny.toml", tiny_data)
    result = run_bench("run", "--suite", str(suite), "--out", str(tmp_path / "r"))
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (tmp_path / "r/records.jsonl").read_text().splitlines()]
    report = (tmp_path / "r/report.md").read_text()
    for record in records:
        row = next(line for line in report.splitlines() if line.startswith(f"| {record['config']['class']} |"))
        assert f"{100 * record['metrics']['pixel_auroc']:.2f}" in row
    assert "† random encoder weights" in report and "Command: bench run --suite" in report


@pytest.mark.slow
def test_real_smoke_on_bsdata(tmp_path):
    """PaDiM-R18, random weights, 224 of 256, on real ball-screw photos. Measured 91.58 / 92.18 / 54.33."""
    result = run_bench("run", "--suite", "real-smoke", "--data-root", str(shared_dataset("bsdata")),
                       "--device", "cpu", "--out", str(tmp_path / "r"))
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "r/records.jsonl").read_text())
    assert record["n_images"] == {"train": 274, "test": 295, "test_anomalous": 167}
    assert record["metrics"]["image_auroc"] > 0.90
    assert record["metrics"]["pixel_auroc"] > 0.91
    assert record["metrics"]["aupro"] > 0.52
    run = json.loads((tmp_path / "r/run.json").read_text())
    assert run["suite"]["path"] == "anobench:suites/real-smoke.toml"  # a built-in suite, the same on every machine


def test_plan_writes_nothing(tmp_path, tiny_data):
    suite = write_suite(tmp_path / "tiny.toml", tiny_data)
    result = subprocess.run([sys.executable, "-m", "anobench", "run", "--suite", str(suite), "--plan"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0 and "padim" in result.stdout, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.toml"]  # no runs/


@pytest.mark.parametrize("option,value,fragment", [
    ("--size", "0", "size must be an integer of at least 8"),
    ("--train", "0", "train must be an integer of at least 1 (every class needs defect-free training"),
    ("--test-per-defect", "-1", "test_per_defect must be an integer of at least 1"),
    ("--seed", "-3", "seed must be an integer of at least 0"),
    ("--classes", "weave,stripess", "Unknown synthetic class 'stripess'; did you mean 'stripes'? Valid "
                                    "synthetic classes: capsule, disc, stripes, weave."),
])
def test_data_synth_validates_its_options_before_writing_anything(tmp_path, option, value, fragment):
    result = run_bench("data", "synth", "--out", str(tmp_path / "d"), "--size", "32", option, value)
    assert_one_sentence(result, 2, fragment)
    assert not (tmp_path / "d").exists()
