"""The core every layer shares: user-facing errors, name registries and progress bars.

It imports nothing from the rest of anobench, so methods, datasets, the runner and the reports can all use
it without importing one another. Errors are one sentence naming the thing and the fix; the CLI turns
``BenchError`` into exit code 2.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from tqdm.auto import tqdm

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
# registries: the timm ``register_model`` idea, plus lm-evaluation-harness' entry points and references


@dataclass(frozen=True)
class Reference:
    """A ``"package.module:attr"`` reference, imported only when the entry is first used."""

    target: str

    def load(self) -> Any:
        module_name, _, attribute = self.target.partition(":")
        value: Any = importlib.import_module(module_name)
        for part in attribute.split(".") if attribute else ():
            value = getattr(value, part)
        return value


def is_reference(name: str) -> bool:
    """``"package.module:Class"``: a name that says where to import the object from."""
    module, colon, attribute = name.partition(":")
    return bool(colon and module and attribute) and all(p.isidentifier() for p in module.split("."))


@dataclass
class Entry:
    """One registered name: the object (or where to import it from), where it comes from, and light
    metadata (display names) that listing and reports can use without importing the object."""

    name: str
    target: Any
    origin: str
    meta: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """Named entries of one kind.

    Entries come from three places: ``add``/``register`` in code (the built-ins add ``Reference``s, so that
    listing names and checking suites import nothing heavy), the entry-point ``group`` of installed plugin
    packages (discovered on first use), and — where ``references`` is on — any ``"package.module:attr"``
    name, imported when used. Loaded objects must pass ``accepts`` (the base-class check). A duplicate name
    raises instead of silently overwriting; a plugin that cannot be imported is one sentence naming it.
    """

    def __init__(self, kind: str, *, group: str | None = None, references: bool = False,
                 accepts: tuple[str, Callable[[Any], bool]] | None = None) -> None:
        self.kind = kind
        self.group = group
        self.references = references
        self.accepts = accepts  # (what is expected, in words; the check)
        self._entries: dict[str, Entry] = {}
        self._loaded: dict[str, T] = {}
        self._discovered = group is None
        self.shadowed: list[str] = []  # plugin entry points ignored because the name was taken

    def register(self, name: str, **meta: Any) -> Callable[[T], T]:
        """Decorator: register the decorated object under ``name`` (from any importable module)."""
        def decorate(entry: T) -> T:
            self.add(name, entry, origin=f"registered in {getattr(entry, '__module__', '?')}", **meta)
            return entry

        return decorate

    def add(self, name: str, target: Any, *, origin: str = "built-in", **meta: Any) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        self._entries[name] = Entry(name, target, origin, meta)

    def _discover(self) -> None:
        """Add the plugins of the entry-point group once; built-in names win over plugins."""
        if self._discovered:
            return
        self._discovered = True
        for point in entry_points(group=self.group):
            dist = getattr(point, "dist", None)
            origin = f"plugin {dist.name} {dist.version}" if dist else f"plugin ({self.group})"
            if point.name in self._entries:
                self.shadowed.append(f"{self.kind} '{point.name}' from {origin} is ignored: the name is taken by "
                                     f"{self._entries[point.name].origin}")
                continue
            self._entries[point.name] = Entry(point.name, Reference(point.value), origin)

    def entry(self, name: str, where: str | None = None) -> Entry:
        """The entry of ``name`` without importing it (unknown names list the valid ones)."""
        self._discover()
        if name in self._entries:
            return self._entries[name]
        if self.references and is_reference(name):
            return Entry(name, Reference(name), "module reference")
        raise unknown_name(self.kind, name, self._entries, where)

    def get(self, name: str, where: str | None = None) -> T:
        """The object registered as ``name``, imported on first use and checked against the base class."""
        if name in self._loaded:
            return self._loaded[name]
        entry = self.entry(name, where)
        value = entry.target
        if isinstance(value, Reference):
            try:
                value = value.load()
            except BenchError:
                raise
            except Exception as exc:
                raise BenchError(f"The {self.kind} '{name}' ({entry.origin}) cannot be imported from "
                                 f"{value.target} ({type(exc).__name__}: {exc}); install or fix that package, "
                                 f"or remove it from the suite.") from None
        if self.accepts is not None and not self.accepts[1](value):
            raise BenchError(f"The {self.kind} '{name}' ({entry.origin}) is not {self.accepts[0]}; fix the plugin "
                             f"or the name.")
        self._loaded[name] = value
        return value

    def names(self, pattern: str = "*") -> list[str]:
        self._discover()
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        self._discover()
        return name in self._entries


# ----------------------------------------------------------------------------------------------------------
# progress


def progress(iterable: Iterable[T], desc: str, total: int | None = None, leave: bool = False) -> tqdm[T]:
    """Wrap ``iterable`` in a bar on stderr (records and reports stay clean on stdout);
    ``ANOBENCH_PROGRESS=0`` turns bars off (logs of long CI runs)."""
    from tqdm.auto import tqdm  # only where a bar is drawn: keeps `import anobench.core` light

    disabled = os.environ.get("ANOBENCH_PROGRESS", "1") == "0"
    interactive = sys.stderr.isatty()
    return tqdm(iterable, desc=desc, total=total, leave=leave, disable=disabled, file=sys.stderr,
                mininterval=0.2 if interactive else 5.0, dynamic_ncols=True)
