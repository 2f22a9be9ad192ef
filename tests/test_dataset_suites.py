"""Every dataset's suite end to end on its fake (the suite's dataset, options, protocol and setting, with a
tiny grid in place of its own and two or three of its classes, to stay quick), and image-labelled data with
and without the flag that allows it."""

import shutil

import pytest
from anobench.datasets.mvtec import MVTEC_CLASSES
from anobench.datasets.synthetic import CLASSES, SynthSpec, write_dataset
from anobench.records import read_records
from anobench.reports import markdown
from anobench.reports.tables import load_run
from anobench.runner import RunOptions, run_suite
from anobench.suites import load_suite

from tests import fake_datasets as fake
from tests.conftest import REPO, run_bench
from tests.test_cli import assert_one_sentence
from tests.test_reports import md_rows

SUITES = REPO / "bench" / "suites"
TINY_GRID = '\n[[grid]]\nmethods = ["padim"]\nencoders = ["resnet18"]\nresolutions = [32]\n'

# suite: (fake writer, the classes run)
FAKES = {
    "visa": (fake.write_fake_visa, ("candle", "pcb1")),
    "visa-multiclass": (fake.write_fake_visa, ("candle", "pcb1", "cashew")),
    "mpdd": (fake.write_fake_mpdd, ("connector", "tubes")),
    "btad": (fake.write_fake_btad, ("01", "03")),
    "ksdd2": (lambda root, classes: fake.write_fake_ksdd2(root), ("ksdd2",)),
    "mvtec-loco": (fake.write_fake_loco, ("juice_bottle", "pushpins")),
    "mvtec-ad2": (fake.write_fake_ad2, ("can", "vial")),
    "mvtec-ad2-private": (fake.write_fake_ad2, ("can", "vial")),
    "realiad": (fake.write_fake_realiad, ("audiojack", "toy")),
}
# the columns each dataset's report must show (its protocol's own metrics)
COLUMNS = {
    "mvtec-loco": ["Image AUROC logical", "Image AUROC structural", "AU-sPRO@0.05 logical",
                   "AU-sPRO@0.05 structural", "AU-sPRO@0.05"],
    "mvtec-ad2": ["Image AUROC", "Pixel AUROC", "AUPRO@0.3", "AU-PRO@0.05", "SegF1"],
    "mvtec-ad2-private": ["AU-PRO@0.05", "SegF1"],
    "realiad": ["Image AUROC", "Sample AUROC", "Pixel AUROC", "AUPRO@0.3"],
}


def tiny_variant(tmp_path, suite_name):
    """The shipped suite with a small grid: PaDiM-R18 at 32 px, no crop."""
    path = tmp_path / f"{suite_name}.toml"
    path.write_text(f'extends = "{SUITES / (suite_name + ".toml")}"\nbatch_size = 8\n' + TINY_GRID)
    return load_suite(str(path))


def run_and_report(suite, data_root, run_dir, classes, **options):
    """Run in this process and render the markdown report's text (its figures are tested elsewhere)."""
    run_options = RunOptions(data_root=str(data_root), weights="random", allow_random=True, classes=classes, **options)
    summary = run_suite(suite, run_dir, run_options)
    return summary, read_records(run_dir), markdown.render(load_run(run_dir), [])


@pytest.mark.slow
@pytest.mark.parametrize("suite_name", sorted(FAKES))
def test_dataset_suite_runs_on_its_fake_and_reports_its_metrics(tmp_path, suite_name):
    write, classes = FAKES[suite_name]
    root = write(tmp_path / "data", classes)
    summary, records, report = run_and_report(tiny_variant(tmp_path, suite_name), root, tmp_path / "run", classes)
    assert summary.failed == 0 and summary.ok == len(records) > 0
    n_classes = len({r["config"]["class"] for r in records})
    title = next(line for line in report.splitlines() if line.startswith("### Accuracy on"))
    header, rows = md_rows(report, title.removeprefix("### "))
    for column in COLUMNS.get(suite_name, ["Image AUROC", "Pixel AUROC", "AUPRO@0.3"]):
        assert column in header, (column, header)
    (row,) = rows
    assert row[header.index("Classes")] == f"{n_classes}/{n_classes}" and row[0].endswith("†")
    if suite_name == "mvtec-ad2-private":
        assert all(row[header.index(c)] == "" for c in COLUMNS[suite_name])
        assert "no public ground truth; the anomaly maps are written for MVTec's evaluation server" in report
        assert len(list((tmp_path / "run" / "mvtec_ad2_submission").rglob("*.tiff"))) == 2 * 6
    else:
        assert all(row[header.index(c)] != "" for c in COLUMNS.get(suite_name, ["Image AUROC"]))
    if suite_name.endswith("multiclass"):
        assert "[multi-class]" in row[0] and len({r["multi_class"]["fitted_in"] for r in records}) == 1


@pytest.mark.slow
def test_paper_table1_multiclass_on_fake_mvtec(tmp_path):
    kinds = tmp_path / "kinds"
    write_dataset(kinds, SynthSpec(size=48, train=3, test_good=2, test_per_defect=1))
    root = tmp_path / "mvtec"
    for i, name in enumerate(MVTEC_CLASSES):
        shutil.copytree(kinds / list(CLASSES)[i % len(CLASSES)], root / name)
    classes = ("bottle", "cable", "capsule", "carpet")
    summary, records, report = run_and_report(tiny_variant(tmp_path, "paper-table1-multiclass"), root,
                                              tmp_path / "run", classes)
    assert summary.failed == 0 and len(records) == 4
    assert {r["n_images"]["train"] for r in records} == {12}  # every class's 3 training images
    assert sum("fit_s" in r["timings"] for r in records) == 1  # fitted once
    assert all(r["labels"]["setting"] == "multi-class" for r in records)
    assert "one model trained on the training images of all 4 classes" in report


def test_image_labelled_folder_runs_with_pixel_columns_empty_and_explained(tmp_path):
    root = fake.write_image_labelled(tmp_path / "data")
    suite = tmp_path / "labels.toml"
    suite.write_text('name = "labels"\nversion = 1\nweights = "random"\nbatch_size = 8\n[dataset]\nname = "folder"\n'
                     + TINY_GRID)
    refused = run_bench("run", "--suite", str(suite), "--data-root", str(root), "--out", str(tmp_path / "no"))
    assert_one_sentence(refused, 2, "Defect image", "has no mask", "--image-labels-only")
    summary, (record,), report = run_and_report(load_suite(str(suite)), root, tmp_path / "run", None,
                                                image_labels_only=True)  # what --image-labels-only sets
    assert summary.failed == 0
    assert record["metrics"]["image_auroc"] is not None and record["metrics"]["pixel_auroc"] is None
    assert record["metrics_unavailable"]["aupro"] == "image-labelled dataset (image_labels_only): no pixel ground truth"
    header, rows = md_rows(report, "Accuracy on folder (data) (mean over classes, %)")
    row = dict(zip(header, rows[0], strict=True))
    assert row["Image AUROC"] != "" and row["Pixel AUROC"] == "" and row["AUPRO@0.3"] == ""
    assert ("Empty Pixel AUROC, AUPRO@0.3 (widget): image-labelled dataset (image_labels_only): no pixel ground "
            "truth.") in report
