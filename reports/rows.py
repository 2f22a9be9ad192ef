"""What a report's tables are made of: a run's records, grouped into rows (one model: method, encoder,
protocol, weights, setting, parameters), with their names, marks and footnotes, the suite's reference
numbers, and each row's metrics as means with their uncertainty.

A missing measurement stays an empty cell; a reference number is printed as the paper's, beside ours.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from anobench import artifacts, statistics
from anobench.aggregate import Estimate, Sample, combine
from anobench.methods import encoder_short_name as short_name
from anobench.methods import method_presentation
from anobench.methods.marks import Mark
from anobench.metrics import metric_info
from anobench.records import RUN_FILE, Record, latest_by_cell, read_records
from anobench.suites import DEFAULT_TABLE_METRICS, Reference, Suite, parse_suite

# The harness's own marks; a method declares its own (``AnomalyMethod.marks``: schedule, padding, ...).
RANDOM_WEIGHTS, TEST_SET_DEPENDENT = "†", "‡"


@dataclass
class Table:
    """A titled grid of cells (str, float, Estimate or None) with footnotes; renderers decide the look."""

    key: str
    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    decimals: dict[str, int] = field(default_factory=dict)
    footnotes: list[str] = field(default_factory=list)
    caption: str = ""
    collapsed: bool = False  # details a reader opens on demand (HTML shows the title only)


@dataclass
class RunData:
    """What a report of one run folder is made of."""

    run_dir: Path
    records: list[Record]
    suite: Suite | None
    info: dict[str, Any]

    @property
    def ok(self) -> list[Record]:
        return [r for r in self.records if r.get("status") == "ok"]

    @property
    def failed(self) -> list[Record]:
        return [r for r in self.records if r.get("status") != "ok"]

    def replicates(self, record: Record) -> dict[str, np.ndarray]:
        """The cell's bootstrap resamples from its artifacts ({} where there are none), read once."""
        cache = self.__dict__.setdefault("_replicates", {})
        if record["cell_id"] not in cache:
            file = record.get("artifacts", {}).get("file")
            cache[record["cell_id"]] = artifacts.read_replicates(self.run_dir, file) if file else {}
        return cache[record["cell_id"]]

    @property
    def table_metrics(self) -> tuple[str, ...]:
        """The accuracy metrics the suite's tables show."""
        return self.suite.metrics if self.suite else DEFAULT_TABLE_METRICS


def load_run(run_dir: str | Path) -> RunData:
    """The latest record of each cell, and the suite as the run recorded it (for reference numbers)."""
    run_dir = Path(run_dir)
    records = list(latest_by_cell(read_records(run_dir)).values())
    info, suite = {}, None
    if (run_dir / RUN_FILE).is_file():
        info = json.loads((run_dir / RUN_FILE).read_text())
        suite = parse_suite(info["suite"]["raw"], Path(info["suite"]["path"]))
    return RunData(run_dir, records, suite, info)


# ----------------------------------------------------------------------------------------------------------
# row identity


def base_encoder(encoder: str) -> str:
    return encoder.split(".")[0]


def row_key(record: Record) -> tuple:
    c = record["config"]
    return (c["method"], c["encoder"], c["protocol"], c["weights"], c.get("setting", "one-class"),
            json.dumps(c.get("params", {}), sort_keys=True))


def declared_marks(record: Record, encoder_only: bool = False) -> list[Mark]:
    """The marks the record's method declares that its labels earn (those about the encoder alone, for an
    encoder-only row), in the order of their symbols; none where the method cannot be loaded here."""
    presentation = method_presentation(record["config"]["method"])
    labels = dict(record.get("labels", {}))
    marks = presentation.marks if presentation else ()
    return sorted((m for m in marks if m.applies(labels) and (m.encoder or not encoder_only)),
                  key=lambda m: m.symbol)


def row_marks(records: list[Record]) -> str:
    labels = records[0].get("labels", {})
    marks = (RANDOM_WEIGHTS if labels.get("random_weights") else "") + (
        TEST_SET_DEPENDENT if labels.get("test_set_dependent") else "")
    return marks + "".join(m.symbol for m in declared_marks(records[0]))


def method_display(method: str, records: Iterable[Record]) -> str:
    """A method's table name where no record of a row says it (paper rows not run): what another record of
    the same method says, else its class's display name, else the registered name."""
    for record in records:
        if record["config"]["method"] == method and (record.get("display") or {}).get("method"):
            return record["display"]["method"]
    presentation = method_presentation(method)
    return (presentation.display_name if presentation else "") or method


def row_name(records: list[Record], with_params: bool = False) -> str:
    """'<display name>-R18' plus marks; the suite's parameters only where they tell two rows apart."""
    c = records[0]["config"]
    display = records[0].get("display") or {}
    method = display.get("method") or method_display(c["method"], ())
    encoder = display["encoder"] if "encoder" in display else short_name(base_encoder(c["encoder"]))
    name = f"{method}-{encoder}" if encoder else method  # a method without an encoder names none
    params = c.get("params") or {}
    if with_params and params:
        name += " (" + ", ".join(f"{k}={v}" for k, v in sorted(params.items())) + ")"
    if c.get("setting") == "multi-class":
        name += " [multi-class]"
    return name + row_marks(records)


def ambiguous_rows(keys: Iterable[tuple]) -> set[tuple]:
    """Row keys that differ from another only in their parameters."""
    seen: dict[tuple, int] = defaultdict(int)
    keys = list(keys)
    for key in keys:
        seen[key[:-1]] += 1
    return {key for key in keys if seen[key[:-1]] > 1}


def resolutions(records: list[Record]) -> str:
    values = sorted({r["config"]["resolution"] for r in records})
    crops = {(r["config"]["resize"], r["config"]["resolution"]) for r in records}
    if len(values) == 1 and len(crops) == 1:
        resize, crop = crops.pop()
        return f"{crop}" if resize == crop else f"{crop} (of {resize})"
    return "/".join(str(v) for v in values) + " (per class)"


def footnotes_for(records: Iterable[Record]) -> list[str]:
    notes = []
    records = list(records)
    if any(r.get("labels", {}).get("random_weights") for r in records):
        notes.append(f"{RANDOM_WEIGHTS} random encoder weights (not ImageNet): numbers check the harness, "
                     "they are not comparable with published ones.")
    if any(r.get("labels", {}).get("test_set_dependent") for r in records):
        notes.append(f"{TEST_SET_DEPENDENT} 'paper' protocol: scores are normalized over the whole test set, as "
                     "the reference code does; an image's score depends on the other test images.")
    marks = sorted({m for r in records for m in declared_marks(r)}, key=lambda m: m.symbol)
    notes += [f"{m.symbol} {m.meaning}" for m in marks]
    multi = [r for r in records if r["config"].get("setting") == "multi-class"]
    if multi:
        trained_on = max(len(r["config"].get("train_classes", [])) for r in multi)
        notes.append(f"[multi-class]: one model trained on the training images of all {trained_on} classes "
                     "and evaluated on each class (ADer's unified setting); other rows train one model per "
                     "class.")
    protocols = sorted({r["config"]["protocol"] for r in records})
    if protocols:
        notes.append("Protocol: " + ", ".join(protocols) + " (strict: no normalizing constant comes from test "
                     "images; no best-epoch selection in either).")
    return notes


# ----------------------------------------------------------------------------------------------------------
# references


def find_reference(references: Iterable[Reference], method: str, encoder: str, metric: str,
                   class_name: str = "mean", resolution: int | None = None) -> Reference | None:
    for ref in references:
        if (ref.method == method and base_encoder(ref.encoder) == base_encoder(encoder) and ref.metric == metric
                and ref.class_name == class_name and (ref.resolution is None or ref.resolution == resolution)):
            return ref
    return None


def dataset_title(records: list[Record]) -> str:
    """The dataset's name, with the folder it was read from where that says more (``folder``)."""
    name = records[0]["config"]["dataset"]
    roots = sorted({Path(r["dataset"]["root"]).name for r in records if r.get("dataset", {}).get("root")})
    return f"{name} ({', '.join(roots)})" if roots else name


def percent(value: float | None) -> float | None:
    return None if value is None else 100.0 * value


def metric_display(metric: str) -> str:
    info = metric_info(metric)
    return info.display if info else metric


def metric_samples(run: RunData, records: list[Record], metric: str, defect: str | None = None) -> list[Sample]:
    """The metric (of one defect type, if given) in each record that has it."""
    samples = []
    for record in records:
        holder = record.get("per_defect", {}).get(defect, {}) if defect else record
        value = holder.get("metrics", {}).get(metric)
        if value is None:
            continue
        key = statistics.defect_key(defect, metric) if defect else metric

        def replicates(r: Record = record, k: str = key) -> np.ndarray | None:
            return run.replicates(r).get(k)

        samples.append(Sample(record["config"]["class"], record["config"]["seed"], value,
                              holder.get("intervals", {}).get(metric), replicates,
                              record.get("bootstrap", {}).get("confidence")))
    return samples


def metric_estimate(run: RunData, records: list[Record], metric: str, defect: str | None = None) -> Estimate | None:
    info = metric_info(metric)
    return combine(metric_samples(run, records, metric, defect), 100.0 if info is None or info.percent else 1.0)


def seed_count(records: list[Record]) -> int:
    return len({r["config"]["seed"] for r in records})


def uncertainty_notes(records: list[Record], with_seeds: bool, intervals: bool = True) -> list[str]:
    """What ± and (with ``intervals``) [lo, hi] mean in a table of these records."""
    notes = []
    if with_seeds:
        notes.append("mean ± standard deviation over seeds (n seeds; the standard deviation of the mean over "
                     "classes, from seeds that have every class).")
    boot = {json.dumps({k: r["bootstrap"][k] for k in ("resamples", "seed", "confidence")}, sort_keys=True)
            for r in records if "bootstrap" in r and intervals}
    if boot:
        spec = json.loads(sorted(boot)[0]) if len(boot) == 1 else None
        what = (f"{100 * spec['confidence']:g}% bootstrap percentile interval over test images ({spec['resamples']} "
                f"resamples from seed {spec['seed']}, good and defective images resampled separately)"
                if spec else "bootstrap percentile interval over test images (settings differ between cells: see "
                             "the records)")
        notes.append(f"[lo, hi]: {what}; of a mean over classes or seeds, from the cells' resamples averaged "
                     "the same way; empty where a cell has no interval (e.g. a record without one).")
    return notes
