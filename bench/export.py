"""A run folder's records as one flat table (pandas), and ``bench export`` to CSV, Parquet or JSON lines.

One row per cell (its latest record), one column per leaf of the record: ``config.method``,
``metrics.image_auroc``, ``speed.batches.8.end_to_end.fps``, ``machine_info.torch``, ... Lists and
parameter tables stay JSON text in one column, so a row never depends on another's shape. Tracebacks
and artifact paths are left out; everything else a record holds is there, failed cells included.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from anobench.core import BenchError
from anobench.records import latest_by_cell, read_records, records_path

FORMATS = ("csv", "parquet", "jsonl")
LEFT_OUT = ("traceback", "artifacts")
KEPT_WHOLE = ("config.params", "config.dataset_options", "method_params")  # one JSON column each


def _flatten(value: Any, prefix: str, row: dict[str, Any]) -> None:
    if isinstance(value, dict) and prefix not in KEPT_WHOLE:
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}" if prefix else str(key), row)
    elif isinstance(value, dict | list):
        row[prefix] = json.dumps(value, sort_keys=True)
    else:
        row[prefix] = value


def load_records(run_dir: str | Path) -> pd.DataFrame:
    """The run's records as a flat DataFrame: one row per cell, configuration first."""
    path = records_path(run_dir)
    if not path.is_file():
        raise BenchError(f"{path} does not exist; pass a run folder that `bench run` wrote.")
    rows = []
    for record in latest_by_cell(read_records(path)).values():
        row: dict[str, Any] = {}
        _flatten({k: v for k, v in record.items() if k not in LEFT_OUT}, "", row)
        rows.append(row)
    frame = pd.DataFrame(rows)
    first = [c for c in ("cell_id", "status") if c in frame] + sorted(c for c in frame if c.startswith("config."))
    return frame[first + [c for c in frame if c not in first]]


def export(run_dir: str | Path, fmt: str, output: str | Path | None = None) -> Path:
    """Write the flat table of ``run_dir`` as ``fmt`` (default file: ``<run_dir>/records.<ext>``)."""
    if fmt not in FORMATS:
        raise BenchError(f"Unknown export format '{fmt}'; valid formats: {', '.join(FORMATS)}.")
    frame = load_records(run_dir)
    default = records_path(run_dir).parent / f"records.{'flat.jsonl' if fmt == 'jsonl' else fmt}"
    target = Path(output) if output else default
    if fmt == "csv":
        frame.to_csv(target, index=False)
    elif fmt == "jsonl":
        frame.to_json(target, orient="records", lines=True)
    else:
        try:
            frame.to_parquet(target, index=False)
        except ImportError:
            raise BenchError("Parquet export needs pyarrow; install it with pip install 'anobench[parquet]' "
                             "(or pip install pyarrow), or export --format csv.") from None
    return target
