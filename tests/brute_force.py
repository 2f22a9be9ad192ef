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
