"""Regression checks: a new run against a baseline, cell by cell.

Cells match by ``cell_id``, which is derived from the configuration only (dataset, class, method and
parameters, encoder, resolution, seed, weights, protocol): environment fields never split or join cells,
a change of resolution is another cell.

Each check says which rule decided it (``Check.rule``) and on what evidence (``Check.detail``):

- Accuracy (direction from ``METRIC_INFO``): a regression is a drop beyond the tolerance in percentage
  points *and* beyond the noise. The noise is the seeds' spread where both runs have several seeds of a
  configuration (rule ``seeds``: the mean over seeds dropped, one-sided Welch t-test p < alpha), else the
  baseline cell's bootstrap interval (rule ``interval``: the new value lies outside it on the worse side).
  A baseline without intervals, or ``tolerance_only``, leaves the fixed tolerance alone (rule ``tolerance``).
- Speed: the method/encoder fps ratio measured within each run is compared always (it survives a change of
  machine); absolute fps (from each run's fastest iteration) only when both runs name the same device.
  A regression is a drop beyond the tolerance in percent *and* a shift of the timed iterations'
  distribution (rule ``mann-whitney``: per-iteration ratios or fps of the new run stochastically smaller,
  one-sided Mann–Whitney U p < alpha); records without iteration times fall back to the tolerance.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from anobench import statistics
from anobench.core import BenchError
from anobench.metrics import METRIC_INFO
from anobench.records import Record, latest_by_cell, read_records, records_path

ACCURACY_METRICS = ("image_auroc", "pixel_auroc", "aupro")
BASELINES_DIR = Path(__file__).resolve().parent / "baselines"
ALPHA = 0.05


@dataclass
class Check:
    cell_id: str  # or a configuration's seeds together ("…/s0,1,2-<digest>") for the seeds rule
    check: str  # metric name, "fps_ratio@B" or "fps@B"
    baseline: float
    new: float
    delta: float  # pp for accuracy, % for speed
    unit: str
    limit: float
    regression: bool
    rule: str = "tolerance"  # what decided: tolerance, interval, seeds or mann-whitney
    detail: str = ""  # the evidence: the baseline's interval, a p-value, or why only the tolerance applied


@dataclass
class Comparison:
    checks: list[Check] = field(default_factory=list)
    only_new: list[str] = field(default_factory=list)
    only_baseline: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[Check]:
        return [c for c in self.checks if c.regression]


def resolve_baseline(location: str) -> Path:
    """A run folder, a records file, or the name of a stored baseline (``bench/baselines/NAME.jsonl``)."""
    path = Path(location)
    if path.exists():
        return path
    stored = BASELINES_DIR / f"{location}.jsonl"
    if stored.is_file():
        return stored
    names = sorted(p.stem for p in BASELINES_DIR.glob("*.jsonl"))
    raise BenchError(f"{location} is neither a run folder, a records file nor a stored baseline; stored "
                     f"baselines: {', '.join(names) or 'none'}.")


def load_cells(location: str | Path) -> dict[str, Record]:
    """The last successful record of each cell; one sentence if there is nothing usable."""
    path = records_path(resolve_baseline(str(location)))
    if not path.is_file():
        raise BenchError(f"{path} does not exist; pass a run folder or its records.jsonl.")
    try:
        records = read_records(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise BenchError(f"{path} cannot be read ({exc}); pass a records.jsonl written by bench run.") from None
    if not records or not all(isinstance(r, dict) and "cell_id" in r for r in records):
        raise BenchError(f"{path} holds no records; pass a records.jsonl written by bench run.")
    return {k: r for k, r in latest_by_cell(records).items() if r.get("status") == "ok"}


# ----------------------------------------------------------------------------------------------------------
# accuracy


def _seed_groups(cids: list[str], new: dict[str, Record]) -> dict[str, list[str]]:
    """Common cells grouped by their configuration without the seed."""
    groups: dict[str, list[str]] = defaultdict(list)
    for cid in cids:
        config = {k: v for k, v in new[cid].get("config", {}).items() if k != "seed"}
        groups[json.dumps(config, sort_keys=True, default=str)].append(cid)
    return groups


def _group_id(cids: list[str], records: dict[str, Record], config_key: str) -> str:
    seeds = ",".join(str(records[c]["config"]["seed"]) for c in cids)
    return f"{cids[0].rsplit('/s', 1)[0]}/s{seeds}-{hashlib.sha256(config_key.encode()).hexdigest()[:10]}"


def _seeds_check(group: str, metric: str, old: list[float], new: list[float], limit: float, alpha: float) -> Check:
    sign = 1 if METRIC_INFO[metric].higher_is_better else -1
    old_mean, old_std = statistics.mean_std([100 * v for v in old])
    new_mean, new_std = statistics.mean_std([100 * v for v in new])
    delta = new_mean - old_mean
    p = statistics.welch_drop_p([sign * v for v in new], [sign * v for v in old])
    detail = (f"{len(new)} seeds: baseline {old_mean:.2f} ± {old_std:.2f}, new {new_mean:.2f} ± {new_std:.2f}; "
              f"one-sided Welch p = {p:.3g}")
    return Check(group, metric, old_mean, new_mean, delta, "pp", limit, sign * delta < -limit and p < alpha,
                 "seeds", detail)


def _cell_check(cid: str, metric: str, old: Record, new: Record, limit: float, tolerance_only: bool) -> Check:
    sign = 1 if METRIC_INFO[metric].higher_is_better else -1
    old_value, new_value = 100 * old["metrics"][metric], 100 * new["metrics"][metric]
    delta = new_value - old_value
    beyond_tolerance = sign * delta < -limit
    interval = old.get("intervals", {}).get(metric)
    if tolerance_only or not interval:
        detail = "fixed tolerance only" if tolerance_only else "the baseline has no interval for it"
        return Check(cid, metric, old_value, new_value, delta, "pp", limit, beyond_tolerance, "tolerance", detail)
    lo, hi = 100 * interval[0], 100 * interval[1]
    outside = new_value < lo if sign > 0 else new_value > hi
    confidence = old.get("bootstrap", {}).get("confidence", 0.95)
    detail = (f"baseline {100 * confidence:g}% interval [{lo:.2f}, {hi:.2f}]; new value "
              f"{'outside it' if outside else 'inside it'}")
    return Check(cid, metric, old_value, new_value, delta, "pp", limit, beyond_tolerance and outside, "interval",
                 detail)


def accuracy_checks(new: dict[str, Record], baseline: dict[str, Record], common: list[str], tolerances: dict[str, float],
                    tolerance_pp: float, tolerance_only: bool, alpha: float) -> list[Check]:
    """One check per metric and configuration with several seeds on both sides (seeds rule), else per cell."""
    checks = []
    for config_key, cids in _seed_groups(common, new).items():
        for metric in ACCURACY_METRICS:
            limit = tolerances.get(metric, tolerance_pp)
            present = [c for c in cids if baseline[c].get("metrics", {}).get(metric) is not None
                       and new[c].get("metrics", {}).get(metric) is not None]
            if len(present) > 1 and not tolerance_only:
                checks.append(_seeds_check(_group_id(present, new, config_key), metric,
                                           [baseline[c]["metrics"][metric] for c in present],
                                           [new[c]["metrics"][metric] for c in present], limit, alpha))
            else:
                checks += [_cell_check(c, metric, baseline[c], new[c], limit, tolerance_only) for c in present]
    return checks


# ----------------------------------------------------------------------------------------------------------
# speed


def _speed_entries(record: Record) -> dict[str, tuple[float | None, float | None]]:
    """batch → (end-to-end/encoder fps ratio, best end-to-end fps: the fastest iteration is the one a busy
    machine disturbs least)."""
    batches = record.get("speed", {}).get("batches", {})
    return {b: (t.get("ratio_end_to_end_to_encoder"), t["end_to_end"].get("fps_best", t["end_to_end"]["fps"]))
            for b, t in batches.items()}


def _iteration_values(record: Record, batch: str, name: str) -> np.ndarray | None:
    """Per timed iteration: the paired end-to-end/encoder fps ratio, or the end-to-end fps (None without times)."""
    timings = record.get("speed", {}).get("batches", {}).get(batch, {})
    end_to_end = timings.get("end_to_end", {}).get("times_s")
    if not end_to_end:
        return None
    if name.startswith("fps_ratio"):
        encoder = timings.get("encoder", {}).get("times_s")
        return None if not encoder else np.asarray(encoder) / np.asarray(end_to_end)
    return int(batch) / np.asarray(end_to_end)


def speed_checks(cid: str, old: Record, new: Record, same_device: bool, absolute_speed: bool, tolerance_pct: float,
                 tolerance_only: bool, alpha: float) -> list[Check]:
    checks = []
    old_speed, new_speed = _speed_entries(old), _speed_entries(new)
    for batch in sorted(set(old_speed) & set(new_speed), key=int):
        pairs = [(f"fps_ratio@{batch}", old_speed[batch][0], new_speed[batch][0])]
        if same_device and absolute_speed:
            pairs.append((f"fps@{batch}", old_speed[batch][1], new_speed[batch][1]))
        for name, old_value, new_value in pairs:
            if not old_value or new_value is None:
                continue
            change = 100 * (new_value / old_value - 1)
            beyond = change < -tolerance_pct
            old_iterations, new_iterations = _iteration_values(old, batch, name), _iteration_values(new, batch, name)
            if tolerance_only or old_iterations is None or new_iterations is None:
                detail = "fixed tolerance only" if tolerance_only else "no per-iteration times on both sides"
                checks.append(Check(cid, name, old_value, new_value, change, "%", tolerance_pct, beyond, "tolerance",
                                    detail))
                continue
            p = statistics.slower_p(new_iterations, old_iterations)
            detail = (f"{len(old_iterations)} vs {len(new_iterations)} timed iterations; one-sided Mann-Whitney U "
                      f"p = {p:.3g}")
            checks.append(Check(cid, name, old_value, new_value, change, "%", tolerance_pct, beyond and p < alpha,
                                "mann-whitney", detail))
    return checks


def compare(new: dict[str, Record], baseline: dict[str, Record], *, tolerance_pp: float = 0.5,
            metric_tolerances: dict[str, float] | None = None, speed_tolerance_pct: float = 15.0,
            absolute_speed: bool = True, tolerance_only: bool = False, alpha: float = ALPHA) -> Comparison:
    common = [cid for cid in baseline if cid in new]
    if not common:
        raise BenchError("The new run and the baseline have no cell in common (different suite, data, "
                         "resolution or parameters?); nothing to compare.")
    result = Comparison(only_new=sorted(set(new) - set(baseline)), only_baseline=sorted(set(baseline) - set(new)))
    result.checks += accuracy_checks(new, baseline, common, metric_tolerances or {}, tolerance_pp, tolerance_only,
                                     alpha)
    devices_differ = False
    for cid in common:
        a, b = baseline[cid], new[cid]
        same_device = a.get("device", {}).get("name") == b.get("device", {}).get("name")
        devices_differ |= not same_device
        result.checks += speed_checks(cid, a, b, same_device, absolute_speed, speed_tolerance_pct, tolerance_only,
                                      alpha)
    if not absolute_speed:
        result.notes.append("Absolute fps not compared (--no-absolute-speed): only the method/encoder fps ratio.")
    elif devices_differ:
        result.notes.append("Some cells ran on different devices: absolute fps not compared for them, only the "
                            "method/encoder fps ratio measured within each run.")
    fallback = [c for c in result.checks if c.rule == "tolerance" and not tolerance_only]
    if fallback:
        result.notes.append(f"{len(fallback)} check(s) used the fixed tolerance alone: the baseline (or the new "
                            "run) lacks bootstrap intervals or iteration times; a baseline saved from a current run "
                            "has them.")
    return result


# ----------------------------------------------------------------------------------------------------------
# output


def _row(check: Check) -> list[str]:
    digits = 3 if check.check.startswith("fps_ratio") else 2
    return [check.cell_id, check.check, f"{check.baseline:.{digits}f}", f"{check.new:.{digits}f}",
            f"{check.delta:+.2f} {check.unit}", f"-{check.limit:g} {check.unit}",
            "REGRESSION" if check.regression else "ok", check.rule, check.detail]


HEADER = ["cell", "check", "baseline", "new", "change", "allowed", "verdict", "rule", "evidence"]


def render_text(result: Comparison) -> str:
    rows = [HEADER] + [_row(c) for c in result.checks]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines += _tail(result)
    return "\n".join(lines)


def render_markdown(result: Comparison) -> str:
    verdict = (f"**{len(result.regressions)} regression(s)**" if result.regressions
               else "**No regression**")
    lines = [f"### anobench comparison: {verdict} in {len(result.checks)} check(s)", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    ordered = sorted(result.checks, key=lambda c: not c.regression)
    lines += ["| " + " | ".join(_row(c)) + " |" for c in ordered]
    return "\n".join(lines + [""] + _tail(result))


def render_json(result: Comparison) -> str:
    return json.dumps({"regressions": len(result.regressions), "checks": [asdict(c) for c in result.checks],
                       "only_new": result.only_new, "only_baseline": result.only_baseline,
                       "notes": result.notes}, indent=1)


def _tail(result: Comparison) -> list[str]:
    lines = []
    if result.only_new:
        lines.append(f"Only in the new run ({len(result.only_new)}): " + ", ".join(result.only_new))
    if result.only_baseline:
        lines.append(f"Only in the baseline ({len(result.only_baseline)}): " + ", ".join(result.only_baseline))
    return lines + result.notes


RENDERERS = {"text": render_text, "md": render_markdown, "json": render_json}


# ----------------------------------------------------------------------------------------------------------
# baselines

COMPACT_DROP = ("artifacts", "traceback", "memory", "method_params", "fit_stats", "per_defect")


def save_baseline(run_dir: str | Path, name: str, folder: Path = BASELINES_DIR) -> Path:
    """Store a run's successful records without artifacts or bulky fields, as ``<folder>/<name>.jsonl``."""
    cells = load_cells(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for record in cells.values():
            compact = {k: v for k, v in record.items() if k not in COMPACT_DROP}
            f.write(json.dumps(compact, sort_keys=True) + "\n")
    return path
