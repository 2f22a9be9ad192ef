"""`bench export` and `anobench.load_records`: the published run round-trips through CSV with its numbers."""

import json
import math

import pandas as pd

import anobench
from anobench.records import SCHEMA_VERSION
from tests.conftest import REPO, run_bench

PUBLISHED = REPO / "reports" / "published" / "paper-table6-cpu-2core"
# the run published before it, kept as it was written (schema version 1, CFLOW-AD's earlier defaults)
PUBLISHED_V1 = REPO / "reports" / "published" / "paper-table6-cpu-2core-2026-11-28"


def leaf(record: dict, dotted: str):
    """The record's value at a flat column name; None where this record lacks the field."""
    value = record
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def test_the_published_run_exports_to_a_csv_with_the_records_numbers(tmp_path):
    result = run_bench("export", str(PUBLISHED), "--format", "csv", "--output", str(tmp_path / "t6.csv"))
    assert result.returncode == 0, result.stderr
    frame = pd.read_csv(tmp_path / "t6.csv")
    records = [json.loads(line) for line in (PUBLISHED / "records.jsonl").read_text().splitlines()]
    assert len(frame) == len(records) and frame["cell_id"].tolist() == [r["cell_id"] for r in records]
    numeric = [c for c in frame.columns if pd.api.types.is_float_dtype(frame[c])]
    assert "speed.batches.4.end_to_end.fps" in numeric and "size.total_mb" in numeric
    for row, record in zip(frame.to_dict("records"), records, strict=True):
        for column in numeric:
            expected = leaf(record, column)
            if isinstance(expected, str):  # a text field that looks numeric ('13.0'), not a measurement
                continue
            if expected is None:
                assert math.isnan(row[column])
            else:
                assert row[column] == expected, column  # CSV keeps full float precision


def test_load_records_is_one_row_per_cell_with_configuration_first():
    frame = anobench.load_records(PUBLISHED)
    assert list(frame.columns[:3]) == ["cell_id", "status", "config.batch_size"]
    assert frame["cell_id"].is_unique and set(frame["status"]) == {"ok"}
    assert "traceback" not in frame and not any(c.startswith("artifacts") for c in frame)


def test_parquet_without_pyarrow_is_one_sentence(tmp_path):
    result = run_bench("export", str(PUBLISHED), "--format", "parquet", "--output", str(tmp_path / "x.parquet"))
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        assert result.returncode == 2 and "pip install 'anobench[parquet]'" in result.stderr
    else:
        assert result.returncode == 0 and pd.read_parquet(tmp_path / "x.parquet").shape[0] == 9


def test_records_of_a_newer_schema_are_refused_in_one_sentence_and_older_ones_read(tmp_path):
    """Schema version 1 (the run published first) still reads in every reader; a version this anobench does not
    know is refused by report, compare and export alike, naming the file and line, exit 2."""
    records = [json.loads(line) for line in (PUBLISHED_V1 / "records.jsonl").read_text().splitlines()]
    assert {r["schema_version"] for r in records} == {1}
    assert len(anobench.load_records(PUBLISHED_V1)) == len(records)
    newer = tmp_path / "newer"
    newer.mkdir()
    future = dict(records[0], schema_version=SCHEMA_VERSION + 1)
    (newer / "records.jsonl").write_text(json.dumps(records[1]) + "\n" + json.dumps(future) + "\n")
    for command in (["export", str(newer)], ["report", str(newer)], ["compare", str(newer), str(PUBLISHED_V1)]):
        result = run_bench(*command)
        assert result.returncode == 2, command
        assert (f"records.jsonl, line 2: record schema version {future['schema_version']} is newer than this "
                f"anobench reads") in result.stderr and "Traceback" not in result.stderr
