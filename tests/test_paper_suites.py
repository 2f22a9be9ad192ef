"""The paper suites end to end on fake data (no real MVTec AD or STC here), resume after SIGKILL, plans."""

import json
import shutil
import sys
import time

import pytest

from anobench.datasets.mvtec import MVTEC_CLASSES
from anobench.datasets.synthetic import CLASSES, SynthSpec, write_dataset
from anobench.records import latest_by_cell, read_records
from tests.conftest import REPO, kill_when_recorded, run_bench, write_suite
from tests.fake_stc import write_fake_stc
from tests.test_reports import md_rows

SUITES = REPO / "bench" / "suites"
# Test-only overrides: the paper suites' datasets, protocols and reference numbers, with small encoders,
# tiny images and short schedules in place of their grids.
SMALL_GRID = """
[[grid]]
methods = ["cflow"]
encoders = ["resnet18"]
resolutions = [64]
class_resolutions = {{ {class_resolutions} }}
params = {{ meta_epochs = 1, sub_epochs = 1, fiber_batch = 32, rotation_degrees = 0.0, coupling_blocks = 2 }}

[[grid]]
methods = ["spade", "padim"]
encoders = ["resnet18"]
resolutions = [48]
resize = 64
params = {{}}
"""


@pytest.fixture(scope="module")
def fake_mvtec(tmp_path_factory):
    """The 15 MVTec AD class names, each a copy of one generated kind, a few 64-px images each."""
    kinds = tmp_path_factory.mktemp("kinds")
    write_dataset(kinds, SynthSpec(size=64, train=6, test_good=2, test_per_defect=1))
    root = tmp_path_factory.mktemp("mvtec")
    for i, name in enumerate(MVTEC_CLASSES):
        shutil.copytree(kinds / list(CLASSES)[i % len(CLASSES)], root / name)
    return root


def override(tmp_path, parent, class_resolutions=""):
    path = tmp_path / f"{parent}-small.toml"
    path.write_text(f'extends = "{SUITES / (parent + ".toml")}"\nname = "{parent}"\nbatch_size = 8\n'
                    + SMALL_GRID.format(class_resolutions=class_resolutions))
    return path


def test_paper_table1_end_to_end_on_fake_mvtec(tmp_path, fake_mvtec):
    suite = override(tmp_path, "paper-table1", "transistor = 48")
    refused = run_bench("run", "--suite", str(suite), "--data-root", str(fake_mvtec), "--weights", "random",
                        "--out", str(tmp_path / "refused"))
    assert refused.returncode == 2 and "--allow-random" in refused.stderr
    start = time.perf_counter()
    result = run_bench("run", "--suite", str(suite), "--data-root", str(fake_mvtec), "--weights", "random",
                       "--allow-random", "--device", "cpu", "--out", str(tmp_path / "run"))
    print(f"fake paper-table1 wall time: {time.perf_counter() - start:.1f} s")
    assert result.returncode == 0, result.stderr[-3000:]
    records = read_records(tmp_path / "run")
    assert len(records) == 15 * 3 and all(r["status"] == "ok" for r in records)
    transistor = next(r for r in records if r["config"]["class"] == "transistor" and r["config"]["method"] == "cflow")
    assert transistor["config"]["resolution"] == 48  # the per-class input size
    padim = [r for r in records if r["config"]["method"] == "padim"]
    assert all(r["feature_cache"]["fit"]["misses"] == 0 for r in padim)  # SPADE computed them
    report = (tmp_path / "run/report.md").read_text()
    assert "Accuracy on mvtec" in report and "(paper)" in report  # Table 1 layout, paper beside ours
    assert "Per class on mvtec, strict protocol, beside the paper (Table 3 layout, %)" in report
    header, rows = md_rows(report, "Per class on mvtec, strict protocol, beside the paper (Table 3 layout, %)")
    bottle = dict(zip(header, next(r for r in rows if r[0] == "bottle"), strict=True))
    assert bottle["CFLOW-AD-R18 Pixel AUROC (paper)"] == "98.64"  # the reference sits in its column
    assert bottle["CFLOW-AD-R18 Pixel AUROC"] != "" and bottle["CFLOW-AD-WR50 AUPRO@0.3"] == ""  # not run: empty
    assert "† random encoder weights" in report


def test_paper_table2_end_to_end_on_fake_stc(tmp_path):
    root = write_fake_stc(tmp_path / "stc")
    suite = override(tmp_path, "paper-table2")
    start = time.perf_counter()
    result = run_bench("run", "--suite", str(suite), "--data-root", str(root), "--classes", "01,02",
                       "--weights", "random", "--allow-random", "--device", "cpu", "--out", str(tmp_path / "run"),
                       env={"ANOBENCH_CACHE": str(tmp_path / "cache")})
    print(f"fake paper-table2 wall time: {time.perf_counter() - start:.1f} s")
    assert result.returncode == 0, result.stderr[-3000:]
    records = read_records(tmp_path / "run")
    assert len(records) == 2 * 3 and all(r["status"] == "ok" for r in records)
    assert {r["n_images"]["train"] for r in records} == {20}
    assert all(r["metrics"]["pixel_auroc"] is not None for r in records)
    report = (tmp_path / "run/report.md").read_text()
    header, rows = md_rows(report, "Accuracy on stc (stc) (mean over classes, %)")
    wr50 = dict(zip(header, next(r for r in rows if r[0] == "CFLOW-AD-WR50 (not run)"), strict=True))
    assert wr50["Pixel AUROC (paper)"] == "94.48" and wr50["Pixel AUROC"] == ""  # the paper's, never ours
    ours = dict(zip(header, next(r for r in rows if r[0].startswith("CFLOW-AD-R18")), strict=True))
    assert ours["Classes"] == "2/2" and ours["Pixel AUROC"] != ""


def test_plan_prints_memory_and_refuses_what_cannot_fit(tmp_path, fake_mvtec):
    suite = override(tmp_path, "paper-table1")
    result = run_bench("run", "--suite", str(suite), "--data-root", str(fake_mvtec), "--weights", "random",
                       "--allow-random", "--device", "cpu", "--plan", "--metrics-resolution", "original")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("45 cells on cpu; host memory available")
    assert any("cflow-resnet18@64 bottle" in line and line.rstrip().endswith("ok") for line in lines)
    assert any("padim-resnet18@48 bottle" in line and "REFUSED: metrics at the original resolution" in line
               for line in lines)
    assert not (tmp_path / "runs").exists()  # nothing ran


def test_a_run_killed_with_sigkill_resumes_without_losing_or_duplicating(tmp_path, fake_mvtec):
    suite = write_suite(tmp_path / "resume.toml", fake_mvtec, dataset="mvtec", classes=("bottle", "carpet", "grid"),
                        seeds=(0, 1, 2))
    run_dir = tmp_path / "run"
    done_before = kill_when_recorded([sys.executable, "-m", "anobench", "run", "--suite", str(suite), "--out",
                                      str(run_dir), "--no-report"], run_dir, at_least=2)
    assert 2 <= done_before < 9
    result = run_bench("run", "--out", str(run_dir), "--no-report")  # continue from the folder alone
    assert result.returncode == 0, result.stderr
    lines = (run_dir / "records.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in lines)  # none half-written
    final = read_records(run_dir)
    assert len(final) == 9 == len(latest_by_cell(final))  # none lost, none duplicated
    assert f"{done_before} of 9 cells already have records" in result.stderr
