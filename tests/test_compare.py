import copy
import json

import numpy as np
import pytest

from anobench.cells import Cell
from anobench.compare import BASELINES_DIR, compare, load_cells, save_baseline
from anobench.core import BenchError
from anobench.records import append_record
from tests.conftest import run_bench


def record(resolution=128, image_auroc=0.9, ratio=0.5, fps=20.0, device="CPU: a", host="a", class_name="disc"):
    cell = Cell(suite="smoke", dataset="synthetic", class_name=class_name, method="padim", encoder="resnet18",
                resolution=resolution, resize=resolution, seed=0, weights="random", protocol="strict",
                metrics_resolution="input", batch_size=16)
    return {
        "cell_id": cell.cell_id, "config": cell.config(), "status": "ok",
        "metrics": {"image_auroc": image_auroc, "pixel_auroc": 0.95, "aupro": 0.8},
        "speed": {"batches": {"8": {"end_to_end": {"fps": fps}, "encoder": {"fps": fps / ratio},
                                    "ratio_end_to_end_to_encoder": ratio}}},
        "device": {"name": device}, "machine_info": {"hostname": host, "torch": "x"},
    }


def cells(*records):
    return {r["cell_id"]: r for r in records}


def test_accuracy_drop_of_one_point_fails_and_a_fifth_of_a_point_passes():
    base = cells(record(image_auroc=0.90))
    assert [c.check for c in compare(cells(record(image_auroc=0.89)), base).regressions] == ["image_auroc"]
    assert compare(cells(record(image_auroc=0.898)), base).regressions == []
    assert compare(cells(record(image_auroc=0.95)), base).regressions == []  # an improvement
    loose = compare(cells(record(image_auroc=0.89)), base, metric_tolerances={"image_auroc": 1.5})
    assert loose.regressions == []


def test_speed_ratio_drop_of_thirty_percent_fails_and_five_percent_passes():
    base = cells(record(ratio=0.5))
    slow = compare(cells(record(ratio=0.35)), base)
    assert [c.check for c in slow.regressions] == ["fps_ratio@8"]
    assert compare(cells(record(ratio=0.475)), base).regressions == []


def test_absolute_fps_only_compared_on_the_same_device():
    base = cells(record(fps=20.0, device="GPU: H200"))
    other_machine = compare(cells(record(fps=5.0, device="CPU: laptop")), base)
    assert other_machine.regressions == [] and "different devices" in other_machine.notes[0]
    assert not any(c.check.startswith("fps@") for c in other_machine.checks)
    same_machine = compare(cells(record(fps=5.0, device="GPU: H200")), base)
    assert [c.check for c in same_machine.regressions] == ["fps@8"]
    assert compare(cells(record(fps=5.0, device="GPU: H200")), base, absolute_speed=False).regressions == []


def test_matching_ignores_environment_but_not_configuration():
    base = cells(record(host="a"))
    assert len(compare(cells(record(host="b", device="CPU: b")), base).checks) > 0  # same cell on another host
    changed = cells(record(resolution=256), record(class_name="other"))
    with pytest.raises(BenchError, match="no cell in common"):
        compare(changed, base)
    partial = compare(cells(record(), record(resolution=256)), base)
    assert len(partial.only_new) == 1 and partial.only_baseline == []


def write_run(path, *records):
    path.mkdir(parents=True)
    for r in records:
        append_record(path, r)
    return path


def test_cli_exit_codes(tmp_path):
    base = write_run(tmp_path / "base", record())
    same = write_run(tmp_path / "same", copy.deepcopy(record()))
    worse = write_run(tmp_path / "worse", record(image_auroc=0.85))
    unrelated = write_run(tmp_path / "unrelated", record(resolution=64))
    (tmp_path / "garbage.jsonl").write_text("not json\n")

    assert run_bench("compare", str(same), str(base)).returncode == 0
    result = run_bench("compare", str(worse), str(base), "--format", "md")
    assert result.returncode == 1 and "REGRESSION" in result.stdout and "regression(s)" in result.stdout
    result = run_bench("compare", str(unrelated), str(base))
    assert result.returncode == 2 and "no cell in common" in result.stderr and "Traceback" not in result.stderr
    result = run_bench("compare", str(tmp_path / "garbage.jsonl"), str(base))
    assert result.returncode == 2 and "holds no records" in result.stderr
    result = run_bench("compare", str(same), str(base), "--format", "json")
    assert json.loads(result.stdout)["regressions"] == 0
    partial = write_run(tmp_path / "partial", record(), record(resolution=64))
    assert run_bench("compare", str(partial), str(base)).returncode == 0
    assert run_bench("compare", str(partial), str(base), "--strict").returncode == 1


def test_saved_baseline_is_compact_and_comparable(tmp_path):
    full = record()
    full.update(artifacts={"file": "artifacts/x.npz"}, traceback="", memory={"fit": {}})
    run = write_run(tmp_path / "run", full)
    path = save_baseline(run, "mine", tmp_path / "baselines")
    stored = json.loads(path.read_text())
    assert "artifacts" not in stored and "memory" not in stored and stored["metrics"] == full["metrics"]
    assert compare(load_cells(run), load_cells(path)).regressions == []


def test_baseline_save_writes_to_the_working_directory_and_compare_finds_it_by_name(tmp_path):
    run = write_run(tmp_path / "run", record())
    work = tmp_path / "work"
    work.mkdir()
    saved = run_bench("baseline", "save", str(run), "mine", cwd=work)
    assert saved.returncode == 0 and (work / "mine.jsonl").is_file(), saved.stderr
    assert not (BASELINES_DIR / "mine.jsonl").exists()  # never into the installed package
    assert run_bench("compare", str(run), "mine", cwd=work).returncode == 0
    shipped = run_bench("compare", str(run), "smoke-cpu", cwd=work)  # a baseline that ships still resolves
    assert "no cell in common" in shipped.stderr and "neither" not in shipped.stderr


def test_the_committed_smoke_baseline_loads():
    baseline = load_cells("smoke-cpu")
    assert baseline and all(r["config"]["dataset"] == "synthetic" for r in baseline.values())


def with_interval(rec, lo, hi, metric="image_auroc"):
    rec["intervals"] = {metric: [lo, hi]}
    rec["bootstrap"] = {"resamples": 1000, "seed": 0, "confidence": 0.95}
    return rec


def test_accuracy_drop_inside_the_baselines_interval_is_noise_and_beyond_it_a_regression():
    base = cells(with_interval(record(image_auroc=0.90), 0.86, 0.94))
    inside = compare(cells(record(image_auroc=0.88)), base)  # 2 pp drop, new value inside [86, 94]
    assert inside.regressions == [] and inside.checks[0].rule == "interval"
    assert "inside" in inside.checks[0].detail and "[86.00, 94.00]" in inside.checks[0].detail
    beyond = compare(cells(record(image_auroc=0.84)), base)
    assert [(c.check, c.rule) for c in beyond.regressions] == [("image_auroc", "interval")]
    fixed = compare(cells(record(image_auroc=0.88)), base, tolerance_only=True)
    assert [(c.check, c.rule) for c in fixed.regressions] == [("image_auroc", "tolerance")]
    # a narrow interval does not excuse a drop within the tolerance
    assert compare(cells(record(image_auroc=0.898)), cells(with_interval(record(), 0.899, 0.901))).regressions == []


def test_a_baseline_without_intervals_falls_back_to_the_tolerance_with_a_note():
    result = compare(cells(record(image_auroc=0.88)), cells(record(image_auroc=0.90)))
    check = next(c for c in result.checks if c.check == "image_auroc")
    assert check.regression and check.rule == "tolerance" and "no interval" in check.detail
    assert any("fixed tolerance alone" in note for note in result.notes)


def seeded(seed, image_auroc):
    rec = record(image_auroc=image_auroc)
    rec["config"]["seed"] = seed
    rec["cell_id"] = rec["cell_id"].replace("/s0-", f"/s{seed}-")
    return rec


def test_with_several_seeds_a_drop_must_exceed_their_spread():
    base = cells(seeded(0, 0.90), seeded(1, 0.86), seeded(2, 0.94))
    within_spread = compare(cells(seeded(0, 0.89), seeded(1, 0.84), seeded(2, 0.92)), base)
    check = next(c for c in within_spread.checks if c.check == "image_auroc")
    assert check.rule == "seeds" and not check.regression and "3 seeds" in check.detail and "/s0,1,2-" in check.cell_id
    consistent = compare(cells(seeded(0, 0.80), seeded(1, 0.79), seeded(2, 0.81)), base)
    assert [(c.check, c.rule) for c in consistent.regressions] == [("image_auroc", "seeds")]


def timed(ratio_times, e2e_times):
    """A record whose speed block holds per-iteration times (encoder times = ratio × end-to-end times)."""
    rec = record()
    batch = rec["speed"]["batches"]["8"]
    e2e = np.asarray(e2e_times)
    encoder = np.asarray(ratio_times) * e2e
    batch["end_to_end"].update(times_s=e2e.tolist(), fps_best=8 / e2e.min())
    batch["encoder"]["times_s"] = encoder.tolist()
    batch["ratio_end_to_end_to_encoder"] = float(np.median(encoder / e2e))
    return rec


def test_a_slower_build_is_flagged_on_its_iteration_times_and_a_noisy_one_is_not():
    rng = np.random.default_rng(0)
    base_times = 0.1 * (1 + 0.03 * rng.random(10))
    base = cells(timed(0.5 + 0.01 * rng.random(10), base_times))
    slower = compare(cells(timed(0.35 + 0.01 * rng.random(10), 1.4 * base_times)), base)
    assert {c.check for c in slower.regressions} == {"fps_ratio@8", "fps@8"}
    assert all(c.rule == "mann-whitney" and "p = " in c.detail for c in slower.regressions)
    # on a machine this noisy (iteration ratios spread over ±40%) a 16% lower median is within the noise
    spread = np.linspace(0.3, 0.7, 10)
    noisy_base = cells(timed(spread, base_times))
    noisy_new = cells(timed(0.84 * spread, base_times))
    ratio = next(c for c in compare(noisy_new, noisy_base).checks if c.check == "fps_ratio@8")
    assert ratio.delta < -15 and not ratio.regression and ratio.rule == "mann-whitney"
    assert [c.check for c in compare(noisy_new, noisy_base, tolerance_only=True).regressions] == ["fps_ratio@8"]


def test_cli_says_which_rule_fired(tmp_path):
    base = write_run(tmp_path / "base", with_interval(record(image_auroc=0.90), 0.86, 0.94))
    worse = write_run(tmp_path / "worse", record(image_auroc=0.80))
    result = run_bench("compare", str(worse), str(base))
    assert result.returncode == 1 and "REGRESSION" in result.stdout and "interval" in result.stdout
    noise = write_run(tmp_path / "noise", record(image_auroc=0.88))
    assert run_bench("compare", str(noise), str(base)).returncode == 0
    assert run_bench("compare", str(noise), str(base), "--tolerance-only").returncode == 1


def test_records_without_intervals_or_iteration_times_compare_with_the_fixed_tolerance_and_say_so():
    baseline = load_cells("smoke-cpu")
    old = copy.deepcopy(baseline)  # as records written before intervals and iteration times existed
    for rec in old.values():
        rec.pop("intervals", None)
        for timings in rec.get("speed", {}).get("batches", {}).values():
            for region in ("encoder", "end_to_end", "network"):
                timings.get(region, {}).pop("times_s", None)
    result = compare(copy.deepcopy(baseline), old)
    assert result.regressions == [] and {c.rule for c in result.checks} == {"tolerance"}
    assert any("fixed tolerance alone" in note for note in result.notes)
def failed(rec, error="RuntimeError: boom"):
    return {**rec, "status": "failed", "error": error, "metrics": {}}


def test_a_cell_that_failed_or_is_missing_in_the_new_run_is_a_regression(tmp_path):
    base = write_run(tmp_path / "base", record(class_name="disc"), record(class_name="stripes"))
    crashed = write_run(tmp_path / "crashed", record(class_name="disc"), failed(record(class_name="stripes")))
    result = run_bench("compare", str(crashed), str(base))
    assert result.returncode == 1
    assert "REGRESSION: cell failed in the new run: synthetic/stripes/" in result.stdout
    assert "boom" in result.stdout and "Only in the baseline" not in result.stdout
    all_crashed = write_run(tmp_path / "all", failed(record(class_name="disc")),
                            failed(record(class_name="stripes")))
    summary = json.loads(run_bench("compare", str(all_crashed), str(base), "--format", "json").stdout)
    assert summary["regressions"] == 2 and len(summary["failed"]) == 2

    smaller = write_run(tmp_path / "smaller", record(class_name="disc"))
    result = run_bench("compare", str(smaller), str(base), "--format", "md")
    assert result.returncode == 1 and "**1 regression(s)**" in result.stdout
    assert "REGRESSION: missing from the new run, ok in the baseline (1): synthetic/stripes/" in result.stdout
    relaxed = run_bench("compare", str(smaller), str(base), "--allow-missing")
    assert relaxed.returncode == 0 and "allowed (--allow-missing): missing from the new run" in relaxed.stdout
    # --allow-missing relaxes missing cells only: a crash still fails
    assert run_bench("compare", str(crashed), str(base), "--allow-missing").returncode == 1


def test_baseline_names_cannot_leave_the_baselines_folder(tmp_path):
    run = write_run(tmp_path / "run", record())
    for name in ("../x", "a/b", "..", "/abs/x", ""):
        with pytest.raises(BenchError, match="must be a plain name"):
            save_baseline(run, name, tmp_path / "baselines")
    result = run_bench("baseline", "save", str(run), "../escaped", "--dir", str(tmp_path / "baselines"))
    assert result.returncode == 2 and "must be a plain name" in result.stderr
    assert not (tmp_path / "escaped.jsonl").exists() and not (tmp_path / "baselines").exists()


def test_a_baseline_saved_with_kernel_variants_allows_the_drop_they_measured(tmp_path):
    base = write_run(tmp_path / "base", record(image_auroc=0.90))
    variants = [write_run(tmp_path / f"v{i}", record(image_auroc=v)) for i, v in enumerate((0.88, 0.91, 0.89))]
    for run, setting in zip(variants, ({"MKL_CBWR": "COMPATIBLE"}, {}, {}), strict=True):
        lines = [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines()]
        lines[0]["machine_info"].update(cpu="AMD EPYC", cpu_capability="AVX512", kernel_env=setting)
        (run / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    path = save_baseline(base, "varied", tmp_path / "baselines", variants=variants)
    stored = json.loads(path.read_text())["variation"]
    assert stored["metrics"]["image_auroc"] == [0.90, 0.88, 0.91, 0.89]
    assert stored["runs"][1] == "AMD EPYC (AVX512; MKL_CBWR=COMPATIBLE)"
    # mean 89.5, s 1.291 pp; 99% prediction bound 89.5 - t(0.99, 3) 4.541 x 1.291 x sqrt(1.25) = 82.95
    within = compare(cells(record(image_auroc=0.8300)), load_cells(path))
    assert within.regressions == [] and "widened" in within.notes[0]
    (check,) = [c for c in within.checks if c.check == "image_auroc"]
    assert check.limit == pytest.approx(7.05, abs=0.01)
    beyond = compare(cells(record(image_auroc=0.8290)), load_cells(path))
    assert [c.check for c in beyond.regressions] == ["image_auroc"]
    # metrics the variants left unmoved keep the plain tolerance
    assert {c.check: c.limit for c in within.checks if c.unit == "pp"}["pixel_auroc"] == 0.5


def test_speed_timed_on_another_thread_count_is_not_compared():
    def timed(threads, ratio):
        rec = record(ratio=ratio)
        rec["device"]["requested"], rec["speed"]["torch_threads"] = "cpu", threads
        return rec

    result = compare(cells(timed(2, 0.3)), cells(timed(1, 0.5)))
    assert result.regressions == [] and not any(c.check.startswith("fps") for c in result.checks)
    assert any("another number of CPU threads" in note for note in result.notes)
    assert [c.check for c in compare(cells(timed(1, 0.3)), cells(timed(1, 0.5))).regressions] == ["fps_ratio@8"]
