"""User-facing errors: one sentence naming the thing and the fix; the CLI turns them into exit code 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class BenchError(Exception):
    """A problem with the user's input (names, paths, suite files), reported without a traceback."""

    exit_code = 2


class NotFittedError(RuntimeError):
    """A method was asked to score before `fit` was called."""


def unknown_name(kind: str, value: str, valid: Iterable[str], where: str | None = None) -> BenchError:
    """Build the error for a name that is not registered, with a suggestion and the valid names."""
    valid = sorted(valid)
    place = f" in {where}" if where else ""
    close = difflib.get_close_matches(value, valid, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else "."
    return BenchError(f"Unknown {kind} '{value}'{place}{hint} Valid {kind}s: {', '.join(valid)}.")
