"""Developer sessions: tests, lint, smoke."""

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
def smoke(session: nox.Session) -> None:
    """The smoke suite on generated data, into a fresh run folder."""
    session.install("-e", ".")
    session.run("bench", "run", "--suite", "smoke", *session.posargs)
