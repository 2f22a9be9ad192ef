"""Encoder options: the official CFLOW-AD code's reflect padding, and who may use it."""

import pytest
import torch
from torch import nn

from anobench.core import BenchError
from anobench.methods import create_method
from anobench.methods.encoders import Encoder


def padded_convs(encoder):
    convs = {name: m for name, m in encoder.body.named_modules() if isinstance(m, nn.Conv2d)}
    return convs, {name for name, m in convs.items() if m.padding_mode == "reflect"}


@pytest.mark.parametrize("name", ["resnet18", "wide_resnet50_2"])
def test_reflect_padding_is_on_the_stem_and_every_3x3_conv_only(name):
    with torch.device("meta"):  # shapes only: no weights, no compute
        encoder = Encoder(name, (2, 3, 4), padding="reflect")
    convs, reflected = padded_convs(encoder)
    # The official ResNet copy: padding_mode='reflect' in conv3x3 and in the 7x7 conv1; 1x1 convs unchanged.
    assert reflected == {n for n, m in convs.items() if m.kernel_size in ((7, 7), (3, 3))}
    assert "conv1" in reflected and len(reflected) == 17  # stem + 16 3x3 (R18: 8 blocks x 2; WR50: 16 x 1)
    assert all(convs[n].kernel_size == (1, 1) for n in set(convs) - reflected)
    with torch.device("meta"):
        assert not padded_convs(Encoder(name, (2, 3, 4)))[1]  # zeros stay timm's default


def test_reflect_padding_changes_the_features_and_the_cache_key():
    images = torch.rand(2, 3, 64, 64)
    zeros = Encoder("resnet18", (2, 3, 4), seed=0)
    reflect = Encoder("resnet18", (2, 3, 4), seed=0, padding="reflect")
    assert zeros.identity != reflect.identity
    with torch.no_grad():
        for a, b in zip(zeros(images), reflect(images), strict=True):
            assert a.shape == b.shape and not torch.allclose(a, b)
    assert zeros.size_bytes() == reflect.size_bytes()


def test_reflect_padding_is_refused_where_it_is_not_defined():
    with pytest.raises(BenchError, match="ResNet"):
        Encoder("mobilenetv3_large_100", ("blocks.2",), padding="reflect")
    with pytest.raises(BenchError, match="zeros, reflect"):
        Encoder("resnet18", (2,), padding="circular")
    with pytest.raises(BenchError, match="Unknown encoder 'nosuch'"):  # not a crash in the padding lookup
        create_method("cflow", encoder="nosuch", weights="random")._build_encoder("random")


def test_each_method_pads_as_its_paper_and_any_may_choose():
    assert create_method("cflow", encoder="resnet18").encoder_padding_mode() == "reflect"
    assert create_method("cflow", encoder="wide_resnet50_2.tv_in1k").encoder_padding_mode() == "reflect"
    assert create_method("cflow", encoder="mobilenetv3_large_100").encoder_padding_mode() == "zeros"
    assert create_method("cflow", encoder="resnet18", encoder_padding="zeros").encoder_padding_mode() == "zeros"
    for name in ("padim", "spade"):
        assert create_method(name, encoder="resnet18").encoder_padding_mode() == "zeros"
        method = create_method(name, encoder="resnet18", weights="random", encoder_padding="reflect")
        assert method._build_encoder("random").padding == "reflect"
