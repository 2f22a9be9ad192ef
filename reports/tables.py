"""Tables built only from records (and the suite's reference numbers), independent of the output format.

A missing measurement stays an empty cell; a reference number is printed as the paper's, beside ours.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from anobench import artifacts, statistics
from anobench.methods import encoder_short_name as short_name
from anobench.metrics import METRIC_INFO, metric_info
from anobench.records import RUN_FILE, Record, SpeedRecord, latest_by_cell, read_records
from anobench.suites import DEFAULT_TABLE_METRICS, Reference, RowSelector, Suite, parse_suite

ACCURACY_METRICS = ("image_auroc", "pixel_auroc", "aupro")
METHOD_NAMES = {"cflow": "CFLOW-AD", "padim": "PaDiM", "spade": "SPADE"}
MARKS = {"random": "†", "paper": "‡", "short": "§", "reflect": "¶", "hard_permutation": "‖"}
ENCODER_ROW = "encoder"  # the method name of Table 6's encoder-only rows (as in suites' reference numbers)


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


@dataclass(frozen=True)
class Estimate:
    """A number with its uncertainty, in the table's unit: the mean over seeds (± their standard deviation
    where there are several) and the bootstrap interval [lo, hi] over test images where the records have it."""

    value: float
    std: float | None = None
    lo: float | None = None
    hi: float | None = None
    mark: str = ""  # e.g. "*" where a paired interval excludes 0

    def main_text(self, decimals: int) -> str:
        text = f"{self.value:.{decimals}f}"
        return text + (f" ± {self.std:.{decimals}f}" if self.std is not None else "")

    def interval_text(self, decimals: int) -> str:
        if self.lo is None or self.hi is None:
            return self.mark
        return f"[{self.lo:.{decimals}f}, {self.hi:.{decimals}f}]{self.mark}"

    def text(self, decimals: int) -> str:
        return " ".join(t for t in (self.main_text(decimals), self.interval_text(decimals)) if t)


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


def row_marks(records: list[Record]) -> str:
    marks = ""
    labels = records[0].get("labels", {})
    if labels.get("random_weights"):
        marks += MARKS["random"]
    if labels.get("test_set_dependent"):
        marks += MARKS["paper"]
    if labels.get("schedule") == "short":
        marks += MARKS["short"]
    if labels.get("encoder_padding") == "reflect":
        marks += MARKS["reflect"]
    if labels.get("permutation") == "hard":
        marks += MARKS["hard_permutation"]
    return marks


def method_display(method: str, records: Iterable[Record]) -> str:
    """A method's table name where no record of a row says it (paper rows not run): what another record of
    the same method says, else the fallback names, else the registered name."""
    for record in records:
        if record["config"]["method"] == method and (record.get("display") or {}).get("method"):
            return record["display"]["method"]
    return METHOD_NAMES.get(method, method)


def row_name(records: list[Record], with_params: bool = False) -> str:
    """'CFLOW-AD-R18' plus marks; the suite's parameters only where they tell two rows apart."""
    c = records[0]["config"]
    display = records[0].get("display") or {}
    method = display.get("method") or METHOD_NAMES.get(c["method"], c["method"])
    name = f"{method}-{display.get('encoder') or short_name(base_encoder(c['encoder']))}"
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
        notes.append(f"{MARKS['random']} random encoder weights (not ImageNet): numbers check the harness, "
                     "they are not comparable with published ones.")
    if any(r.get("labels", {}).get("test_set_dependent") for r in records):
        notes.append(f"{MARKS['paper']} 'paper' protocol: scores are normalized over the whole test set, as the "
                     "reference code does; an image's score depends on the other test images.")
    if any(r.get("labels", {}).get("schedule") == "short" for r in records):
        notes.append(f"{MARKS['short']} short training schedule (see the record's method_params), not the paper's.")
    if any(r.get("labels", {}).get("encoder_padding") == "reflect" for r in records):
        notes.append(f"{MARKS['reflect']} encoder padded by reflection in its 7×7 stem and every 3×3 convolution, "
                     "as the official CFLOW-AD code's ResNet copy (timm's ResNets pad with zeros).")
    if any(r.get("labels", {}).get("permutation") == "hard" for r in records):
        notes.append(f"{MARKS['hard_permutation']} hard channel permutations in the flow (permute_soft=False, "
                     "anomalib's choice): a departure from the official code's random orthogonal matrices.")
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


def display(metric: str, value: float | None) -> float | None:
    info = METRIC_INFO.get(metric)
    return percent(value) if info and info.percent else value


def mean_or_none(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def metric_display(metric: str) -> str:
    info = metric_info(metric)
    return info.display if info else metric


# ----------------------------------------------------------------------------------------------------------
# numbers with their uncertainty: means over classes and seeds, bootstrap intervals


@dataclass
class Sample:
    """One cell's value of one quantity, with what its interval is made of."""

    class_name: str
    seed: int
    value: float
    interval: Sequence[float] | None  # the record's, when this sample stands alone
    replicates: Callable[[], np.ndarray | None]  # its bootstrap resamples (from the artifacts), read on demand
    confidence: float | None


def combine(samples: list[Sample], scale: float = 100.0, mark_excluding_zero: bool = False) -> Estimate | None:
    """Mean over classes of each class's mean over seeds; ± the standard deviation over seeds of the class
    mean (seeds with every class); the interval of that mean from the resamples, averaged the same way
    resample by resample (cells of one class share their resamples, classes are resampled independently)."""
    if not samples:
        return None
    by_class: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_class[sample.class_name].append(sample)
    value = float(np.mean([np.mean([s.value for s in group]) for group in by_class.values()]))
    by_seed: dict[int, dict[str, float]] = defaultdict(dict)
    for sample in samples:
        by_seed[sample.seed][sample.class_name] = sample.value
    complete = [float(np.mean(list(v.values()))) for v in by_seed.values() if len(v) == len(by_class)]
    std = statistics.mean_std(complete)[1] if len(complete) > 1 else None
    interval: Sequence[float] | None = samples[0].interval if len(samples) == 1 else None
    confidences = {s.confidence for s in samples}
    confidence = confidences.pop() if len(confidences) == 1 else None
    if interval is None and confidence is not None:
        vectors = {c: [v for s in group if (v := s.replicates()) is not None] for c, group in by_class.items()}
        if all(len(vectors[c]) == len(group) for c, group in by_class.items()):
            mean = np.mean([np.mean(group, axis=0) for group in vectors.values()], axis=0)
            interval = statistics.percentile_interval(mean, confidence)
    lo, hi = (scale * interval[0], scale * interval[1]) if interval else (None, None)
    mark = "*" if mark_excluding_zero and interval and (interval[0] > 0 or interval[1] < 0) else ""
    return Estimate(scale * value, None if std is None else scale * std, lo, hi, mark)


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
def shown_metrics(table_metrics: Iterable[str], records: list[Record], references: Iterable[Reference]) -> list[str]:
    """The suite's table metrics, then the dataset protocol's own (LOCO's AU-sPRO, ...): each one that some
    record measured, explains as empty (``metric_notes``), or the suite has a reference number for."""
    candidates = list(table_metrics)
    for record in records:
        own = record.get("dataset_protocol", {}).get("metrics", [])
        candidates += [m for m in own if m not in candidates]
    referenced = {ref.metric for ref in references}
    return [m for m in candidates if metric_info(m) is not None and (
        m in referenced or any(r["metrics"].get(m) is not None or m in r.get("metric_notes", {})
                               for r in records))]


def unavailable_notes(records: list[Record], metric_names: list[str]) -> list[str]:
    """Why shown columns are empty: one line per reason, naming the metrics (column order) and classes; a mean
    over classes or seeds leaves such cells out."""
    by_reason: dict[str, tuple[set[str], set[str]]] = {}
    for record in records:
        for metric, reason in record.get("metric_notes", {}).items():
            if metric in metric_names:
                metrics, classes = by_reason.setdefault(reason, (set(), set()))
                metrics.add(metric)
                classes.add(record["config"]["class"])
    return [f"Empty {', '.join(metric_display(m) for m in metric_names if m in metrics)} "
            f"({', '.join(sorted(classes))}): {reason}." for reason, (metrics, classes) in by_reason.items()]


def protocol_notes(records: list[Record]) -> list[str]:
    """The dataset protocols' notes (how their metrics were computed), each once."""
    return list(dict.fromkeys(note for r in records
                              for note in r.get("dataset_protocol", {}).get("notes", [])))


# ----------------------------------------------------------------------------------------------------------
# accuracy tables


def accuracy_tables(run: RunData) -> list[Table]:
    """Per dataset: method rows averaged over classes (and seeds), ours beside the paper's; then per class."""
    references = run.suite.references if run.suite else ()
    tables = []
    by_dataset: dict[str, list[Record]] = defaultdict(list)
    for record in run.ok:
        if not record["config"].get("measure_only"):
            by_dataset[record["config"]["dataset"]].append(record)
    for dataset, records in by_dataset.items():
        rows_by_key: dict[tuple, list[Record]] = defaultdict(list)
        for record in records:
            rows_by_key[row_key(record)].append(record)
        metric_names = shown_metrics(run.table_metrics, records, [ref for ref in references if ref.class_name == "mean"])
        mean_refs = [ref for ref in references if ref.class_name == "mean" and ref.metric in metric_names]
        with_reference = {ref.metric for ref in mean_refs}
        with_seeds = any(seed_count(group) > 1 for group in rows_by_key.values())
        columns = ["Model", "Input", "Classes"] + (["n"] if with_seeds else [])
        decimals = {}
        for m in metric_names:
            columns.append(metric_display(m))
            decimals[metric_display(m)] = 2
            if m in with_reference:
                columns += [f"{metric_display(m)} (paper)", "Δ"]
        table = Table(f"accuracy-{dataset}", f"Accuracy on {dataset_title(records)} (mean over classes, %)", columns,
                      decimals={**decimals, **{c: 2 for c in columns if c.endswith("(paper)") or c == "Δ"}})
        n_classes = len({r["config"]["class"] for r in records})
        ambiguous = ambiguous_rows(rows_by_key)
        for key, group in rows_by_key.items():
            row: list[Any] = [row_name(group, key in ambiguous), resolutions(group), f"{len({r['config']['class'] for r in group})}/{n_classes}"]
            row += [seed_count(group)] if with_seeds else []
            for m in metric_names:
                ours = metric_estimate(run, group, m)
                row.append(ours)
                if m in with_reference:
                    ref = find_reference(references, key[0], key[1], m)
                    row += [ref.value if ref else None,
                            ours.value - ref.value if ref and ours is not None else None]
            table.rows.append(row)
        measured = {(key[0], base_encoder(key[1])) for key in rows_by_key}
        for method, encoder in dict.fromkeys((ref.method, base_encoder(ref.encoder)) for ref in mean_refs):
            if (method, encoder) in measured:
                continue
            row = [f"{method_display(method, run.records)}-{short_name(encoder)} (not run)", None,
                   f"0/{n_classes}"]
            row += [None] if with_seeds else []
            for m in metric_names:
                row.append(None)
                if m in with_reference:
                    ref = find_reference(mean_refs, method, encoder, m)
                    row += [ref.value if ref else None, None]
            table.rows.append(row)
        table.footnotes = (footnotes_for(records) + uncertainty_notes(records, with_seeds)
                           + unavailable_notes(records, metric_names) + protocol_notes(records))
        if with_reference:
            sources = sorted({ref.source for ref in references if ref.metric in with_reference})
            table.footnotes.append("Paper numbers as published (" + "; ".join(sources) + "), not measured here.")
        tables.append(table)
        tables.append(per_class_table(run, dataset, records, rows_by_key, metric_names))
        tables += per_defect_tables(run, dataset, records, rows_by_key)
    return tables


def per_class_table(run: RunData, dataset: str, records: list[Record], rows_by_key: dict[tuple, list[Record]],
                    metric_names: list[str]) -> Table:
    with_seeds = any(seed_count(group) > 1 for group in rows_by_key.values())
    columns = ["Class", "Model", "Input"] + (["n"] if with_seeds else []) + [metric_display(m) for m in metric_names]
    table = Table(f"per-class-{dataset}", f"Per class on {dataset_title(records)} (%)", columns,
                  decimals={metric_display(m): 2 for m in metric_names})
    classes = sorted({r["config"]["class"] for r in records})
    ambiguous = ambiguous_rows(rows_by_key)
    for class_name in classes:
        for key, group in rows_by_key.items():
            members = [r for r in group if r["config"]["class"] == class_name]
            if not members:
                continue
            row: list[Any] = [class_name, row_name(group, key in ambiguous), resolutions(members)]
            row += [seed_count(members)] if with_seeds else []
            row += [metric_estimate(run, members, m) for m in metric_names]
            table.rows.append(row)
    table.footnotes = (footnotes_for(records) + uncertainty_notes(records, with_seeds)
                       + unavailable_notes(records, metric_names))
    return table


def per_defect_tables(run: RunData, dataset: str, records: list[Record],
                      rows_by_key: dict[tuple, list[Record]]) -> list[Table]:
    """One table per class: each defect type's metrics against the good images (collapsed in HTML)."""
    tables = []
    ambiguous = ambiguous_rows(rows_by_key)
    for class_name in sorted({r["config"]["class"] for r in records}):
        members = [r for r in records if r["config"]["class"] == class_name and r.get("per_defect")]
        defects = sorted({d for r in members for d in r["per_defect"]})
        metric_names = [m for m in run.table_metrics if any(m in r["per_defect"][d].get("metrics", {})
                                                             for r in members for d in r["per_defect"])]
        if not defects or not metric_names:
            continue
        with_seeds = any(seed_count([r for r in group if r in members]) > 1 for group in rows_by_key.values())
        columns = ["Defect type", "Images", "Model"] + (["n"] if with_seeds else []) + [metric_display(m)
                                                                                       for m in metric_names]
        table = Table(f"per-defect-{dataset}-{class_name}", f"Per defect type: {class_name} on "
                      f"{dataset_title(members)} (%)", columns, decimals={metric_display(m): 2 for m in metric_names},
                      collapsed=True)
        for defect in defects:
            for key, group in rows_by_key.items():
                cells = [r for r in group if r in members and defect in r["per_defect"]]
                if not cells:
                    continue
                row = [defect, cells[0]["per_defect"][defect]["n_images"], row_name(group, key in ambiguous)]
                row += [seed_count(cells)] if with_seeds else []
                row += [metric_estimate(run, cells, m, defect) for m in metric_names]
                table.rows.append(row)
        table.footnotes = ["Each defect type's images against all good images of the class (image AUROC; pixel "
                           "metrics over the pixels of those images)."] + uncertainty_notes(members, with_seeds)
        tables.append(table)
    return tables


def _reference_partner(record: Record, candidates: list[Record]) -> Record | None:
    """The reference cell scored on the same test images (class, seed, geometry, bootstrap settings)."""
    def same(other: Record) -> bool:
        return (other["config"]["seed"] == record["config"]["seed"]
                and other.get("test_set", {}).get("fingerprint") == record.get("test_set", {}).get("fingerprint")
                and {k: other.get("bootstrap", {}).get(k) for k in ("resamples", "seed")}
                == {k: record.get("bootstrap", {}).get(k) for k in ("resamples", "seed")})
    matches = [r for r in candidates if same(r) and "test_set" in r]
    preferred = [r for r in matches if row_key(r)[2:4] == row_key(record)[2:4]]  # same protocol and weights
    return next(iter(preferred or matches), None)


def paired_difference(run: RunData, pairs: list[tuple[Record, Record]], metric: str) -> Estimate | None:
    """Mean difference model − reference over the pairs, with its paired bootstrap interval (marked * where
    it excludes 0)."""
    samples = []
    for record, reference in pairs:
        ours, theirs = record["metrics"].get(metric), reference["metrics"].get(metric)
        if ours is None or theirs is None:
            continue

        def difference(a=record, b=reference) -> np.ndarray | None:
            x, y = run.replicates(a).get(metric), run.replicates(b).get(metric)
            return None if x is None or y is None else x - y
        samples.append(Sample(record["config"]["class"], record["config"]["seed"], ours - theirs, None, difference,
                              record.get("bootstrap", {}).get("confidence")))
    info = metric_info(metric)
    return combine(samples, 100.0 if info is None or info.percent else 1.0, mark_excluding_zero=True)


def paired_tables(run: RunData) -> list[Table]:
    """Per dataset: each model − the suite's reference row (``compare_to``) on the same test images."""
    selector: RowSelector | None = run.suite.compare_to if run.suite else None
    if selector is None:
        return []
    tables = []
    records = [r for r in run.ok if not r["config"].get("measure_only")]
    for dataset in sorted({r["config"]["dataset"] for r in records}):
        members = [r for r in records if r["config"]["dataset"] == dataset]
        is_reference = [selector.matches(r["config"]["method"], r["config"]["encoder"], r["config"].get("params", {}))
                        for r in members]
        references = [r for r, ref in zip(members, is_reference, strict=True) if ref]
        rows_by_key: dict[tuple, list[Record]] = defaultdict(list)
        for record, ref in zip(members, is_reference, strict=True):
            if not ref:
                rows_by_key[row_key(record)].append(record)
        metric_names = [m for m in run.table_metrics if any(r["metrics"].get(m) is not None for r in members)]
        if not references or not rows_by_key or not metric_names:
            continue
        reference_name = row_name(references, False)
        with_seeds = any(seed_count(group) > 1 for group in rows_by_key.values())
        columns = ["Class", "Model"] + (["n"] if with_seeds else []) + [f"Δ {metric_display(m)}" for m in metric_names]
        table = Table(f"paired-{dataset}", f"Paired differences on {dataset_title(members)}: each model − "
                      f"{reference_name} (percentage points)", columns,
                      decimals={f"Δ {metric_display(m)}": 2 for m in metric_names})
        ambiguous = ambiguous_rows(rows_by_key)
        unpaired = 0
        pairs_by_key: dict[tuple, list[tuple[Record, Record]]] = {}
        for key, group in rows_by_key.items():
            pairs_by_key[key] = []
            for record in group:
                partner = _reference_partner(record, references)
                if partner is None:
                    unpaired += 1
                else:
                    pairs_by_key[key].append((record, partner))
        classes = sorted({r["config"]["class"] for r in members})
        for class_name in [*classes, None]:
            for key, pairs in pairs_by_key.items():
                chosen = [p for p in pairs if class_name is None or p[0]["config"]["class"] == class_name]
                if not chosen:
                    continue
                row: list[Any] = ["mean over classes" if class_name is None else class_name,
                       row_name(rows_by_key[key], key in ambiguous)]
                row += [seed_count([p[0] for p in chosen])] if with_seeds else []
                row += [paired_difference(run, chosen, m) for m in metric_names]
                table.rows.append(row)
        table.footnotes = [
            "Δ = model − reference on the same test images (same dataset, class, resolution and seed); [lo, hi]: "
            "paired bootstrap interval (the same resampled images for both models, resample by resample); "
            "* where it excludes 0. A mean over classes or seeds averages the paired resamples the same way.",
        ] + uncertainty_notes(members, with_seeds, intervals=False) + footnotes_for(members)
        if unpaired:
            table.footnotes.append(f"{unpaired} cell(s) have no reference cell scored on the same test images "
                                   "and are left out.")
        tables.append(table)
    return tables


def failures_table(run: RunData) -> Table | None:
    if not run.failed:
        return None
    table = Table("failures", "Failed cells", ["Cell", "Error"])
    for record in run.failed:
        table.rows.append([record["cell_id"], record.get("error", "")])
    return table


# ----------------------------------------------------------------------------------------------------------
# environment


def environment_lines(run: RunData) -> list[str]:
    """Where the numbers come from: devices, versions, commits, date and the command line."""
    lines = []
    if run.info:
        lines.append(f"Suite: {run.info['suite']['name']} (version {run.info['suite']['version']})")
        if run.info.get("command"):
            lines.append(f"Command: {run.info['command']}")
        lines.append(f"Run started: {run.info.get('created_at', '')}")
    seen = set()
    for record in run.records:
        m, c, d = record.get("machine_info", {}), record.get("commit_info", {}), record.get("device", {})
        gpu = m.get("gpu", {})
        gpu_text = (f"{gpu.get('name')} (driver {gpu.get('driver')}, {gpu.get('memory_total_mb', 0) / 1e3:.0f} GB)"
                    if gpu.get("nvml") else f"none ({gpu.get('reason', 'unknown')})")
        text = (f"Device: {d.get('name')} ({d.get('requested')}, {d.get('torch_threads')} torch threads) · GPU: {gpu_text} · "
                f"torch CUDA build {m.get('cuda')}, cuDNN {m.get('cudnn')} · torch {m.get('torch')} · torchvision {m.get('torchvision')} · "
                f"timm {m.get('timm')} · FrEIA {m.get('freia')} · Python {m.get('python')} · "
                f"commit {c.get('short', c.get('id'))}{' (dirty)' if c.get('dirty') else ''} · host {m.get('hostname')}")
        if text not in seen:
            seen.add(text)
            lines.append(text)
    return lines


# ----------------------------------------------------------------------------------------------------------
# complexity (the paper's Table 6 layout)


def cell_fps(record: Record, region: str = "end_to_end") -> float | None:
    """One cell's fps: images / median time of ``region`` at the largest batch it measured."""
    speed = SpeedRecord.of(record)
    return speed.fps(region) if speed else None


def median_over_cells(values: Iterable[float | None]) -> float | None:
    """A row's speed or size from its cells (classes, seeds): the median of the cells that have one. The one
    rule for these numbers in Table 6 and in every figure."""
    present = [v for v in values if v is not None]
    return float(np.median(present)) if present else None


def row_size_mb(method: str, record: Record) -> float:
    size = record["size"]
    return (size["breakdown_bytes"]["encoder"] if method == ENCODER_ROW else size["total_bytes"]) / 1e6


def cell_gflops(method: str, record: Record) -> float | None:
    """GFLOPs of one image: the encoder's for encoder-only rows, every component's for method rows (empty
    where the record has no count)."""
    flops = record.get("flops") or {}
    if method == ENCODER_ROW:
        value = (flops.get("components") or {}).get("encoder", {}).get("flops")
    else:
        value = flops.get("total_flops")
    return None if value is None else value / 1e9


@dataclass
class ModelRow:
    """One model (or an encoder timed alone) at one input size, and the cells that measured it."""

    method: str  # ENCODER_ROW for an encoder alone
    encoder: str  # base name, e.g. resnet18
    resolution: int | None
    name: str  # the tables' display name, with the marks that apply to it
    records: list[Record] = field(default_factory=list)

    @property
    def region(self) -> str:
        return "encoder" if self.method == ENCODER_ROW else "end_to_end"

    @property
    def label(self) -> str:
        """The name figures print: the table's name and the input size."""
        return f"{self.name} @{self.resolution}"

    def fps(self) -> float | None:
        return median_over_cells(cell_fps(r, self.region) for r in self.records)

    def encoder_fps(self) -> float | None:
        """The encoder timed alone in the same cells, at the levels the method taps (none for encoder-only
        rows)."""
        if self.method == ENCODER_ROW:
            return None
        return median_over_cells(cell_fps(r, "encoder") for r in self.records)

    def latency_ms(self) -> float | None:
        return median_over_cells(speed.latency_ms(self.region, batch=1) for speed in self.speeds())

    def size_mb(self) -> float | None:
        return median_over_cells(row_size_mb(self.method, r) for r in self.records if "size" in r)

    def gflops(self) -> float | None:
        return median_over_cells(cell_gflops(self.method, r) for r in self.records)

    def achieved_gflops_per_s(self) -> float | None:
        """Each cell's GFLOPs × its fps, the median over cells (a cell's work at that cell's speed)."""
        return median_over_cells(gflops * fps for r in self.records
                                 if (gflops := cell_gflops(self.method, r)) is not None
                                 and (fps := cell_fps(r, self.region)) is not None)

    def batch(self) -> str | None:
        batches = sorted({speed.largest.batch for speed in self.speeds()})
        return "/".join(map(str, batches)) or None

    def speeds(self) -> list[SpeedRecord]:
        """The speed measurements of the row's cells (cells without one left out)."""
        return [speed for speed in map(SpeedRecord.of, self.records) if speed is not None]


def model_rows(records: list[Record]) -> list[ModelRow]:
    """Rows as the accuracy tables group records (``row_key``), split by input size, then one encoder-only
    row per encoder and input from the CFLOW cells of those rows (their encoder runs every level up to the
    last); an encoder row carries the marks that apply to an encoder (random weights, reflection padding), and
    cells whose encoders were padded differently make different encoder rows."""
    groups: dict[tuple, list[Record]] = defaultdict(list)
    encoder_cells: dict[tuple, list[Record]] = defaultdict(list)
    for record in records:
        c = record["config"]
        groups[(row_key(record), c["resolution"])].append(record)
        if c["method"] == "cflow":
            padding = record.get("labels", {}).get("encoder_padding")
            encoder_cells[(base_encoder(c["encoder"]), c["resolution"], c["weights"], padding)].append(record)
    ambiguous = ambiguous_rows(dict.fromkeys(key for key, _ in groups))
    rows = [ModelRow(key[0], base_encoder(key[1]), resolution, row_name(members, key in ambiguous), members)
            for (key, resolution), members in groups.items()]
    for (encoder, resolution, weights, padding), members in encoder_cells.items():
        marks = (MARKS["random"] if weights == "random" else "") + (MARKS["reflect"] if padding == "reflect" else "")
        name = f"{short_name(encoder)} encoder only{marks}"
        rows.append(ModelRow(ENCODER_ROW, encoder, resolution, name, members))
    return rows


def speed_rows(run: RunData) -> list[ModelRow]:
    """Table 6's measured rows: every row whose cells measured speed."""
    return model_rows([r for r in run.ok if "speed" in r])


def paper_rows(references: Iterable[Reference]) -> list[tuple[str, str, int | None]]:
    rows: list[tuple[str, str, int | None]] = []
    for ref in references:
        if ref.metric == "fps":
            key = (ref.method, base_encoder(ref.encoder), ref.resolution)
            if key not in rows:
                rows.append(key)
    return rows


def size_reference(references: Iterable[Reference], row: ModelRow) -> Reference | None:
    stc = any(r["config"]["dataset"] == "stc" for r in row.records)
    return find_reference(references, row.method, row.encoder, "size_mb_stc" if stc else "size_mb_mvtec")


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator is not None and denominator else None


@dataclass(frozen=True)
class Column:
    """A Table 6 column: its header, decimals, and its value for a row beside the paper's figures for it."""

    header: str
    decimals: int | None
    value: Callable[[ModelRow, Reference | None, Reference | None], Any]  # (row, paper fps, paper size)


def _paper(ref: Reference | None) -> float | None:
    return ref.value if ref else None


COMPLEXITY_COLUMNS = (
    Column("Model", None, lambda row, fps, size: row.name),
    Column("Input", None, lambda row, fps, size: resolutions(row.records) if row.records else row.resolution),
    Column("Cells", None, lambda row, fps, size: len(row.records) or None),
    Column("Batch", None, lambda row, fps, size: row.batch()),
    Column("fps", 2, lambda row, fps, size: row.fps()),
    Column("fps (paper)", 1, lambda row, fps, size: _paper(fps)),
    Column("ours/paper", 3, lambda row, fps, size: ratio(row.fps(), _paper(fps))),
    Column("Latency b=1 (ms)", 1, lambda row, fps, size: row.latency_ms()),
    Column("Encoder fps", 2, lambda row, fps, size: row.encoder_fps()),
    Column("fps / encoder fps", 3, lambda row, fps, size: ratio(row.fps(), row.encoder_fps())),
    Column("GFLOPs", 2, lambda row, fps, size: row.gflops()),
    Column("GFLOP/s achieved", 1, lambda row, fps, size: row.achieved_gflops_per_s()),
    Column("Size MB", 1, lambda row, fps, size: row.size_mb()),
    Column("Size MB (paper)", 0, lambda row, fps, size: _paper(size)),
    Column("Size ours/paper", 3, lambda row, fps, size: ratio(row.size_mb(), _paper(size))),
)


def _status(row: ModelRow, run: RunData) -> str:
    if row.records:
        return "ok"
    method = "cflow" if row.method == ENCODER_ROW else row.method
    failed = any(r["config"]["method"] == method and base_encoder(r["config"]["encoder"]) == row.encoder
                 for r in run.failed)
    return "failed" if failed else "not run"


def drop_empty_columns(table: Table) -> Table:
    """Remove the columns no row has a value in."""
    keep = [i for i, _ in enumerate(table.columns) if any(row[i] not in (None, "") for row in table.rows)]
    table.columns = [table.columns[i] for i in keep]
    table.rows = [[row[i] for i in keep] for row in table.rows]
    return table


def complexity_table(run: RunData) -> Table | None:
    """Table 6 layout: fps and model size per model and input, ours beside the paper's, and ours/paper."""
    measured = speed_rows(run)
    if not measured:
        return None
    references = run.suite.references if run.suite else ()
    rows: list[ModelRow] = []
    for method, encoder, resolution in paper_rows(references):  # the paper's rows first, in its order
        matching = [r for r in measured if (r.method, r.encoder) == (method, encoder)
                    and resolution in (None, r.resolution)]
        if not matching:
            name = (f"{short_name(encoder)} encoder only" if method == ENCODER_ROW
                    else f"{method_display(method, run.records)}-{short_name(encoder)}")
            matching = [ModelRow(method, encoder, resolution, name)]
        rows += [r for r in matching if not any(r is seen for seen in rows)]
    rows += [r for r in measured if not any(r is seen for seen in rows)]
    columns = [c.header for c in COMPLEXITY_COLUMNS] + ["Status"]
    table = Table("complexity", "Complexity: inference speed and model size (Table 6 layout)", columns,
                  decimals={c.header: c.decimals for c in COMPLEXITY_COLUMNS if c.decimals is not None})
    for row in rows:
        fps_ref = find_reference(references, row.method, row.encoder, "fps", resolution=row.resolution)
        size_ref = size_reference(references, row)
        table.rows.append([c.value(row, fps_ref, size_ref) for c in COMPLEXITY_COLUMNS] + [_status(row, run)])
    records = [r for row in measured for r in row.records]
    datasets_seen = {r["config"]["dataset"] for r in records}
    devices = sorted({r["device"]["name"] for r in records})
    paper_size = "STC" if datasets_seen == {"stc"} else "MVTec AD"
    table.caption = (f"Measured on {', '.join(devices)}; the paper's figures are on a GTX 1080. A row's fps, "
                     "encoder fps, latency and size are the median over its cells (classes and seeds; "
                     "column Cells) of each cell's value. A cell's fps = images / median time of the "
                     "end-to-end region (network + post-processing, no data loading) at the largest batch "
                     "measured; encoder fps times the encoder alone in the same cells at the levels the "
                     "method taps; fps / encoder fps is the row's fps over its encoder fps. Encoder-only "
                     "rows time the encoder of the CFLOW cells (every level up to the last). "
                     + ("GFLOPs: one image at the row's input (counter, or formula for distance computations; "
                        "see each record's 'flops'); achieved GFLOP/s: each cell's GFLOPs × fps. "
                        if any(row.gflops() is not None for row in measured) else "")
                     + "Size counts everything needed to score (MB = 10^6 bytes); the paper's size column is "
                     f"{paper_size}.")
    notes = footnotes_for(records)
    if any(r["device"]["requested"] == "cpu" for r in records):
        speeds = [speed for speed in map(SpeedRecord.of, records) if speed]
        threads = sorted({speed.torch_threads for speed in speeds if speed.torch_threads is not None})
        iterations = sorted({speed.iterations for speed in speeds if speed.iterations is not None})
        notes.append(f"CPU timings ({', '.join(map(str, threads))} torch threads, "
                     f"{', '.join(map(str, iterations))} timed iterations after "
                     "warm-up): not comparable with the paper's GPU figures; the fps / encoder fps ratio is.")
    table.footnotes = [n for n in notes if not n.startswith("Protocol")]
    return drop_empty_columns(table)


# ----------------------------------------------------------------------------------------------------------
# per class beside the paper (the paper's Table 3 layout)


def per_class_paper_tables(run: RunData) -> list[Table]:
    """Rows are classes (and their average), columns the (model, metric) pairs the paper reports per class,
    each ours beside the paper's; one table per dataset and protocol."""
    references = [r for r in (run.suite.references if run.suite else ()) if r.class_name != "mean"
                  and r.metric in ACCURACY_METRICS]
    if not references:
        return []
    pairs = list(dict.fromkeys((r.method, base_encoder(r.encoder), r.metric) for r in references))
    tables = []
    records = [r for r in run.ok if not r["config"].get("measure_only")]
    for dataset, protocol in sorted({(r["config"]["dataset"], r["config"]["protocol"]) for r in records}):
        members = [r for r in records if r["config"]["dataset"] == dataset and r["config"]["protocol"] == protocol]
        classes = sorted({r["config"]["class"] for r in members} | {r.class_name for r in references})
        columns = ["Class"]
        for method, encoder, metric in pairs:
            head = f"{method_display(method, run.records)}-{short_name(encoder)} {METRIC_INFO[metric].display}"
            columns += [head, f"{head} (paper)"]
        table = Table(f"table3-{dataset}-{protocol}", f"Per class on {dataset}, {protocol} protocol, beside the "
                      "paper (Table 3 layout, %)", columns, decimals={c: 2 for c in columns[1:]})
        averages: list[list[float]] = [[] for _ in columns[1:]]
        for class_name in classes:
            row: list[Any] = [class_name]
            for method, encoder, metric in pairs:
                ours = percent(mean_or_none([r["metrics"].get(metric) for r in members
                                             if r["config"]["class"] == class_name and r["config"]["method"] == method
                                             and base_encoder(r["config"]["encoder"]) == encoder]))
                ref = find_reference(references, method, encoder, metric, class_name=class_name)
                row += [ours, ref.value if ref else None]
            for i, value in enumerate(row[1:]):
                if value is not None:
                    averages[i].append(value)
            table.rows.append(row)
        table.rows.append(["average (of the classes shown)"]
                          + [float(np.mean(v)) if len(v) == len(classes) else None for v in averages])
        table.footnotes = footnotes_for(members) + [
            "Average only where every class has a value; the paper's numbers are its best epoch per metric "
            "averaged over 4 runs, ours the last epoch of our runs."]
        tables.append(table)
    return tables


# ----------------------------------------------------------------------------------------------------------
# what the columns mean (defined once per report)

METRIC_DEFINITIONS = {
    "image_auroc": "area under the ROC curve of the image scores, defective against good test images (50 is "
                   "chance).",
    "pixel_auroc": "area under the ROC curve of every test pixel's score against the ground-truth masks, "
                   "defect-free images included.",
    "aupro": "area under the per-region-overlap (PRO) curve up to a false-positive rate of 0.3, divided by "
             "0.3 (MVTec AD's AUPRO): every connected defect region counts equally, whatever its size.",
    "image_ap": "average precision of the image scores (area under the precision-recall curve, defective "
                "images positive); chance is the share of defective images.",
    "pixel_ap": "average precision of every test pixel's score against the ground-truth masks; chance is the "
                "share of defect pixels.",
    "aupimo": "mean over defective images of the area under each image's per-image overlap curve against the "
              "log of the false-positive rate on the good images, between 10^-5 and 10^-4, normalized to "
              "[0, 100] (Bertoldo et al., BMVC 2024, as anomalib defines it).",
    "image_f1_max": "the best F1 score of the image scores over all thresholds (the threshold is chosen on "
                    "the test set, so it is an upper bound).",
    "pixel_f1_max": "the best F1 score of the pixel scores over all thresholds (chosen on the test set, an "
                    "upper bound).",
}
COLUMN_DEFINITIONS = {
    "fps": "images per second: images / median time of the timed region at the largest batch measured (see "
           "Table 6's caption for the regions and how a row summarizes its cells).",
    "Encoder fps": "fps of the encoder alone, timed in the same cells at the levels the method taps.",
    "fps / encoder fps": "the row's fps over its encoder fps: the share of the encoder's speed the whole "
                         "method keeps, less tied to the machine than fps itself (not free of it: CPUs "
                         "differ in which kernels are fast).",
    "Latency b=1 (ms)": "median time for one image, batch size 1.",
    "Size MB": "bytes of everything needed to score (encoder up to its last tapped level and the fitted "
               "state), in MB (10^6 bytes).",
    "ours/paper": "our fps over the paper's.",
    "Size ours/paper": "our size over the paper's.",
    "Δ": "ours minus the paper's, in percentage points.",
    "Cells": "how many cells (classes and seeds) the row summarizes.",
    "GFLOPs": "floating-point operations for one image at the row's input, in 10^9: PyTorch's FLOP counter "
              "(a multiply-add counts 2) for the networks, a formula for distance computations (nearest "
              "neighbours, Mahalanobis); each record's 'flops' lists them by component. Encoder-only rows count "
              "the encoder alone.",
    "GFLOP/s achieved": "GFLOPs × fps of each cell, the median over the row's cells: how much of the "
                        "device's arithmetic the method uses.",
}


def _aupro_definition(term: str) -> str | None:
    """AUPRO at any limit (a column "AUPRO@L")."""
    limit = term.removeprefix("AUPRO@") if term.startswith("AUPRO@") else None
    if limit is None:
        return None
    return (f"area under the per-region-overlap (PRO) curve up to a false-positive rate of {limit}, divided by "
            f"{limit}: every connected defect region counts equally, whatever its size.")


def definitions(tables: Iterable[Table]) -> list[tuple[str, str]]:
    """(term, meaning) for every metric or measurement a table's columns name, once, in order of appearance;
    a "(paper)" column is the paper's published value of the term."""
    known = {**{METRIC_INFO[m].display: text for m, text in METRIC_DEFINITIONS.items() if m in METRIC_INFO},
             **COLUMN_DEFINITIONS}
    terms = dict.fromkeys(c.removesuffix(" (paper)") for t in tables for c in t.columns)
    found = [(term, meaning) for term in terms if (meaning := known.get(term) or _aupro_definition(term))]
    if any(c.endswith(" (paper)") for t in tables for c in t.columns):
        found.append(("(paper)", "the number the paper publishes, printed beside ours, never measured here."))
    return found


def all_tables(run: RunData) -> list[Table]:
    """Every table a report shows, in order: complexity, deployment, accuracy (mean, per class, Table 3),
    failures."""
    from anobench.reports.deployment import deployment_table  # it builds on this module's rows and names

    return [t for t in [complexity_table(run), deployment_table(run), *accuracy_tables(run), *paired_tables(run),
                        *per_class_paper_tables(run), failures_table(run)] if t is not None]
