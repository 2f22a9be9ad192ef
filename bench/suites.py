"""Suites: declarative TOML files (grid, protocol, dataset, reference numbers) loaded into typed dataclasses.

A suite is found by name in ``bench/suites/`` (and folders given with ``--suite-path``) or by path.
``extends = "other.toml"`` starts from another suite and overrides top-level keys. Unknown keys and wrong
types fail loudly, with one sentence naming the file and the key.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anobench.core import BenchError, unknown_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

BUILTIN_DIR = Path(__file__).resolve().parent / "suites"
PROTOCOLS = ("strict", "paper")
SETTINGS = ("one-class", "multi-class")  # one model per class, or one for all classes (ADer's "unified")
METRIC_RESOLUTIONS = ("input", "original")


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    classes: tuple[str, ...] | None  # None: every class the source has
    root: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GridBlock:
    """methods × encoders × resolutions, with method parameters and optional per-class resolutions."""

    methods: tuple[str, ...]
    encoders: tuple[str, ...]
    resolutions: tuple[int, ...]
    resize: int | None = None  # resize before a centre crop to the resolution (PaDiM: 256 → 224)
    class_resolutions: dict[str, int] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    classes: tuple[str, ...] | None = None  # restricts the suite's classes for this block
    measure_only: bool = False  # speed/size cells that skip accuracy (e.g. encoder-only rows)


@dataclass(frozen=True)
class Reference:
    """A published number, printed beside ours (never in place of it)."""

    method: str
    encoder: str
    metric: str
    value: float
    source: str
    class_name: str = "mean"
    resolution: int | None = None
    note: str = ""


@dataclass(frozen=True)
class MeasureSpec:
    """Speed measurement per cell (off unless a suite asks for it)."""

    speed: bool = False
    batch_sizes: tuple[int, ...] = (1, 32)
    warmup: int = 3
    iterations: int = 10
    cpu_batch_sizes: tuple[int, ...] | None = None  # smaller batches on a CPU, recorded as such
    cpu_warmup: int | None = None
    cpu_iterations: int | None = None  # fewer timed iterations on a CPU, recorded as such

    def on(self, device: str) -> tuple[tuple[int, ...], int, int]:
        """(batch sizes, warm-up iterations, timed iterations) to use on ``device``."""
        if device == "cpu":
            return (self.cpu_batch_sizes or self.batch_sizes,
                    self.warmup if self.cpu_warmup is None else self.cpu_warmup,
                    self.cpu_iterations or self.iterations)
        return self.batch_sizes, self.warmup, self.iterations


@dataclass(frozen=True)
class Suite:
    name: str
    version: int
    description: str
    path: Path
    dataset: DatasetSpec
    grid: tuple[GridBlock, ...]
    protocol: str = "strict"
    seeds: tuple[int, ...] = (0,)
    weights: str = "imagenet"
    allow_random_weights: bool = True
    batch_size: int = 16
    metrics_resolution: str = "input"
    measure: MeasureSpec = MeasureSpec()
    references: tuple[Reference, ...] = ()
    feature_cache_mb: int = 4096  # encoder features shared between cells (0: off, e.g. where memory is measured)
    changelog: tuple[str, ...] = ()
    setting: str = "one-class"
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


# ----------------------------------------------------------------------------------------------------------
# finding suites


def suite_dirs(extra: Sequence[str | Path] = ()) -> list[Path]:
    return [BUILTIN_DIR, *(Path(p) for p in extra)]


def available_suites(extra: Sequence[str | Path] = ()) -> dict[str, Path]:
    """Suite name → file; a later folder's file of the same name wins (with a warning)."""
    found: dict[str, Path] = {}
    for folder in suite_dirs(extra):
        for path in sorted(folder.glob("*.toml")):
            if path.stem in found:
                print(f"warning: suite {path} overrides {found[path.stem]}", file=sys.stderr)
            found[path.stem] = path
    return found


def find_suite(name_or_path: str, extra: Sequence[str | Path] = ()) -> Path:
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.is_file():
        if not path.is_file():
            raise BenchError(f"Suite file {path} does not exist; pass a suite name (bench list suites) or a TOML path.")
        return path
    suites = available_suites(extra)
    if name_or_path not in suites:
        raise unknown_name("suite", name_or_path, suites)
    return suites[name_or_path]


# ----------------------------------------------------------------------------------------------------------
# parsing


class _Table:
    """Typed access to one TOML table, failing with the file and key named."""

    def __init__(self, data: dict[str, Any], path: Path, where: str, allowed: set[str]):
        self.data, self.path, self.where = data, path, where
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise BenchError(f"Suite file {path}: unknown key '{unknown[0]}' in {where}; valid keys: "
                             f"{', '.join(sorted(allowed))}.")

    def fail(self, key: str, expected: str) -> BenchError:
        return BenchError(f"Suite file {self.path}: '{key}' in {self.where} must be {expected}, "
                          f"got {self.data.get(key)!r}.")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ..., expected: str = "") -> Any:
        if key not in self.data:
            if default is ...:
                raise BenchError(f"Suite file {self.path}: {self.where} needs the key '{key}'.")
            return default
        value = self.data[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
            raise self.fail(key, expected or _kind_name(kind))
        return value

    def names(self, key: str, default: Any = ...) -> tuple[str, ...] | None:
        value = self.get(key, list, default, "a list of names")
        if value is None or value is default:
            return value
        if not value or not all(isinstance(v, str) for v in value):
            raise self.fail(key, "a non-empty list of names")
        return tuple(value)

    def ints(self, key: str, default: Any = ...) -> tuple[int, ...]:
        value = self.get(key, list, default, "a list of integers")
        if value is default:
            return value
        if not value or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
            raise self.fail(key, "a non-empty list of positive integers")
        return tuple(value)

    def choice(self, key: str, options: Sequence[str], default: str) -> str:
        value = self.get(key, str, default)
        if value not in options:
            raise self.fail(key, f"one of {', '.join(options)}")
        return value


def _as_tuple(kind) -> tuple:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind_name(kind) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list",
             dict: "a table"}
    return " or ".join(names.get(k, k.__name__) for k in _as_tuple(kind))


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise BenchError(f"Suite file {path} is not valid TOML ({exc}); fix the syntax.") from None
    except OSError as exc:
        raise BenchError(f"Suite file {path} cannot be read ({exc.strerror}).") from None


def _merged(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    data = _read_toml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise BenchError(f"Suite file {path}: 'extends' must be a file name, got {parent!r}.")
    parent_path = (path.parent / parent) if (path.parent / parent).is_file() else find_suite(parent)
    if parent_path.resolve() in seen:
        raise BenchError(f"Suite file {path}: 'extends' forms a cycle through {parent_path}.")
    base = _merged(parent_path, (*seen, path.resolve()))
    return {**base, **data}


TOP_KEYS = {"name", "version", "description", "protocol", "seeds", "weights", "allow_random_weights",
            "batch_size", "metrics_resolution", "dataset", "grid", "measure", "reference", "feature_cache_mb",
            "changelog", "setting"}


def load_suite(name_or_path: str, extra: Sequence[str | Path] = ()) -> Suite:
    """Load, merge (``extends``) and validate a suite; every problem is one sentence naming file and key."""
    path = find_suite(name_or_path, extra)
    return parse_suite(_merged(path), path)


def parse_suite(raw: dict[str, Any], path: Path) -> Suite:
    """Validate a merged suite table (from a file, or as a run folder stored it)."""
    top = _Table(raw, path, "the suite", TOP_KEYS)

    ds = _Table(top.get("dataset", dict), path, "[dataset]", {"name", "classes", "root", "options"})
    classes = ds.get("classes", (list, str), None, "a list of class names or \"all\"")
    if isinstance(classes, str) and classes != "all":
        raise ds.fail("classes", 'a list of class names or "all"')
    dataset = DatasetSpec(
        name=ds.get("name", str),
        classes=None if classes in (None, "all") else ds.names("classes"),
        root=ds.get("root", str, None),
        options=ds.get("options", dict, {}),
    )

    blocks = top.get("grid", list, ..., "a list of [[grid]] tables")
    if not blocks:
        raise top.fail("grid", "a non-empty list of [[grid]] tables")
    grid = []
    for i, block in enumerate(blocks):
        g = _Table(block, path, f"[[grid]] #{i + 1}", {"methods", "encoders", "resolutions", "resize",
                                                        "class_resolutions", "params", "classes",
                                                        "measure_only"})
        class_res = g.get("class_resolutions", dict, {})
        if not all(isinstance(v, int) and v > 0 for v in class_res.values()):
            raise g.fail("class_resolutions", "a table of class = positive integer")
        grid.append(GridBlock(
            methods=g.names("methods"), encoders=g.names("encoders"), resolutions=g.ints("resolutions"),
            resize=g.get("resize", int, None), class_resolutions=dict(class_res),
            params=g.get("params", dict, {}), classes=g.names("classes", None),
            measure_only=g.get("measure_only", bool, False),
        ))

    references = []
    for i, ref in enumerate(top.get("reference", list, [])):
        r = _Table(ref, path, f"[[reference]] #{i + 1}", {"method", "encoder", "metric", "value", "source",
                                                          "class", "resolution", "note"})
        references.append(Reference(
            method=r.get("method", str), encoder=r.get("encoder", str), metric=r.get("metric", str),
            value=float(r.get("value", (int, float))), source=r.get("source", str),
            class_name=r.get("class", str, "mean"), resolution=r.get("resolution", int, None),
            note=r.get("note", str, ""),
        ))

    m = _Table(top.get("measure", dict, {}), path, "[measure]", {"speed", "batch_sizes", "warmup", "iterations",
                                                                 "cpu_batch_sizes", "cpu_warmup",
                                                                 "cpu_iterations"})
    measure = MeasureSpec(speed=m.get("speed", bool, False), batch_sizes=m.ints("batch_sizes", (1, 32)),
                          warmup=m.get("warmup", int, 3), iterations=m.get("iterations", int, 10),
                          cpu_batch_sizes=m.ints("cpu_batch_sizes", None),
                          cpu_warmup=m.get("cpu_warmup", int, None),
                          cpu_iterations=m.get("cpu_iterations", int, None))

    seeds = top.get("seeds", list, [0], "a list of integers")
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise top.fail("seeds", "a non-empty list of integers")
    changelog = top.get("changelog", list, [])
    return Suite(
        name=top.get("name", str),
        version=top.get("version", int),
        description=top.get("description", str, ""),
        path=path,
        dataset=dataset,
        grid=tuple(grid),
        protocol=top.choice("protocol", PROTOCOLS, "strict"),
        seeds=tuple(seeds),
        weights=top.get("weights", str, "imagenet"),
        allow_random_weights=top.get("allow_random_weights", bool, True),
        batch_size=top.get("batch_size", int, 16),
        metrics_resolution=top.choice("metrics_resolution", METRIC_RESOLUTIONS, "input"),
        measure=measure,
        references=tuple(references),
        feature_cache_mb=top.get("feature_cache_mb", int, 4096),
        changelog=tuple(str(c) for c in changelog),
        setting=top.choice("setting", SETTINGS, "one-class"),
        raw=raw,
    )
