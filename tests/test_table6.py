"""Table 6 adds up from its own columns, and the figures say what the tables say (names, fps, sizes)."""

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from anobench.compare import BASELINES_DIR
from anobench.records import append_record, read_records
from anobench.reports import write_reports
from anobench.reports.plots import accuracy_vs_fps, fps_vs_size, size_bars
from anobench.reports.rows import load_run
from tests.test_reports import md_rows

TABLE6 = "Complexity: inference speed and model size (Table 6 layout)"
STRUCTURE = {"Model", "Input", "Batch", "Status", "Class", "Classes"}


@pytest.fixture
def smoke_run(tmp_path) -> Path:
    """A run folder holding the committed smoke baseline's records: real smoke cells with speed and size."""
    run = tmp_path / "smoke"
    run.mkdir()
    shutil.copy(BASELINES_DIR / "smoke-cpu.jsonl", run / "records.jsonl")
    return run


def cell_fps(record, region):
    batches = record["speed"]["batches"]
    return batches[max(batches, key=int)][region]["fps"]


def table6(run: Path) -> list[dict[str, str]]:
    write_reports(run, ["md"])
    header, rows = md_rows((run / "report.md").read_text(), TABLE6)
    return [dict(zip(header, row, strict=True)) for row in rows]


def test_table6_ratios_are_recomputed_from_its_own_columns(smoke_run):
    rows = table6(smoke_run)
    records = read_records(smoke_run)
    method_rows = [r for r in rows if "encoder only" not in r["Model"]]
    assert {r["Model"] for r in method_rows} == {"PaDiM-R18†", "CFLOW-AD-R18†§¶"}  # ¶: ResNet padded by reflection (official)
    for row in method_rows:
        fps, encoder_fps = float(row["fps"]), float(row["Encoder fps"])
        ratio = float(row["fps / encoder fps"])
        # the printed ratio is the printed fps over the printed encoder fps, up to their rounding
        slack = 0.0005 + (0.005 / fps + 0.005 / encoder_fps) * ratio
        assert abs(ratio - fps / encoder_fps) <= slack, row
        method = "cflow" if "CFLOW" in row["Model"] else "padim"
        cells = [r for r in records if r["config"]["method"] == method]
        assert row["Cells"] == str(len(cells))
        assert row["fps"] == f"{np.median([cell_fps(r, 'end_to_end') for r in cells]):.2f}"  # the median
        assert row["Encoder fps"] == f"{np.median([cell_fps(r, 'encoder') for r in cells]):.2f}"
    cflow = next(r for r in method_rows if r["Model"].startswith("CFLOW"))
    encoder = next(r for r in rows if "encoder only" in r["Model"])
    # no §: the schedule does not apply to the encoder; ¶: the encoder timed is the CFLOW cells', padded by reflection
    assert encoder["Model"] == "R18 encoder only†¶"
    assert encoder["fps"] == cflow["Encoder fps"] and encoder["Cells"] == cflow["Cells"]  # the same cells
    assert all(any(r[column] for r in rows) for column in rows[0])  # no column empty for the whole table


def test_encoders_padded_differently_make_different_encoder_rows(smoke_run):
    records = read_records(smoke_run)
    zero_padded = [json.loads(json.dumps(r)) for r in records if r["config"]["method"] == "cflow"]
    for record in zero_padded:
        record["labels"]["encoder_padding"] = "zeros"
        record["config"]["params"] = {**record["config"].get("params", {}), "encoder_padding": "zeros"}
        record["cell_id"] += "-zeros"
    with (smoke_run / "records.jsonl").open("a") as out:
        out.writelines(json.dumps(r) + "\n" for r in zero_padded)
    encoder_rows = {r["Model"]: r for r in table6(smoke_run) if "encoder only" in r["Model"]}
    assert set(encoder_rows) == {"R18 encoder only†¶", "R18 encoder only†"}
    assert encoder_rows["R18 encoder only†"]["Cells"] == str(len(zero_padded))


def test_every_column_a_table_names_is_defined_once_in_the_report(smoke_run):
    write_reports(smoke_run, ["md", "html"])
    text = (smoke_run / "report.md").read_text()
    definitions = text.split("### Definitions")[1].split("## ")[0]
    defined = [line.split("**")[1] for line in definitions.splitlines() if line.startswith("- **")]
    assert len(defined) == len(set(defined))
    headers = set()
    for title in (TABLE6, "Accuracy on synthetic (mean over classes, %)"):
        header, _ = md_rows(text, title)
        headers |= {c.removesuffix(" (paper)") for c in header} - STRUCTURE
    assert "AUPRO@0.3" in headers and headers <= set(defined), headers - set(defined)
    assert 'id="definitions"' in (smoke_run / "report.html").read_text()


def test_figures_use_the_tables_names_numbers_and_keep_legends_off_the_data(smoke_run):
    rows = table6(smoke_run)
    run = load_run(smoke_run)
    inputs = {r["Model"]: r["Input"] for r in rows}
    (scatter,) = fps_vs_size(run)
    ax = scatter.figure.axes[0]
    assert sorted(t.get_text() for t in ax.texts) == sorted(f"{m} @{inputs[m]}" for m in inputs)
    offsets = np.concatenate([c.get_offsets() for c in ax.collections if len(c.get_offsets())])
    assert sorted(np.round(offsets[:, 1], 2)) == sorted(float(r["fps"]) for r in rows)  # Table 6's fps

    (bars,) = size_bars(run)
    ax = bars.figure.axes[0]
    assert ax.get_yscale() == "linear" and ax.get_ylim()[0] == 0
    printed = [t.get_text() for t in ax.texts]
    assert printed == [r["Size MB"] for r in rows if "encoder only" not in r["Model"]]
    assert [t.get_text() for t in ax.get_xticklabels()] == [f"{m} @{inputs[m]}" for m in inputs
                                                           if "encoder only" not in m]

    (accuracy,) = accuracy_vs_fps(run)
    for plot in (scatter, bars, accuracy):
        assert all(a.get_legend() is None for a in plot.figure.axes)  # no legend inside an axes
    assert accuracy.figure.legends and bars.figure.legends
    names = {t.get_text() for a in accuracy.figure.axes for t in a.texts}
    assert names == {f"{m} @{inputs[m]}" for m in inputs if "encoder only" not in m}


def test_sizes_spanning_decades_get_a_log_axis_with_a_labelled_tick_at_every_decade(smoke_run):
    records = read_records(smoke_run)
    big = copy.deepcopy(next(r for r in records if r["config"]["method"] == "padim"))
    big["config"]["encoder"], big["cell_id"] = "wide_resnet50_2", "big"
    big["size"]["total_bytes"] = 37_000e6
    append_record(smoke_run, big)
    (bars,) = size_bars(load_run(smoke_run))
    ax = bars.figure.axes[0]
    assert ax.get_yscale() == "log" and ax.get_ylim()[0] == 1  # a decade below the smallest bar (52.5 MB)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["1", "10", "100", "1000", "10000", "100000"]
    assert "37000.0" in [t.get_text() for t in ax.texts]


def test_a_run_without_speed_has_no_table6_but_its_figures_still_render(smoke_run):
    lines = [json.loads(line) for line in (smoke_run / "records.jsonl").read_text().splitlines()]
    with open(smoke_run / "records.jsonl", "w") as f:
        for record in lines:
            record.pop("speed")
            record["timings"] = {"predict_wall_images_per_s": 10.0}
            f.write(json.dumps(record) + "\n")
    write_reports(smoke_run, ["md"])
    text = (smoke_run / "report.md").read_text()
    assert TABLE6 not in text and "model-size.png" in text and "accuracy-vs-fps.png" in text
