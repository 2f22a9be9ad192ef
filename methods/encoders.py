"""Frozen feature encoders over timm's feature API.

A level is either an ``int`` (an index into timm's ``feature_info``; for ResNets 1..4 are layer1..layer4)
or a ``str`` naming a module (e.g. ``"blocks.5"`` for MobileNetV3-L's 160-channel stage). Channels and
strides come from the model, never from tables. Weights are ``"imagenet"`` (timm's download/cache),
``"random"`` (seeded), or a path to a local weights file.

Padding is ``"zeros"`` (timm's, and the PaDiM and SPADE papers') or ``"reflect"``: the official CFLOW-AD
code's ResNet copy sets ``padding_mode='reflect'`` on its 7×7 stem and every 3×3 convolution (the 1×1
convolutions do not pad; the max-pool is unchanged), which for timm's ResNets is exactly the set of
convolutions with non-zero padding. Reflection is offered for ResNets only, the one family it is defined for.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub import try_to_load_from_cache
from timm.models import create_feature_extractor
from torch import nn

from anobench.core import BenchError, unknown_name
from anobench.methods import ENCODERS
from anobench.methods.feature_cache import active_cache
from anobench.records import WeightsInfo

Level = int | str

PADDINGS = ("zeros", "reflect")


def check_encoder_name(name: str, where: str | None = None) -> None:
    """A registered encoder (a plugin's module is imported, registering its timm model) or any timm model."""
    if name in ENCODERS:
        ENCODERS.get(name, where)
    elif not timm.is_model(name):
        raise unknown_name("encoder", name, ENCODERS.names(), where)


def is_resnet(name: str) -> bool:
    """True for timm's ResNet family (resnet18, wide_resnet50_2, ... with or without a weights tag)."""
    arch = timm.models.get_arch_name(name)
    return timm.is_model(arch) and timm.models.model_entrypoint(arch).__module__ == "timm.models.resnet"


def check_padding(name: str, padding: str) -> None:
    if padding not in PADDINGS:
        raise BenchError(f"Encoder padding {padding!r} is not one of {', '.join(PADDINGS)}.")
    if padding == "reflect" and not is_resnet(name):
        raise BenchError(f"Encoder padding 'reflect' is defined for ResNet encoders (the official CFLOW-AD "
                         f"code's ResNet copy); {name} is not one: use padding 'zeros'.")


def pad_by_reflection(model: nn.Module) -> None:
    """Set ``padding_mode='reflect'`` on every convolution that pads."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and any(module.padding):
            module.padding_mode = "reflect"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _cached_on_hub(name: str) -> bool:
    hub_id = timm.models.get_pretrained_cfg(name).hf_hub_id
    return bool(hub_id) and any(
        isinstance(try_to_load_from_cache(hub_id, f), str) for f in ("model.safetensors", "pytorch_model.bin")
    )


@contextlib.contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """Use the local hub cache without network retries (which take a minute when there is no network)."""
    previous = hub_constants.HF_HUB_OFFLINE
    hub_constants.HF_HUB_OFFLINE = previous or offline
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = previous


def check_weights(name: str, weights: str) -> None:
    """Fail before any work when the weights cannot be had: no network and no cached copy, or no file."""
    if weights == "random":
        return
    if weights == "imagenet":
        if not _hub_reachable() and not _cached_on_hub(name):
            raise BenchError(f"Could not fetch ImageNet weights for {name} (no network and no cached copy); pass "
                             f"a local weights file with --weights PATH or run with --weights random.")
        return
    if not Path(weights).expanduser().is_file():
        raise BenchError(f"Weights file {weights} does not exist; pass --weights imagenet, random or an existing file.")


def _create(name: str, weights: str, seed: int, **kwargs) -> nn.Module:
    if weights == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return timm.create_model(name, pretrained=False, **kwargs)
    if weights == "imagenet":
        online = _hub_reachable()
        try:
            if not online and not _cached_on_hub(name):
                raise ConnectionError("no network and no cached copy")
            with _hub_offline(not online):
                return timm.create_model(name, pretrained=True, **kwargs)
        except Exception as exc:  # no network, no cache, hub errors: all mean the same to the user
            raise BenchError(
                f"Could not fetch ImageNet weights for {name} ({type(exc).__name__}: {exc}); pass a local "
                f"weights file with --weights PATH or run with --weights random."
            ) from None
    path = Path(weights).expanduser()
    if not path.is_file():
        raise BenchError(f"Weights file {path} does not exist; pass --weights imagenet, random or an existing file.")
    try:
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)
    except Exception as exc:
        raise BenchError(f"Could not load weights file {path} into {name} ({exc}); is it a {name} checkpoint?") from None


@dataclass(frozen=True)
class EncoderGeometry:
    """Channels and feature-map sizes of an encoder's levels at one input size, and its weight bytes."""

    channels: tuple[int, ...]
    sizes: tuple[tuple[int, int], ...]
    weight_bytes: int


@functools.lru_cache(maxsize=64)
def encoder_geometry(name: str, levels: tuple[Level, ...], input_size: int) -> EncoderGeometry:
    """Shapes without weights or compute: the encoder is built and run on PyTorch's meta device."""
    with torch.device("meta"):
        encoder = Encoder(name, levels)
        feats = encoder._compute(torch.zeros(1, 3, input_size, input_size))
    return EncoderGeometry(tuple(f.shape[1] for f in feats), tuple(tuple(f.shape[-2:]) for f in feats),
                           encoder.size_bytes())


@functools.lru_cache(maxsize=64)
def encoder_strides(name: str, levels: tuple[Level, ...]) -> tuple[int, ...]:
    """Input pixels per feature cell at each level (built on PyTorch's meta device: no weights, no compute)."""
    with torch.device("meta"):
        return tuple(Encoder(name, levels).strides)


@functools.lru_cache(maxsize=64)
def smallest_runnable_input(name: str, levels: tuple[Level, ...], padding: str) -> int | None:
    """The smallest square input the encoder runs on (None: none up to 1024 px). Reflection padding needs
    every padded feature map larger than its padding, so a ResNet padded by reflection refuses inputs whose
    deepest map would be 1 px wide; found by bisection on PyTorch's meta device (no weights, no compute)."""
    with torch.device("meta"):
        encoder = Encoder(name, levels, padding=padding)

        def runs(size: int) -> bool:
            try:
                encoder._compute(torch.zeros(1, 3, size, size))
            except RuntimeError:
                return False
            return True

        low, high = 1, 1024
        if not runs(high):
            return None
        while low < high:
            middle = (low + high) // 2
            low, high = (low, middle) if runs(middle) else (middle + 1, high)
        return low


class Encoder(nn.Module):
    """A frozen, eval-mode feature extractor returning one feature map per requested level.

    Input images are float in [0, 1]; the model's own normalization (``resolve_model_data_config``)
    is applied inside, so datasets stay encoder-agnostic. ``padding`` is one of ``PADDINGS`` (see the
    module docstring).
    """

    def __init__(self, name: str, levels: Sequence[Level], weights: str = "random", seed: int = 0,
                 padding: str = "zeros"):
        super().__init__()
        check_encoder_name(name)
        check_padding(name, padding)
        self.name = name
        self.levels = tuple(levels)
        self.weights = weights
        self.seed = seed
        self.padding = padding
        if all(isinstance(level, int) for level in self.levels):
            self.body = _create(name, weights, seed, features_only=True, out_indices=self.levels)
            config_source = self.body
        elif all(isinstance(level, str) for level in self.levels):
            full = _create(name, weights, seed)
            self.body = create_feature_extractor(full, return_nodes={lvl: lvl for lvl in self.levels})
            config_source = full
        else:
            raise BenchError(f"Encoder levels must be all indices or all module names, got {self.levels}.")
        if padding == "reflect":
            pad_by_reflection(self.body)
        data_config = timm.data.resolve_model_data_config(config_source)
        self.register_buffer("mean", torch.tensor(data_config["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(data_config["std"]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()
        self.channels, self.strides = self._probe_shapes()

    def train(self, mode: bool = True) -> Encoder:
        return super().train(False)  # frozen: batch-norm statistics never update

    @torch.no_grad()
    def _probe_shapes(self) -> tuple[list[int], list[int]]:
        size = 64
        while True:
            try:
                feats = self._compute(torch.zeros(1, 3, size, size))
                break
            except RuntimeError:
                if size >= 512:
                    raise
                size *= 2
        return [f.shape[1] for f in feats], [size // f.shape[-1] for f in feats]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        cache = active_cache()
        if cache is None:
            return self._compute(images)
        return cache.features(self.identity, self.levels, images, self._compute)

    @property
    def identity(self) -> tuple:
        """What determines this encoder's outputs besides its levels (the feature cache's key)."""
        return (self.name, self.weights, self.seed if self.weights == "random" else None, self.padding)

    def _compute(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = (images - self.mean) / self.std
        out = self.body(x)
        return list(out.values()) if isinstance(out, dict) else list(out)

    def size_bytes(self) -> int:
        """Bytes of parameters and buffers up to the last tapped level (what scoring needs)."""
        return sum(t.nbytes for t in [*self.body.parameters(), *self.body.buffers()])

    def weights_info(self) -> WeightsInfo:
        """How the weights were obtained, for the record."""
        if self.weights == "random":
            return {"source": "random"}
        if self.weights == "imagenet":
            cfg = getattr(self.body, "pretrained_cfg", None) or {}
            return {"source": "imagenet", "tag": cfg.get("tag"), "hf_hub_id": cfg.get("hf_hub_id"),
                    "url": cfg.get("url")}
        path = Path(self.weights).expanduser()
        return {"source": "file", "path": str(path), "sha256": sha256_of(path)}
