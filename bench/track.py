"""Experiment tracking: each cell of a run folder as one MLflow run, for teams that keep their runs there.

An MLflow run holds the cell's configuration as parameters, its metrics with their interval bounds
(``<metric>_lo``, ``<metric>_hi``), tags for what a comparison must not mix (suite, commit, device, weights
with ``anobench.random_weights``, protocol, setting), and as artifacts the record itself and the run
folder's report. Runs are keyed by a digest of the record (which holds the cell id): exporting the same
record twice finds its run and adds nothing, a rerun's new record is a new run. A run is tagged with its
key last, after everything else was logged; a run that fails on the way is deleted, so none is half-written.

The default store is an SQLite file, ``mlflow.db`` in the working directory (no server); artifacts go
beside it, in ``mlartifacts/``. MLflow comes with the ``track`` extra (mlflow-skinny and SQLAlchemy).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anobench.core import BenchError
from anobench.records import Record, SpeedRecord, check_run_folder, latest_by_cell, read_records

DEFAULT_STORE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
DEFAULT_EXPERIMENT = "anobench"
KEY_TAG = "anobench.key"
REPORT_FILES = ("report.html", "report.md")
PROBE_TIMEOUT_S = "5"  # an unreachable server is reported after one short try, not MLflow's minutes of retries


def default_tracking_uri() -> str:
    return f"sqlite:///{Path(DEFAULT_STORE).resolve()}"


def record_key(record: Record) -> str:
    """The record's content (cell id included) as a digest: one MLflow run per distinct record."""
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:24]


def metric_name(name: str) -> str:
    """A record metric as MLflow accepts it (no '@'): ``aupro@0.05`` → ``aupro_at_0.05``."""
    return name.replace("@", "_at_")


def params_of(record: Record) -> dict[str, str]:
    """The cell's configuration, one parameter per key (the method's parameters and dataset options as
    ``params.<name>`` and ``dataset_options.<name>``; lists as JSON)."""
    params: dict[str, str] = {}
    for key, value in record.get("config", {}).items():
        if isinstance(value, dict):
            params.update({f"{key}.{k}": json.dumps(v) if isinstance(v, list | dict) else str(v)
                           for k, v in value.items()})
        else:
            params[key] = json.dumps(value) if isinstance(value, list) else str(value)
    return params


def metrics_of(record: Record) -> dict[str, float]:
    """The record's metrics and their interval bounds, and the timings and throughput it measured."""
    out: dict[str, float] = {}
    for name, value in record.get("metrics", {}).items():
        if value is not None:
            out[metric_name(name)] = float(value)
    for name, interval in record.get("intervals", {}).items():
        if interval:
            out[f"{metric_name(name)}_lo"], out[f"{metric_name(name)}_hi"] = float(interval[0]), float(interval[1])
    timings = record.get("timings", {})
    for name, seconds in (("fit_s", timings.get("fit_s")), ("predict_s", timings.get("predict_s"))):
        if seconds is not None:
            out[name] = float(seconds)
    speed = SpeedRecord.of(record)
    fps = speed.fps() if speed else None
    if fps is not None:
        out["fps_end_to_end"] = float(fps)
    return out


def tags_of(record: Record, run_dir: Path) -> dict[str, str]:
    config, labels = record.get("config", {}), record.get("labels", {})
    commit = record.get("commit_info", {})
    tags = {
        "anobench.cell_id": record["cell_id"],
        "anobench.run_dir": str(run_dir.resolve()),
        "anobench.suite": record.get("suite", {}).get("name", ""),
        "anobench.suite_version": str(record.get("suite", {}).get("version", "")),
        "anobench.commit": commit.get("id", ""),
        "anobench.commit_dirty": str(bool(commit.get("dirty"))).lower(),
        "anobench.device": record.get("device", {}).get("name", ""),
        "anobench.weights": str(config.get("weights", "")),
        "anobench.random_weights": str(bool(labels.get("random_weights")) or config.get("weights") == "random").lower(),
        "anobench.protocol": str(config.get("protocol", "")),
        "anobench.setting": str(config.get("setting", "one-class")),
        "anobench.status": record.get("status", ""),
        "anobench.schema_version": str(record.get("schema_version", 1)),
    }
    if commit.get("id"):
        tags["mlflow.source.git.commit"] = commit["id"]
    if record.get("status") != "ok":
        tags["anobench.error"] = record.get("error", "")[:5000]
    return tags


def _mlflow_client() -> Any:
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise BenchError("Exporting to MLflow needs the track extra; install it with pip install 'anobench[track]'.") \
            from None
    return MlflowClient


@contextlib.contextmanager
def _one_short_try() -> Iterator[None]:
    """Within the block, MLflow's HTTP requests give up after one try of a few seconds."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT=PROBE_TIMEOUT_S)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


@dataclass
class TrackSummary:
    exported: int = 0
    already: int = 0  # records whose run was there from an earlier export


class MlflowTracker:
    """One tracking store (checked reachable when made) and one experiment in it."""

    def __init__(self, tracking_uri: str | None = None, experiment: str = DEFAULT_EXPERIMENT):
        client_class = _mlflow_client()
        self.uri = tracking_uri or default_tracking_uri()
        self.experiment = experiment
        try:
            with _one_short_try():
                self.client = client_class(self.uri)
                found = self.client.get_experiment_by_name(experiment)
        except Exception as exc:
            raise BenchError(f"MLflow tracking URI {self.uri} cannot be reached ({_first_line(exc)}); start the "
                             f"tracking server or pass another --tracking-uri (default: sqlite file "
                             f"{DEFAULT_STORE} in the working directory).") from None
        self._experiment_id: str | None = found.experiment_id if found else None

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            location = None
            if self.uri.startswith("sqlite:///"):  # artifacts beside the database, not in the working directory
                database = Path(self.uri.removeprefix("sqlite:///")).resolve()  # a relative path too
                location = (database.parent / ARTIFACTS_DIR / self.experiment).as_uri()
            self._experiment_id = self.client.create_experiment(self.experiment, artifact_location=location)
        return self._experiment_id

    def find(self, key: str) -> Any:
        """The finished export of a record, or None."""
        runs = self.client.search_runs([self.experiment_id], filter_string=f"tags.`{KEY_TAG}` = '{key}'",
                                       max_results=1)
        return runs[0] if runs else None

    def export(self, record: Record, run_dir: Path) -> bool:
        """The record as one MLflow run; False where it was exported before (its report added if new)."""
        key = record_key(record)
        existing = self.find(key)
        if existing is not None:
            self._add_reports(existing.info.run_id, run_dir)
            return False
        run = self.client.create_run(self.experiment_id, run_name=record["cell_id"], tags=tags_of(record, run_dir))
        run_id = run.info.run_id
        try:
            self._log(run_id, record, run_dir)
            self.client.set_tag(run_id, KEY_TAG, key)  # last: a run with its key is complete
            self.client.set_terminated(run_id, "FINISHED" if record.get("status") == "ok" else "FAILED")
        except BaseException:
            with contextlib.suppress(Exception):
                self.client.delete_run(run_id)
            raise
        return True

    def _log(self, run_id: str, record: Record, run_dir: Path) -> None:
        from mlflow.entities import Metric, Param

        stamp = _timestamp_ms(record)
        params = [Param(k, v) for k, v in sorted(params_of(record).items())]
        metrics = [Metric(k, v, stamp, 0) for k, v in sorted(metrics_of(record).items())]
        for start in range(0, max(len(params), len(metrics)), 100):  # MLflow's limit per batch: 100 params
            self.client.log_batch(run_id, metrics=metrics[start:start + 100], params=params[start:start + 100])
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "record.json"
            path.write_text(json.dumps(record, indent=1, sort_keys=True), encoding="utf-8")
            self.client.log_artifact(run_id, str(path))
        self._add_reports(run_id, run_dir)

    def _add_reports(self, run_id: str, run_dir: Path) -> None:
        """The run folder's reports, once they exist (``bench run --track`` exports cells before them)."""
        reports = [run_dir / name for name in REPORT_FILES if (run_dir / name).is_file()]
        if reports and not self.client.list_artifacts(run_id, "report"):
            for report in reports:
                self.client.log_artifact(run_id, str(report), "report")

    def export_folder(self, run_dir: Path, records: Sequence[Record]) -> TrackSummary:
        summary = TrackSummary()
        for record in records:
            if self.export(record, run_dir):
                summary.exported += 1
            else:
                summary.already += 1
        return summary


def _timestamp_ms(record: Record) -> int:
    """When the cell finished (a metric's timestamp), in ms since the epoch; 0 where unknown."""
    from datetime import datetime

    try:
        return int(datetime.fromisoformat(record.get("finished_at", "")).timestamp() * 1000)
    except ValueError:
        return 0


def folder_records(run_dir: Path) -> list[Record]:
    """The latest record of each cell of a run folder; one sentence where it is none."""
    return list(latest_by_cell(read_records(check_run_folder(run_dir))).values())


def track(run_dirs: Sequence[Path], tracking_uri: str | None = None,
          experiment: str = DEFAULT_EXPERIMENT) -> tuple[MlflowTracker, TrackSummary]:
    """Export every cell of every folder; every folder is read (and refused) before anything is written."""
    folders = [(Path(d), folder_records(Path(d))) for d in run_dirs]
    tracker = MlflowTracker(tracking_uri, experiment)
    total = TrackSummary()
    for run_dir, records in folders:
        summary = tracker.export_folder(run_dir, records)
        total.exported += summary.exported
        total.already += summary.already
    return tracker, total


def cell_exporter(tracker: MlflowTracker, run_dir: Path, warn: Callable[[str], None]) -> Callable[[Record], None]:
    """For ``bench run --track``: export each record as its cell finishes. A failed export is one warning and
    ends tracking for the run (its records are safe in the folder; ``bench track`` exports them later)."""
    stopped = False

    def export(record: Record) -> None:
        nonlocal stopped
        if stopped:
            return
        try:
            tracker.export(record, run_dir)
        except Exception as exc:
            stopped = True
            warn(f"warning: MLflow export stopped ({_first_line(exc)}); the records are intact: run bench track "
                 f"{run_dir} --to mlflow --tracking-uri {tracker.uri} later.")

    return export
