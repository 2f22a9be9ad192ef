"""Developer sessions: tests, lint, smoke, regression, benchmarks."""

import tempfile

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite (what CI runs)."""
    session.install("-e", ".[dev]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".")


@nox.session
def docs(session: nox.Session) -> None:
    """The documentation site, built strictly (a warning fails) into a temporary folder (pass a folder to
    keep it: ``nox -s docs -- SITE_DIR``). Only the ``docs`` extra's tools are installed: the site reads
    anobench from the source tree (docs/hooks.py), so no torch is needed."""
    session.install(*nox.project.load_toml("pyproject.toml")["project"]["optional-dependencies"]["docs"])
    site = session.posargs[0] if session.posargs else tempfile.mkdtemp(prefix="anobench-site-")
    session.run("mkdocs", "build", "--strict", "--site-dir", site)
    session.log(f"site in {site}")


@nox.session
def smoke(session: nox.Session) -> None:
    """The smoke suite on generated data, into a fresh run folder."""
    session.install("-e", ".")
    session.run("bench", "run", "--suite", "smoke", *session.posargs)


@nox.session
def regression(session: nox.Session) -> None:
    """Run the smoke suite and compare it with the committed CPU baseline (exit 1 on a regression)."""
    session.install("-e", ".")
    run_dir = tempfile.mkdtemp(prefix="anobench-regression-") + "/smoke"
    session.run("bench", "run", "--suite", "smoke", "--device", "cpu", "--out", run_dir, "--no-report")
    # Shared CPU runners change speed from one run to the next (+57% seen here between two runs), so CI
    # compares the method/encoder fps ratio measured within each run, not absolute fps.
    session.run("bench", "compare", run_dir, "smoke-cpu", "--format", "md", "--no-absolute-speed", *session.posargs)


@nox.session
def baseline(session: nox.Session) -> None:
    """Record bench/baselines/smoke-cpu.jsonl: the smoke suite, and again under three other kernel settings
    (MKL's generic code path, PyTorch's scalar kernels, both), whose accuracy each cell keeps as its variation."""
    session.install("-e", ".")
    root = tempfile.mkdtemp(prefix="anobench-baseline-")
    variants = {"mkl": {"MKL_CBWR": "COMPATIBLE"}, "aten": {"ATEN_CPU_CAPABILITY": "default"},
                "both": {"MKL_CBWR": "COMPATIBLE", "ATEN_CPU_CAPABILITY": "default"}}
    for name, env in {"base": {}, **variants}.items():
        session.run("bench", "run", "--suite", "smoke", "--device", "cpu", "--out", f"{root}/{name}", "--no-report",
                    env=env)
    session.run("bench", "baseline", "save", f"{root}/base", "smoke-cpu", "--dir", "bench/baselines",
                *[arg for name in variants for arg in ("--variant", f"{root}/{name}")])
    session.run("bench", "compare", f"{root}/base", "smoke-cpu")


@nox.session
def benchmarks(session: nox.Session) -> None:
    """Micro-benchmarks, saved for --benchmark-compare (pass pytest-benchmark options after --)."""
    session.install("-e", ".[dev]")
    session.run("python", "-m", "pytest", "tests/benchmarks", "--benchmark-autosave", *session.posargs)
