"""`bench results` and `anobench.load_records` over several run folders: cells matched by configuration,
reruns shown as such, devices and test sets kept apart, and the leaderboard's numbers recomputable from the
records."""

import json
import re

import numpy as np
import pandas as pd
import pytest

import anobench
from anobench.records import read_records
from anobench.reports import write_results
from anobench.reports.results import gather, load_runs
from tests.conftest import run_bench


def rows_of(folders, *names, latest=False):
    return gather(load_runs([folders[n] for n in names]), latest=latest).rows


def padim_rows(rows):
    return [r for r in rows if r.records[0]["config"]["method"] == "padim"]


def test_seeds_from_two_folders_on_the_same_test_images_share_one_row(folders):
    rows = padim_rows(rows_of(folders, "first", "second_seed"))
    assert len(rows) == 1 and rows[0].note == ""
    assert sorted(r["config"]["seed"] for r in rows[0].records) == [0, 1]
    assert [f.run_dir.name for f in rows[0].folders] == ["first", "second_seed"]


def test_the_same_configuration_in_two_folders_is_one_row_per_run_unless_latest(folders):
    rows = padim_rows(rows_of(folders, "first", "rerun"))
    assert len(rows) == 2 and all("same configuration was run in several folders" in r.note for r in rows)
    assert [r.folders[0].run_dir.name for r in rows] == ["first", "rerun"]
    (latest,) = padim_rows(rows_of(folders, "first", "rerun", latest=True))
    assert [f.run_dir.name for f in latest.folders] == ["rerun"]  # the newer record


def test_different_devices_stay_apart(folders):
    rows = padim_rows(rows_of(folders, "first", "gpu"))
    assert sorted(r.device for r in rows) == ["CPU: test", "GPU: test"]
    assert all(r.note == "" and len(r.records) == 1 for r in rows)


def test_different_test_sets_are_not_combined_and_the_table_says_why(folders, tmp_path):
    rows = padim_rows(rows_of(folders, "first", "other_test"))
    assert len(rows) == 2 and all("test sets differ" in r.note for r in rows)
    path, _ = write_results([folders["first"], folders["other_test"]], "md", tmp_path / "board.md")
    assert "test sets differ between run folders" in path.read_text()


def ranking_rows(text, title_start):
    """The rows of one markdown ranking as {column: cell}."""
    section = text.split(f"## {title_start}", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in re.split(r"(?<!\\)\|", line.strip("|"))), strict=True))
            for line in lines[2:]]


def test_leaderboard_numbers_are_recomputable_from_the_records(folders, tmp_path):
    path, _ = write_results([folders["first"], folders["second_seed"]], "md", tmp_path / "board.md")
    text = path.read_text()
    records = read_records(folders["first"]) + read_records(folders["second_seed"])
    padim = [100 * r["metrics"]["image_auroc"] for r in records if r["config"]["method"] == "padim"]
    spade = [100 * r["metrics"]["image_auroc"] for r in records if r["config"]["method"] == "spade"]
    rows = {r["Model"].split("-")[0]: r for r in ranking_rows(text, "Image AUROC")}
    mean, std = np.mean(padim), np.std(padim, ddof=1)
    assert rows["PaDiM"]["Value"].startswith(f"{mean:.2f} ± {std:.2f} [")
    assert rows["PaDiM"]["n"] == "2" and rows["SPADE"]["n"] == "1"
    assert rows["PaDiM"]["Rank"] == "1" and rows["SPADE"]["Rank"] == "2"  # SPADE's maps are worse here
    spade_record = next(r for r in records if r["config"]["method"] == "spade")
    lo, hi = (100 * v for v in spade_record["intervals"]["image_auroc"])
    assert rows["SPADE"]["Value"] == f"{spade[0]:.2f} [{lo:.2f}, {hi:.2f}]"  # one cell: the record's interval
    partner = next(r for r in records if r["config"]["method"] == "padim" and r["config"]["seed"] == 0)
    difference = spade[0] - 100 * partner["metrics"]["image_auroc"]  # paired on the same images and seed
    assert rows["SPADE"]["Δ to #1"].startswith(f"{difference:.2f} [")
    assert "[first](first/report.html)" in rows["PaDiM"]["Run"] or "first/report.html" in rows["PaDiM"]["Run"]
    for row in rows.values():
        assert row["Setting"] == "one-class" and row["Weights"] == "random" and row["Protocol"] == "strict"
        assert row["Device"] == "CPU: test"


def test_load_records_over_folders_counts_reruns_and_latest_keeps_the_newest(folders):
    frame = anobench.load_records(folders["first"], folders["rerun"], folders["gpu"])
    assert list(frame.columns[:4]) == ["cell_id", "status", "run", "runs_of_configuration"]
    padim = frame[frame["config.method"] == "padim"]
    assert sorted(padim["runs_of_configuration"]) == [1, 2, 2]  # the GPU's is another configuration
    newest = anobench.load_records(folders["first"], folders["rerun"], folders["gpu"], latest=True)
    runs = newest[newest["config.method"] == "padim"]["run"].map(lambda p: p.rsplit("/", 1)[-1])
    assert sorted(runs) == ["gpu", "rerun"]
    single = anobench.load_records(folders["first"])
    assert "run" not in single and len(single) == 2


def test_csv_output_is_the_cells_of_every_folder(folders, tmp_path):
    path, _ = write_results([folders["first"], folders["gpu"]], "csv", tmp_path / "cells.csv")
    frame = pd.read_csv(path)
    assert len(frame) == 3
    records = read_records(folders["first"]) + read_records(folders["gpu"])
    assert sorted(frame["metrics.image_auroc"]) == pytest.approx(sorted(r["metrics"]["image_auroc"] for r in records))


def test_a_folder_that_is_not_a_run_folder_is_one_sentence_and_nothing_is_written(folders, tmp_path):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "board.html"
    result = run_bench("results", str(folders["first"]), str(tmp_path / "empty"), "--format", "html",
                       "--output", str(out))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "is not a run folder" in result.stderr
    assert not out.exists()


def test_records_of_a_newer_schema_are_refused_and_nothing_is_written(folders, tmp_path):
    newer = tmp_path / "newer"
    newer.mkdir()
    (newer / "records.jsonl").write_text(json.dumps({"cell_id": "x", "schema_version": 99}) + "\n")
    out = tmp_path / "board.md"
    result = run_bench("results", str(folders["first"]), str(newer), "--output", str(out))
    assert result.returncode == 2 and "schema version 99 is newer" in result.stderr
    assert "Traceback" not in result.stderr and not out.exists()
