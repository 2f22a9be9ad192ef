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
from matplotlib.ticker import LogFormatter

from anobench import artifacts
from anobench.aggregate import mean_or_none, median_over_cells
from anobench.records import Record
from anobench.reports.complexity import (
    ENCODER_ROW,
    cell_fps,
    model_rows,
    paper_rows,
    size_reference,
    speed_rows,
)
from anobench.reports.deployment import deployed_models, deployment_table
from anobench.reports.rows import RunData, ambiguous_rows, find_reference, row_key, row_name

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


def _row_fps(records: list[Record]) -> tuple[float | None, str]:
    """Table 6's fps of a row (the median over its cells of the timed end-to-end fps) where the run measured
    speed, else the median of the wall clock of predict (labelled as such)."""
    if any("speed" in r for r in records):
        return median_over_cells(cell_fps(r) for r in records), "timed end-to-end, median over cells"
    return (median_over_cells(r.get("timings", {}).get("predict_wall_images_per_s") for r in records),
            "wall clock of predict, data loading included, median over cells")


def _log_axes(ax, *axes: str) -> None:
    """Log scale with ticks printed as plain numbers (30, not 3×10¹; in-between ticks labelled on short
    axes), and room for the point labels."""
    for name in axes:
        getattr(ax, f"set_{name}scale")("log")
        axis = getattr(ax, f"{name}axis")
        axis.set_major_formatter(LogFormatter(labelOnlyBase=False))
        axis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.5)))
    ax.margins(x=0.2, y=0.12)


def _legend_outside(fig: Figure, ax, ncols: int = 3) -> None:
    """The legend below the axes, never over a data point."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=ncols, fontsize=8, frameon=False)


def _pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points no other point beats on both axes (higher is better on both), by increasing x."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (-p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return sorted(front)


def accuracy_vs_fps(run: RunData) -> list[Plot]:
    """Accuracy (the accuracy tables' mean over classes) against fps (Table 6's median over cells)."""
    groups = _grouped(_accuracy_records(run))
    if not groups:
        return []
    names = _names(groups)
    fig, axes = new_figure(1, 2, (10, 4.4))
    kinds = set()
    for ax, metric, label in zip(axes, ("image_auroc", "pixel_auroc"), ("Detection AUROC (%)", "Localization AUROC (%)"),
                                 strict=True):
        points = []
        for i, (key, group) in enumerate(groups.items()):
            by_resolution: dict[int, list[Record]] = defaultdict(list)
            for record in group:
                by_resolution[record["config"]["resolution"]].append(record)
            for resolution, members in sorted(by_resolution.items()):
                fps, kind = _row_fps(members)
                value = mean_or_none([r["metrics"].get(metric) for r in members])
                if fps is None or value is None:
                    continue
                kinds.add(kind)
                points.append((fps, 100 * value))
                ax.scatter(fps, 100 * value, color=COLOURS[i % len(COLOURS)], s=40, zorder=3)
                ax.annotate(f"{names[key]} @{resolution}", (fps, 100 * value), fontsize=7,
                            xytext=(4, 3), textcoords="offset points")
        if points:
            front = _pareto(points)
            ax.plot([p[0] for p in front], [p[1] for p in front], "--", color="0.5", zorder=2, label="Pareto front")
        _log_axes(ax, "x")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
    for ax in axes:
        ax.set_xlabel("fps (" + "; ".join(sorted(kinds)) + ")", fontsize=8)
    _legend_outside(fig, axes[0])
    return [Plot("accuracy-vs-fps", "Accuracy (mean over classes) against fps (median over cells)", fig)]


def _size_axis(ax, values: list[float]) -> None:
    """Linear from zero; a log axis only where sizes span more than two decades, then with a labelled tick
    at every decade from one below the smallest size, so that bars compare against visible references."""
    if min(values) > 0 and max(values) / min(values) > 100:
        low = 10 ** np.floor(np.log10(min(values)) - 1)
        ax.set_yscale("log")
        ax.set_ylim(low, 10 ** np.ceil(np.log10(max(values)) + 0.3))
        decades = 10.0 ** np.arange(np.log10(low), np.ceil(np.log10(max(values))) + 1)
        ax.set_yticks(decades, [f"{d:g}" for d in decades])
        ax.set_ylabel("Model size (MB, log scale)")
    else:
        ax.set_ylim(0, 1.15 * max(values))
        ax.set_ylabel("Model size (MB)")


def size_bars(run: RunData) -> list[Plot]:
    """Every model's size (Table 6's median over cells), beside the paper's where it has one."""
    references = run.suite.references if run.suite else ()
    rows = [r for r in model_rows([r for r in run.ok if "size" in r]) if r.method != ENCODER_ROW]
    if not rows:
        return []
    ours = [row.size_mb() for row in rows]
    paper = [ref.value if (ref := size_reference(references, row)) else None for row in rows]
    fig, ax = new_figure(1, 1, (max(5, 1.2 * len(rows) + 2), 4.4))
    x = np.arange(len(rows))
    bars = ax.bar(x - 0.2, ours, 0.4, label="ours (measured)")
    ax.bar_label(bars, [f"{v:.1f}" for v in ours], fontsize=7, padding=2)
    if any(v is not None for v in paper):
        shown = [v if v is not None else 0 for v in paper]
        paper_bars = ax.bar(x + 0.2, shown, 0.4, label="paper", color="none", edgecolor="0.3", hatch="//")
        ax.bar_label(paper_bars, [f"{v:g}" if v is not None else "" for v in paper], fontsize=7, padding=2)
    _size_axis(ax, [v for v in ours + paper if v])
    ax.set_xticks(x, [row.label for row in rows], rotation=30, ha="right", fontsize=8)
    ax.grid(alpha=0.3, axis="y", which="major")
    _legend_outside(fig, ax)
    return [Plot("model-size", "Model size: everything needed to score (median over cells)", fig)]


def fps_vs_size(run: RunData) -> list[Plot]:
    """Table 6's rows: fps against size, ours and the paper's, named as in the table."""
    measured = [row for row in speed_rows(run) if row.fps() is not None and row.size_mb() is not None]
    if not measured:
        return []
    references = run.suite.references if run.suite else ()
    fig, ax = new_figure(1, 1, (7, 5.4))
    for i, row in enumerate(measured):
        colour = COLOURS[i % len(COLOURS)]
        fps, size = row.fps(), row.size_mb()
        ax.scatter(size, fps, color=colour, s=45, zorder=3)
        ax.annotate(row.label, (size, fps), fontsize=7, xytext=(4, 3), textcoords="offset points")
        fps_ref = find_reference(references, row.method, row.encoder, "fps", resolution=row.resolution)
        size_ref = size_reference(references, row)
        if fps_ref and size_ref:
            ax.scatter(size_ref.value, fps_ref.value, facecolors="none", edgecolors=colour, s=45, zorder=3)
    if paper_rows(references):
        ax.scatter([], [], color="0.3", label="ours (measured here)")
        ax.scatter([], [], facecolors="none", edgecolors="0.3", label="paper (GTX 1080)")
    _log_axes(ax, "x", "y")
    ax.set_xlabel("Model size (MB, log)")
    ax.set_ylabel("fps (log; median over cells)")
    ax.grid(alpha=0.3, which="both")
    _legend_outside(fig, ax)
    return [Plot("fps-vs-size", "Speed against model size, ours and the paper's (Table 6's rows)", fig)]


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


def deployment_fps(run: RunData) -> list[Plot]:
    """The deployment table's fps: one bar per runtime, a group per model, a panel per batch size."""
    models = deployed_models(run)
    table = deployment_table(run)
    if table is None:
        return []
    batches = sorted({row[3] for row in table.rows})
    runtimes = list(dict.fromkeys(row[4] for row in table.rows))
    fig, axes = new_figure(1, len(batches), (max(6.0, 1.6 * len(models) * len(batches) + 2), 4.4), squeeze=False)
    width = 0.8 / len(runtimes)
    for ax, batch in zip(axes[0], batches, strict=True):
        x = np.arange(len(models))
        for i, runtime in enumerate(runtimes):
            fps = {(row[0], row[1]): row[6] for row in table.rows if row[3] == batch and row[4] == runtime}
            values = [fps.get(model) or 0.0 for model in models]
            ax.bar(x + (i - (len(runtimes) - 1) / 2) * width, values, width, label=runtime)
        ax.set_xticks(x, [f"{name} @{size}" for name, size in models], rotation=30, ha="right", fontsize=8)
        ax.set_title(f"batch {batch}", fontsize=9)
        ax.set_ylabel("fps (median over cells)")
        ax.grid(alpha=0.3, axis="y")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(runtimes), fontsize=8, frameon=False)
    return [Plot("deployment-fps", "Deployment: fps per runtime (median over cells, timed in the same run)", fig)]


def all_plots(run: RunData) -> list[Plot]:
    return [*fps_vs_size(run), *accuracy_vs_fps(run), *size_bars(run), *deployment_fps(run), *curves(run),
            *histograms(run), *qualitative(run)]
