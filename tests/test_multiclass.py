"""The multi-class setting: one model trained on every class's training images, evaluated per class (runs:
the multi-class suites' tests in test_dataset_suites)."""

import pytest

from anobench.cells import expand
from anobench.core import BenchError
from anobench.suites import parse_suite

GRID = [{"methods": ["spade", "padim"], "encoders": ["resnet18"], "resolutions": [64], "params": {}}]


def suite_of(tmp_path, setting, grid=GRID):
    return parse_suite(
        {
            "name": "mc",
            "version": 1,
            "weights": "random",
            "batch_size": 8,
            "setting": setting,
            "dataset": {"name": "folder"},
            "grid": grid,
        },
        tmp_path / "mc.toml",
    )


def test_multi_class_cells_are_new_cells_grouped_by_model(tmp_path):
    one = expand(suite_of(tmp_path, "one-class"), ["disc", "stripes"])
    multi = expand(suite_of(tmp_path, "multi-class"), ["disc", "stripes"])
    assert [(c.class_name, c.method) for c in one] == [
        ("disc", "spade"),
        ("disc", "padim"),
        ("stripes", "spade"),
        ("stripes", "padim"),
    ]
    assert [(c.class_name, c.method) for c in multi] == [
        ("disc", "spade"),
        ("stripes", "spade"),
        ("disc", "padim"),
        ("stripes", "padim"),
    ]
    assert "setting" not in one[0].config()  # one-class cell ids are what they always were
    assert multi[0].config()["setting"] == "multi-class" and multi[0].config()["train_classes"] == [
        "disc",
        "stripes",
    ]
    assert {c.cell_id for c in one}.isdisjoint(c.cell_id for c in multi)
    assert multi[0].model_key == multi[1].model_key != multi[2].model_key


def test_per_class_resolutions_are_refused_in_the_multi_class_setting(tmp_path):
    grid = [
        {
            "methods": ["padim"],
            "encoders": ["resnet18"],
            "resolutions": [64],
            "class_resolutions": {"disc": 32},
        }
    ]
    with pytest.raises(BenchError, match=r"class_resolutions cannot be used with setting = \"multi-class\""):
        expand(suite_of(tmp_path, "multi-class", grid), ["disc", "stripes"])
    with pytest.raises(BenchError, match=r"'setting' in the suite must be one of one-class, multi-class"):
        suite_of(tmp_path, "unified")
