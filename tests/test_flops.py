import pytest
import torch
from anobench.flops import count_flops, counted_flops, flops_record
from anobench.methods import create_method
from anobench.methods.encoders import Encoder
from torch import nn

from tests.test_method_contract import FAST_PARAMS, SIZE, batches


def test_counter_matches_a_hand_count_for_a_small_conv_net():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1, stride=2),
                        nn.Conv2d(4, 6, 3, padding=1, groups=2))
    x = torch.zeros(1, 3, 16, 16)
    multiply_adds = 3 * 9 * 8 * 16 * 16 + 8 * 4 * 8 * 8 + (2 * 9 * 6) * 8 * 8  # groups: 2 input channels each
    assert counted_flops(lambda: net(x)) == 2 * multiply_adds


def test_resnet18_at_224_is_its_well_known_1_8_gmac():
    with torch.device("meta"):
        encoder = Encoder("resnet18", (1, 2, 3, 4))
        macs = counted_flops(lambda: encoder(torch.zeros(1, 3, 224, 224))) / 2
    assert macs == pytest.approx(1.82e9, rel=0.02)


@pytest.fixture(scope="module")
def fitted_methods(tiny_data):
    train = batches(tiny_data, "disc")
    return {name: create_method(name, encoder="resnet18", weights="random", **params).fit(train)
            for name, params in FAST_PARAMS.items()}


@pytest.mark.parametrize("name", list(FAST_PARAMS))
def test_every_method_has_flops_by_component(fitted_methods, name):
    method = fitted_methods[name]
    result = count_flops(method, SIZE, "cpu")
    components = result["components"]
    assert list(components) == ["encoder", method.head_component, "postprocess"]
    assert result["total_flops"] == sum(c["flops"] for c in components.values())
    with torch.device("meta"):
        encoder = Encoder("resnet18", method.encoder_levels())
        expected_encoder = counted_flops(lambda: encoder(torch.zeros(1, 3, SIZE, SIZE)))
    assert components["encoder"]["flops"] == expected_encoder > 0
    assert components[method.head_component]["flops"] > 0


@pytest.mark.parametrize("name", ["padim", "patchcore", "spade"])
def test_distance_heads_are_by_formula_and_agree_with_the_counter(fitted_methods, name):
    head = count_flops(fitted_methods[name], SIZE, "cpu")["components"][fitted_methods[name].head_component]
    assert head["counted_by"] == "formula" and head["flops"] == sum(head["terms"].values())
    # the counter sees the distance products only; the formula adds the few elementwise terms
    assert head["counter_flops"] <= head["flops"] <= 1.1 * head["counter_flops"]


def test_padim_formula_is_the_mahalanobis_arithmetic(fitted_methods):
    method = fitted_methods["padim"]
    terms = method.head_flop_formula(SIZE)
    positions, d = method.mean_.shape
    assert positions == 16 * 16 and terms["inverse_covariance_products"] == 2 * positions * d * d


def test_a_figure_that_cannot_be_counted_stays_empty_with_its_reason():
    record = flops_record(object(), 64, "cpu")
    assert record["total_flops"] is None and "AttributeError" in record["reason"]
