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
  one-sided Mann–Whitney U p < alpha); records without iteration times fall back to the tolerance. Speed is
  compared only between cells timed alike (on a CPU, the same torch thread count).
- A baseline saved with kernel variants (``save_baseline(variants=...)``) widens a cell's accuracy tolerance
  to the drop that other CPU kernels alone caused in it.
- Cells: a cell that failed in the new run is a regression; so is a cell the baseline has (ok) and the new run
  lacks, unless missing cells are allowed (a deliberately smaller run).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from anobench import statistics
from anobench.core import BenchError
from anobench.metrics import METRIC_INFO
from anobench.records import (
    BatchTiming,
    Record,
    SpeedRecord,
    latest_by_cell,
    read_records,
    records_path,
)

ACCURACY_METRICS = ("image_auroc", "pixel_auroc", "aupro")
BASELINES_DIR = Path(__file__).resolve().parent / "baselines"
ALPHA = 0.05
VARIATION_CONFIDENCE = 0.99  # a cell's accuracy under other kernels stays above its bound this often


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
    only_baseline: list[str] = field(default_factory=list)  # the baseline's ok cells the new run lacks
    notes: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # cell → error, cells that failed in the new run
    allow_missing: bool = False

    @property
    def regressions(self) -> list[Check]:
        return [c for c in self.checks if c.regression]

    @property
    def regression_count(self) -> int:
        """Metric regressions, failed cells and (unless allowed) missing cells: the check fails above zero."""
        missing = 0 if self.allow_missing else len(self.only_baseline)
        return len(self.regressions) + len(self.failed) + missing


def resolve_baseline(location: str) -> Path:
    """A run folder, a records file, or a baseline's name: ``NAME.jsonl`` in the working directory (where
    ``bench baseline save`` writes by default), else one that ships with anobench (``bench/baselines``)."""
    path = Path(location)
    if path.exists():
        return path
    for stored in (Path(f"{location}.jsonl"), BASELINES_DIR / f"{location}.jsonl"):
        if stored.is_file():
            return stored
    names = sorted(p.stem for p in BASELINES_DIR.glob("*.jsonl"))
    raise BenchError(f"{location} is neither a run folder, a records file, NAME.jsonl in the working directory "
                     f"nor a baseline that ships with anobench ({', '.join(names) or 'none'}).")


def load_cells(location: str | Path) -> dict[str, Record]:
    """The last successful record of each cell; one sentence if there is nothing usable."""
    return {k: r for k, r in latest_records(location).items() if r.get("status") == "ok"}


def load_failed(location: str | Path) -> dict[str, str]:
    """Cells whose last record says failed, with their error."""
    latest = latest_records(location)
    return {k: r.get("error", "failed") for k, r in latest.items() if r.get("status") != "ok"}


def latest_records(location: str | Path) -> dict[str, Record]:
    """The last record of each cell, whatever its status; one sentence if there is nothing usable."""
    path = records_path(resolve_baseline(str(location)))
    if not path.is_file():
        raise BenchError(f"{path} does not exist; pass a run folder or its records.jsonl.")
    try:
        records = read_records(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise BenchError(f"{path} cannot be read ({exc}); pass a records.jsonl written by bench run.") from None
    if not records or not all(isinstance(r, dict) and "cell_id" in r for r in records):
        raise BenchError(f"{path} holds no records; pass a records.jsonl written by bench run.")
    return latest_by_cell(records)


def variation_pp(baseline: Record, metric: str) -> float:
    """The drop, in pp, that a change of kernels alone can cause in this cell, from the accuracy the same cell
    reached under other kernel settings when the baseline was recorded (``variation``, see ``save_baseline``):
    the distance from the baseline's value to the one-sided 99% prediction bound of those n values (mean −
    t(0.99, n−1)·s·√(1 + 1/n), Student's t, as few runs leave the spread uncertain). 0 where nothing varied."""
    values = np.asarray(baseline.get("variation", {}).get("metrics", {}).get(metric) or [], dtype=float)
    value = baseline.get("metrics", {}).get(metric)
    if len(values) < 2 or value is None or values.std() == 0:
        return 0.0
    n = len(values)
    from scipy import stats  # here: importing scipy.stats takes a second that most comparisons never need

    half_width = stats.t.ppf(VARIATION_CONFIDENCE, n - 1) * values.std(ddof=1) * np.sqrt(1 + 1 / n)
    sign = 1 if METRIC_INFO[metric].higher_is_better else -1
    return 100 * max(0.0, sign * (value - values.mean()) + half_width)


def same_timing(a: Record, b: Record) -> bool:
    """Whether two cells' speed was measured alike: on a CPU, with the same number of torch threads."""
    speed_a, speed_b = SpeedRecord.of(a), SpeedRecord.of(b)
    threads_a, threads_b = (s.torch_threads if s else None for s in (speed_a, speed_b))
    on_cpu = a.get("device", {}).get("requested") == "cpu" or b.get("device", {}).get("requested") == "cpu"
    return not on_cpu or threads_a == threads_b


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


def _both(old: Record, new: Record, metric: str) -> tuple[float, float] | None:
    """The metric in both records; None where either lacks it."""
    a, b = old.get("metrics", {}).get(metric), new.get("metrics", {}).get(metric)
    return None if a is None or b is None else (a, b)


def _cell_check(cid: str, metric: str, old: Record, values: tuple[float, float], limit: float,
                tolerance_only: bool) -> Check:
    sign = 1 if METRIC_INFO[metric].higher_is_better else -1
    old_value, new_value = 100 * values[0], 100 * values[1]
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
            values = {c: pair for c in cids if (pair := _both(baseline[c], new[c], metric)) is not None}
            present = list(values)
            # a baseline saved with kernel variants allows the drop that other kernels alone caused
            limits = {c: max(tolerances.get(metric, tolerance_pp), variation_pp(baseline[c], metric)) for c in present}
            if len(present) > 1 and not tolerance_only:
                checks.append(_seeds_check(_group_id(present, new, config_key), metric,
                                           [values[c][0] for c in present], [values[c][1] for c in present],
                                           max(limits.values()), alpha))
            else:
                checks += [_cell_check(c, metric, baseline[c], values[c], limits[c], tolerance_only) for c in present]
    return checks


# ----------------------------------------------------------------------------------------------------------
# speed


def _iteration_values(timing: BatchTiming, name: str) -> np.ndarray | None:
    """Per timed iteration: the paired end-to-end/encoder fps ratio, or the end-to-end fps (None without times)."""
    end_to_end, encoder = timing.region("end_to_end"), timing.region("encoder")
    if end_to_end is None or not end_to_end.times_s:
        return None
    if name.startswith("fps_ratio"):
        return None if encoder is None or not encoder.times_s else np.divide(encoder.times_s, end_to_end.times_s)
    return timing.batch / np.asarray(end_to_end.times_s)


def speed_checks(cid: str, old: Record, new: Record, same_device: bool, absolute_speed: bool, tolerance_pct: float,
                 tolerance_only: bool, alpha: float) -> list[Check]:
    checks: list[Check] = []
    old_speed, new_speed = SpeedRecord.of(old), SpeedRecord.of(new)
    if old_speed is None or new_speed is None:
        return checks
    for old_timing in old_speed.batches:
        batch, new_timing = old_timing.batch, new_speed.at(old_timing.batch)
        if new_timing is None:
            continue
        pairs = [(f"fps_ratio@{batch}", old_timing.ratio_to_encoder, new_timing.ratio_to_encoder)]
        if same_device and absolute_speed:  # from each run's fastest iteration, the one load disturbs least
            pairs.append((f"fps@{batch}", old_timing.fps_best(), new_timing.fps_best()))
        for name, old_value, new_value in pairs:
            if not old_value or new_value is None:
                continue
            change = 100 * (new_value / old_value - 1)
            beyond = change < -tolerance_pct
            old_iterations, new_iterations = _iteration_values(old_timing, name), _iteration_values(new_timing, name)
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
            absolute_speed: bool = True, tolerance_only: bool = False, alpha: float = ALPHA,
            new_failed: dict[str, str] | None = None, allow_missing: bool = False) -> Comparison:
    """``new_failed``: the new run's failed cells (cell → error), each a regression; the baseline's cells
    that the new run has neither ok nor failed are missing, a regression unless ``allow_missing``."""
    failed = dict(sorted((new_failed or {}).items()))
    common = [cid for cid in baseline if cid in new]
    if not common and not set(baseline) & set(failed):
        raise BenchError("The new run and the baseline have no cell in common (different suite, data, "
                         "resolution or parameters?); nothing to compare.")
    result = Comparison(only_new=sorted(set(new) - set(baseline)),
                        only_baseline=sorted(set(baseline) - set(new) - set(failed)),
                        failed=failed, allow_missing=allow_missing)
    tolerances = metric_tolerances or {}
    result.checks += accuracy_checks(new, baseline, common, tolerances, tolerance_pp, tolerance_only, alpha)
    devices_differ = False
    untimed: list[str] = []
    for cid in common:
        a, b = baseline[cid], new[cid]
        same_device = a.get("device", {}).get("name") == b.get("device", {}).get("name")
        devices_differ |= not same_device
        if not same_timing(a, b):
            untimed.append(cid)
            continue
        result.checks += speed_checks(cid, a, b, same_device, absolute_speed, speed_tolerance_pct, tolerance_only,
                                      alpha)
    widened = {c.cell_id for c in result.checks
               if c.unit == "pp" and c.limit > tolerances.get(c.check, tolerance_pp)}
    if widened:
        result.notes.append(f"Accuracy tolerance of {len(widened)} cell(s) widened to the variation the "
                            "baseline measured when the same cell ran under other kernel settings (a change "
                            "of CPU alone moves their numbers that much).")
    if untimed:
        result.notes.append(f"Speed not compared for {len(untimed)} cell(s) timed on another number of CPU "
                            "threads than the baseline's (a different measurement; see [measure] cpu_threads).")
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
    count = result.regression_count
    verdict = f"**{count} regression(s)**" if count else "**No regression**"
    lines = [f"### anobench comparison: {verdict} in {len(result.checks)} check(s)", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    ordered = sorted(result.checks, key=lambda c: not c.regression)
    lines += ["| " + " | ".join(_row(c)) + " |" for c in ordered]
    return "\n".join(lines + [""] + _tail(result))


def render_json(result: Comparison) -> str:
    return json.dumps({"regressions": result.regression_count,
                       "checks": [asdict(c) for c in result.checks], "failed": result.failed,
                       "missing": result.only_baseline, "missing_allowed": result.allow_missing,
                       "only_new": result.only_new, "only_baseline": result.only_baseline,
                       "notes": result.notes}, indent=1)


def _tail(result: Comparison) -> list[str]:
    lines = [f"REGRESSION: cell failed in the new run: {cid}: {error}"
             for cid, error in result.failed.items()]
    if result.only_baseline:
        verdict = "allowed (--allow-missing)" if result.allow_missing else "REGRESSION"
        lines.append(f"{verdict}: missing from the new run, ok in the baseline "
                     f"({len(result.only_baseline)}): " + ", ".join(result.only_baseline))
    if result.only_new:
        lines.append(f"Only in the new run ({len(result.only_new)}): " + ", ".join(result.only_new))
    return lines + result.notes


RENDERERS = {"text": render_text, "md": render_markdown, "json": render_json}


# ----------------------------------------------------------------------------------------------------------
# baselines

COMPACT_DROP = ("artifacts", "traceback", "memory", "method_params", "fit_stats", "per_defect")


BASELINE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def kernel_setting(record: Record) -> str:
    """Which CPU and kernels produced a record (its machine and the kernel-choosing environment variables)."""
    machine = record.get("machine_info", {})
    env = ", ".join(f"{k}={v}" for k, v in sorted(machine.get("kernel_env", {}).items()))
    capability = machine.get("cpu_capability", "?") + (f"; {env}" if env else "")
    return f"{machine.get('cpu', 'unknown CPU')} ({capability})"


def add_variation(cells: dict[str, Record], variants: list[dict[str, Record]]) -> None:
    """Give each cell the accuracy it had in every variant run (the suite under other kernel settings)."""
    for cid, record in cells.items():
        runs = [record] + [variant[cid] for variant in variants if cid in variant]
        if len(runs) < 2:
            continue
        metrics = {m: [v for r in runs if (v := r.get("metrics", {}).get(m)) is not None]
                   for m in ACCURACY_METRICS if record.get("metrics", {}).get(m) is not None}
        record["variation"] = {"runs": [kernel_setting(r) for r in runs], "metrics": metrics}


def save_baseline(run_dir: str | Path, name: str, folder: Path, variants: Sequence[str | Path] = ()) -> Path:
    """Store a run's successful records without artifacts or bulky fields, as ``<folder>/<name>.jsonl``
    (``name`` is a plain file name: it cannot leave the folder; the folder is the caller's, never the
    installed package's). ``variants`` are run folders of the same
    suite under other kernel settings: each cell then carries the accuracy it had in each (``variation``),
    and ``compare`` allows a drop of that size."""
    if not BASELINE_NAME.fullmatch(name):
        raise BenchError(f"Baseline name {name!r} must be a plain name (letters, digits, '.', '_', '-', no "
                         f"path), e.g. smoke-cpu; it is stored as {folder}/NAME.jsonl.")
    cells = load_cells(run_dir)
    add_variation(cells, [load_cells(v) for v in variants])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for record in cells.values():
            compact = {k: v for k, v in record.items() if k not in COMPACT_DROP}
            f.write(json.dumps(compact, sort_keys=True) + "\n")
    return path
