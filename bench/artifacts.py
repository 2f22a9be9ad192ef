"""What a cell keeps beside its record for plots: curves, image scores and a few qualitative maps.

Bounded in size whatever the test set: curves are downsampled to at most ``CURVE_POINTS`` points, and at
most ``QUALITATIVE`` test images are kept as ``THUMBNAIL``-pixel thumbnails with their mask and map.
Written by the driver (never by a worker) into ``artifacts/`` as compressed ``.npz``, atomically.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import numpy as np

from anobench import metrics

ARTIFACTS_DIR = "artifacts"
CURVE_POINTS = 512
QUALITATIVE = 4
THUMBNAIL = 128


def _resize(array: np.ndarray, size: int, mode: str) -> np.ndarray:
    """(H, W) or (H, W, C) array resized to size×size (nearest for masks, bilinear otherwise). Torch is
    imported here, where a cell collects its artifacts, so that reading them (reports) needs none."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    t = t[None, None] if t.ndim == 2 else t.permute(2, 0, 1)[None]
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    out = F.interpolate(t, size=(size, size), mode=mode, **kwargs)[0]
    return out[0].numpy() if array.ndim == 2 else out.permute(1, 2, 0).numpy()


def qualitative_indices(labels: np.ndarray, count: int = QUALITATIVE) -> list[int]:
    """Evenly spaced defective images and one defect-free image (deterministic)."""
    defective, good = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    n_defective = min(len(defective), count - 1 if len(good) else count)
    picks = [int(defective[round(i)]) for i in np.linspace(0, len(defective) - 1, n_defective)] if n_defective else []
    if len(good) and len(picks) < count:
        picks.append(int(good[0]))
    return picks


def collect(images: list[np.ndarray], labels: np.ndarray, defect_types: list[str],
            chosen_pixels: list[tuple[np.ndarray, np.ndarray]], image_scores: np.ndarray,
            pixel_curves: dict[str, np.ndarray], pixel_threshold: float | None) -> dict[str, np.ndarray]:
    """Plain arrays for the plots. ``images`` and ``chosen_pixels`` (mask, map) are those of the images
    ``qualitative_indices(labels)`` chooses; ``pixel_curves`` the pixel ROC and PRO curves as (2, points)
    arrays (``anobench.pixel_metrics``), empty where the test set has no defect pixels."""
    out: dict[str, np.ndarray] = {"image_scores": image_scores.astype(np.float32), "labels": labels.astype(np.int8),
                                  "defect_types": np.array(defect_types)}
    if labels.any() and not labels.all():
        fpr, tpr, _ = metrics.roc_curve(labels, image_scores)
        out["image_roc"] = np.stack(metrics.downsample_curve(fpr, tpr, CURVE_POINTS)).astype(np.float32)
    for name, curve in pixel_curves.items():
        out[name] = np.stack(metrics.downsample_curve(curve[0], curve[1], CURVE_POINTS)).astype(np.float32)
    chosen = qualitative_indices(labels)
    if chosen and chosen_pixels:
        out["qualitative_index"] = np.array(chosen)
        out["qualitative_image"] = np.stack([_resize(images[k], THUMBNAIL, "bilinear").round().astype(np.uint8)
                                             for k in range(len(chosen))])
        out["qualitative_mask"] = np.stack([_resize(mask.astype(np.float32), THUMBNAIL, "nearest") > 0.5
                                            for mask, _ in chosen_pixels])
        out["qualitative_map"] = np.stack([_resize(amap, THUMBNAIL, "bilinear")
                                           for _, amap in chosen_pixels]).astype(np.float32)
        if pixel_threshold is not None:
            out["pixel_threshold"] = np.array(pixel_threshold, dtype=np.float32)
    return out


def file_name(cell_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", cell_id) + ".npz"


def write(run_dir: Path, cell_id: str, arrays: dict[str, np.ndarray]) -> str:
    """Write atomically; returns the path relative to the run folder (what the record stores)."""
    folder = run_dir / ARTIFACTS_DIR
    folder.mkdir(exist_ok=True)
    path = folder / file_name(cell_id)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, path)
    return f"{ARTIFACTS_DIR}/{path.name}"


def read(run_dir: Path, relative: str) -> dict[str, np.ndarray] | None:
    path = run_dir / relative
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def read_replicates(run_dir: Path, relative: str) -> dict[str, np.ndarray]:
    """The cell's bootstrap resamples (metric or ``defect/<type>/<metric>`` → values), {} where it has none."""
    path = run_dir / relative
    if not path.is_file():
        return {}
    with np.load(path, allow_pickle=False) as data:
        if "bootstrap_names" not in data.files:
            return {}
        return dict(zip(data["bootstrap_names"].tolist(), data["bootstrap_replicates"].T, strict=True))
