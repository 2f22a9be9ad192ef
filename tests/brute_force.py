"""Slow, obviously-correct definitions of the metrics, used only to check the fast ones."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def auroc_by_pairs(labels, scores) -> float:
    """Probability that a random positive outranks a random negative, ties counting one half."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    pos, neg = scores[labels], scores[~labels]
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def pro_points_by_thresholds(masks, maps, thresholds=None):
    """(FPR, PRO) at each threshold, relabelling nothing but thresholding every map per threshold."""
    masks = [np.asarray(m).astype(bool) for m in masks]
    maps = [np.asarray(a, dtype=np.float64) for a in maps]
    regions = []
    for mask in masks:
        labelled, n = ndimage.label(mask, structure=np.ones((3, 3)))
        regions.append([labelled == k for k in range(1, n + 1)])
    n_normal = sum((~m).sum() for m in masks)
    if thresholds is None:
        thresholds = np.unique(np.concatenate([a.ravel() for a in maps]))[::-1]
    fprs, pros = [0.0], [0.0]
    for t in thresholds:
        overlaps, false_pos = [], 0
        for mask, amap, image_regions in zip(masks, maps, regions, strict=True):
            predicted = amap >= t
            false_pos += (predicted & ~mask).sum()
            overlaps += [predicted[r].mean() for r in image_regions]
        fprs.append(false_pos / n_normal)
        pros.append(float(np.mean(overlaps)))
    fprs.append(1.0)
    pros.append(1.0)
    return np.array(fprs), np.array(pros)


def area_by_segments(x, y, limit):
    """Area under a piecewise-linear curve from 0 to ``limit``, segment by segment."""
    area = 0.0
    for x0, x1, y0, y1 in zip(x[:-1], x[1:], y[:-1], y[1:], strict=True):
        if x0 >= limit:
            break
        if x1 > limit:
            y1 = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            x1 = limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area


def aupro_by_thresholds(masks, maps, limit=0.3, thresholds=None) -> float:
    fprs, pros = pro_points_by_thresholds(masks, maps, thresholds)
    return area_by_segments(fprs, pros, limit) / limit


def f1_max_by_thresholds(truth, scores):
    truth = np.asarray(truth).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    best = (-1.0, None)
    for t in np.unique(scores):
        predicted = scores >= t
        tp = (predicted & truth).sum()
        f1 = 2 * tp / (predicted.sum() + truth.sum())
        if f1 > best[0]:
            best = (f1, t)
    return best


def average_precision_by_thresholds(truth, scores) -> float:
    """Σ over distinct thresholds (high to low) of precision × recall gained, each threshold counted alone."""
    truth = np.asarray(truth).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    total, previous_recall = 0.0, 0.0
    for t in np.unique(scores)[::-1]:
        predicted = scores >= t
        tp = (predicted & truth).sum()
        recall = tp / truth.sum()
        total += (recall - previous_recall) * tp / predicted.sum()
        previous_recall = recall
    return float(total)


def area_between(x, y, lo, hi):
    """Area under a piecewise-linear curve y(x) for x in [lo, hi], segment by segment (x ascending)."""
    area = 0.0
    for x0, x1, y0, y1 in zip(x[:-1], x[1:], y[:-1], y[1:], strict=True):
        if x1 <= lo or x0 >= hi or x1 == x0:
            continue
        a, b = max(x0, lo), min(x1, hi)
        ya, yb = (y0 + (y1 - y0) * (v - x0) / (x1 - x0) for v in (a, b))
        area += (b - a) * (ya + yb) / 2
    return area


def per_image_aupimo_by_thresholds(masks, maps, bounds=(1e-5, 1e-4)):
    """Threshold every map at every distinct score: shared FPR = mean over normal images of each one's FPR,
    overlap = each anomalous image's TPR; area under overlap against log(shared FPR) between the bounds."""
    masks = [np.asarray(m).astype(bool) for m in masks]
    maps = [np.asarray(a, dtype=np.float64) for a in maps]
    normal = [a for m, a in zip(masks, maps, strict=True) if not m.any()]
    thresholds = np.unique(np.concatenate([a.ravel() for a in maps]))[::-1]
    shared = [0.0] + [float(np.mean([(a >= t).mean() for a in normal])) for t in thresholds]
    with np.errstate(divide="ignore"):
        x = np.log(shared)
    out = []
    for mask, amap in zip(masks, maps, strict=True):
        if not mask.any():
            out.append(np.nan)
            continue
        y = [0.0] + [float((amap[mask] >= t).mean()) for t in thresholds]
        out.append(area_between(x, y, np.log(bounds[0]), np.log(bounds[1])) / np.log(bounds[1] / bounds[0]))
    return np.array(out)


def resampled_exactly(weights, labels, scores, masks, maps, metric):
    """A metric of each resample, computed by repeating each image as often as it is drawn."""
    values = []
    for row in weights:
        index = np.repeat(np.arange(len(row)), row.astype(int))
        values.append(metric(labels[index], scores[index], [masks[i] for i in index], [maps[i] for i in index]))
    return np.array(values)
