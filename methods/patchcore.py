"""PatchCore (Roth et al., CVPR 2022), as the official code (amazon-science/patchcore-inspection) runs it.

- Features: encoder levels 2 and 3 (WR50 ``layer2``/``layer3``). Each position's 3×3 neighbourhood (zero
  padding) is flattened channel by channel and adaptive-average-pooled to 1024 values per level; level 3 is
  bilinearly resized to level 2's grid; the levels' vectors are concatenated and pooled to 1024 again.
  The official code unfolds every neighbourhood first; here each pooling is the grouped convolution it
  equals (pooling windows never straddle a group of channels), and level 3 is resized after pooling
  rather than before (both are linear, so the result is the same up to rounding), without a 9× copy.
- Memory bank: the approximate greedy k-center coreset (``ApproximateGreedyCoresetSampler``): features
  projected to 128 dimensions by a random linear map with ``nn.Linear``'s default initialization; every
  point starts at its mean distance to 10 random start points (which are not selected); then ``int(N·p)``
  times the point farthest from the selection is added. The selection is exact, but on the CPU it skips
  points that the triangle inequality proves cannot move closer (see :func:`greedy_coreset`).
- Scores: squared Euclidean distance to the nearest bank entry (mean over ``k_nearest``; the official
  FAISS index returns squared distances, and every documented run uses k=1); image score = the largest
  patch score, as the official code computes it. The paper's re-weighting (its eq. 7) is not in the
  official code; ``image_score="reweighted"`` turns it on. Map: bilinear upsampling, Gaussian blur σ=4.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F

from anobench.core import progress
from anobench.methods.base import EncoderMethod, tensor_bytes
from anobench.methods.encoders import Level, encoder_geometry
from anobench.methods.knn import MAX_DEFAULT_BUDGET, knn
from anobench.methods.postprocess import gaussian_blur, upsample

IMAGE_SCORES = ("max", "reweighted")
PRUNING_MARGIN = 1e-4  # relative slack on the triangle-inequality test, far above float32 rounding
DOT_SLACK_PER_DIM = 2e-6  # above the worst-case float32 error of a squared distance, per dimension
LOWER_BOUND_DIMS = 16  # principal directions used to skip most references before any exact distance
PROJECTION_CHUNK = 65536  # rows projected at a time


def pooling_convolution(channels: int, out: int, kernel: int) -> tuple[torch.Tensor, int]:
    """(weight, groups) of a grouped convolution that equals ``F.adaptive_avg_pool1d(out)`` applied to every
    position's flattened (channel, ky, kx) neighbourhood.

    With ``g = gcd(channels, out)`` groups, each output's pooling window lies inside one group of
    channels and the window pattern repeats from group to group, so one small matrix describes all.
    """
    groups = math.gcd(channels, out)
    length = channels // groups * kernel * kernel
    basis = torch.eye(length, dtype=torch.float64)[:, None, :]
    matrix = F.adaptive_avg_pool1d(basis, out // groups)[:, 0, :].T  # (out per group, length)
    weight = matrix.reshape(out // groups, channels // groups, kernel, kernel).repeat(groups, 1, 1, 1)
    return weight.float(), groups


def row_distances(points: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """Euclidean distance of every row to one centre, from the differences (the same arithmetic per row
    whichever rows are passed, so pruned and full updates agree bit for bit)."""
    return torch.linalg.vector_norm(points - centre, dim=1)


def initial_distances(features: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """Each point's mean distance to the start points (the official sampler's initialization)."""
    total = torch.zeros(len(features), dtype=features.dtype, device=features.device)
    for s in start.tolist():
        total += row_distances(features, features[s])
    return total / len(start)


def greedy_coreset(features: torch.Tensor, n_select: int, start: torch.Tensor,
                   pruned: bool | None = None) -> torch.Tensor:
    """Indices of the approximate greedy k-center coreset, in the order picked.

    Every point's distance to the selection starts at its mean distance to the ``start`` points; each step
    picks the farthest point (the first one on ties) and lowers the distances to it. Picking stops early
    once every point is at distance 0 (further picks would repeat bank rows and change no score).

    ``pruned`` (default: on the CPU) updates only the points that can get closer to the new centre, found
    with the triangle inequality (see :func:`_greedy_pruned`); without pruning every step updates every point
    (the fast way on a GPU, with no host synchronization per step). Both give the same picks.
    """
    pruned = features.device.type == "cpu" if pruned is None else pruned
    distances = initial_distances(features, start)
    if n_select <= 0:
        return torch.empty(0, dtype=torch.long)
    if pruned:
        with single_thread():
            return _greedy_pruned(features, n_select, start, distances)
    return _greedy_full(features, n_select, distances)


@contextlib.contextmanager
def single_thread():
    """The pruned loop runs thousands of small operations, for which a second thread costs more in
    synchronization than it saves (and much more on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _greedy_full(features: torch.Tensor, n_select: int, distances: torch.Tensor) -> torch.Tensor:
    picks = torch.empty(n_select, dtype=torch.long, device=features.device)
    largest = torch.empty(n_select, dtype=features.dtype, device=features.device)
    for step in range(n_select):
        largest[step], picks[step] = distances.max(dim=0)
        distances = torch.minimum(distances, row_distances(features, features[picks[step]]))
    covered = (largest == 0).nonzero()
    return picks[: int(covered[0]) if len(covered) else n_select].cpu()


def _greedy_pruned(features: torch.Tensor, n_select: int, start: torch.Tensor,
                   distances: torch.Tensor) -> torch.Tensor:
    """Greedy picking that visits only the points a new centre can move.

    Every point keeps a reference (first its nearest start point, then the centre it last moved to) and its
    distance to it (``offset``); every reference keeps a bound, the largest offset + distance of its points.
    A point x of reference c gets closer to a new centre s only if d(c, s) < offset(x) + distance(x), so a
    reference with d(c, s) ≥ its bound is skipped with all its points. References are tested in two steps:
    a lower bound from a few principal directions, then the exact distance for the few that pass.
    """
    n_start, device = len(start), features.device
    references = _References(features, n_start + n_select)
    for s in start.tolist():
        references.add(features[s])
    to_start = torch.stack([row_distances(features, features[s]) for s in start.tolist()], dim=1)
    offset, owner = to_start.min(dim=1)  # each point's distance to its reference, and which one
    del to_start
    bound = torch.full((n_start + n_select,), -math.inf, dtype=features.dtype, device=device)
    bound.scatter_reduce_(0, owner, offset + distances, "amax")
    owned = _Ownership(owner, n_start)
    picks = []
    for _ in range(n_select):
        pick = int(distances.argmax())
        if distances[pick] == 0:
            break
        picks.append(pick)
        centre = features[pick]
        visit = references.near(centre, bound)
        members = owned.members(visit)  # every point of a visited reference (and possibly a few more)
        near = row_distances(features.index_select(0, members), centre)
        closer = near < distances.index_select(0, members)
        moved, moved_distance = members[closer], near[closer]
        new = references.add(centre)
        distances.index_copy_(0, moved, moved_distance)
        offset.index_copy_(0, moved, moved_distance)
        owned.move(moved, new)
        # visited references' bounds are recomputed from their remaining points; the new one from its own
        # (a point that is not a visited reference's leaves its own reference's bound as it is)
        bound[: len(visit)].masked_fill_(visit, -math.inf)
        bound[new] = -math.inf
        bound.scatter_reduce_(0, owner.index_select(0, members),
                              offset.index_select(0, members) + distances.index_select(0, members), "amax")
    return torch.tensor(picks, dtype=torch.long)


class _References:
    """The references so far (start points, then picked centres), with their squared norms and their
    coordinates along the data's leading principal directions (orthonormal, so distances there are
    lower bounds of the true ones)."""

    def __init__(self, features: torch.Tensor, capacity: int):
        self.dims = features.shape[1]
        self.basis = principal_directions(features, min(LOWER_BOUND_DIMS, self.dims))
        self.vectors = features.new_empty(capacity, self.dims)
        self.norms = features.new_empty(capacity)
        self.reduced = features.new_empty(capacity, len(self.basis))
        self.count = 0

    def add(self, vector: torch.Tensor) -> int:
        self.vectors[self.count] = vector
        self.norms[self.count] = vector.pow(2).sum()
        self.reduced[self.count] = self.basis @ vector
        self.count += 1
        return self.count - 1

    def near(self, centre: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
        """Mask of the references whose points may get closer to ``centre``: those nearer to it than their
        bound. The slack covers float32 rounding (cancellation in the squared distances from norms), so no
        reference that must be visited is skipped."""
        n = self.count
        centre_norm = centre.pow(2).sum()
        reach = (bound[:n].clamp_min(0) * (1 + PRUNING_MARGIN)).square()
        slack = (self.norms[:n] + centre_norm) * (DOT_SLACK_PER_DIM * self.dims)
        lower = (self.reduced[:n] - self.basis @ centre).pow(2).sum(dim=1)
        maybe = ((lower < reach + slack) & (bound[:n] >= 0)).nonzero().squeeze(1)
        squared = self.norms.index_select(0, maybe) + centre_norm - 2 * (self.vectors.index_select(0, maybe) @ centre)
        visit = torch.zeros(n, dtype=torch.bool, device=centre.device)
        visit[maybe[squared < reach.index_select(0, maybe) + slack.index_select(0, maybe)]] = True
        return visit


class _Ownership:
    """Which points each reference owns, without scanning all points per step: the points sorted by
    reference (rebuilt now and then) plus the points that moved since, which all belong to references
    created since. ``owner`` is shared with the caller and updated here."""

    def __init__(self, owner: torch.Tensor, n_references: int):
        self.owner = owner
        self.rebuild_after = max(len(owner) // 32, 1024)
        self._rebuild(n_references)

    def _rebuild(self, n_references: int) -> None:
        self.order = torch.argsort(self.owner, stable=True)
        counts = torch.bincount(self.owner, minlength=n_references)
        self.starts = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        self.indexed = n_references
        self.recent: list[torch.Tensor] = []
        self.recent_count = 0

    def members(self, visit: torch.Tensor) -> torch.Tensor:
        """Every point owned by a visited reference, possibly with repeats and points owned elsewhere."""
        old = visit[: self.indexed].nonzero().squeeze(1)
        begin = self.starts.index_select(0, old)
        lengths = self.starts.index_select(0, old + 1) - begin
        total = int(lengths.sum())
        skip = torch.repeat_interleave(begin - (lengths.cumsum(0) - lengths), lengths, output_size=total)
        parts = [self.order.index_select(0, torch.arange(total, device=visit.device) + skip)]
        if self.recent and bool(visit[self.indexed:].any()):
            parts += self.recent
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def move(self, points: torch.Tensor, reference: int) -> None:
        self.owner.index_fill_(0, points, reference)
        self.recent.append(points)
        self.recent_count += len(points)
        if self.recent_count > self.rebuild_after:
            self._rebuild(reference + 1)


def principal_directions(features: torch.Tensor, k: int, sample: int = 65536) -> torch.Tensor:
    """(k, d): orthonormal leading principal directions of (a sample of) the rows."""
    rows = features[:: max(1, len(features) // sample)].double()
    centred = rows - rows.mean(dim=0)
    _, vectors = torch.linalg.eigh(centred.T @ centred)
    return vectors[:, -k:].T.contiguous().to(features.dtype)


class PatchCore(EncoderMethod):
    """PatchCore: a coreset memory bank of locally aggregated patch features, nearest-neighbour scores.

    Parameters
    ----------
    encoder : str, default="wide_resnet50_2"
    weights : {"imagenet", "random"} or path, default="imagenet"
    levels : tuple, default=(2, 3)
        Encoder levels; the first sets the patch grid.
    coreset_fraction : float, default=0.1
        p, the share of training patches kept (the paper reports 0.25, 0.1 and 0.01); 1.0 keeps all.
    projection_dims : int, default=128
        Dimension of the random projection the coreset distances are measured in.
    start_points : int, default=10
    patch_size : int, default=3
        The local neighbourhood aggregated at every position.
    pretrain_dims, target_dims : int, default=1024, 1024
        Per-level pooled dimension, then the dimension of the concatenated, pooled feature.
    k_nearest : int, default=1
        Patch score = mean squared distance to this many nearest bank entries.
    image_score : {"max", "reweighted"}, default="max"
        "max" as the official code; "reweighted" as the paper's eq. 7.
    reweight_neighbours : int, default=9
        b, the bank neighbourhood of the nearest entry used by the re-weighting.
    blur_sigma : float, default=4.0
    memory_budget : int or None, default=None
        Bytes of working memory per distance block; None takes a quarter of the free memory, at most 1 GiB.
    seed : int, default=0
        Fixes the projection and the start points (and random weights).
    device : str, default="cpu"
    """

    name = "patchcore"
    head_component = "knn"
    display_name = "PatchCore"
    check_params = {"coreset_fraction": 0.25}

    def __init__(self, *, encoder: str = "wide_resnet50_2", weights: str = "imagenet",
                 levels: tuple[Level, ...] = (2, 3), coreset_fraction: float = 0.1, projection_dims: int = 128,
                 start_points: int = 10, patch_size: int = 3, pretrain_dims: int = 1024, target_dims: int = 1024,
                 k_nearest: int = 1, image_score: str = "max", reweight_neighbours: int = 9,
                 blur_sigma: float = 4.0, memory_budget: int | None = None, seed: int = 0, device: str = "cpu"):
        self.encoder = encoder
        self.weights = weights
        self.levels = levels
        self.coreset_fraction = coreset_fraction
        self.projection_dims = projection_dims
        self.start_points = start_points
        self.patch_size = patch_size
        self.pretrain_dims = pretrain_dims
        self.target_dims = target_dims
        self.k_nearest = k_nearest
        self.image_score = image_score
        self.reweight_neighbours = reweight_neighbours
        self.blur_sigma = blur_sigma
        self.memory_budget = memory_budget
        self.seed = seed
        self.device = device

    def encoder_levels(self) -> tuple[Level, ...]:
        return tuple(self.levels)

    def labels(self) -> dict[str, Any]:
        return {**super().labels(), "image_score": self.image_score}

    def _check(self) -> None:
        if not 0 < self.coreset_fraction <= 1:
            raise ValueError(f"coreset_fraction must be in (0, 1], got {self.coreset_fraction}")
        if self.image_score not in IMAGE_SCORES:
            raise ValueError(f"image_score must be one of {', '.join(IMAGE_SCORES)}, got {self.image_score!r}")
        if self.patch_size % 2 != 1:
            raise ValueError(f"patch_size must be odd (the neighbourhood is centred), got {self.patch_size}")

    # -- embedding ---------------------------------------------------------------------------------------

    def _build_aggregation(self) -> None:
        """The per-level neighbourhood poolings and the pooling of the levels together, as convolutions."""
        self._check()
        poolers = [pooling_convolution(c, self.pretrain_dims, self.patch_size) for c in self.encoder_.channels]
        self.poolers_ = [(w.to(self.device), g) for w, g in poolers]
        weight, groups = pooling_convolution(len(poolers) * self.pretrain_dims, self.target_dims, 1)
        self.aggregator_ = (weight.to(self.device), groups)

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, target_dims, H, W): locally aggregated features on the first level's grid."""
        feats = self.encoder_(images)
        size = feats[0].shape[-2:]
        parts = []
        for feat, (weight, groups) in zip(feats, self.poolers_, strict=True):
            pooled = F.conv2d(feat, weight, padding=self.patch_size // 2, groups=groups)
            if pooled.shape[-2:] != size:
                pooled = F.interpolate(pooled, size=size, mode="bilinear", align_corners=False)
            parts.append(pooled)
        stacked = torch.cat(parts, dim=1)  # levels one after the other, as the official stack flattens them
        weight, groups = self.aggregator_
        return F.conv2d(stacked, weight, groups=groups)

    # -- fitting -----------------------------------------------------------------------------------------

    @torch.no_grad()
    def _fit(self, batches: Iterable[torch.Tensor]) -> None:
        self._build_aggregation()
        generator = torch.Generator().manual_seed(self.seed)
        projection = None
        chunks, projected = [], []
        started = time.perf_counter()
        for images in progress(batches, "patchcore fit"):
            emb = self._embed(images.to(self.device))
            rows = emb.permute(0, 2, 3, 1).reshape(-1, emb.shape[1])
            if projection is None and rows.shape[1] != self.projection_dims:
                # nn.Linear's default initialization: uniform in ±1/sqrt(fan_in)
                bound = 1 / math.sqrt(rows.shape[1])
                projection = ((torch.rand(self.projection_dims, rows.shape[1], generator=generator) * 2 - 1)
                              * bound).to(self.device)
            projected.append(rows @ projection.T if projection is not None else rows.clone())
            chunks.append(rows.cpu())
            self.grid_ = tuple(emb.shape[-2:])
        features = torch.cat(projected)
        del projected
        n = len(features)
        _synchronize(self.device)
        embedded = time.perf_counter()
        if self.coreset_fraction == 1:
            picks = torch.arange(n)
        else:
            start = torch.randperm(n, generator=generator)[: min(self.start_points, n)].to(self.device)
            picks = greedy_coreset(features, int(n * self.coreset_fraction), start)
        del features
        self.memory_bank_ = gather_rows(chunks, picks).to(self.device)
        _synchronize(self.device)
        self.fit_stats_ = {"training_patches": n, "coreset_size": len(picks),
                           "coreset_target": int(n * self.coreset_fraction), "patch_grid": list(self.grid_),
                           "embedding_s": embedded - started, "coreset_s": time.perf_counter() - embedded,
                           "coreset_device": str(self.device)}

    def fit_stats(self) -> dict[str, Any]:
        return dict(self.fit_stats_)

    # -- scoring -----------------------------------------------------------------------------------------

    def forward_scores(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(patch scores (B, h, w), image scores (B,))."""
        emb = self._embed(images)
        b, d, h, w = emb.shape
        queries = emb.permute(0, 2, 3, 1).reshape(-1, d)
        k = min(self.k_nearest, len(self.memory_bank_))
        dist, index = knn(queries, self.memory_bank_, k, self.memory_budget)
        patch = dist.pow(2).mean(dim=1).reshape(b, h * w)
        image = patch.amax(dim=1)
        if self.image_score == "reweighted":
            image = image * self._reweighting(queries.reshape(b, h * w, d), patch, index[:, 0].reshape(b, h * w))
        return patch.reshape(b, h, w), image

    def _reweighting(self, queries: torch.Tensor, patch: torch.Tensor, nearest: torch.Tensor) -> torch.Tensor:
        """The paper's eq. 7: 1 − softmax over the b bank neighbours N_b(m*) of the distances ‖m_test,* − m‖,
        taken at m* (the bank entry nearest to the image's most anomalous patch m_test,*)."""
        rows = torch.arange(len(patch), device=patch.device)
        worst = patch.argmax(dim=1)
        query = queries[rows, worst]  # m_test,*
        bank_entry = self.memory_bank_[nearest[rows, worst]]  # m*
        b = min(self.reweight_neighbours, len(self.memory_bank_))
        _, neighbourhood = knn(bank_entry, self.memory_bank_, b, self.memory_budget)  # m* itself comes first
        distances = torch.linalg.vector_norm(query[:, None, :] - self.memory_bank_[neighbourhood], dim=-1)
        return 1 - torch.softmax(distances, dim=1)[:, 0]

    def postprocess(self, raw, input_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        patch, image = raw
        return image, gaussian_blur(upsample(patch, input_size), self.blur_sigma)

    def head_flop_formula(self, input_size: int) -> dict[str, int]:
        """Per image: the local aggregation (grouped convolutions) and the exact nearest-neighbour search
        (a query-bank product of 2·P·M·D FLOPs, plus adding the bank norms and taking the minimum: 2·P·M)."""
        self.check_fitted()
        geometry = encoder_geometry(self.encoder, self.encoder_levels(), input_size)
        patches = geometry.sizes[0][0] * geometry.sizes[0][1]
        taps = self.patch_size * self.patch_size
        aggregation = sum(2 * self.pretrain_dims * (c // math.gcd(c, self.pretrain_dims)) * taps * h * w
                          for c, (h, w) in zip(geometry.channels, geometry.sizes, strict=True))
        levels = len(geometry.channels)
        aggregation += 2 * self.target_dims * (levels * self.pretrain_dims // self.aggregator_[1]) * patches
        bank, dims = self.memory_bank_.shape
        return {"local_aggregation": aggregation, "distance_products": 2 * patches * bank * dims,
                "distance_norms_and_min": 2 * patches * bank}

    # -- memory, size, persistence -------------------------------------------------------------------------

    def memory_estimate(self, geometry, n_train: int, batch_size: int) -> dict[str, int]:
        n = n_train * geometry.sizes[0][0] * geometry.sizes[0][1]
        bank = max(int(n * self.coreset_fraction), 1)
        blocks = self.memory_budget if self.memory_budget is not None else MAX_DEFAULT_BUDGET
        return {**super().memory_estimate(geometry, n_train, batch_size),
                "training_features": n * self.target_dims * 4, "projected_features": n * self.projection_dims * 4,
                # per point: distances, offsets, owners and their sorted order; on a GPU a step's differences
                "coreset_state": n * (4 + 4 + 8 + 8 + (self.projection_dims * 4 if self.device != "cpu" else 0)),
                "memory_bank": bank * self.target_dims * 4,
                "distance_blocks": blocks}

    def _fitted_size(self) -> dict[str, int]:
        return {"memory_bank": tensor_bytes(self.memory_bank_)}

    def _fitted_state(self) -> dict[str, Any]:
        return {"memory_bank": self.memory_bank_.cpu(), "grid": list(self.grid_), "fit_stats": self.fit_stats_}

    def _restore(self, state: dict[str, Any]) -> None:
        self._build_aggregation()
        self.memory_bank_ = state["memory_bank"].to(self.device)
        self.grid_ = tuple(state["grid"])
        self.fit_stats_ = state["fit_stats"]


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def gather_rows(chunks: list[torch.Tensor], index: torch.Tensor) -> torch.Tensor:
    """``torch.cat(chunks)[index]`` without concatenating the chunks (which would double peak memory)."""
    out = torch.empty(len(index), chunks[0].shape[1], dtype=chunks[0].dtype)
    start = 0
    for chunk in chunks:
        inside = (index >= start) & (index < start + len(chunk))
        out[inside] = chunk[index[inside] - start]
        start += len(chunk)
    return out
