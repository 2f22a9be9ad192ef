"""The ``bench`` command line.

Bad input (unknown names, missing data, bad suite files) ends with one sentence on stderr and exit code 2;
``bench run`` exits 1 when a cell failed. ``--debug`` shows tracebacks.

Modules that import torch are imported inside the commands that need them: torch takes seconds to
import, and ``bench compare``, ``bench validate`` or ``--help`` need none of it.
"""

from __future__ import annotations

import json
import shlex
import sys
import traceback
from pathlib import Path

import click

from anobench import compare as compare_module
from anobench.core import BenchError
from anobench.records import RUN_FILE
from anobench.runfolder import RunInterrupted, Terminated, sigterm_interrupts
from anobench.suites import available_suites, load_suite


@click.group()
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.version_option(package_name="anobench")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Benchmark unsupervised visual anomaly detection (CFLOW-AD, PaDiM, SPADE) reproducibly."""
    ctx.obj = {"debug": debug}


@cli.command()
@click.option("--suite", "suite_name", help="Suite name (bench list suites) or path to a suite TOML file.")
@click.option("--data-root", type=click.Path(), help="Dataset folder (e.g. MVTec AD's root, or a folder in its layout).")
@click.option("--dataset", help="Run the suite on another dataset (bench list datasets), e.g. mvtec.")
@click.option("--classes", help="Comma-separated classes to run instead of the suite's.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N (checked before any work).")
@click.option("--out", type=click.Path(path_type=Path),
              help="Run folder; an existing one is continued. Default: runs/NNNN-<suite>.")
@click.option("--weights", help="Encoder weights: imagenet, random, or a path to a weights file.")
@click.option("--allow-random", is_flag=True, help="Allow --weights random in suites that reproduce papers.")
@click.option("--retry-failed", is_flag=True, help="Run again cells whose record says failed.")
@click.option("--force-mixed", is_flag=True, help="Continue an --out run folder although this command's "
              "data, weights, protocol, suite version or device differ from what it was run with.")
@click.option("--suite-path", multiple=True, type=click.Path(), help="Extra folder of suite files.")
@click.option("--protocol", type=click.Choice(["strict", "paper"]), help="Override the suite's scoring protocol.")
@click.option("--metrics-resolution", type=click.Choice(["input", "original"]),
              help="Evaluate maps at the input resolution or at each image's original resolution.")
@click.option("--feature-cache-mb", type=int, help="Encoder features shared between cells, MB (default: the suite's, "
              "4096 unless it says otherwise; 0 turns the cache off).")
@click.option("--plan", "plan_only", is_flag=True, help="Print the cells and their memory estimates; run nothing.")
@click.option("--executor", type=click.Choice(["local", "inline", "ray"]), default="local", show_default=True,
              help="Run cells one by one in a worker process (local; a cell the kernel kills is recorded as "
                   "failed), in this process (inline: for a debugger), or as Ray tasks across GPUs and nodes.")
@click.option("--address", help="Ray cluster to join (e.g. auto); without it a local Ray instance is started.")
@click.option("--cpus-per-cell", default=1.0, show_default=True, help="CPUs a Ray task asks for.")
@click.option("--report/--no-report", default=True, show_default=True, help="Write the reports at the end.")
@click.option("--image-labels-only", is_flag=True, help="The dataset labels whole images only (test/<defect> "
              "without masks): image metrics are computed, pixel metrics stay empty with the reason.")
@click.option("--track", type=click.Choice(["mlflow"]), help="Export each cell to MLflow as it finishes (the track "
              "extra), and the reports at the end.")
@click.option("--tracking-uri", help="With --track: the MLflow tracking URI (default: sqlite file mlflow.db in the "
              "working directory).")
@click.option("--runtimes", help="Comma-separated deployment runtimes instead of the suite's [measure] runtimes, "
              "e.g. torch,onnxruntime,openvino (the deploy extra).")
def run(suite_name, data_root, dataset, classes, device, out, weights, allow_random, retry_failed,
        force_mixed, suite_path, protocol, metrics_resolution, feature_cache_mb, plan_only, executor, address,
        cpus_per_cell, report, image_labels_only, track, tracking_uri, runtimes):
    """Run a suite: every cell of its grid, one record each, then the report."""
    from anobench.environment import resolve_device
    from anobench.executors import make_executor
    from anobench.planning import format_plan
    from anobench.runner import RunOptions, memory_plans, next_run_dir, recorded_run, run_suite

    resuming = out is not None and (out / RUN_FILE).is_file()
    if suite_name is None and not resuming:
        raise BenchError("Pass --suite NAME (see bench list suites), or --out with an existing run folder to continue it.")
    stored: dict = {}
    if resuming:
        recorded_suite, stored = recorded_run(out)
    suite = load_suite(suite_name, suite_path) if suite_name else recorded_suite
    options = RunOptions(device=resolve_device(device), data_root=data_root or stored.get("data_root"),
                         weights=weights, dataset=dataset,
                         classes=tuple(c.strip() for c in classes.split(",")) if classes else None,
                         retry_failed=retry_failed, allow_random=allow_random or stored.get("allow_random", False),
                         force_mixed=force_mixed, protocol=protocol, metrics_resolution=metrics_resolution,
                         feature_cache_mb=feature_cache_mb, image_labels_only=image_labels_only,
                         runtimes=tuple(r.strip() for r in runtimes.split(",")) if runtimes else None,
                         command=shlex.join(["bench", *sys.argv[1:]]))
    if executor == "ray" and ":" in options.device:
        raise BenchError(f"--executor ray places each cell on a free GPU itself; pass --device cuda, not "
                         f"{options.device}.")
    if plan_only:  # writes nothing, not even runs/
        click.echo(format_plan(memory_plans(suite, options), options.device))
        return
    if tracking_uri and not track:
        raise BenchError("--tracking-uri needs --track mlflow; add it, or leave out --tracking-uri.")
    tracker = None
    if track:  # refused before any work where MLflow is missing or its store cannot be reached
        from anobench.track import MlflowTracker

        tracker = MlflowTracker(tracking_uri)
    run_dir = out or next_run_dir(Path("runs"), suite.name)
    click.echo(f"Suite {suite.name} → {run_dir} (device {options.device})", err=True)
    try:
        with sigterm_interrupts():
            on_record = _cell_exporter(tracker, run_dir) if tracker else None
            summary = run_suite(suite, run_dir, options, make_executor(executor, address, cpus_per_cell), on_record)
            if report:
                for path in _write_reports(run_dir):
                    click.echo(f"Report: {path}")
            if tracker:
                _track_after_run(tracker, run_dir)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM as Terminated: the lock is released on the way out
        how = "rerun the same command" if out else f"rerun with --out {run_dir}"
        raise RunInterrupted(f"interrupted; {how} to continue", isinstance(exc, Terminated)) from None
    click.echo(f"{summary.ok} ok, {summary.failed} failed, {summary.skipped} already done. Records: "
               f"{run_dir / 'records.jsonl'}")
    if summary.failed:
        sys.exit(1)


@cli.command("report")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--format", "formats", help="Comma-separated formats among md, html, latex (default: md,html).")
def report_command(run_dir: Path, formats: str | None) -> None:
    """Render the reports of a run folder from its records."""
    from anobench import reports

    chosen = [f.strip() for f in formats.split(",") if f.strip()] if formats else reports.DEFAULT_FORMATS
    for path in _write_reports(run_dir, chosen):
        click.echo(str(path))


def _cell_exporter(tracker, run_dir: Path):
    from anobench.track import cell_exporter

    return cell_exporter(tracker, run_dir, lambda message: click.echo(message, err=True))


def _track_folders(tracker, run_dirs: list[Path]) -> None:
    """Export the folders' cells (those exported before are found, and given their reports)."""
    from anobench.track import folder_records

    exported = already = 0
    for run_dir in run_dirs:
        summary = tracker.export_folder(run_dir, folder_records(run_dir))
        exported, already = exported + summary.exported, already + summary.already
    click.echo(f"MLflow: {exported} run(s) exported, {already} already there; experiment '{tracker.experiment}' "
               f"at {tracker.uri}")


def _track_after_run(tracker, run_dir: Path) -> None:
    """The cells not exported yet, and the reports: a store gone by now is a warning (the run succeeded)."""
    try:
        _track_folders(tracker, [run_dir])
    except Exception as exc:
        click.echo(f"warning: MLflow export failed at the end of the run ({exc}); the records are intact: run "
                   f"bench track {run_dir} --to mlflow --tracking-uri {tracker.uri} later.", err=True)


def _write_reports(run_dir: Path, formats: list[str] | None = None) -> list[Path]:
    """The reports of a run folder; a folder that cannot take them (read-only, full) is one sentence."""
    from anobench import reports

    try:
        return reports.write_reports(run_dir, formats or reports.DEFAULT_FORMATS)
    except OSError as exc:
        raise BenchError(f"Cannot write the reports into {run_dir} ({exc.filename}: {exc.strerror}); the records "
                         f"are intact: make room or make the folder writable, then run bench report {run_dir}.") from None


@cli.command("compare")
@click.argument("new")
@click.argument("baseline")
@click.option("--tolerance-pp", default=0.5, show_default=True, help="Allowed accuracy drop, percentage points.")
@click.option("--metric-tolerance", multiple=True, metavar="METRIC=PP", help="Per-metric drop, e.g. aupro=1.0.")
@click.option("--speed-tolerance", default=15.0, show_default=True, help="Allowed speed drop, percent.")
@click.option("--absolute-speed/--no-absolute-speed", default=True, show_default=True,
              help="Also compare absolute fps between records of the same device (off for shared CPU runners, "
                   "whose speed swings between runs; the fps ratio is always compared).")
@click.option("--allow-missing", is_flag=True,
              help="Cells the baseline has and the new run lacks are no failure (a smaller run on purpose).")
@click.option("--strict", is_flag=True, help="Cells only in the new run are a failure too.")
@click.option("--tolerance-only", is_flag=True, help="Flag every drop beyond the tolerances, noise or not (without "
              "it a drop must also lie beyond the baseline's interval, the seeds' spread, or the timed "
              "iterations' spread).")
@click.option("--alpha", default=compare_module.ALPHA, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="Significance level of the seeds' and the timed iterations' one-sided tests.")
@click.option("--format", "fmt", type=click.Choice(sorted(compare_module.RENDERERS)), default="text",
              show_default=True)
@click.option("--output", type=click.Path(path_type=Path), help="Also write the summary to this file.")
def compare_command(new, baseline, tolerance_pp, metric_tolerance, speed_tolerance, absolute_speed,
                    allow_missing, strict, tolerance_only, alpha, fmt, output):
    """Compare NEW with BASELINE (run folders, records files or stored baseline names): exit 1 on a
    regression (a metric drop, a cell that failed in NEW, a baseline cell NEW lacks), 2 on unusable input."""
    tolerances = {}
    for item in metric_tolerance:
        metric, _, value = item.partition("=")
        if metric not in compare_module.ACCURACY_METRICS or not value:
            raise BenchError(f"--metric-tolerance {item!r} must be METRIC=PP with METRIC one of "
                             f"{', '.join(compare_module.ACCURACY_METRICS)}.")
        tolerances[metric] = float(value)
    result = compare_module.compare(compare_module.load_cells(new), compare_module.load_cells(baseline),
                                    tolerance_pp=tolerance_pp, metric_tolerances=tolerances,
                                    speed_tolerance_pct=speed_tolerance, absolute_speed=absolute_speed,
                                    tolerance_only=tolerance_only, alpha=alpha,
                                    new_failed=compare_module.load_failed(new), allow_missing=allow_missing)
    text = compare_module.RENDERERS[fmt](result)
    click.echo(text)
    if output:
        output.write_text(text + "\n", encoding="utf-8")
    if result.regression_count or (strict and result.only_new):
        sys.exit(1)


@cli.command("export")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet", "jsonl"]), default="csv", show_default=True)
@click.option("--output", type=click.Path(path_type=Path), help="File to write (default: RUN_DIR/records.<format>).")
def export_command(run_dir: Path, fmt: str, output: Path | None) -> None:
    """Write RUN_DIR's records as one flat table (one row per cell), e.g. for pandas or a spreadsheet."""
    from anobench.export import export

    click.echo(str(export(run_dir, fmt, output)))


@cli.command("results")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["md", "html", "csv", "parquet"]), default="md", show_default=True,
              help="md or html: the leaderboard (per dataset and metric a ranking); csv or parquet: one row per "
                   "cell of each folder.")
@click.option("--output", type=click.Path(path_type=Path), help="File to write (default: md and csv to stdout, "
              "html to leaderboard.html, parquet to results.parquet).")
@click.option("--latest", is_flag=True, help="A configuration recorded in several folders: keep only its newest "
              "record (default: one row per run).")
def results_command(run_dirs: tuple[Path, ...], fmt: str, output: Path | None, latest: bool) -> None:
    """One view of several run folders: cells matched by configuration, per dataset and metric a ranking."""
    from anobench.reports import write_results

    try:
        path, text = write_results(run_dirs, fmt, output, latest)
    except OSError as exc:
        raise BenchError(f"Cannot write {exc.filename} ({exc.strerror}); pass --output a file in a folder you can "
                         f"write to.") from None
    click.echo(str(path) if path else text.rstrip("\n"))


@cli.command("track")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--to", "to", type=click.Choice(["mlflow"]), required=True, help="The experiment tracker.")
@click.option("--tracking-uri", help="MLflow tracking URI, e.g. http://127.0.0.1:5000 or sqlite:///runs.db "
              "(default: sqlite file mlflow.db in the working directory; no server needed).")
@click.option("--experiment", default="anobench", show_default=True, help="MLflow experiment to export into.")
def track_command(run_dirs: tuple[Path, ...], to: str, tracking_uri: str | None, experiment: str) -> None:
    """Export each cell of the run folders as one MLflow run (configuration as parameters, metrics and their
    intervals, tags, the record and the report as artifacts). Exporting again adds no duplicate."""
    from anobench.track import MlflowTracker, folder_records

    folders = list(run_dirs)
    for run_dir in folders:  # every folder is read (and refused) before anything is written
        folder_records(run_dir)
    _track_folders(MlflowTracker(tracking_uri, experiment), folders)


@cli.group()
def baseline() -> None:
    """Stored baselines for regression checks."""


@baseline.command("save")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("name")
@click.option("--dir", "folder", type=click.Path(path_type=Path), default=Path("."),
              help="Folder to write NAME.jsonl into (default: the working directory, where `bench compare` "
                   "finds NAME too).")
@click.option("--variant", "variants", multiple=True, type=click.Path(path_type=Path),
              help="A run folder of the same suite under other kernel settings (e.g. MKL_CBWR=COMPATIBLE); "
                   "each cell's accuracy there is stored, and compare allows a drop of that size.")
def baseline_save(run_dir: Path, name: str, folder: Path, variants: tuple[Path, ...]) -> None:
    """Store RUN_DIR's records (without artifacts) as baseline NAME."""
    click.echo(str(compare_module.save_baseline(run_dir, name, folder, list(variants))))


@cli.command("list")
@click.argument("kind", type=click.Choice(["suites", "methods", "encoders", "datasets"]))
def list_command(kind: str) -> None:
    """List the registered suites, methods, encoders or datasets, and where each comes from."""
    from anobench import datasets, methods

    if kind == "suites":
        for name, path in available_suites().items():
            suite = load_suite(str(path))
            click.echo(f"{name:16s} {suite.description}")
        return
    registry = {"methods": methods.METHODS, "encoders": methods.ENCODERS, "datasets": datasets.DATASETS}[kind]
    entries = [registry.entry(name) for name in registry.names()]
    name_width = max(len(e.name) for e in entries)
    origin_width = max(len(e.origin) for e in entries)
    for entry in entries:
        summary = entry.meta.get("display") or _summary(registry, entry.name)
        click.echo(f"{entry.name:{name_width}s}  {entry.origin:{origin_width}s}  {summary}")
    for note in registry.shadowed:
        click.echo(f"warning: {note}", err=True)
    if kind == "encoders":
        click.echo("Any other timm model name works too (timm.list_models()).")


def _summary(registry, name: str) -> str:
    """The first line of an entry's docstring, or why it cannot be imported (listing never fails on a
    broken plugin; commands that need it do)."""
    try:
        return ((registry.get(name).__doc__ or "").strip().splitlines() or [""])[0]
    except BenchError as exc:
        return f"(cannot be loaded: {exc})"


@cli.command("check-method")
@click.argument("method")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
              help="A constructor parameter (value as JSON where it parses, e.g. 3, 0.5, true, [2, 3]; else text).")
def check_method_command(method: str, params: tuple[str, ...]) -> None:
    """Check that METHOD (a registered name or package.module:Class) keeps the method contract the harness
    relies on, on generated data: one line per property; exit 1 if one fails."""
    from anobench.testing import check_method

    results = check_method(method, _parse_params(params))
    for result in results:
        click.echo(result.line())
    failed = [r for r in results if r.passed is False]
    click.echo(f"{method}: {len(results) - len(failed)} of {len(results)} properties hold"
               + (f"; {len(failed)} fail." if failed else "."))
    if failed:
        sys.exit(1)


def _parse_params(items: tuple[str, ...]) -> dict:
    params = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.isidentifier():
            raise BenchError(f"--param {item!r} must be KEY=VALUE with KEY a parameter name, e.g. --param k_images=5.")
        try:
            params[key] = json.loads(text)
        except json.JSONDecodeError:
            params[key] = text
    return params


@cli.command()
@click.argument("suite_name")
@click.option("--suite-path", multiple=True, type=click.Path())
def validate(suite_name: str, suite_path) -> None:
    """Check a suite file: keys, types and every method, encoder and dataset name, without running."""
    from anobench.runner import check_suite

    suite = load_suite(suite_name, suite_path)
    check_suite(suite)
    click.echo(f"{suite.path}: ok ({len(suite.grid)} grid block(s), {len(suite.references)} reference number(s)).")


@cli.group()
def data() -> None:
    """Dataset utilities."""


@data.command()
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder to write (MVTec layout).")
@click.option("--seed", default=0, show_default=True)
@click.option("--size", default=256, show_default=True, help="Image side in pixels.")
@click.option("--classes", help="Comma-separated generated classes (default: all of them).")
@click.option("--train", default=40, show_default=True, help="Defect-free training images per class.")
@click.option("--test-good", default=12, show_default=True)
@click.option("--test-per-defect", default=4, show_default=True, help="Test images per defect kind.")
def synth(out: Path, seed: int, size: int, classes: str | None, train: int, test_good: int,
          test_per_defect: int) -> None:
    """Write a deterministic generated dataset in MVTec layout (same seed → identical files)."""
    from anobench.datasets.synthetic import CLASSES, SynthSpec, write_dataset

    chosen = tuple(c.strip() for c in classes.split(",")) if classes else tuple(CLASSES)
    spec = SynthSpec(seed=seed, size=size, classes=chosen, train=train, test_good=test_good,
                     test_per_defect=test_per_defect)
    write_dataset(out, spec)
    click.echo(f"Wrote {out} ({len(spec.classes)} classes).")


@data.command("fetch")
@click.argument("name")
@click.option("--to", "to", type=click.Path(path_type=Path), required=True,
              help="Folder to put the dataset in.")
@click.option("--sha256", help="Expected SHA-256 for a dataset without a published one (ksdd2).")
@click.option("--keep-archive", is_flag=True,
              help="Keep the verified archive in DIR/.downloads after extracting it.")
@click.option("--convert", is_flag=True,
              help="VisA: also write the MVTec-like layout (DIR/visa_mvtec_layout).")
def fetch_command(name: str, to: Path, sha256: str | None, keep_archive: bool, convert: bool) -> None:
    """Download, verify (SHA-256) and extract dataset NAME: mvtec, visa, btad, mvtec_loco; for mpdd,
    mvtec_ad2, realiad and ksdd2 it says where to get them. An interrupted download resumes when run again."""
    from anobench.fetch import fetch

    click.echo(f"Data root: {fetch(name, to, sha256=sha256, keep_archive=keep_archive, convert=convert)}")


@data.command("convert-visa")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--to", "to", type=click.Path(path_type=Path), required=True,
              help="Folder to write (must not exist).")
def convert_visa_command(source: Path, to: Path) -> None:
    """Write VisA (original layout, split_csv/1cls.csv) in the MVTec-like layout, masks binarised to 0/255."""
    from anobench.fetch import convert_visa

    click.echo(f"Data root: {convert_visa(source, to)}")


def main() -> None:
    """Entry point: BenchError → one sentence and exit 2; anything else → one line unless --debug."""
    debug = "--debug" in sys.argv[1:]
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except RunInterrupted as exc:
        click.echo(str(exc), err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except BenchError as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except Exception as exc:
        if debug:
            raise
        click.echo(f"error: unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)", err=True)
        sys.exit(1)
