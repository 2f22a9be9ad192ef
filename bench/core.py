"""The core every layer shares: user-facing errors, name registries and progress bars.

It imports nothing from the rest of anobench, so methods, datasets, the runner and the reports can all use
it without importing one another. Errors are one sentence naming the thing and the fix; the CLI turns
``BenchError`` into exit code 2.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
import sys
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


# ----------------------------------------------------------------------------------------------------------
# errors


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
    plural = kind + ("es" if kind.endswith("s") else "s")
    return BenchError(f"Unknown {kind} '{value}'{place}{hint} Valid {plural}: {', '.join(valid)}.")


# ----------------------------------------------------------------------------------------------------------
# registries (the timm ``register_model`` idea)


class Registry(Generic[T]):
    """Holds named entries of one kind; a duplicate name raises instead of silently overwriting."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorate(entry: T) -> T:
            self.add(name, entry)
            return entry

        return decorate

    def add(self, name: str, entry: T) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        self._entries[name] = entry

    def get(self, name: str, where: str | None = None) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise unknown_name(self.kind, name, self._entries, where) from None

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._entries


# ----------------------------------------------------------------------------------------------------------
# progress


def progress(iterable: Iterable[T], desc: str, total: int | None = None, leave: bool = False) -> Iterable[T]:
    """Wrap ``iterable`` in a bar on stderr (records and reports stay clean on stdout);
    ``ANOBENCH_PROGRESS=0`` turns bars off (logs of long CI runs)."""
    from tqdm.auto import tqdm  # only where a bar is drawn: keeps `import anobench.core` light

    disabled = os.environ.get("ANOBENCH_PROGRESS", "1") == "0"
    interactive = sys.stderr.isatty()
    return tqdm(iterable, desc=desc, total=total, leave=leave, disable=disabled, file=sys.stderr,
                mininterval=0.2 if interactive else 5.0, dynamic_ncols=True)
