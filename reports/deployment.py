"""The deployment table and figure, from the records' ``deployment`` blocks: per model and batch, each
runtime's fps, its ratio to eager PyTorch measured in the same cells, parity (flagged beyond the tolerances
of ``anobench.deployment``) and the size of the export."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from anobench.aggregate import median_over_cells
from anobench.records import Record, RuntimeResult
from anobench.reports.rows import RunData, Table, ambiguous_rows, row_key, row_name
from anobench.runtimes import MAP_TOLERANCE_REL, METRIC_TOLERANCE_PP, RUNTIMES

COLUMNS = ["Model", "Input", "Timing", "Batch", "Runtime", "Precision", "fps", "× torch", "Latency (ms)",
           "Map diff (rel.)", "Score diff (rel.)", "Largest metric diff (pp)", "Parity", "Export (MB)", "Status"]
DECIMALS = {"fps": 1, "× torch": 2, "Latency (ms)": 1, "Export (MB)": 1}


def deployed_models(run: RunData) -> dict[tuple[str, int], list[Record]]:
    """The cells that measured runtimes, by model (method, encoder, parameters, input size), named as the
    other tables name them."""
    groups: dict[tuple, list[Record]] = defaultdict(list)
    for record in run.ok:
        if record.get("deployment"):
            groups[row_key(record) + (record["config"]["resolution"],)].append(record)
    ambiguous = ambiguous_rows(key[:-1] for key in groups)
    return {(row_name(records, key[:-1] in ambiguous), key[-1]): records for key, records in groups.items()}


def _entries(records: list[Record], runtime: str) -> list[RuntimeResult]:
    return [r["deployment"]["runtimes"][runtime] for r in records if runtime in r["deployment"]["runtimes"]]


def _timing(entries: list[RuntimeResult], batch: str, field: str) -> float | None:
    """The median over cells of a timing field at ``batch``."""
    return median_over_cells((e.get("batches") or {}).get(batch, {}).get(field) for e in entries)


def _largest(values: list[float | None]) -> float | None:
    present = [abs(v) for v in values if v is not None]
    return max(present) if present else None


def parity_verdict(entries: list[RuntimeResult]) -> str:
    """"ok" where every cell's parity holds, "differs" where one does not, empty where none was checked."""
    checked = [e["parity"]["within_tolerance"] for e in entries if "within_tolerance" in e.get("parity", {})]
    if not checked:
        return ""
    return "ok" if all(checked) else "differs"


def runtime_row(name: str, records: list[Record], runtime: str, batch: str) -> list[Any]:
    """One table row: a model under one runtime at one batch, its cells summarized (timings: median over
    cells; differences: the largest over cells)."""
    entries = _entries(records, runtime)
    parities = [e.get("parity", {}) for e in entries]
    metric_pp = [d for p in parities for d in (p.get("metric_difference_pp") or {}).values()]
    export = median_over_cells(e.get("export_bytes") for e in entries)
    failures = sorted({f"{e.get('status')}: {e.get('reason', '')}" for e in entries if e.get("status") != "ok"})
    config, deployment = records[0]["config"], records[0]["deployment"]
    return [name, config["resolution"], deployment.get("protocol"), int(batch), runtime,
            entries[0].get("precision") if entries else None, _timing(entries, batch, "fps"),
            None if runtime == "torch" else _timing(entries, batch, "ratio_to_torch"),
            _timing(entries, batch, "latency_ms"), _largest([p.get("map_max_rel") for p in parities]),
            _largest([p.get("score_max_rel") for p in parities]), _largest(metric_pp),
            "reference" if runtime == "torch" else parity_verdict(entries),
            None if export is None else export / 1e6, "; ".join(failures) or "ok"]


def deployment_table(run: RunData) -> Table | None:
    """Every model's runtimes, batch by batch, PyTorch first."""
    models = deployed_models(run)
    if not models:
        return None
    table = Table("deployment", "Deployment: fps per runtime, ratio to eager PyTorch, parity and export size",
                  COLUMNS, decimals=DECIMALS)
    for (name, _), records in models.items():
        present = {rt for r in records for rt in r["deployment"]["runtimes"]}
        runtimes = [rt for rt in RUNTIMES if rt in present] + sorted(present - set(RUNTIMES))  # PyTorch first
        batches = sorted({b for r in records for e in r["deployment"]["runtimes"].values()
                          for b in e.get("batches") or {}}, key=int)
        for batch in batches:
            table.rows += [runtime_row(name, records, runtime, batch) for runtime in runtimes]
    for row in table.rows:  # differences print in scientific notation
        row[9:11] = [None if v is None else f"{v:.1e}" for v in row[9:11]]
        row[11] = None if row[11] is None else f"{row[11]:.4f}"
    timings = {r["deployment"].get("protocol"): r["deployment"].get("timing") for rs in models.values() for r in rs}
    table.caption = (
        "Each runtime scores the whole test set from the model exported to ONNX (the method's scoring graph, "
        "post-processing included) and is timed in the same cells as eager PyTorch. fps and latency: median "
        "over cells; × torch: the runtime's fps over PyTorch's, timed in the same run (median over cells). "
        "Map and score diff: the largest absolute difference from PyTorch's maps and image scores over the "
        "test set, relative to the largest PyTorch value, the largest over cells; metric diff: the largest "
        "|runtime − PyTorch| of any metric, in percentage points. Parity \"differs\" where maps differ by more "
        f"than {MAP_TOLERANCE_REL:g} relative or a metric by more than {METRIC_TOLERANCE_PP:g} pp (int8's "
        "accuracy change shows here). Export: ONNX graph and external data at the test batch (MB = 10^6 bytes). "
        "Timing: " + "; ".join(f"{k}: {v}" for k, v in timings.items()) + ".")
    return table
