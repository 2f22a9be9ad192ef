"""Memory plans: before anything runs, what each cell will need, and which cells cannot fit.

Estimates come from the method's own plan (``memory_plan``; an encoder-based method's from its encoder's
shapes, built on PyTorch's meta device: no weights, no compute, and its learned state and working buffers,
such as PaDiM's covariances, SPADE's gallery or CFLOW's decoders) and the harness's own buffers: decoded
images and the test set's maps at the input resolution, and the evaluation's pixel stream, whose peak is set
by the largest image at the resolution the metrics are computed at (each test image's size read from its
header when that is the original) and not by the number of images (the pixels go through disk: at most 8
bytes each). They are plans, not measurements; records carry the measured peaks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psutil
import torch

from anobench.cells import Cell, build_method
from anobench.datasets.base import DatasetSource, image_header
from anobench.pixelstream import memory_bound
from anobench.statistics import NORMAL_TAIL_MAX

GB = 1e9
HOST_HEADROOM = 0.9  # refuse a cell whose estimate exceeds this share of what is available


@dataclass
class CellPlan:
    cell: Cell
    n_train: int
    n_test: int
    method_parts: dict[str, int] = field(default_factory=dict)
    host_bytes: int = 0
    device_bytes: int = 0
    disk_bytes: int = 0  # the evaluation's pixel stream, in the run folder while a cell is evaluated
    refusal: str | None = None
    note: str = ""


def available_memory(device: str) -> tuple[int, int | None]:
    """(host bytes available now, device bytes in total or None on the CPU)."""
    host = psutil.virtual_memory().available
    if device.startswith("cuda") and torch.cuda.is_available():
        return host, torch.cuda.get_device_properties(torch.device(device)).total_memory
    return host, None


def estimate(cell: Cell, source: DatasetSource, device: str) -> CellPlan:
    """The cell's memory plan; a cell whose shapes cannot be worked out gets a note (and will fail on its
    own, with its reason, if it cannot run)."""
    n_train = len(cell.training_samples(source))
    test = [] if cell.measure_only else source.samples(cell.class_name, "test")
    n_test = len(test)
    try:
        parts = build_method(cell, device).memory_plan(cell.resolution, n_train, cell.batch_size)
    except Exception as exc:  # a plan is advice: the cell itself reports what goes wrong
        return CellPlan(cell, n_train, n_test, note=f"no estimate ({type(exc).__name__}: {exc})")
    pixels = cell.resolution * cell.resolution
    harness = (n_train + n_test) * 3 * pixels  # decoded images kept as uint8
    harness += n_test * pixels * (4 + 1)  # maps and masks at the input resolution
    evaluated = [pixels] * len(test)
    if test and cell.metrics_resolution == "original":
        evaluated = [width * height for width, height in (image_header(ref.image_path) for ref in test)]
    if evaluated:
        harness += memory_bound(max(evaluated)) + n_test * 3 * 4 * 2 * NORMAL_TAIL_MAX  # + bootstrap's counts
    plan = CellPlan(cell, n_train, n_test, parts, disk_bytes=8 * sum(evaluated))
    method_total = sum(parts.values())
    if device.startswith("cuda"):
        plan.device_bytes = method_total
        plan.host_bytes = harness
    else:
        plan.host_bytes = method_total + harness
    return plan


def judge(plans: list[CellPlan], device: str) -> None:
    """Mark cells that cannot fit, or cannot be evaluated as asked, with the reason."""
    host, device_total = available_memory(device)
    for plan in plans:
        cell = plan.cell
        if cell.metrics_resolution == "original" and cell.resize != cell.resolution:
            plan.refusal = (f"metrics at the original resolution need uncropped maps, but this cell crops "
                            f"{cell.resolution} of {cell.resize}")
        elif plan.host_bytes > HOST_HEADROOM * host:
            plan.refusal = (f"needs about {plan.host_bytes / GB:.1f} GB of host memory, "
                            f"{host / GB:.1f} GB available")
        elif device_total is not None and plan.device_bytes > HOST_HEADROOM * device_total:
            plan.refusal = (f"needs about {plan.device_bytes / GB:.1f} GB of device memory, "
                            f"the device has {device_total / GB:.1f} GB")


def format_plan(plans: list[CellPlan], device: str) -> str:
    host, device_total = available_memory(device)
    header = (f"{len(plans)} cells on {device}; host memory available {host / GB:.1f} GB"
              + (f", device memory {device_total / GB:.1f} GB" if device_total else ""))
    rows = [("cell", "train", "test", "host GB", "device GB", "disk GB", "largest parts", "verdict")]
    for plan in plans:
        largest = sorted(plan.method_parts.items(), key=lambda kv: -kv[1])[:2]
        rows.append((plan.cell.label, str(plan.n_train), str(plan.n_test), f"{plan.host_bytes / GB:.2f}",
                     f"{plan.device_bytes / GB:.2f}" if device.startswith("cuda") else "-",
                     f"{plan.disk_bytes / GB:.2f}",
                     ", ".join(f"{k} {v / GB:.2f}" for k, v in largest),
                     f"REFUSED: {plan.refusal}" if plan.refusal else plan.note or "ok"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [header] + ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)
