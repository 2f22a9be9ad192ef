import json

import numpy as np
import pytest
import torch
from torch import nn

from anobench.compare import BASELINES_DIR
from anobench.flops import count_flops, counted_flops, flops_record
from anobench.methods import METHODS, list_methods
from anobench.methods.encoders import Encoder
from anobench.records import read_records
from tests.test_method_contract import SIZE, batches, make
from tests.test_table6 import cell_fps, table6

SHIPPED = [n for n in list_methods() if METHODS.entry(n).origin == "built-in"]


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
    return {name: make(name).fit(train) for name in SHIPPED}


@pytest.mark.parametrize("name", SHIPPED)
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


def test_table6_gflops_are_the_median_of_the_cells_counts_and_achieved_is_each_cells_work_times_its_fps(
        tmp_path):
    """The smoke baseline's records with FLOP counts that differ per cell (as PatchCore's bank does per class)."""
    run = tmp_path / "smoke"
    run.mkdir()
    records = read_records(BASELINES_DIR / "smoke-cpu.jsonl")
    with (run / "records.jsonl").open("w") as out:
        for i, record in enumerate(records):
            encoder, head = 1e9 * (1 + i), 3e8 * (i % 3)
            record["flops"] = {"components": {"encoder": {"flops": encoder}, "head": {"flops": head}},
                               "total_flops": encoder + head}
            out.write(json.dumps(record) + "\n")
    rows = {r["Model"]: r for r in table6(run)}
    for model, method, region, key in [("PaDiM-R18†", "padim", "end_to_end", "total_flops"),
                                      ("R18 encoder only†¶", "cflow", "encoder", None)]:
        cells = [r for r in records if r["config"]["method"] == method]
        gflops = [(r["flops"][key] if key else r["flops"]["components"]["encoder"]["flops"]) / 1e9 for r in cells]
        achieved = [g * cell_fps(r, region) for g, r in zip(gflops, cells, strict=True)]
        assert rows[model]["GFLOPs"] == f"{np.median(gflops):.2f}"
        assert rows[model]["GFLOP/s achieved"] == f"{np.median(achieved):.1f}"
    definitions = (run / "report.md").read_text().split("### Definitions")[1]
    assert "**GFLOPs**" in definitions and "**GFLOP/s achieved**" in definitions


def test_table6_drops_the_flops_columns_when_no_record_counted_them(tmp_path):
    run = tmp_path / "smoke"
    run.mkdir()
    records = [json.loads(line) for line in (BASELINES_DIR / "smoke-cpu.jsonl").read_text().splitlines()]
    for record in records:  # as records written before FLOPs were counted
        record.pop("flops", None)
    (run / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert not {"GFLOPs", "GFLOP/s achieved"} & set(table6(run)[0])
