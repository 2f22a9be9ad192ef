"""The figures readers expect, drawn only from records and the artifacts the run stored beside them.

Each function returns ``Figure`` items (key, title, matplotlib figure); renderers decide how to embed
them (PNG files for markdown, data URIs for HTML).
"""

from __future__ import annotations

import io
from collections import defaultdict
from dataclasses import dataclass

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from anobench import artifacts
from anobench.records import Record
from anobench.reports.tables import (
    RunData,
    ambiguous_rows,
    find_reference,
    mean_or_none,
    paper_rows,
    row_key,
    row_name,
    row_size_mb,
    row_speed,
    speed_rows,
)

COLOURS = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]


@dataclass
class Plot:
    key: str
    title: str
    figure: Figure
    _png: bytes | None = None


def png_bytes(plot: Plot, dpi: int = 110) -> bytes:
    """The figure as PNG, rendered once however many formats embed it."""
    if plot._png is None:
        buffer = io.BytesIO()
        plot.figure.savefig(buffer, format="png", dpi=dpi)
        plot._png = buffer.getvalue()
    return plot._png


def new_figure(rows: int, cols: int, size: tuple[float, float], **kwargs):
    """A figure detached from pyplot (no global state, nothing to close)."""
    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.subplots(rows, cols, **kwargs)


def _grouped(records: list[Record]) -> dict[tuple, list[Record]]:
    groups: dict[tuple, list[Record]] = defaultdict(list)
    for record in records:
        groups[row_key(record)].append(record)
    return groups


def _names(groups: dict[tuple, list[Record]]) -> dict[tuple, str]:
    ambiguous = ambiguous_rows(groups)
    return {key: row_name(group, key in ambiguous) for key, group in groups.items()}


def _accuracy_records(run: RunData) -> list[Record]:
    return [r for r in run.ok if not r["config"].get("measure_only") and r.get("metrics")]


def _fps(record: Record) -> tuple[float | None, str]:
    """Timed end-to-end fps where the run measured speed, else the wall clock of predict (labelled)."""
    if "speed" in record:
        return row_speed(record["config"]["method"], record)["fps"], "timed end-to-end"
    return record.get("timings", {}).get("predict_wall_images_per_s"), "wall clock of predict, data loading included"


def _pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points no other point beats on both axes (higher is better on both), by increasing x."""
    front = []
    for x, y in sorted(points, key=lambda p: (-p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return sorted(front)


def accuracy_vs_fps(run: RunData) -> list[Plot]:
    groups = _grouped(_accuracy_records(run))
    if not groups:
        return []
    names = _names(groups)
    fig, axes = new_figure(1, 2, (10, 4))
    kinds = set()
    for ax, metric, label in zip(axes, ("image_auroc", "pixel_auroc"), ("Detection AUROC (%)", "Localization AUROC (%)"),
                                 strict=True):
        points = []
        for i, (key, group) in enumerate(groups.items()):
            by_resolution: dict[int, list[Record]] = defaultdict(list)
            for record in group:
                by_resolution[record["config"]["resolution"]].append(record)
            for resolution, members in sorted(by_resolution.items()):
                fps_values = [_fps(r) for r in members]
                kinds.update(kind for _, kind in fps_values)
                fps = mean_or_none([f for f, _ in fps_values])
                value = mean_or_none([r["metrics"].get(metric) for r in members])
                if fps is None or value is None:
                    continue
                points.append((fps, 100 * value))
                ax.scatter(fps, 100 * value, color=COLOURS[i % len(COLOURS)], s=40, zorder=3)
                ax.annotate(f"{names[key]} @{resolution}", (fps, 100 * value), fontsize=7,
                            xytext=(4, 3), textcoords="offset points")
        if points:
            front = _pareto(points)
            ax.plot([p[0] for p in front], [p[1] for p in front], "--", color="0.5", zorder=2, label="Pareto front")
            ax.legend(fontsize=7, loc="lower left")
        ax.set_xscale("log")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
    fig.supxlabel("fps (" + "; ".join(sorted(kinds)) + ")", fontsize=9)
    return [Plot("accuracy-vs-fps", "Accuracy against speed (mean over classes)", fig)]


def size_bars(run: RunData) -> list[Plot]:
    references = run.suite.references if run.suite else ()
    rows: dict[str, tuple[float, float | None]] = {}
    for record in run.ok:
        c = record["config"]
        ref = find_reference(references, c["method"], c["encoder"], "size_mb_stc" if c["dataset"] == "stc"
                             else "size_mb_mvtec")
        rows.setdefault(row_name([record]), (record["size"]["total_bytes"] / 1e6, ref.value if ref else None))
    if not rows:
        return []
    fig, ax = new_figure(1, 1, (max(5, 1.1 * len(rows) + 2), 4))
    x = np.arange(len(rows))
    ours = [v[0] for v in rows.values()]
    paper = [v[1] if v[1] is not None else 0 for v in rows.values()]
    ax.bar(x - 0.2, ours, 0.4, label="ours (measured)")
    if any(v[1] is not None for v in rows.values()):
        ax.bar(x + 0.2, paper, 0.4, label="paper", color="none", edgecolor="0.3", hatch="//")
    ax.set_yscale("log")
    ax.set_xticks(x, list(rows), rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("Model size (MB, log scale)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y", which="both")
    return [Plot("model-size", "Model size: everything needed to score", fig)]


def fps_vs_size(run: RunData) -> list[Plot]:
    measured = speed_rows(run)
    if not measured:
        return []
    references = run.suite.references if run.suite else ()
    fig, ax = new_figure(1, 1, (7, 5))
    for i, ((method, encoder, resolution), record) in enumerate(sorted(measured.items())):
        colour = COLOURS[i % len(COLOURS)]
        fps, size = row_speed(method, record)["fps"], row_size_mb(method, record)
        label = f"{'encoder' if method == 'encoder' else method}-{encoder} @{resolution}"
        ax.scatter(size, fps, color=colour, s=45, zorder=3)
        ax.annotate(label, (size, fps), fontsize=7, xytext=(4, 3), textcoords="offset points")
        fps_ref = find_reference(references, method, encoder, "fps", resolution=resolution)
        size_ref = find_reference(references, method, encoder, "size_mb_mvtec")
        if fps_ref and size_ref:
            ax.scatter(size_ref.value, fps_ref.value, facecolors="none", edgecolors=colour, s=45, zorder=3)
    planned = paper_rows(references)
    if planned:
        ax.scatter([], [], color="0.3", label="ours (measured here)")
        ax.scatter([], [], facecolors="none", edgecolors="0.3", label="paper (GTX 1080)")
        ax.legend(fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("Model size (MB, log)")
    ax.set_ylabel("fps (log)")
    ax.grid(alpha=0.3, which="both")
    return [Plot("fps-vs-size", "Speed against model size, ours and the paper's", fig)]


def _class_artifacts(run: RunData) -> dict[str, list[tuple[str, dict]]]:
    """class → [(row name, artifact arrays)] for every record that stored artifacts."""
    records = [r for r in _accuracy_records(run) if r.get("artifacts")]
    groups = _grouped(records)
    names = _names(groups)
    per_class: dict[str, list[tuple[str, dict]]] = defaultdict(list)
    for key, group in groups.items():
        for record in group:
            arrays = artifacts.read(run.run_dir, record["artifacts"]["file"])
            if arrays is not None:
                label = f"{names[key]} @{record['config']['resolution']} s{record['config']['seed']}"
                per_class[f"{record['config']['dataset']}/{record['config']['class']}"].append((label, arrays))
    return dict(sorted(per_class.items()))


def curves(run: RunData) -> list[Plot]:
    figures = []
    for class_key, entries in _class_artifacts(run).items():
        fig, axes = new_figure(1, 3, (12, 3.8))
        for i, (label, arrays) in enumerate(entries):
            colour = COLOURS[i % len(COLOURS)]
            for ax, name in zip(axes, ("image_roc", "pixel_roc", "pro_curve"), strict=True):
                if name in arrays:
                    ax.plot(arrays[name][0], arrays[name][1], color=colour, label=label, lw=1.3)
        for ax, title, xlabel, ylabel in zip(axes, ("Image ROC", "Pixel ROC", "PRO (to FPR 0.3)"),
                                             ("FPR", "FPR", "FPR"), ("TPR", "TPR", "PRO"), strict=True):
            ax.set_title(title, fontsize=10)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
        axes[2].set_xlim(0, 0.3)
        axes[0].legend(fontsize=7, loc="lower right")
        figures.append(Plot(f"curves-{class_key}", f"ROC and PRO curves: {class_key}", fig))
    return figures


def histograms(run: RunData) -> list[Plot]:
    figures = []
    for class_key, entries in _class_artifacts(run).items():
        fig, axes = new_figure(1, len(entries), (3.6 * len(entries), 3), squeeze=False)
        for ax, (label, arrays) in zip(axes[0], entries, strict=True):
            scores, labels = arrays["image_scores"], arrays["labels"]
            bins = np.histogram_bin_edges(scores, bins=20)
            ax.hist(scores[labels == 0], bins=bins, alpha=0.6, label="good", color="tab:green")
            ax.hist(scores[labels == 1], bins=bins, alpha=0.6, label="defective", color="tab:red")
            ax.set_title(label, fontsize=8)
            ax.set_xlabel("image anomaly score")
            ax.legend(fontsize=7)
        figures.append(Plot(f"histograms-{class_key}", f"Anomaly-score distributions: {class_key}", fig))
    return figures


def qualitative(run: RunData) -> list[Plot]:
    """Image, ground truth, anomaly map and the mask predicted at the pixel F1-max threshold."""
    figures = []
    for class_key, entries in _class_artifacts(run).items():
        for label, arrays in entries:
            if "qualitative_image" not in arrays:
                continue
            n = len(arrays["qualitative_image"])
            fig, axes = new_figure(n, 4, (7.2, 1.9 * n), squeeze=False)
            threshold = float(arrays["pixel_threshold"]) if "pixel_threshold" in arrays else None
            low, high = np.percentile(arrays["qualitative_map"], [1, 99])
            for row in range(n):
                amap = arrays["qualitative_map"][row]
                panels = [(arrays["qualitative_image"][row], None, "image"),
                          (arrays["qualitative_mask"][row], "gray", "ground truth"),
                          (amap, "jet", "anomaly map"),
                          ((amap >= threshold) if threshold is not None else np.zeros_like(amap), "gray",
                           "predicted (F1-max)")]
                for ax, (image, cmap, title) in zip(axes[row], panels, strict=True):
                    kwargs = {"vmin": low, "vmax": high} if title == "anomaly map" else {}
                    ax.imshow(image, cmap=cmap, **kwargs)
                    ax.set_xticks([])
                    ax.set_yticks([])
                    if row == 0:
                        ax.set_title(title, fontsize=8)
            fig.suptitle(f"{class_key}: {label}", fontsize=9)
            figures.append(Plot(f"qualitative-{class_key}-{label}", f"Qualitative: {class_key}, {label}", fig))
    return figures


def all_plots(run: RunData) -> list[Plot]:
    return [*fps_vs_size(run), *accuracy_vs_fps(run), *size_bars(run), *curves(run), *histograms(run),
            *qualitative(run)]
