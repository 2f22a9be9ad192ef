"""Metrics of particular datasets' protocols, as pure functions on numpy arrays (truth first, like
``anobench.metrics``; a higher score means more anomalous):

- MVTec LOCO AD's saturated per-region overlap (sPRO) curve and its areas (AU-sPRO), exact at every
  distinct score (the official evaluation refines a threshold grid towards the same curve);
- MVTec AD 2's segmentation F1 of binarised maps, and the validation threshold MVTec suggests for it;
- Real-IAD's sample-level AUROC (the views of one physical sample grouped, ADEval's definition).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence

import numpy as np

from anobench.metrics import _area_to, _as_binary, _as_scores, checked_pair, image_auroc

# ----------------------------------------------------------------------------------------------------------
# sPRO (MVTec LOCO AD)


def spro_curve(defects: Sequence[Sequence[tuple[np.ndarray, int]]], maps: Sequence[np.ndarray]):
    """Saturated per-region overlap against false positive rate, at every distinct score (MVTec LOCO AD).

    Parameters
    ----------
    defects : per image, its defects as (boolean mask, saturation area in pixels); empty for a good image.
    maps : per image, its anomaly map (same shape as its masks).

    At a threshold t (a pixel is predicted anomalous when its score is at least t) each defect contributes
    ``min(|predicted ∩ defect| / saturation, 1)``; the sPRO is the mean over every defect of every image.
    The FPR is the share of predicted pixels among the pixels that lie in none of their image's defects
    (LOCO's evaluation: "only pixels that are defect-free in all ground truth channels can be a false
    positive"). One sort: within a defect, its ``saturation`` highest-scoring pixels carry
    ``1/saturation`` each and the rest nothing, so a cumulative sum in score order gives every defect's
    saturated overlap at once (ties collapse to their last point, where the choice among tied pixels
    no longer matters). Returns (fpr, spro) from (0, 0) to (1, 1).
    """
    if len(defects) != len(maps):
        raise ValueError(f"defects and maps differ in number: {len(defects)} vs {len(maps)}")
    scores, negative, weight = [], [], []
    n_defects = 0
    for i, (image_defects, amap) in enumerate(zip(defects, maps, strict=True)):
        amap = _as_scores(amap, "maps")
        union = np.zeros(amap.shape, dtype=bool)
        image_weight = np.zeros(amap.size)
        flat = amap.ravel()
        for mask, saturation in image_defects:
            mask = _as_binary(mask, "defect masks")
            if mask.shape != amap.shape:
                raise ValueError(f"image {i}: defect mask shape {mask.shape} differs from map shape "
                                 f"{amap.shape}")
            if saturation < 1:
                raise ValueError(f"image {i}: a saturation area must be at least one pixel, got {saturation}")
            union |= mask
            pixels = np.flatnonzero(mask)
            top = pixels[np.argsort(flat[pixels], kind="stable")[::-1][:saturation]]
            image_weight[top] += 1.0 / saturation
            n_defects += 1
        scores.append(flat)
        negative.append(~union.ravel())
        weight.append(image_weight)
    all_negative = np.concatenate(negative)
    n_negative = int(all_negative.sum())
    if n_defects == 0 or n_negative == 0:
        raise ValueError("an sPRO curve needs at least one defect and one defect-free pixel")
    all_scores = np.concatenate(scores)
    order = np.argsort(all_scores)[::-1]
    last_of_tie = np.r_[np.diff(all_scores[order]) != 0, True]
    fpr = np.cumsum(all_negative[order], dtype=np.int64)[last_of_tie] / n_negative
    spro = np.cumsum(np.concatenate(weight)[order])[last_of_tie] / n_defects
    np.clip(spro, None, 1.0, out=spro)
    return np.r_[0.0, fpr], np.r_[0.0, spro]


def au_spro(defects: Sequence[Sequence[tuple[np.ndarray, int]]], maps: Sequence[np.ndarray],
            fpr_limits: Sequence[float]) -> dict[float, float]:
    """Area under the sPRO curve up to each limit, divided by the limit (LOCO's ``scale_to_one``)."""
    if any(not 0 < limit <= 1 for limit in fpr_limits):
        raise ValueError(f"FPR limits must be in (0, 1], got {list(fpr_limits)}")
    fpr, spro = spro_curve(defects, maps)
    return {limit: _area_to(fpr, spro, limit) / limit for limit in fpr_limits}


# ----------------------------------------------------------------------------------------------------------
# segmentation F1 (MVTec AD 2)


def mean_plus_std_threshold(maps: Sequence[np.ndarray], k: float = 3.0) -> float:
    """Mean + k standard deviations of every pixel score of ``maps`` (MVTec AD 2's suggested segmentation
    threshold, from defect-free validation images), accumulated image by image in float64."""
    total = total_sq = count = 0.0
    for amap in maps:
        values = _as_scores(amap, "maps").astype(np.float64).ravel()
        total += values.sum()
        total_sq += np.square(values).sum()
        count += values.size
    if not count:
        raise ValueError("a threshold needs at least one map")
    mean = total / count
    return float(mean + k * np.sqrt(max(total_sq / count - mean * mean, 0.0)))


def seg_f1(masks: Iterable[np.ndarray], maps: Iterable[np.ndarray], threshold: float) -> float:
    """F1 of the binary maps (anomalous where the score exceeds ``threshold``) against the masks, counting
    true/false positives and false negatives over all pixels of all images together; the images are read
    one at a time (``masks`` and ``maps`` may be made on demand).

    Returns nan (with a warning) when there is neither a defect pixel nor a predicted one."""
    tp = fp = fn = 0
    for i, (mask, amap) in enumerate(zip(masks, maps, strict=True)):
        mask, amap = checked_pair(i, mask, amap)
        predicted = amap > threshold
        tp += int(np.count_nonzero(predicted & mask))
        fp += int(np.count_nonzero(predicted & ~mask))
        fn += int(np.count_nonzero(~predicted & mask))
    if tp + fp + fn == 0:
        warnings.warn("SegF1 is undefined without defect or predicted pixels; returning nan", stacklevel=2)
        return float("nan")
    return 2 * tp / (2 * tp + fp + fn)


# ----------------------------------------------------------------------------------------------------------
# sample-level AUROC (Real-IAD)


def sample_auroc(keys: Sequence[str], labels: np.ndarray, scores: np.ndarray) -> float:
    """AUROC over physical samples: images sharing a key (the views of one sample) are grouped, the
    sample's score is its views' maximum and its label their maximum (ADEval's S-AUROC)."""
    if not len(keys) == len(labels) == len(scores):
        raise ValueError(f"keys, labels and scores differ in length: {len(keys)}, {len(labels)}, "
                         f"{len(scores)}")
    groups: dict[str, tuple[int, float]] = {}
    for key, label, score in zip(keys, np.asarray(labels), _as_scores(scores, "scores"), strict=True):
        previous_label, previous_score = groups.get(key, (0, -np.inf))
        groups[key] = (max(previous_label, int(label)), max(previous_score, float(score)))
    sample_labels, sample_scores = zip(*groups.values(), strict=True)
    return image_auroc(np.array(sample_labels), np.array(sample_scores))
