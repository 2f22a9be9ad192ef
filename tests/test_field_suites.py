"""The field suites end to end on small generated data: Table 6 with GFLOPs, the accuracy table beside the
published numbers, and a --classes subset of another MVTec-layout folder."""

import json

import numpy as np
import pytest

from anobench import metrics
from anobench.datasets import create_dataset
from anobench.datasets.base import AnomalyDataset, Geometry
from anobench.evaluation import ImageBatches
from anobench.methods import create_method
from anobench.records import read_records
from tests.conftest import REPO, run_bench, shared_dataset
from tests.test_reports import md_rows

SUITES = REPO / "bench" / "suites"


def override(tmp_path, parent, grid, extra=""):
    """The shipped suite with a small grid (R18, tiny images, short schedules) in place of its own."""
    path = tmp_path / f"{parent}-small.toml"
    path.write_text(f'extends = "{SUITES / (parent + ".toml")}"\nname = "{parent}"\nbatch_size = 8\n{extra}\n{grid}')
    return path


SPEED_GRID = """
[dataset]
name = "synthetic"
classes = ["disc"]
options = { size = 64, train = 8, test_good = 1, test_per_defect = 1 }

[measure]
speed = true
batch_sizes = [2]
warmup = 1
iterations = 2

[[grid]]
methods = ["cflow"]
encoders = ["resnet18"]
resolutions = [64]
measure_only = true
params = { meta_epochs = 1, sub_epochs = 1, max_steps = 2, coupling_blocks = 2 }

[[grid]]
methods = ["padim", "patchcore"]
encoders = ["resnet18"]
resolutions = [64]
measure_only = true

[[grid]]
methods = ["fastflow"]
encoders = ["resnet18"]
resolutions = [64]
measure_only = true
params = { epochs = 1, max_steps = 2, flow_steps = 2 }
"""


def test_field_speed_table6_has_gflops_and_achieved_gflops(tmp_path):
    result = run_bench("run", "--suite", str(override(tmp_path, "field-speed", SPEED_GRID)), "--device", "cpu",
                       "--out", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr[-3000:]
    records = {r["config"]["method"]: r for r in read_records(tmp_path / "run")}
    patchcore = records["patchcore"]["flops"]["components"]
    assert patchcore["knn"]["counted_by"] == "formula" and patchcore["encoder"]["counted_by"].startswith("torch")
    assert records["fastflow"]["flops"]["components"]["decoders"]["counted_by"] == "torch.utils.flop_counter"
    header, rows = md_rows((tmp_path / "run/report.md").read_text(),
                           "Complexity: inference speed and model size (Table 6 layout)")
    table = {row[0].rstrip("†§¶"): dict(zip(header, row, strict=True)) for row in rows}
    for name, method in (("PatchCore-R18", "patchcore"), ("FastFlow-R18", "fastflow"), ("PaDiM-R18", "padim")):
        row = table[name]
        gflops = records[method]["flops"]["total_flops"] / 1e9
        assert float(row["GFLOPs"]) == round(gflops, 2)
        assert float(row["GFLOP/s achieved"]) == round(gflops * float(row["fps"]), 1) or abs(
            float(row["GFLOP/s achieved"]) - gflops * float(row["fps"])) < 0.2  # fps is shown rounded
    encoder_flops = records["cflow"]["flops"]["components"]["encoder"]["flops"] / 1e9
    assert float(table["R18 encoder only"]["GFLOPs"]) == round(encoder_flops, 2)


TABLE_GRID = """
[[grid]]
methods = ["patchcore", "padim"]
encoders = ["resnet18"]
resolutions = [48]
resize = 64

[[grid]]
methods = ["fastflow"]
encoders = ["resnet18"]
resolutions = [64]
params = { epochs = 2, flow_steps = 2 }
"""


def test_field_table_on_a_classes_subset_of_another_folder(tmp_path, tiny_data):
    suite = override(tmp_path, "field-table", TABLE_GRID)
    result = run_bench("run", "--suite", str(suite), "--dataset", "folder", "--data-root", str(tiny_data),
                       "--classes", "disc", "--weights", "random", "--allow-random", "--device", "cpu",
                       "--out", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr[-3000:]
    records = read_records(tmp_path / "run")
    assert {r["config"]["class"] for r in records} == {"disc"} and len(records) == 3
    header, rows = md_rows((tmp_path / "run/report.md").read_text(), "Accuracy on folder (tiny0) (mean over classes, %)")
    table = {row[0]: dict(zip(header, row, strict=True)) for row in rows}
    fastflow = table["FastFlow-R18†§"]
    assert fastflow["Pixel AUROC (paper)"] == "97.20" and fastflow["Image AUROC (paper)"] == ""
    assert table["PatchCore-WR50 (not run)"]["Image AUROC (paper)"] == "99.20"
    run = json.loads((tmp_path / "run/run.json").read_text())
    assert run["suite"]["raw"]["dataset"]["classes"] == ["disc"]
    assert run["suite"]["path"] == str(suite)  # a user's suite: the path as the command line gave it


@pytest.mark.slow
def test_patchcore_and_fastflow_on_real_ball_screw_photos():
    """PatchCore-R18 (1% coreset, 224 of 256) and FastFlow-R18 (256, 1 epoch, labelled short), random weights, on
    every 4th training image and every 3rd test image of BSData (a deterministic subset, to keep this test
    short). Floors just below what this configuration measured on the project's CPU machine (in the comments);
    the full class with the field-real suite is in docs/measurement-notes-2026-11.md."""
    source = create_dataset("folder", shared_dataset("bsdata"))
    train_refs = source.samples("ball_screw", "train")[::4]
    test_refs = source.samples("ball_screw", "test")[::3]
    found = {}
    for name, params, geometry in (("patchcore", {"coreset_fraction": 0.01}, Geometry(256, 224)),
                                   ("fastflow", {"epochs": 1}, Geometry(256, 256))):
        train, test = AnomalyDataset(train_refs, geometry), AnomalyDataset(test_refs, geometry)
        method = create_method(name, encoder="resnet18", weights="random", **params)
        method.fit(ImageBatches(train, 32, shuffle_seed=0))
        prediction = method.predict_dataset(ImageBatches(test, 32))
        masks = np.stack([test[i]["mask"].numpy() for i in range(len(test))])
        found[name] = (metrics.image_auroc(test.labels(), prediction.image_scores),
                       metrics.pixel_auroc(masks, prediction.maps))
    print(found)
    assert found["patchcore"][0] > 0.85 and found["patchcore"][1] > 0.71  # measured 0.869, 0.734
    # measured 0.070, 0.822: after 1 epoch the map's maximum sits at the image border, where the per-image layer
    # norm makes it lower in defective images (0.27 after 5 epochs, 0.90 after 20; docs/measurement-notes-2026-11.md)
    assert found["fastflow"][0] > 0.05 and found["fastflow"][1] > 0.80
