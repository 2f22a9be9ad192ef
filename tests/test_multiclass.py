"""The multi-class setting: one model trained on every class's training images, evaluated per class."""

import pytest
from anobench.cells import expand
from anobench.core import BenchError
from anobench.records import read_records
from anobench.runner import RunOptions, run_suite
from anobench.suites import load_suite, parse_suite

from tests.conftest import write_suite

GRID = [{"methods": ["spade", "padim"], "encoders": ["resnet18"], "resolutions": [64], "params": {}}]


def suite_of(tmp_path, setting, grid=GRID):
    return parse_suite({"name": "mc", "version": 1, "weights": "random", "batch_size": 8, "setting": setting,
                        "dataset": {"name": "folder"}, "grid": grid}, tmp_path / "mc.toml")


def test_multi_class_cells_are_new_cells_grouped_by_model(tmp_path):
    one = expand(suite_of(tmp_path, "one-class"), ["disc", "stripes"])
    multi = expand(suite_of(tmp_path, "multi-class"), ["disc", "stripes"])
    assert [(c.class_name, c.method) for c in one] == [("disc", "spade"), ("disc", "padim"),
                                                       ("stripes", "spade"), ("stripes", "padim")]
    assert [(c.class_name, c.method) for c in multi] == [("disc", "spade"), ("stripes", "spade"),
                                                         ("disc", "padim"), ("stripes", "padim")]
    assert "setting" not in one[0].config()  # one-class cell ids are what they always were
    assert multi[0].config()["setting"] == "multi-class" and multi[0].config()["train_classes"] == ["disc", "stripes"]
    assert {c.cell_id for c in one}.isdisjoint(c.cell_id for c in multi)
    assert multi[0].model_key == multi[1].model_key != multi[2].model_key


def test_per_class_resolutions_are_refused_in_the_multi_class_setting(tmp_path):
    grid = [{"methods": ["padim"], "encoders": ["resnet18"], "resolutions": [64], "class_resolutions": {"disc": 32}}]
    with pytest.raises(BenchError, match=r"class_resolutions cannot be used with setting = \"multi-class\""):
        expand(suite_of(tmp_path, "multi-class", grid), ["disc", "stripes"])
    with pytest.raises(BenchError, match=r"'setting' in the suite must be one of one-class, multi-class"):
        suite_of(tmp_path, "unified")


def test_one_model_is_fitted_on_all_classes_and_evaluated_on_each(tmp_path, tiny_data):
    path = write_suite(tmp_path / "mc.toml", tiny_data)
    path.write_text('setting = "multi-class"\n' + path.read_text())  # a top-level key, before any table
    summary = run_suite(load_suite(str(path)), tmp_path / "run", RunOptions())
    assert (summary.ok, summary.failed) == (2, 0)
    first, second = read_records(tmp_path / "run")
    assert first["n_images"]["train"] == second["n_images"]["train"] == 24  # 12 + 12 training images
    assert first["multi_class"]["fitted_in"] == second["multi_class"]["fitted_in"] == first["cell_id"]
    assert "fit_s" in first["timings"] and "fit_s" not in second["timings"]  # fitted once
    assert first["labels"]["setting"] == second["labels"]["setting"] == "multi-class"
    assert {first["config"]["class"], second["config"]["class"]} == {"disc", "stripes"}
    assert first["metrics"]["image_auroc"] is not None and second["metrics"]["image_auroc"] is not None
