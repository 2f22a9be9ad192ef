"""Reports render only what the records hold: numbers parse back equal, missing metrics stay empty."""

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from anobench import artifacts
from anobench.methods.marks import Mark
from anobench.methods.padim import PaDiM
from anobench.records import append_record
from anobench.reports import write_reports
from anobench.reports.complexity import model_rows
from anobench.reports.rows import footnotes_for, method_display, row_marks

REFERENCE_SUITE = {
    "name": "fixed", "version": 1, "description": "fixed records", "weights": "random",
    "dataset": {"name": "synthetic"},
    "grid": [{"methods": ["padim", "cflow"], "encoders": ["resnet18"], "resolutions": [64]}],
    "reference": [{"method": "padim", "encoder": "resnet18", "metric": "pixel_auroc", "value": 96.7,
                   "source": "PaDiM paper"}],
}
METRICS = {
    ("padim", "a"): {"image_auroc": 0.91234, "pixel_auroc": 0.95, "aupro": 0.8},
    ("padim", "b"): {"image_auroc": 0.7, "pixel_auroc": 0.85, "aupro": 0.6},
    ("cflow", "a"): {"image_auroc": 0.6, "pixel_auroc": 0.75},  # no AUPRO: its cell must stay empty
    ("cflow", "b"): {"image_auroc": 0.8, "pixel_auroc": 0.65},
}


def fake_record(method, class_name, metrics, artifact=None):
    return {
        "cell_id": f"synthetic/{class_name}/{method}", "status": "ok", "metrics": metrics,
        "config": {"dataset": "synthetic", "class": class_name, "method": method, "encoder": "resnet18",
                   "resolution": 64, "resize": 64, "seed": 0, "weights": "random", "protocol": "strict",
                   "params": {}, "measure_only": False},
        "labels": {"random_weights": True, "protocol": "strict", "test_set_dependent": False,
                   "schedule": "short" if method == "cflow" else None},
        "size": {"total_bytes": 50_000_000 if method == "padim" else 90_000_000, "breakdown_bytes": {"encoder": 1}},
        "timings": {"predict_wall_images_per_s": 10.0 if method == "padim" else 4.0},
        "device": {"name": "CPU: test", "requested": "cpu", "torch_threads": 2},
        "machine_info": {"torch": "2.x", "gpu": {"nvml": False, "reason": "none"}},
        "commit_info": {"id": "abc", "short": "abc"},
        **({"artifacts": {"file": artifact}} if artifact else {}),
    }


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"suite": {"name": "fixed", "version": 1, "path": "fixed.toml",
                                                        "raw": REFERENCE_SUITE},
                                              "command": "bench run --suite fixed", "options": {}}))
    rng = np.random.default_rng(0)
    for (method, class_name), metrics in METRICS.items():
        labels = np.array([0, 0, 1, 1, 1])
        masks = [np.zeros((16, 16), bool) for _ in labels]
        for m in masks[2:]:
            m[4:8, 4:8] = True
        maps = [(rng.random((16, 16)) + 0.5 * m).astype(np.float32) for m in masks]
        images = [rng.integers(0, 255, (16, 16, 3), dtype=np.uint8) for _ in artifacts.qualitative_indices(labels)]
        arrays, _ = figure_arrays(images, labels, ["good", "good", "x", "x", "x"], masks, maps,
                                  np.array([0.1, 0.2, 0.5, 0.6, 0.7]))
        path = artifacts.write(run, f"synthetic/{class_name}/{method}", arrays)
        append_record(run, fake_record(method, class_name, metrics, path))
    return run


def figure_arrays(images, labels, defect_types, masks, maps, scores):
    """The arrays a cell keeps for its figures, and its pixel metrics, through the evaluation's own code."""
    from anobench import evaluation

    groups, subsets = evaluation.image_groups(labels, defect_types)
    with evaluation.pixel_stream(zip(masks, maps, strict=True), groups) as stream:
        pixels = evaluation.evaluate_pixels(stream, subsets, evaluation.STANDARD_METRICS, bootstrap=True)
    chosen = [(masks[i], maps[i]) for i in artifacts.qualitative_indices(labels)]
    return artifacts.collect(images, labels, defect_types, chosen, scores, pixels.curves, pixels.threshold), pixels


def md_rows(text, title):
    block = text.split(f"### {title}")[1].split("\n### ")[0]
    lines = [line for line in block.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return header, [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]


class TableParser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tables, self._cell, self.images = {}, None, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._current = self.tables.setdefault(attrs["data-table"], [])
        elif tag == "tr":
            self._current.append([])
        elif tag in ("td", "th"):
            self._cell = ""
        elif tag == "img":
            self.images.append(attrs["src"])

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._current[-1].append(self._cell.strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def latex_rows(text):
    body = text.split("\\midrule")[1].split("\\bottomrule")[0]
    header = text.split("\\toprule")[1].split("\\midrule")[0]
    split = [[c.strip() for c in line.rstrip("\\ ").split("&")] for line in body.strip().splitlines()]
    return [c.strip() for c in header.strip().rstrip("\\ ").split("&")], split


def expected_cells():
    """(class, model prefix) → {column: text} from the records, two decimals, % scale."""
    names = {"padim": "PaDiM-R18", "cflow": "CFLOW-AD-R18"}
    columns = {"image_auroc": "Image AUROC", "pixel_auroc": "Pixel AUROC", "aupro": "AUPRO@0.3"}
    out = {}
    for (method, class_name), metrics in METRICS.items():
        out[(class_name, names[method])] = {col: f"{100 * metrics[m]:.2f}" if m in metrics else ""
                                            for m, col in columns.items()}
    return out


def check_per_class(header, rows):
    found = 0
    for row in rows:
        cells = dict(zip(header, row, strict=True))
        for (class_name, model), expected in expected_cells().items():
            if cells["Class"] == class_name and cells["Model"].startswith(model):
                for column, text in expected.items():
                    assert cells[column] == text, (class_name, model, column)
                found += 1
    assert found == len(METRICS)


def test_every_format_shows_the_records_numbers_and_leaves_missing_ones_empty(run_dir):
    write_reports(run_dir, ["md", "html", "latex"])
    header, rows = md_rows((run_dir / "report.md").read_text(), "Per class on synthetic (%)")
    check_per_class(header, rows)

    parser = TableParser()
    parser.feed((run_dir / "report.html").read_text())
    table = parser.tables["per-class-synthetic"]
    check_per_class(table[0], table[1:])

    header, rows = latex_rows((run_dir / "latex/per-class-synthetic.tex").read_text())
    check_per_class(header, [[re.sub(r"\\text(dagger|daggerdbl)\{\}|\\S\{\}", "", c) for c in r] for r in rows])


def test_mean_row_sits_beside_the_paper_number_with_its_difference(run_dir):
    write_reports(run_dir, ["md"])
    header, rows = md_rows((run_dir / "report.md").read_text(), "Accuracy on synthetic (mean over classes, %)")
    padim = dict(zip(header, next(r for r in rows if r[0].startswith("PaDiM")), strict=True))
    assert padim["Pixel AUROC"] == "90.00" and padim["Pixel AUROC (paper)"] == "96.70" and padim["Δ"] == "-6.70"
    cflow = dict(zip(header, next(r for r in rows if r[0].startswith("CFLOW")), strict=True))
    assert cflow["AUPRO@0.3"] == "" and cflow["Pixel AUROC (paper)"] == ""
    text = (run_dir / "report.md").read_text()
    assert "† random encoder weights" in text and "§ short training schedule" in text
    assert "Paper numbers as published (PaDiM paper)" in text


def test_html_is_self_contained(run_dir):
    write_reports(run_dir, ["html"])
    text = (run_dir / "report.html").read_text()
    assert not re.search(r"""(src|href)=["'](https?:)?//""", text)  # nothing fetched from the network
    assert "<nav>" in text and 'href="#environment"' in text
    parser = TableParser()
    parser.feed(text)
    assert parser.images and all(src.startswith("data:image/png;base64,") for src in parser.images)


def test_latex_is_balanced_and_escaped(run_dir):
    write_reports(run_dir, ["latex"])
    for path in (run_dir / "latex").glob("*.tex"):
        text = path.read_text()
        body = re.sub(r"\\[{}%$#_&]", "", text)
        assert body.count("{") == body.count("}"), path.name
        assert text.count("\\begin{") == text.count("\\end{")
        for line in (line for line in text.splitlines() if not line.startswith("%")):
            plain = re.sub(r"\$\\[A-Za-z]+\$", "", re.sub(r"\\[%&_#$]", "", line)).replace(" & ", " ")
            assert not re.search(r"[%&_#$]", plain), line
        assert all(ord(ch) < 128 for ch in text), path.name


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="no TeX engine (pdflatex) on this machine")
def test_latex_compiles(run_dir, tmp_path):
    write_reports(run_dir, ["latex"])
    inputs = "\n".join(f"\\input{{{p}}}" for p in sorted((run_dir / "latex").glob("*.tex")))
    doc = tmp_path / "doc.tex"
    doc.write_text(f"\\documentclass{{article}}\\usepackage{{booktabs}}\\begin{{document}}{inputs}\\end{{document}}")
    result = subprocess.run(["pdflatex", "-interaction=nonstopmode", doc.name], cwd=tmp_path, capture_output=True)
    assert result.returncode == 0, result.stdout[-2000:]


def test_report_without_artifacts_still_renders(run_dir):
    shutil.rmtree(run_dir / "artifacts")
    paths = write_reports(run_dir, ["md", "html"])
    assert all(Path(p).is_file() for p in paths)


# ----------------------------------------------------------------------------------------------------------
# seeds, intervals, per-defect rows and paired differences


SEEDS_SUITE = {
    "name": "seeds", "version": 1, "description": "two seeds", "weights": "random",
    "dataset": {"name": "synthetic"}, "seeds": [0, 1],
    "metrics": ["image_auroc", "pixel_auroc", "aupro", "pixel_ap"],
    "compare_to": {"method": "padim", "encoder": "resnet18"},
    "grid": [{"methods": ["padim", "spade"], "encoders": ["resnet18"], "resolutions": [48]}],
    "bootstrap": {"resamples": 200},
}
SEPARATION = {"padim": 3.0, "spade": 0.8}  # SPADE's maps are clearly worse here


def seeded_record(run, method, class_name, seed, test_seed):
    """A record and its artifacts from generated maps, through the evaluation's own metric and bootstrap code."""
    from anobench import evaluation
    from anobench.cells import Cell
    from anobench.suites import BootstrapSpec
    from tests.test_statistics import generated_test_set

    labels, scores, masks, maps = generated_test_set(test_seed, n_good=8, n_defective=8, size=48,
                                                     separation=SEPARATION[method], noise_seed=seed)
    defect_types = ["good"] * 8 + ["scratch"] * 4 + ["stain"] * 4
    cell = Cell(suite="seeds", dataset="synthetic", class_name=class_name, method=method, encoder="resnet18",
                resolution=48, resize=48, seed=seed, weights="random", protocol="strict", metrics_resolution="input",
                batch_size=8, bootstrap=BootstrapSpec(resamples=200))
    record = fake_record(method, class_name, {})
    record.update(cell_id=cell.cell_id, config=cell.config(), test_set={"fingerprint": f"{test_seed:016x}"})
    record["metrics"], _, _ = evaluation.compute_metrics(labels, masks, scores, maps)
    arrays, pixels = figure_arrays([np.zeros((48, 48, 3), np.uint8)] * 4, labels, defect_types, masks, maps, scores)
    record["per_defect"] = evaluation.per_defect_metrics(labels, defect_types, scores, pixels)
    arrays.update(evaluation.bootstrap_intervals(cell, record["test_set"]["fingerprint"], labels, defect_types,
                                                 scores, pixels.counts, record))
    record["artifacts"] = {"file": artifacts.write(run, cell.cell_id, arrays)}
    return record


@pytest.fixture(scope="module")
def seeds_run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("seeds") / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"suite": {"name": "seeds", "version": 1, "path": "seeds.toml",
                                                        "raw": SEEDS_SUITE},
                                              "command": "bench run --suite seeds", "options": {}}))
    for class_name, test_seed in (("a", 11), ("b", 12)):
        for method in ("padim", "spade"):
            for seed in (0, 1):
                append_record(run, seeded_record(run, method, class_name, seed, test_seed))
    write_reports(run, ["md", "html", "latex"])  # once: the figures of 16 cells take a while
    return run


def numbers(text):
    return [float(x) for x in re.findall(r"-?\d+\.\d+", text)]


def test_tables_show_mean_std_over_seeds_with_n_and_intervals(seeds_run_dir):
    from anobench.records import read_records

    text = (seeds_run_dir / "report.md").read_text()
    header, rows = md_rows(text, "Per class on synthetic (%)")
    assert header[:4] == ["Class", "Model", "Input", "n"] and "Pixel AP" in header
    records = read_records(seeds_run_dir)
    for row in rows:
        cells_ = dict(zip(header, row, strict=True))
        members = [r for r in records if r["config"]["class"] == cells_["Class"]
                   and cells_["Model"].startswith({"padim": "PaDiM", "spade": "SPADE"}[r["config"]["method"]])]
        values = [100 * r["metrics"]["pixel_auroc"] for r in members]
        mean, std, lo, hi = numbers(cells_["Pixel AUROC"])
        assert cells_["n"] == "2" and mean == pytest.approx(np.mean(values), abs=0.006)
        assert std == pytest.approx(np.std(values, ddof=1), abs=0.006) and lo < mean < hi
    header, rows = md_rows(text, "Accuracy on synthetic (mean over classes, %)")
    assert "n" in header and all(re.fullmatch(r"-?\d+\.\d\d ± \d+\.\d\d \[\d+\.\d\d, \d+\.\d\d\]", row[4])
                                 for row in rows)
    assert "bootstrap percentile interval" in text and "200 resamples" in text


def test_single_cell_interval_is_the_records_own(seeds_run_dir):
    from anobench.records import read_records
    from anobench.reports.rows import load_run, metric_estimate

    run = load_run(seeds_run_dir)
    record = read_records(seeds_run_dir)[0]
    estimate = metric_estimate(run, [record], "aupro")
    assert (estimate.lo, estimate.hi) == pytest.approx([100 * v for v in record["intervals"]["aupro"]])
    assert estimate.std is None and estimate.value == pytest.approx(100 * record["metrics"]["aupro"])


def test_paired_table_marks_a_clearly_worse_model(seeds_run_dir):
    from anobench.records import read_records

    text = (seeds_run_dir / "report.md").read_text()
    header, rows = md_rows(text, "Paired differences on synthetic: each model − PaDiM-R18† (percentage points)")
    assert [r[0] for r in rows] == ["a", "b", "mean over classes"] and all(r[1] == "SPADE-R18†" for r in rows)
    records = read_records(seeds_run_dir)
    by = {(r["config"]["method"], r["config"]["class"], r["config"]["seed"]): r for r in records}
    expected = np.mean([100 * (by["spade", c, s]["metrics"]["aupro"] - by["padim", c, s]["metrics"]["aupro"])
                        for c in "a" for s in (0, 1)])
    cells_ = dict(zip(header, rows[0], strict=True))
    assert numbers(cells_["Δ AUPRO@0.3"])[0] == pytest.approx(expected, abs=0.006)
    assert all(dict(zip(header, r, strict=True))["Δ Pixel AUROC"].endswith("]*") for r in rows)  # excludes 0


def test_per_defect_tables_per_class_collapsed_in_html(seeds_run_dir):
    header, rows = md_rows((seeds_run_dir / "report.md").read_text(), "Per defect type: a on synthetic (%)")
    assert header[:3] == ["Defect type", "Images", "Model"] and {r[0] for r in rows} == {"scratch", "stain"}
    assert all(r[1] == "4" for r in rows)
    html_text = (seeds_run_dir / "report.html").read_text()
    assert html_text.count("<details>") == 2 and 'class="interval"' in html_text
    parser = TableParser()
    parser.feed(html_text)
    assert len(parser.tables["per-defect-synthetic-b"]) == 5  # header + 2 defect types × 2 models
    assert "$\\pm$" in (seeds_run_dir / "latex" / "paired-synthetic.tex").read_text()


def test_without_artifacts_means_keep_their_spread_and_lose_their_intervals(seeds_run_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(seeds_run_dir, copy)
    shutil.rmtree(copy / "artifacts")
    write_reports(copy, ["md"])
    header, rows = md_rows((copy / "report.md").read_text(), "Accuracy on synthetic (mean over classes, %)")
    assert all(re.fullmatch(r"-?\d+\.\d\d ± \d+\.\d\d", row[4]) for row in rows)
def test_reflect_padding_and_hard_permutations_are_marked_and_explained():
    official = fake_record("cflow", "a", {})
    official["labels"].update(encoder_padding="reflect", permutation="soft")
    departure = fake_record("cflow", "a", {})
    departure["labels"].update(encoder_padding="zeros", permutation="hard")
    assert row_marks([official]) == "†§¶" and row_marks([departure]) == "†§‖"
    assert row_marks([fake_record("padim", "a", {})]) == "†"
    notes = footnotes_for([official, departure])
    assert any(n.startswith("¶ encoder padded by reflection") for n in notes)
    assert any(n.startswith("‖ hard channel permutations") and "departure" in n for n in notes)
    assert not any(n[0] in "¶‖" for n in footnotes_for([fake_record("padim", "a", {})]))


class MarkedPaDiM(PaDiM):
    """A plugin's method with a mark of its own: reports learn it from the class, not from a list."""

    display_name = "MarkedPaDiM"
    marks = (Mark("※", "image_score", "mean", "image score: the mean of the map, not its maximum."),)
    encoder_row = "the encoder of the MarkedPaDiM cells"


def test_a_methods_own_marks_names_and_encoder_rows_come_from_its_class():
    method = f"{__name__}:MarkedPaDiM"
    marked = fake_record(method, "a", {})
    marked["labels"]["image_score"] = "mean"
    assert row_marks([marked]) == "†※" and row_marks([fake_record(method, "a", {})]) == "†"
    assert "※ image score: the mean of the map, not its maximum." in footnotes_for([marked])
    assert method_display(method, []) == "MarkedPaDiM"
    rows = model_rows([marked])
    assert [r.name for r in rows] == ["MarkedPaDiM-R18†※", "R18 encoder only†"]
