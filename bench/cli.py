"""The ``bench`` command line.

Bad input (unknown names, missing data, bad suite files) ends with one sentence on stderr and exit code 2;
``bench run`` exits 1 when a cell failed. ``--debug`` shows tracebacks.

Modules that import torch are imported inside the commands that need them: torch takes seconds to
import, and ``bench compare``, ``bench validate`` or ``--help`` need none of it.
"""

from __future__ import annotations

import shlex
import sys
import traceback
from pathlib import Path

import click
from anobench import compare as compare_module
from anobench.core import BenchError
from anobench.records import RUN_FILE
from anobench.suites import available_suites, load_suite

DEVICES = click.Choice(["auto", "cpu", "cuda"])


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
@click.option("--device", type=DEVICES, default="auto", show_default=True)
@click.option("--out", type=click.Path(path_type=Path),
              help="Run folder; an existing one is continued. Default: runs/NNNN-<suite>.")
@click.option("--weights", help="Encoder weights: imagenet, random, or a path to a weights file.")
@click.option("--allow-random", is_flag=True, help="Allow --weights random in suites that reproduce papers.")
@click.option("--retry-failed", is_flag=True, help="Run again cells whose record says failed.")
@click.option("--suite-path", multiple=True, type=click.Path(), help="Extra folder of suite files.")
@click.option("--protocol", type=click.Choice(["strict", "paper"]), help="Override the suite's scoring protocol.")
@click.option("--metrics-resolution", type=click.Choice(["input", "original"]),
              help="Evaluate maps at the input resolution or at each image's original resolution.")
@click.option("--feature-cache-mb", type=int, help="Encoder features shared between cells, MB (default: the suite's, "
              "4096 unless it says otherwise; 0 turns the cache off).")
@click.option("--plan", "plan_only", is_flag=True, help="Print the cells and their memory estimates; run nothing.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Run cells here one by one, or as Ray tasks across GPUs and nodes.")
@click.option("--address", help="Ray cluster to join (e.g. auto); without it a local Ray instance is started.")
@click.option("--cpus-per-cell", default=1.0, show_default=True, help="CPUs a Ray task asks for.")
@click.option("--report/--no-report", default=True, show_default=True, help="Write the reports at the end.")
@click.option("--image-labels-only", is_flag=True, help="The dataset labels whole images only (test/<defect> "
              "without masks): image metrics are computed, pixel metrics stay empty with the reason.")
def run(suite_name, data_root, dataset, classes, device, out, weights, allow_random, retry_failed, suite_path,
        protocol, metrics_resolution, feature_cache_mb, plan_only, executor, address, cpus_per_cell, report,
        image_labels_only):
    """Run a suite: every cell of its grid, one record each, then the report."""
    from anobench import reports
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
    run_dir = out or next_run_dir(Path("runs"), suite.name)
    options = RunOptions(device=resolve_device(device), data_root=data_root or stored.get("data_root"),
                         weights=weights, dataset=dataset,
                         classes=tuple(c.strip() for c in classes.split(",")) if classes else None,
                         retry_failed=retry_failed, allow_random=allow_random or stored.get("allow_random", False),
                         protocol=protocol, metrics_resolution=metrics_resolution,
                         feature_cache_mb=feature_cache_mb, image_labels_only=image_labels_only,
                         command=shlex.join(["bench", *sys.argv[1:]]))
    if plan_only:
        click.echo(format_plan(memory_plans(suite, options), options.device))
        return
    click.echo(f"Suite {suite.name} → {run_dir} (device {options.device})", err=True)
    summary = run_suite(suite, run_dir, options, make_executor(executor, address, cpus_per_cell))
    if report:
        for path in reports.write_reports(run_dir):
            click.echo(f"Report: {path}")
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
    for path in reports.write_reports(run_dir, chosen):
        click.echo(str(path))


@cli.command("compare")
@click.argument("new")
@click.argument("baseline")
@click.option("--tolerance-pp", default=0.5, show_default=True, help="Allowed accuracy drop, percentage points.")
@click.option("--metric-tolerance", multiple=True, metavar="METRIC=PP", help="Per-metric drop, e.g. aupro=1.0.")
@click.option("--speed-tolerance", default=15.0, show_default=True, help="Allowed speed drop, percent.")
@click.option("--absolute-speed/--no-absolute-speed", default=True, show_default=True,
              help="Also compare absolute fps between records of the same device (off for shared CPU runners, "
                   "whose speed swings between runs; the fps ratio is always compared).")
@click.option("--strict", is_flag=True, help="Cells present on one side only are a failure too.")
@click.option("--format", "fmt", type=click.Choice(sorted(compare_module.RENDERERS)), default="text",
              show_default=True)
@click.option("--output", type=click.Path(path_type=Path), help="Also write the summary to this file.")
def compare_command(new, baseline, tolerance_pp, metric_tolerance, speed_tolerance, absolute_speed, strict, fmt,
                    output):
    """Compare NEW with BASELINE (run folders, records files or stored baseline names): exit 1 on a
    regression, 2 on unusable input."""
    tolerances = {}
    for item in metric_tolerance:
        metric, _, value = item.partition("=")
        if metric not in compare_module.ACCURACY_METRICS or not value:
            raise BenchError(f"--metric-tolerance {item!r} must be METRIC=PP with METRIC one of "
                             f"{', '.join(compare_module.ACCURACY_METRICS)}.")
        tolerances[metric] = float(value)
    result = compare_module.compare(compare_module.load_cells(new), compare_module.load_cells(baseline),
                                    tolerance_pp=tolerance_pp, metric_tolerances=tolerances,
                                    speed_tolerance_pct=speed_tolerance, absolute_speed=absolute_speed)
    text = compare_module.RENDERERS[fmt](result)
    click.echo(text)
    if output:
        output.write_text(text + "\n", encoding="utf-8")
    if result.regressions or (strict and (result.only_new or result.only_baseline)):
        sys.exit(1)


@cli.group()
def baseline() -> None:
    """Stored baselines for regression checks."""


@baseline.command("save")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("name")
@click.option("--dir", "folder", type=click.Path(path_type=Path), default=compare_module.BASELINES_DIR,
              show_default=True, help="Where baselines are stored (committed with the code).")
def baseline_save(run_dir: Path, name: str, folder: Path) -> None:
    """Store RUN_DIR's records (without artifacts) as baseline NAME."""
    click.echo(str(compare_module.save_baseline(run_dir, name, folder)))


@cli.command("list")
@click.argument("kind", type=click.Choice(["suites", "methods", "encoders", "datasets"]))
def list_command(kind: str) -> None:
    """List the registered suites, methods, encoders or datasets."""
    from anobench import datasets, methods

    if kind == "suites":
        for name, path in available_suites().items():
            suite = load_suite(str(path))
            click.echo(f"{name:16s} {suite.description}")
    elif kind == "methods":
        for name in methods.list_methods():
            click.echo(f"{name:16s} {(methods.METHODS.get(name).__doc__ or '').strip().splitlines()[0]}")
    elif kind == "encoders":
        for name in methods.list_encoders():
            click.echo(f"{name:24s} {methods.ENCODERS.get(name)}")
        click.echo("Any other timm model name works too (timm.list_models()).")
    else:
        for name in datasets.list_datasets():
            click.echo(f"{name:16s} {(datasets.DATASETS.get(name).__doc__ or '').strip().splitlines()[0]}")


@cli.command()
@click.argument("suite_name")
@click.option("--suite-path", multiple=True, type=click.Path())
def validate(suite_name: str, suite_path) -> None:
    """Check a suite file: keys, types and every method, encoder and dataset name, without running."""
    from anobench.runner import check_names

    suite = load_suite(suite_name, suite_path)
    check_names(suite)
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
