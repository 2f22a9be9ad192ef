"""SPADE (Cohen & Hoshen, 2020), as the paper sets it: K=50 image neighbours, κ=1 pixel neighbour.

Image level: the average-pooled last-layer feature of every training image is stored; a test image's
score is its mean distance to the K nearest. Pixel level: the gallery of a test image is every pixel
feature (layers 1–3) of those K images; per layer, each test pixel's distance to its κ nearest gallery
features, upsampled bilinearly, averaged over layers, blurred with σ=4.

Unlike the widely used reimplementation, K is the paper's 50 (not 5), no tail of the gallery is dropped,
and distances are exact chunked matrix products (not a ``pairwise_distance`` broadcast whose meaning
changed in newer PyTorch), within a memory budget. The training gallery stays in host memory when it does
not fit on the device.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from anobench.core import progress
from anobench.methods.base import EncoderMethod, tensor_bytes
from anobench.methods.encoders import Level, encoder_geometry
from anobench.methods.knn import MAX_DEFAULT_BUDGET, knn
from anobench.methods.postprocess import gaussian_blur, upsample

GALLERY_DEVICE_FRACTION = 0.5  # keep the gallery on the GPU only if it takes at most this share of free memory


class SPADE(EncoderMethod):
    """SPADE: image kNN over pooled features, pixel kNN over the nearest images' feature maps.

    Parameters
    ----------
    encoder : str, default="wide_resnet50_2"
    weights : {"imagenet", "random"} or path, default="imagenet"
    encoder_padding : {"zeros", "reflect"}, default="zeros"
        The paper's zero padding; "reflect" as the official CFLOW-AD code pads its ResNets (ResNets only).
    levels : tuple, default=(1, 2, 3, 4)
        The pixel levels, then the level whose average-pooled output is the image feature.
    k_images : int, default=50
        K, nearest training images (clipped to the training-set size, recorded).
    k_pixels : int, default=1
        κ, nearest gallery features per test pixel.
    blur_sigma : float, default=4.0
    memory_budget : int or None, default=None
        Bytes of working memory per distance block; None takes a quarter of the free memory, at most 1 GiB.
    seed : int, default=0
    device : str, default="cpu"
    """

    name = "spade"
    head_component = "knn"
    display_name = "SPADE"
    check_params = {"k_images": 3}

    def __init__(self, *, encoder: str = "wide_resnet50_2", weights: str = "imagenet", encoder_padding: str = "zeros",
                 levels: tuple[Level, ...] = (1, 2, 3, 4), k_images: int = 50, k_pixels: int = 1,
                 blur_sigma: float = 4.0, memory_budget: int | None = None, seed: int = 0, device: str = "cpu"):
        self.encoder = encoder
        self.weights = weights
        self.encoder_padding = encoder_padding
        self.levels = levels
        self.k_images = k_images
        self.k_pixels = k_pixels
        self.blur_sigma = blur_sigma
        self.memory_budget = memory_budget
        self.seed = seed
        self.device = device

    def encoder_levels(self) -> tuple[Level, ...]:
        return tuple(self.levels)

    @torch.no_grad()
    def _fit(self, batches: Iterable[torch.Tensor]) -> None:
        pooled, maps = [], []
        for images in progress(batches, "spade fit"):
            feats = self.encoder_(images.to(self.device))
            pooled.append(feats[-1].mean(dim=(2, 3)).cpu())
            maps.append([f.permute(0, 2, 3, 1).cpu() for f in feats[:-1]])
        self.image_features_ = torch.cat(pooled).to(self.device)
        gallery = [torch.cat(level) for level in zip(*maps, strict=True)]  # per level (N, h, w, C)
        self.gallery_ = [g.to(self._gallery_device(gallery)) for g in gallery]

    def _gallery_device(self, gallery: list[torch.Tensor]) -> str:
        if not self.device.startswith("cuda"):
            return "cpu"
        free, _ = torch.cuda.mem_get_info(torch.device(self.device))
        return self.device if tensor_bytes(*gallery) <= GALLERY_DEVICE_FRACTION * free else "cpu"

    def memory_estimate(self, geometry, n_train: int, batch_size: int) -> dict[str, int]:
        per_image = [c * h * w * 4 for c, (h, w) in zip(geometry.channels[:-1], geometry.sizes[:-1], strict=True)]
        k = min(self.k_images, n_train)
        blocks = self.memory_budget if self.memory_budget is not None else MAX_DEFAULT_BUDGET
        return {**super().memory_estimate(geometry, n_train, batch_size),
                "gallery": n_train * sum(per_image), "image_features": n_train * geometry.channels[-1] * 4,
                # fit holds the per-batch maps and their concatenation; predict a test image's neighbours'
                # maps and the distance blocks: the larger of the two
                "working_buffers": max(n_train * sum(per_image), k * max(per_image) + blocks)}

    def fit_stats(self) -> dict[str, Any]:
        return {"training_images": len(self.image_features_),
                "k_images_effective": min(self.k_images, len(self.image_features_)),
                "gallery_device": str(self.gallery_[0].device)}

    def forward_scores(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(image scores (B,), per pixel level the κ-NN distance maps (B, h, w))."""
        feats = self.encoder_(images)
        k = min(self.k_images, len(self.image_features_))
        image_dist, neighbours = knn(feats[-1].mean(dim=(2, 3)), self.image_features_, k, self.memory_budget)
        image_scores = image_dist.mean(dim=1)
        level_maps = []
        for test_maps, train_maps in zip(feats[:-1], self.gallery_, strict=True):
            b, c, h, w = test_maps.shape
            per_image = []
            for i in range(b):  # each test image has its own gallery: the pixels of its K nearest images
                gallery = train_maps[neighbours[i].to(train_maps.device)].reshape(-1, c)
                queries = test_maps[i].permute(1, 2, 0).reshape(h * w, c)
                dist, _ = knn(queries, gallery, self.k_pixels, self.memory_budget, device=images.device)
                per_image.append(dist.mean(dim=1).reshape(h, w))
            level_maps.append(torch.stack(per_image))
        return image_scores, level_maps

    def head_flop_formula(self, input_size: int) -> dict[str, int]:
        """Image level: average pooling, then distances to the N pooled training features (2·N·C products, plus
        adding norms and ranking: 2·N). Pixel level, per level: every test pixel against the K·h·w gallery
        pixels of the K nearest images (2·hw·Khw·C products, plus 2·hw·Khw)."""
        self.check_fitted()
        geometry = encoder_geometry(self.encoder, self.encoder_levels(), input_size)
        n, c_image = self.image_features_.shape
        k = min(self.k_images, n)
        h, w = geometry.sizes[-1]
        terms = {"image_pooling": c_image * h * w, "image_distances": 2 * n * c_image + 2 * n}
        pixel = 0
        for c, (h, w) in zip(geometry.channels[:-1], geometry.sizes[:-1], strict=True):
            pairs = h * w * k * h * w
            pixel += 2 * pairs * c + 2 * pairs
        terms["pixel_distances"] = pixel
        return terms

    def postprocess(self, raw, input_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        image_scores, level_maps = raw
        maps = torch.stack([upsample(m, input_size) for m in level_maps]).mean(dim=0)
        return image_scores, gaussian_blur(maps, self.blur_sigma)

    def _fitted_size(self) -> dict[str, int]:
        return {"image_features": tensor_bytes(self.image_features_), "gallery": tensor_bytes(*self.gallery_)}

    def _fitted_state(self) -> dict[str, Any]:
        return {"image_features": self.image_features_.cpu(), "gallery": [g.cpu() for g in self.gallery_]}

    def _restore(self, state: dict[str, Any]) -> None:
        self.image_features_ = state["image_features"].to(self.device)
        self.gallery_ = [g.to(self._gallery_device(state["gallery"])) for g in state["gallery"]]
