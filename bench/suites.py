"""Suites: declarative TOML files (grid, protocol, dataset, reference numbers) loaded into typed dataclasses.

A suite is found by name in ``bench/suites/`` (and folders given with ``--suite-path``) or by path.
``extends = "other.toml"`` starts from another suite and overrides top-level keys. Every key is declared
once, as a dataclass field below (type, default, limits); unknown keys, wrong types and values out of range
fail loudly, with one sentence naming the file and the key.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
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
TIMING_PROTOCOLS = ("interleaved", "mvtec-ad2")  # how deployment runtimes are timed (anobench.deployment)


# ----------------------------------------------------------------------------------------------------------
# the schema: every suite key is a field of the dataclasses below, its type the field's annotation; its
# TOML name, default and limits are given once, with ``suite_key``. Parsing, the valid-key lists in
# messages and the defaults all come from here, so a new key is one field.


def suite_key(default: Any = MISSING, *, doc: str, toml: str | None = None, minimum: int | None = None,
              choices: tuple[str, ...] | None = None, nonempty: bool = False, all_means_none: bool = False,
              expected: str | None = None) -> Any:
    """A suite key: its default (none: the key is required), what it means (``doc``, the sentence the
    documentation's key tables print), its TOML name where it differs from the field name, and what the
    type alone does not say: a least value, the allowed strings, a list that must not be empty, the
    string "all" standing for None, the wording of "must be ..." in messages."""
    metadata = {"suite_key": True, "doc": doc, "toml": toml, "minimum": minimum, "choices": choices,
                "nonempty": nonempty, "all_means_none": all_means_none, "expected": expected}
    if isinstance(default, dict | list):
        return field(default_factory=functools.partial(copy.deepcopy, default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class DatasetSpec:
    name: str = suite_key(doc="The dataset (`bench list datasets`), e.g. `synthetic`, `mvtec`, `folder`.")
    # None ("all" in a suite): every class the source has
    classes: tuple[str, ...] | None = suite_key(None, nonempty=True, all_means_none=True,
                                                 expected='a list of class names or "all"',
                                                 doc='The classes to run; "all" (the default) is every class '
                                                     'the dataset has.')
    root: str | None = suite_key(None, doc="Where the data is; `bench run --data-root` overrides it.")
    options: dict[str, Any] = suite_key({}, doc="The dataset's own options (e.g. `allow_empty_masks = true`, "
                                                "`image_labels_only = true`, the generated data's `size`).")


@dataclass(frozen=True)
class GridBlock:
    """methods × encoders × resolutions, with method parameters and optional per-class resolutions."""

    methods: tuple[str, ...] = suite_key(nonempty=True, doc="Methods by name (`bench list methods`) or as "
                                                            "`module:Class`.")
    encoders: tuple[str, ...] = suite_key(nonempty=True, doc="timm encoders, e.g. `resnet18`, `wide_resnet50_2` "
                                                             "(a tag picks the weights: `wide_resnet50_2.tv_in1k`).")
    resolutions: tuple[int, ...] = suite_key(nonempty=True, minimum=1, doc="Input sizes in pixels (square).")
    resize: int | None = suite_key(None, minimum=1, doc="Resize to this size before a centre crop to the "
                                                        "resolution (PaDiM's 224 of 256); none: resize only.")
    class_resolutions: dict[str, int] = suite_key({}, minimum=1, doc="Per-class input sizes, in place of "
                                                                     "`resolutions` for those classes.")
    params: dict[str, Any] = suite_key({}, doc="Constructor parameters of the block's methods (checked against "
                                               "each constructor before any data is read).")
    classes: tuple[str, ...] | None = suite_key(None, nonempty=True, doc="Runs this block on these of the "
                                                                         "suite's classes only.")
    measure_only: bool = suite_key(False, doc="Speed and size cells that skip accuracy (e.g. encoder-only "
                                              "rows).")

    def __post_init__(self):
        too_large = [r for r in (*self.resolutions, *self.class_resolutions.values())
                     if self.resize is not None and self.resize < r]
        if too_large:
            raise ValueError(f"resize {self.resize} is smaller than the resolution {max(too_large)}; the centre "
                             f"crop must fit in the resized image (set resize to at least {max(too_large)})")


@dataclass(frozen=True)
class Reference:
    """A published number, printed beside ours (never in place of it)."""

    method: str = suite_key(doc="The method the number is for.")
    encoder: str = suite_key(doc="The encoder the number is for.")
    metric: str = suite_key(doc="The metric, by a record's name for it (`image_auroc`, `aupro`, `fps`, ...).")
    value: float = suite_key(doc="The published value, as published (AUROC in %, fps, MB).")
    source: str = suite_key(doc="Where it is published (paper, table, page).")
    class_name: str = suite_key("mean", toml="class", doc="The class, or `mean` for the mean over classes.")
    resolution: int | None = suite_key(None, minimum=1, doc="The input size it was measured at; none: any.")
    note: str = suite_key("", doc="Anything a reader must know to compare with it.")


@dataclass(frozen=True)
class MeasureSpec:
    """Speed measurement per cell (off unless a suite asks for it)."""

    speed: bool = suite_key(False, doc="Time every cell (encoder alone, network, end to end).")
    batch_sizes: tuple[int, ...] = suite_key((1, 32), nonempty=True, minimum=1, doc="Batch sizes to time.")
    warmup: int = suite_key(3, minimum=0, doc="Untimed iterations before timing.")
    iterations: int = suite_key(10, minimum=1, doc="Timed iterations per batch size.")
    # smaller batches and fewer timed iterations on a CPU, recorded as such
    cpu_batch_sizes: tuple[int, ...] | None = suite_key(None, nonempty=True, minimum=1,
                                                        doc="Batch sizes on a CPU; none: `batch_sizes`.")
    cpu_warmup: int | None = suite_key(None, minimum=0, doc="Warm-up iterations on a CPU; none: `warmup`.")
    cpu_iterations: int | None = suite_key(None, minimum=1, doc="Timed iterations on a CPU; none: `iterations`.")
    cpu_threads: int | None = suite_key(None, minimum=1, doc="Torch threads while timing on a CPU; none: the "
                                                             "process's.")
    runtimes: tuple[str, ...] = suite_key(("torch",), nonempty=True,
                                          doc="Deployment runtimes the fitted detector is also scored, timed and "
                                              "checked for parity under (`anobench.deployment`; the deploy extra).")
    protocol: str = suite_key("interleaved", choices=TIMING_PROTOCOLS,
                              doc="How runtimes are timed: `interleaved` (speed's rules) or `mvtec-ad2` (batch 1, "
                                  "host to host, the mean of the last N of 2N runs).")

    @property
    def deploys(self) -> bool:
        """Whether cells measure deployment runtimes (a runtime beyond eager PyTorch, or another protocol)."""
        return self.runtimes != ("torch",) or self.protocol != "interleaved"

    def on(self, device: str) -> tuple[tuple[int, ...], int, int]:
        """(batch sizes, warm-up iterations, timed iterations) to use on ``device``."""
        if device == "cpu":
            return (self.cpu_batch_sizes or self.batch_sizes,
                    self.warmup if self.cpu_warmup is None else self.cpu_warmup,
                    self.cpu_iterations or self.iterations)
        return self.batch_sizes, self.warmup, self.iterations


DEFAULT_TABLE_METRICS = ("image_auroc", "pixel_auroc", "aupro")


@dataclass(frozen=True)
class BootstrapSpec:
    """Bootstrap intervals for every metric of every cell. Not part of a cell's configuration: it changes
    no metric's value, only the intervals beside them."""

    resamples: int = suite_key(1000, minimum=0, doc="Bootstrap resamples of the test images; 0: no intervals "
                                                    "(otherwise at least 100).")
    seed: int = suite_key(0, minimum=0, doc="Seed of the resampling.")
    confidence: float = suite_key(0.95, doc="Confidence level of the percentile intervals, in [0.5, 1).")

    def __post_init__(self):
        if 0 < self.resamples < 100:
            raise ValueError(f"resamples must be 0 (no intervals) or at least 100, got {self.resamples}")
        if not 0.5 <= self.confidence < 1:
            raise ValueError(f"confidence must be a level in [0.5, 1), e.g. 0.95, got {self.confidence}")


@dataclass(frozen=True)
class RowSelector:
    """A table row a suite names (``compare_to``): method and encoder, and the parameters where they matter."""

    method: str = suite_key(doc="The reference row's method.")
    encoder: str = suite_key(doc="The reference row's encoder.")
    params: dict[str, Any] | None = suite_key(None, doc="Its method parameters, where the grid has the method "
                                                        "with several; none: any.")

    def matches(self, method: str, encoder: str, params: dict[str, Any]) -> bool:
        return (method == self.method and encoder.split(".")[0] == self.encoder.split(".")[0]
                and (self.params is None or params == self.params))


@dataclass(frozen=True, kw_only=True)
class Suite:
    name: str = suite_key(doc="The suite's name: run folders are named after it.")
    version: int = suite_key(minimum=1, doc="Raise it when a change alters the numbers; a run folder refuses to "
                                            "mix versions.")
    description: str = suite_key("", doc="One line for `bench list suites` and the report.")
    path: Path
    dataset: DatasetSpec = suite_key(doc="The data: `[dataset]` below.")
    grid: tuple[GridBlock, ...] = suite_key(nonempty=True, doc="One or more `[[grid]]` blocks: methods × "
                                                               "encoders × resolutions.")
    protocol: str = suite_key("strict", choices=PROTOCOLS, doc="Scoring protocol: `strict` (every constant from "
                                                               "the training data) or `paper` (the reference "
                                                               "code's test-set normalization, flagged ‡).")
    seeds: tuple[int, ...] = suite_key((0,), nonempty=True, doc="Seeds; each is a cell of its own.")
    weights: str = suite_key("imagenet", doc="Encoder weights: `imagenet`, `random` (marked †) or a path to a "
                                             "weights file.")
    allow_random_weights: bool = suite_key(True, doc="false: `--weights random` also needs `--allow-random` "
                                                     "(suites meant for published numbers).")
    batch_size: int = suite_key(16, minimum=1, doc="Images per batch for fitting and scoring.")
    metrics_resolution: str = suite_key("input", choices=METRIC_RESOLUTIONS,
                                        doc="Evaluate at the model's input size or against the "
                                            "original-resolution masks.")
    measure: MeasureSpec = suite_key(MeasureSpec(), doc="Speed measurement: `[measure]` below.")
    references: tuple[Reference, ...] = suite_key((), toml="reference", doc="Published numbers printed beside "
                                                                            "ours: `[[reference]]` below.")
    feature_cache_mb: int = suite_key(4096, minimum=0, doc="Encoder features shared between cells, MB; 0: off "
                                                           "(e.g. where memory is measured).")
    changelog: tuple[str, ...] = suite_key((), doc="What each version changed, one line per version.")
    metrics: tuple[str, ...] = suite_key(DEFAULT_TABLE_METRICS, nonempty=True, doc="The accuracy columns of "
                                                                                   "the tables.")
    bootstrap: BootstrapSpec = suite_key(BootstrapSpec(), doc="Confidence intervals: `[bootstrap]` below.")
    compare_to: RowSelector | None = suite_key(None, doc="The reference row of the paired-difference table: "
                                                         "`[compare_to]` below.")
    setting: str = suite_key("one-class", choices=SETTINGS, doc="`one-class`: a model per class; "
                                                                "`multi-class`: one model for every class.")
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        rows = [(m, e, block.params) for block in self.grid for m in block.methods for e in block.encoders]
        if self.compare_to is not None and not any(self.compare_to.matches(*row) for row in rows):
            raise ValueError(f"compare_to names {self.compare_to.method} with {self.compare_to.encoder}, which no "
                             f"[[grid]] has; name a method and encoder of the suite's grid")


# ----------------------------------------------------------------------------------------------------------
# the schema in words (the documentation's key tables are generated from these)


@dataclass(frozen=True)
class KeyDescription:
    key: str  # the TOML name
    expects: str  # what a value must be, in the words of the error messages
    required: bool
    default: str | None  # as TOML would write it; None: required, or left out by default
    doc: str


def schema_tables(cls: type = Suite, heading: str = "") -> dict[str, type]:
    """Every table of the schema under ``cls`` by its TOML heading ("" for the top level, ``[dataset]``,
    ``[[grid]]`` ...), in the order the fields declare them."""
    tables = {heading: cls}
    hints = typing.get_type_hints(cls)
    for name, f in suite_keys(cls).items():
        tp = _optional_inner(hints[f.name])
        if dataclasses.is_dataclass(tp):
            tables |= schema_tables(tp, f"[{name}]")
        elif typing.get_origin(tp) is tuple and dataclasses.is_dataclass(typing.get_args(tp)[0]):
            tables |= schema_tables(typing.get_args(tp)[0], f"[[{name}]]")
    return tables


def describe_keys(cls: type) -> list[KeyDescription]:
    """The keys of one table of the schema, in declaration order."""
    hints = typing.get_type_hints(cls)
    described = []
    for name, f in suite_keys(cls).items():
        tp = _optional_inner(hints[f.name])
        required = f.default is MISSING and f.default_factory is MISSING
        value = None if required else f.default if f.default is not MISSING else f.default_factory()
        if value is not None:
            default: str | None = _toml_value(value)
        elif f.metadata["all_means_none"]:
            default = '"all"'  # None stands for "all"
        else:
            default = None  # required, or left out by default
        described.append(KeyDescription(name, f.metadata["expected"] or _describe(tp, f.metadata), required,
                                        default, f.metadata["doc"]))
    return described


def _toml_value(value: Any) -> str:
    if dataclasses.is_dataclass(value):
        return "its keys' defaults"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return str(value)


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


def suite_source(path: Path) -> str:
    """How a run folder names its suite file: a built-in one by its place in the package
    (``anobench:suites/smoke.toml``, the same on every machine), any other by the path as it was given."""
    if path.resolve().parent == BUILTIN_DIR:
        return f"anobench:suites/{path.name}"
    return str(path)


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


def load_suite(name_or_path: str, extra: Sequence[str | Path] = ()) -> Suite:
    """Load, merge (``extends``) and validate a suite; every problem is one sentence naming file and key."""
    path = find_suite(name_or_path, extra)
    return parse_suite(_merged(path), path)


def parse_suite(raw: dict[str, Any], path: Path) -> Suite:
    """Validate a merged suite table (from a file, or as a run folder stored it)."""
    return _parse(Suite, raw, path, "the suite", {"path": path, "raw": raw})


def suite_keys(cls: type) -> dict[str, Field]:
    """TOML name → field, for the keys of one of the schema's tables."""
    return {f.metadata["toml"] or f.name: f for f in fields(cls) if f.metadata.get("suite_key")}


def _parse(cls: type, data: dict[str, Any], path: Path, where: str,
           fixed: Mapping[str, Any] = MappingProxyType({})) -> Any:
    """One table of the schema as an instance of ``cls`` (``fixed``: its fields that are not suite keys)."""
    keys = suite_keys(cls)
    for name in data:
        if name not in keys:
            close = difflib.get_close_matches(name, keys, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else "."
            raise BenchError(f"Suite file {path}: unknown key '{name}' in {where}{hint} Valid keys: "
                             f"{', '.join(sorted(keys))}.")
    hints = typing.get_type_hints(cls)
    values = dict(fixed)
    for name, f in keys.items():
        if name in data:
            values[f.name] = _convert(data[name], hints[f.name], f.metadata, path, where, name)
        elif f.default is MISSING and f.default_factory is MISSING:
            raise BenchError(f"Suite file {path}: {where} needs the key '{name}'.")
    try:
        return cls(**values)
    except ValueError as exc:  # a rule across keys (e.g. a grid's resize against its resolutions)
        raise BenchError(f"Suite file {path}: {where}: {exc}.") from None


def _optional_inner(tp: Any) -> Any:
    """``X | None`` → ``X`` (TOML has no null: a key that is absent takes its default)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def _convert(value: Any, tp: Any, meta: Mapping[str, Any], path: Path, where: str, name: str) -> Any:
    """``value`` as the annotation ``tp`` asks, or one sentence naming the file, the table and the key."""
    if meta["all_means_none"] and value == "all":
        return None
    tp = _optional_inner(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    try:
        if dataclasses.is_dataclass(tp):
            if isinstance(value, dict):
                return _parse(tp, value, path, f"[{name}]")
        elif origin is tuple and isinstance(value, list) and (value or not meta["nonempty"]):
            if dataclasses.is_dataclass(args[0]):
                if all(isinstance(item, dict) for item in value):
                    return tuple(_parse(args[0], item, path, f"[[{name}]] #{i + 1}") for i, item in enumerate(value))
            else:
                return tuple(_scalar(item, args[0], meta) for item in value)
        elif origin is dict and isinstance(value, dict):
            return {k: _scalar(v, args[1], meta) for k, v in value.items()}
        elif origin is None:
            return _scalar(value, tp, meta)
    except _Mismatch:
        pass
    raise BenchError(f"Suite file {path}: '{name}' in {where} must be {meta['expected'] or _describe(tp, meta)}, "
                     f"got {value!r}.")


class _Mismatch(Exception):
    """A value that does not fit its key (turned into the key's message by ``_convert``)."""


def _scalar(value: Any, tp: Any, meta: Mapping[str, Any]) -> Any:
    if tp is Any:
        return value
    if isinstance(value, bool) != (tp is bool) or not isinstance(value, (int, float) if tp is float else tp):
        raise _Mismatch
    if meta["minimum"] is not None and value < meta["minimum"]:
        raise _Mismatch
    if meta["choices"] is not None and value not in meta["choices"]:
        raise _Mismatch
    return float(value) if tp is float else value


_NOUNS = {str: "string", int: "integer", float: "number", bool: "boolean"}


def _noun(tp: Any, meta: Mapping[str, Any]) -> str:
    noun = _NOUNS.get(tp, getattr(tp, "__name__", str(tp)))
    return {0: "non-negative ", 1: "positive "}.get(meta["minimum"], "") + noun


def _describe(tp: Any, meta: Mapping[str, Any]) -> str:
    """What a key must be, in words, from its type and limits."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if meta["choices"]:
        return f"one of {', '.join(meta['choices'])}"
    if dataclasses.is_dataclass(tp):
        return "a table"
    if origin is tuple:
        items = "tables" if dataclasses.is_dataclass(args[0]) else f"{_noun(args[0], meta)}s"
        return f"a {'non-empty ' if meta['nonempty'] else ''}list of {items}"
    if origin is dict:
        return "a table" if args[1] is Any else f"a table of name = {_noun(args[1], meta)}"
    if tp is bool:
        return "true or false"
    noun = _noun(tp, meta)
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"
