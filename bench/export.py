"""Run folders' records as one flat table (pandas), and ``bench export`` to CSV, Parquet or JSON lines.

One row per cell (its latest record; with several folders, per cell of each folder), one column per leaf of the record: ``config.method``,
``metrics.image_auroc``, ``speed.batches.8.end_to_end.fps``, ``machine_info.torch``, ... Lists and
parameter tables stay JSON text in one column, so a row never depends on another's shape. Tracebacks
and artifact paths are left out; everything else a record holds is there, failed cells included.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from anobench.core import BenchError
from anobench.records import check_run_folder, latest_by_cell, read_records, records_path

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


def load_records(*run_dirs: str | Path, latest: bool = False) -> pd.DataFrame:
    """The records of one or several run folders as a flat DataFrame: one row per cell of each folder,
    configuration first. With several folders, ``run`` names each row's folder and ``runs_of_configuration``
    counts the folders that recorded the same configuration (cell id on one device): such rows are kept, one
    per run, unless ``latest`` keeps only the newest record of each (by its finish time)."""
    if not run_dirs:
        raise BenchError("Pass at least one run folder to load_records.")
    rows = []
    for run_dir in run_dirs:
        path = records_path(run_dir)
        if not path.is_file():
            check_run_folder(path.parent)
        for record in latest_by_cell(read_records(path)).values():
            row: dict[str, Any] = {}
            _flatten({k: v for k, v in record.items() if k not in LEFT_OUT}, "", row)
            if len(run_dirs) > 1:
                row["run"] = str(run_dir)
            rows.append(row)
    frame = pd.DataFrame(rows)
    if len(run_dirs) > 1:
        frame = _repeated_configurations(frame, latest)
    first = ([c for c in ("cell_id", "status", "run", "runs_of_configuration") if c in frame]
             + sorted(c for c in frame if c.startswith("config.")))
    return frame[first + [c for c in frame if c not in first]]


def _repeated_configurations(frame: pd.DataFrame, latest: bool) -> pd.DataFrame:
    """Count each configuration's folders (rows of other devices are other configurations); with ``latest``
    keep the newest row of each (the later folder on a tie)."""
    device = frame["device.name"] if "device.name" in frame else pd.Series("", index=frame.index)
    key = frame["cell_id"] + "\n" + device.fillna("").astype(str)
    frame = frame.assign(runs_of_configuration=key.map(key.value_counts()))
    if not latest:
        return frame
    finished = frame["finished_at"].fillna("") if "finished_at" in frame else pd.Series("", index=frame.index)
    by_time = pd.DataFrame({"finished": finished.astype(str), "key": key}).sort_values("finished", kind="stable")
    newest = by_time.drop_duplicates("key", keep="last").index
    return frame.loc[sorted(newest)].reset_index(drop=True)


def export(run_dir: str | Path, fmt: str, output: str | Path | None = None) -> Path:
    """Write the flat table of ``run_dir`` as ``fmt`` (default file: ``<run_dir>/records.<ext>``)."""
    if fmt not in FORMATS:
        raise BenchError(f"Unknown export format '{fmt}'; valid formats: {', '.join(FORMATS)}.")
    default = records_path(run_dir).parent / f"records.{'flat.jsonl' if fmt == 'jsonl' else fmt}"
    target = Path(output) if output else default
    write_frame(load_records(run_dir), fmt, target)
    return target


def write_frame(frame: pd.DataFrame, fmt: str, target: Path) -> None:
    """Write a flat table as ``fmt`` (csv, jsonl or parquet), whole or not at all: into a temporary file
    beside ``target``, renamed over it once complete."""
    partial = target.with_name(f".{target.name}.partial")
    try:
        if fmt == "csv":
            frame.to_csv(partial, index=False)
        elif fmt == "jsonl":
            frame.to_json(partial, orient="records", lines=True)
        else:
            try:
                frame.to_parquet(partial, index=False)
            except ImportError:
                raise BenchError("Parquet export needs pyarrow; install it with pip install 'anobench[parquet]' "
                                 "(or pip install pyarrow), or export --format csv.") from None
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
