"""The accuracy tables: per dataset, each row's metrics as the mean over classes beside the paper's; per
class; per defect type; paired differences against the suite's reference row; the paper's per-class
layout (its Table 3)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import numpy as np

from anobench.aggregate import Estimate, Sample, combine, mean_or_none
from anobench.metrics import METRIC_INFO, metric_info
from anobench.records import Record
from anobench.reports.rows import (
    RunData,
    Table,
    ambiguous_rows,
    base_encoder,
    dataset_title,
    find_reference,
    footnotes_for,
    method_display,
    metric_display,
    metric_estimate,
    percent,
    resolutions,
    row_key,
    row_name,
    seed_count,
    short_name,
    uncertainty_notes,
)
from anobench.suites import Reference, RowSelector

ACCURACY_METRICS = ("image_auroc", "pixel_auroc", "aupro")


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


def reference_partner(record: Record, candidates: list[Record]) -> Record | None:
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
                partner = reference_partner(record, references)
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
