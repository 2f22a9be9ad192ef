"""One contract for every registered method, driven by the registry (the timm/scikit-learn idea)."""

import inspect

import numpy as np
import pytest
import torch
from anobench.core import NotFittedError
from anobench.datasets import AnomalyDataset, Geometry, create_dataset
from anobench.methods import create_method, list_methods

# Small settings per method so that the contract runs in seconds; an unlisted method runs with defaults.
FAST_PARAMS = {
    "padim": {},
    "cflow": {"meta_epochs": 1, "sub_epochs": 1, "coupling_blocks": 2, "fiber_batch": 128},
    "spade": {"k_images": 3},
    "patchcore": {"coreset_fraction": 0.25},
    "fastflow": {"epochs": 1, "flow_steps": 2},
}
SIZE = 64


def make(name, seed=0, **extra):
    return create_method(name, encoder="resnet18", weights="random", seed=seed, device="cpu",
                         **{**FAST_PARAMS.get(name, {}), **extra})


def batches(tiny_data, class_name="disc", split="train", size=SIZE):
    dataset = AnomalyDataset(create_dataset("folder", tiny_data).samples(class_name, split), Geometry(size, size))
    images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    return [images[i:i + 8] for i in range(0, len(images), 8)]


@pytest.mark.parametrize("name", list_methods())
def test_init_only_stores_parameters(name):
    method = make(name, seed=7)
    params = method.get_params()
    assert params["seed"] == 7 and params["encoder"] == "resnet18"
    assert set(params) == {p for p in inspect.signature(type(method)).parameters}
    assert not [a for a in vars(method) if a.endswith("_")]  # nothing learned yet


@pytest.mark.parametrize("name", list_methods())
def test_predict_before_fit_raises(name):
    with pytest.raises(NotFittedError):
        make(name).predict(torch.zeros(1, 3, SIZE, SIZE))


@pytest.mark.parametrize("name", list_methods())
def test_fit_predict_shapes_size_and_reproducibility(name, tiny_data, tmp_path):
    train = batches(tiny_data)
    test = torch.cat(batches(tiny_data, split="test"))[:6]
    first = make(name).fit(train).predict(test)
    assert first.maps.shape == (6, SIZE, SIZE) and first.image_scores.shape == (6,)
    assert first.maps.dtype == np.float32 and np.isfinite(first.maps).all()
    again = make(name).fit(train)
    second = again.predict(test)
    np.testing.assert_allclose(second.maps, first.maps, rtol=1e-5, atol=1e-5)  # same seed → same result
    assert again.size_bytes() > again.size_breakdown()["encoder"] > 0

    again.save(tmp_path / "model.pt")
    loaded = type(again).load(tmp_path / "model.pt")
    reloaded = loaded.predict(test)
    np.testing.assert_allclose(reloaded.maps, second.maps, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(reloaded.image_scores, second.image_scores, rtol=1e-6, atol=1e-6)
    assert loaded.get_params() == again.get_params()


@pytest.mark.parametrize("name", list_methods())
def test_an_image_scores_the_same_alone_and_in_a_batch(name, tiny_data):
    method = make(name).fit(batches(tiny_data))
    if method.test_set_dependent:
        pytest.skip("this configuration normalizes over the test set by design")
    test = torch.cat(batches(tiny_data, split="test"))[:8]
    together = method.predict(test)
    alone = method.predict(test[3:4])
    np.testing.assert_allclose(alone.maps[0], together.maps[3], rtol=1e-4, atol=1e-4)
    assert alone.image_scores[0] == pytest.approx(together.image_scores[3], rel=1e-4, abs=1e-4)
