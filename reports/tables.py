"""Every table a report shows, in order, what their columns mean, and where the numbers come from;
independent of the output format (markdown, HTML and LaTeX render these)."""

from __future__ import annotations

from collections.abc import Iterable

from anobench.metrics import METRIC_INFO
from anobench.reports.accuracy import accuracy_tables, paired_tables, per_class_paper_tables
from anobench.reports.complexity import complexity_table
from anobench.reports.deployment import deployment_table
from anobench.reports.rows import RunData, Table


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
    return [t for t in [complexity_table(run), deployment_table(run), *accuracy_tables(run), *paired_tables(run),
                        *per_class_paper_tables(run), failures_table(run)] if t is not None]
