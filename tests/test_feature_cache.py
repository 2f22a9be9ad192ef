import torch

from anobench.methods import create_method
from anobench.methods.feature_cache import FeatureCache
from anobench.records import read_records
from anobench.runner import RunOptions, run_suite
from anobench.suites import load_suite
from tests.conftest import write_suite
from tests.test_method_contract import batches


def count_body_calls(method):
    calls = {"n": 0}
    original = method.encoder_.body.forward

    def counted(x):
        calls["n"] += 1
        return original(x)

    method.encoder_.body.forward = counted
    return calls


def test_two_methods_on_one_encoder_compute_features_once(tiny_data):
    train, test = batches(tiny_data), batches(tiny_data, split="test")
    cache = FeatureCache(2**30)
    spade = create_method("spade", encoder="resnet18", weights="random", k_images=3)
    padim = create_method("padim", encoder="resnet18", weights="random")
    with cache.active():
        spade.fit(train)
        spade_calls = count_body_calls(spade)
        spade.predict_dataset(test)
        padim.fit(train)
        padim_calls = count_body_calls(padim)
        prediction = padim.predict_dataset(test)
    assert spade_calls["n"] == len(test) and padim_calls["n"] == 0  # PaDiM's levels 1-3 came from SPADE's run
    assert cache.hits == len(train) + len(test) and cache.misses == len(train) + len(test)
    uncached = create_method("padim", encoder="resnet18", weights="random").fit(train).predict_dataset(test)
    assert torch.equal(torch.from_numpy(prediction.maps), torch.from_numpy(uncached.maps))


def test_different_inputs_or_weights_miss(tiny_data):
    images = batches(tiny_data)[0]
    cache = FeatureCache(2**30)
    with cache.active():
        a = create_method("padim", encoder="resnet18", weights="random", seed=0).fit([images])
        create_method("padim", encoder="resnet18", weights="random", seed=1).fit([images])  # other weights
        a.predict(images + 0.01)  # other input (an augmented batch would be too)
    assert cache.hits == 0 and cache.misses == 3


def test_inference_mode_bypasses_the_cache(tiny_data):
    images = batches(tiny_data)[0]
    method = create_method("padim", encoder="resnet18", weights="random").fit([images])
    cache = FeatureCache(2**30)
    with cache.active(), torch.inference_mode():
        method.forward_scores(images)
        method.forward_scores(images)
    assert cache.hits == cache.misses == 0


def test_cap_evicts_least_recently_used():
    cache = FeatureCache(max_bytes=3 * 4 * 100)
    for i in range(5):
        cache.features(("enc",), [1], torch.full((1, 100), float(i)), lambda x: [x * 2])
    assert cache.bytes <= cache.max_bytes and len(cache._entries) == 3


def test_records_say_what_came_from_the_cache(tmp_path, tiny_data):
    path = write_suite(tmp_path / "s.toml", tiny_data, classes=("disc",), methods=("spade", "padim"))
    run_suite(load_suite(str(path)), tmp_path / "run", RunOptions())
    spade, padim = read_records(tmp_path / "run")
    assert spade["feature_cache"]["fit"] == {"hits": 0, "misses": 2}
    assert padim["feature_cache"]["fit"] == {"hits": 2, "misses": 0}
    assert padim["feature_cache"]["predict"]["misses"] == 0
