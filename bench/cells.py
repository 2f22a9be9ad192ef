"""Cells: the units of work a suite's grid expands into, each with a stable id derived from its config."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, cast

from anobench import methods
from anobench.core import BenchError
from anobench.records import CellConfig
from anobench.suites import DEFAULT_TABLE_METRICS, BootstrapSpec, MeasureSpec, Suite

if TYPE_CHECKING:
    from anobench.methods.base import AnomalyMethod


@dataclass(frozen=True)
class Cell:
    """One (dataset class, method, encoder, resolution, seed) combination and how to run it."""

    suite: str
    dataset: str
    class_name: str
    method: str
    encoder: str
    resolution: int
    resize: int
    seed: int
    weights: str
    protocol: str
    metrics_resolution: str
    batch_size: int
    params_json: str = "{}"  # method parameters from the suite, canonical JSON (hashable)
    dataset_options_json: str = "{}"
    measure_only: bool = False  # speed and size only: no test-set prediction, no accuracy
    measure: MeasureSpec = MeasureSpec()  # how speed is measured (not part of the config)
    metrics: tuple[str, ...] = DEFAULT_TABLE_METRICS  # the suite's table metrics (those beyond the standard set
    # are computed too, e.g. aupro@0.1); not part of the config
    bootstrap: BootstrapSpec = BootstrapSpec()  # intervals (not part of the config: they change no metric)
    setting: str = "one-class"  # "multi-class": one model trained on every class in train_classes
    train_classes: tuple[str, ...] = ()

    @property
    def params(self) -> dict[str, Any]:
        return json.loads(self.params_json)

    @property
    def dataset_options(self) -> dict[str, Any]:
        return json.loads(self.dataset_options_json)

    def config(self) -> CellConfig:
        """What determines the result (no suite name, no machine): cells with equal configs are comparable."""
        config = asdict(self)
        for key in ("suite", "params_json", "dataset_options_json", "measure", "metrics", "bootstrap"):
            del config[key]
        config["class"] = config.pop("class_name")
        config["params"] = self.params
        config["dataset_options"] = self.dataset_options
        if self.setting == "one-class":  # the default leaves one-class ids as they always were
            del config["setting"], config["train_classes"]
        else:
            config["train_classes"] = list(self.train_classes)
        return cast(CellConfig, config)  # the keys: tests/test_record_schema.py

    @property
    def model_key(self) -> str:
        """What determines the fitted model: the config without the evaluated class (multi-class cells of
        one model share it)."""
        return json.dumps({k: v for k, v in self.config().items() if k != "class"}, sort_keys=True)

    def training_samples(self, source) -> list:
        """The training images: the class's own, or every training class's in the multi-class setting."""
        classes = self.train_classes if self.setting == "multi-class" else (self.class_name,)
        return [ref for name in classes for ref in source.samples(name, "train")]

    @property
    def cell_id(self) -> str:
        digest = hashlib.sha256(json.dumps(self.config(), sort_keys=True).encode()).hexdigest()[:10]
        return f"{self.dataset}/{self.class_name}/{self.method}-{self.encoder}@{self.resolution}/s{self.seed}-{digest}"

    @property
    def label(self) -> str:
        return f"{self.method}-{self.encoder}@{self.resolution} {self.class_name} s{self.seed}"


def build_method(cell: Cell, device: str) -> AnomalyMethod:
    """The cell's method on ``device``: the only place a method is built from a cell."""
    harness = {"encoder": cell.encoder, "weights": cell.weights, "seed": cell.seed, "device": device,
               "protocol": cell.protocol}
    try:
        return methods.build_method(cell.method, harness, cell.params)
    except TypeError as exc:
        raise BenchError(f"Method '{cell.method}' does not take these parameters ({exc}); check [grid.params].") from None


def _canonical(value: dict[str, Any]) -> str:
    return json.dumps(value, sort_keys=True)


def expand(suite: Suite, classes: list[str]) -> list[Cell]:
    """The suite's grid as cells, in grid order: block, class, method, encoder, resolution, seed. In the
    multi-class setting a block's cells share one model trained on all of the block's classes, and a
    model's cells come one after another."""
    cells = []
    for block in suite.grid:
        block_classes = [c for c in classes if block.classes is None or c in block.classes]
        if suite.setting == "multi-class" and block.class_resolutions:
            raise BenchError(f"Suite file {suite.path}: class_resolutions cannot be used with setting = "
                             f"\"multi-class\" (one model sees every class at one input size).")
        for class_name in block_classes:
            for method in block.methods:
                for encoder in block.encoders:
                    for resolution in block.resolutions:
                        resolution = block.class_resolutions.get(class_name, resolution)
                        for seed in suite.seeds:
                            cells.append(Cell(
                                suite=suite.name, dataset=suite.dataset.name, class_name=class_name,
                                method=method, encoder=encoder, resolution=resolution,
                                resize=block.resize or resolution, seed=seed,
                                weights=suite.weights, protocol=suite.protocol,
                                metrics_resolution=suite.metrics_resolution, batch_size=suite.batch_size,
                                params_json=_canonical(block.params),
                                dataset_options_json=_canonical(suite.dataset.options),
                                measure_only=block.measure_only, measure=suite.measure,
                                metrics=suite.metrics, bootstrap=suite.bootstrap,
                                setting=suite.setting,
                                train_classes=tuple(block_classes) if suite.setting == "multi-class" else (),
                            ))
    cells = list(dict.fromkeys(cells))  # per-class resolutions can make two grid points one cell
    if suite.setting == "multi-class":  # a model's cells back to back, so that it is fitted once
        first_seen = {key: i for i, key in enumerate(dict.fromkeys(c.model_key for c in cells))}
        cells.sort(key=lambda c: first_seen[c.model_key])
    return cells
