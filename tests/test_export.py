"""`bench export` and `anobench.load_records`: the published run round-trips through CSV with its numbers."""

import json
import math

import pandas as pd

import anobench
from tests.conftest import REPO, run_bench

PUBLISHED = REPO / "reports" / "published" / "paper-table6-cpu-2core"


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
