"""Every dataset's suite end to end on its fake (the suite's dataset, options, protocol and setting, with a
tiny grid in place of its own and two or three of its classes, to stay quick), and image-labelled data with
and without the flag that allows it."""

import shutil

import numpy as np
import pytest
import tifffile
from PIL import Image

from anobench import artifacts, metrics
from anobench.datasets.mvtec import MVTEC_CLASSES
from anobench.datasets.synthetic import CLASSES, SynthSpec, write_dataset
from anobench.records import read_records
from anobench.reports import markdown
from anobench.reports.rows import load_run
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
    "mvtec-loco": [
        "Image AUROC logical",
        "Image AUROC structural",
        "AU-sPRO@0.05 logical",
        "AU-sPRO@0.05 structural",
        "AU-sPRO@0.05",
    ],
    "mvtec-ad2": ["Image AUROC", "Pixel AUROC", "AUPRO@0.3", "AUPRO@0.05", "SegF1"],
    "mvtec-ad2-private": ["AUPRO@0.05", "SegF1"],
    "realiad": ["Image AUROC", "Sample AUROC", "Pixel AUROC", "AUPRO@0.3"],
}


def check_loco(records, run_dir):
    """Logical and structural anomalies scored separately, each with every good image; the mean of the two."""
    for record in records:
        m = record["metrics"]
        arrays = artifacts.read(run_dir, record["artifacts"]["file"])
        types, scores, labels = arrays["defect_types"], arrays["image_scores"], arrays["labels"]
        for subset in ("logical", "structural"):
            chosen = (types == "good") | (types == f"{subset}_anomalies")
            assert m[f"image_auroc_{subset}"] == pytest.approx(
                metrics.image_auroc(labels[chosen], scores[chosen])
            )
        for limit in (0.01, 0.05, 0.1, 0.3, 1):
            assert 0 <= m[f"au_spro@{limit:g}"] <= 1
            assert m[f"au_spro@{limit:g}"] == pytest.approx(
                (m[f"au_spro_logical@{limit:g}"] + m[f"au_spro_structural@{limit:g}"]) / 2
            )
        assert "scaled" not in " ".join(record["dataset_protocol"]["notes"])  # the suite: original resolution


def check_ad2(records, run_dir):
    for record in records:
        m = record["metrics"]
        assert 0 <= m["aupro@0.05"] <= 1 and 0 <= m["seg_f1"] <= 1
        assert record["dataset_protocol"]["outputs"]["segmentation_threshold"] > 0


def check_ad2_private(records, run_dir):
    """Both private sets of every class, in one submission folder per model, in the server's layout."""
    (model,) = list((run_dir / "mvtec_ad2_submission").iterdir())
    for record in records:
        assert {k for k, v in record["metrics"].items() if v is not None} == set()
        assert record["dataset_protocol"]["outputs"]["submission"] == str(model)
        class_name = record["config"]["class"]
        for split, suffix in (("test_private", "regular"), ("test_private_mixed", "mixed")):
            names = sorted(p.name for p in (model / "anomaly_images" / class_name / split).iterdir())
            assert names == [f"{i:03d}_{suffix}.tiff" for i in range(3)]
            tiff = tifffile.imread(model / "anomaly_images" / class_name / split / f"000_{suffix}.tiff")
            assert tiff.dtype == np.float16 and tiff.shape == (
                24,
                56,
            )  # the original image's size, one channel
            png = np.asarray(
                Image.open(model / "anomaly_images_thresholded" / class_name / split / f"000_{suffix}.png")
            )
            assert png.ndim == 2 and set(np.unique(png)) <= {0, 255}


def check_realiad(records, run_dir):
    """The views of a sample grouped: the fake's test split is one OK and one NG sample of five views."""
    for record in records:
        arrays = artifacts.read(run_dir, record["artifacts"]["file"])
        scores, labels = arrays["image_scores"], arrays["labels"]
        assert labels.tolist() == [0] * 5 + [1] * 5
        assert record["metrics"]["sample_auroc"] == float(scores[5:].max() > scores[:5].max())


def check_multiclass(records, run_dir):
    """One fit on every class's training images, evaluated on each class."""
    assert len({r["multi_class"]["fitted_in"] for r in records}) == 1
    assert sum("fit_s" in r["timings"] for r in records) == 1
    assert len({r["n_images"]["train"] for r in records}) == 1 and records[0]["n_images"]["train"] > 10
    assert all(r["labels"]["setting"] == "multi-class" for r in records)


CHECKS = {
    "mvtec-loco": check_loco,
    "mvtec-ad2": check_ad2,
    "mvtec-ad2-private": check_ad2_private,
    "realiad": check_realiad,
    "visa-multiclass": check_multiclass,
}


def tiny_variant(tmp_path, suite_name):
    """The shipped suite with a small grid: PaDiM-R18 at 32 px, no crop."""
    path = tmp_path / f"{suite_name}.toml"
    path.write_text(f'extends = "{SUITES / (suite_name + ".toml")}"\nbatch_size = 8\n' + TINY_GRID)
    return load_suite(str(path))


def run_and_report(suite, data_root, run_dir, classes, **options):
    """Run in this process and render the markdown report's text (its figures are tested elsewhere)."""
    run_options = RunOptions(
        data_root=str(data_root), weights="random", allow_random=True, classes=classes, **options
    )
    summary = run_suite(suite, run_dir, run_options)
    return summary, read_records(run_dir), markdown.render(load_run(run_dir), [])


@pytest.mark.slow
@pytest.mark.parametrize("suite_name", sorted(FAKES))
def test_dataset_suite_runs_on_its_fake_and_reports_its_metrics(tmp_path, suite_name):
    write, classes = FAKES[suite_name]
    root = write(tmp_path / "data", classes)
    summary, records, report = run_and_report(
        tiny_variant(tmp_path, suite_name), root, tmp_path / "run", classes
    )
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
        assert "[multi-class]" in row[0]
    CHECKS.get(suite_name, lambda *_: None)(records, tmp_path / "run")


@pytest.mark.slow
def test_paper_table1_multiclass_on_fake_mvtec(tmp_path):
    kinds = tmp_path / "kinds"
    write_dataset(kinds, SynthSpec(size=48, train=3, test_good=2, test_per_defect=1))
    root = tmp_path / "mvtec"
    for i, name in enumerate(MVTEC_CLASSES):
        shutil.copytree(kinds / list(CLASSES)[i % len(CLASSES)], root / name)
    classes = ("bottle", "cable", "capsule", "carpet")
    summary, records, report = run_and_report(
        tiny_variant(tmp_path, "paper-table1-multiclass"), root, tmp_path / "run", classes
    )
    assert summary.failed == 0 and len(records) == 4
    check_multiclass(records, tmp_path / "run")
    assert records[0]["n_images"]["train"] == 12  # every class's 3 training images
    assert "one model trained on the training images of all 4 classes" in report


def test_image_labelled_folder_runs_with_pixel_columns_empty_and_explained(tmp_path):
    root = fake.write_image_labelled(tmp_path / "data")
    suite = tmp_path / "labels.toml"
    suite.write_text(
        'name = "labels"\nversion = 1\nweights = "random"\nbatch_size = 8\n[dataset]\nname = '
        '"folder"\n' + TINY_GRID
    )
    refused = run_bench("run", "--suite", str(suite), "--data-root", str(root), "--out", str(tmp_path / "no"))
    assert_one_sentence(refused, 2, "Defect image", "has no mask", "--image-labels-only")
    summary, (record,), report = run_and_report(
        load_suite(str(suite)), root, tmp_path / "run", None, image_labels_only=True
    )  # what --image-labels-only sets
    assert summary.failed == 0
    assert record["metrics"]["image_auroc"] is not None and record["metrics"]["pixel_auroc"] is None
    assert (
        record["metric_notes"]["aupro"]
        == "image-labelled dataset (image_labels_only): no pixel ground truth"
    )
    header, rows = md_rows(report, "Accuracy on folder (data) (mean over classes, %)")
    row = dict(zip(header, rows[0], strict=True))
    assert row["Image AUROC"] != "" and row["Pixel AUROC"] == "" and row["AUPRO@0.3"] == ""
    assert (
        "Empty Pixel AUROC, AUPRO@0.3 (widget): image-labelled dataset (image_labels_only): no pixel "
        "ground truth."
    ) in report
