"""What only a CUDA device can check: a model fitted on the CPU scores alike on the GPU, the GPU-only
inference options (bf16 autocast, torch.compile) stay close to float32 and say so, and the kNN gives the
same neighbours whether the gallery sits in host or device memory. Skipped without CUDA."""

import numpy as np
import pytest
import torch

from anobench.methods import list_methods
from anobench.methods.knn import knn
from tests.test_method_contract import batches, make

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def on_cuda(method, tmp_path):
    """The fitted ``method`` loaded onto the GPU (the save/load path users take)."""
    method.save(tmp_path / "model.pt")
    return type(method).load(tmp_path / "model.pt", device="cuda")


@pytest.mark.parametrize("name", list_methods())
def test_a_cpu_fitted_model_scores_alike_on_cuda(name, tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # compare float32 with float32
    test = torch.cat(batches(tiny_data, split="test"))[:6]
    cpu = make(name).fit(batches(tiny_data))
    expected, got = cpu.predict(test), on_cuda(cpu, tmp_path).predict(test)
    assert np.isfinite(got.maps).all()
    assert correlation(got.maps, expected.maps) > 0.999
    np.testing.assert_allclose(got.image_scores, expected.image_scores, rtol=1e-2)


# bf16 keeps 8 bits of mantissa: its maps follow float32's, not to three digits; compile only reorders float32
@pytest.mark.parametrize("option, label, min_correlation", [("autocast", "inference_autocast_bf16", 0.9),
                                                            ("compile", "inference_compiled", 0.999)])
def test_cflow_gpu_inference_options_stay_close_and_are_labelled(option, label, min_correlation, tiny_data,
                                                                 tmp_path):
    test = torch.cat(batches(tiny_data, split="test"))[:6]
    plain = on_cuda(make("cflow").fit(batches(tiny_data)), tmp_path)
    optioned = type(plain).load(tmp_path / "model.pt", device="cuda")
    setattr(optioned, option, True)
    assert optioned.labels()[label] and not plain.labels()[label]
    expected, got = plain.predict(test), optioned.predict(test)
    assert np.isfinite(got.maps).all()
    assert correlation(got.maps, expected.maps) > min_correlation


def test_knn_is_the_same_with_the_gallery_in_host_or_device_memory():
    generator = torch.Generator().manual_seed(0)
    queries = torch.randn(500, 64, generator=generator)
    gallery = torch.randn(3000, 64, generator=generator)
    host_dist, host_index = knn(queries.cuda(), gallery, 5, budget_bytes=2**20, device="cuda")
    device_dist, device_index = knn(queries.cuda(), gallery.cuda(), 5, budget_bytes=2**20)
    assert host_dist.is_cuda and device_dist.is_cuda
    torch.testing.assert_close(host_dist, device_dist)
    assert torch.equal(host_index, device_index)
    reference = torch.cdist(queries.double(), gallery.double()).topk(5, dim=1, largest=False).values
    torch.testing.assert_close(host_dist.cpu().double(), reference, rtol=1e-4, atol=1e-4)
