"""Deployment runtimes: every built-in method exports and scores the same under ONNX Runtime and OpenVINO,
a method that declares no export is recorded with its reason, int8 calibrates on training images only,
MVTec AD 2's timing keeps the last N of 2N runs, and a runtime without its extra is refused up front."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from anobench import deployment
from anobench.core import BenchError
from anobench.datasets import create_dataset
from anobench.datasets.base import AnomalyDataset, Geometry
from anobench.deployment import DeploymentJob, check_runtimes, deploy
from anobench.evaluation import compute_metrics
from anobench.methods.base import Prediction
from anobench.methods.padim import PaDiM
from anobench.speed import time_last_half
from tests.conftest import run_bench, write_suite
from tests.test_method_contract import SIZE, batches, make

BUILT_IN = ("padim", "patchcore", "spade", "cflow", "fastflow")


def needs_extra():
    for module in ("onnx", "onnxscript", "onnxruntime", "openvino", "nncf"):
        pytest.importorskip(module, reason="the deploy extra is not installed (pip install -e '.[deploy]')")


def scored_job(method, tiny_data, runtimes, **extra) -> DeploymentJob:
    """A job over the disc class's test set, PyTorch's prediction of it and the standard metrics."""
    test = AnomalyDataset(create_dataset("folder", tiny_data).samples("disc", "test"), Geometry(SIZE, SIZE))
    images = torch.stack([test[i]["image"] for i in range(len(test))])
    masks = np.stack([test[i]["mask"].numpy() for i in range(len(test))])
    labels = test.labels()

    def metrics_of(prediction: Prediction) -> dict[str, float | None]:
        return compute_metrics(labels, masks, prediction.image_scores, prediction.maps)[0]

    settings = {"protocol": "interleaved", "input_size": SIZE, "batch_sizes": (4,), "warmup": 0, "iterations": 2,
                "threads": 1, "device": "cpu", "seed": 0, **extra}
    return DeploymentJob(method=method, runtimes=runtimes, training_images=lambda: batches(tiny_data),
                         test_images=lambda: [images[i:i + 8] for i in range(0, len(images), 8)],
                         reference=method.predict(images), metrics_of=metrics_of, **settings)


@pytest.mark.parametrize("name", BUILT_IN)
def test_every_built_in_method_scores_the_same_under_onnxruntime_and_openvino(name, tiny_data):
    needs_extra()
    method = make(name).fit(batches(tiny_data))
    result = deploy(scored_job(method, tiny_data, ("torch", "onnxruntime", "openvino")))
    for runtime in ("onnxruntime", "openvino"):
        entry = result["runtimes"][runtime]
        assert entry["status"] == "ok", entry.get("reason")
        parity = entry["parity"]
        assert parity["map_max_rel"] <= deployment.MAP_TOLERANCE_REL, parity
        assert parity["score_max_rel"] <= deployment.MAP_TOLERANCE_REL, parity
        assert parity["metrics"].keys() == parity["metric_difference_pp"].keys() and parity["metrics"]
        assert all(abs(d) <= deployment.METRIC_TOLERANCE_PP for d in parity["metric_difference_pp"].values()
                   if d is not None), parity["metric_difference_pp"]
        assert parity["within_tolerance"] and entry["export_bytes"] > 0
        timing = entry["batches"]["4"]
        assert timing["fps"] > 0 and timing["ratio_to_torch"] > 0 and len(timing["times_s"]) == 2
    assert result["runtimes"]["torch"]["batches"]["4"]["fps"] > 0


def test_parity_flags_maps_that_differ_and_metric_changes():
    reference = Prediction(np.array([0.0, 1.0], np.float32), np.ones((2, 4, 4), np.float32))
    shifted = Prediction(reference.image_scores, reference.maps + np.float32(1e-3))
    result = deployment.parity(reference, shifted, {"image_auroc": 0.5}, {"image_auroc": 0.5})
    assert result["map_max_rel"] == pytest.approx(1e-3, rel=1e-3) and not result["within_tolerance"]
    same = deployment.parity(reference, reference, {"image_auroc": 0.5}, {"image_auroc": 0.50002})
    assert same["metric_difference_pp"]["image_auroc"] == pytest.approx(0.002)
    assert same["within_tolerance"]
    assert not deployment.parity(reference, reference, {"image_auroc": 0.5}, {"image_auroc": 0.6})["within_tolerance"]


class SealedPaDiM(PaDiM):
    """PaDiM that declares its scoring not exportable."""

    name = "sealed_padim"
    not_exportable = "its statistics live in a service the graph cannot call"


def test_a_method_that_declares_no_export_is_recorded_with_its_reason(tiny_data):
    method = SealedPaDiM(encoder="resnet18", weights="random").fit(batches(tiny_data))
    result = deploy(scored_job(method, tiny_data, ("torch", "onnxruntime")))
    entry = result["runtimes"]["onnxruntime"]
    assert entry["status"] == "unavailable"
    assert entry["reason"] == "sealed_padim cannot be exported: its statistics live in a service the graph cannot call"
    assert "batches" not in entry and result["runtimes"]["torch"]["batches"]["4"]["fps"] > 0


def test_int8_calibrates_on_training_images_only(tiny_data, tmp_path, monkeypatch):
    """A whole cell through the runner: every image NNCF calibrates on is a training image, none a test one."""
    needs_extra()
    import nncf

    seen: list[np.ndarray] = []
    quantize = nncf.quantize

    def recording(model, dataset, **kwargs):
        seen.extend(image for batch in dataset.get_inference_data() for image in batch)
        return quantize(model, dataset, **kwargs)

    monkeypatch.setattr(nncf, "quantize", recording)
    from anobench.executors import InlineExecutor
    from anobench.runner import RunOptions, run_suite
    from anobench.suites import load_suite

    suite = load_suite(str(write_suite(tmp_path / "int8.toml", tiny_data, classes=("disc",), extra=(
        '[measure]\nruntimes = ["torch", "openvino-int8"]\nbatch_sizes = [4]\nwarmup = 0\niterations = 1\n'
        '[bootstrap]\nresamples = 0\n'))))
    summary = run_suite(suite, tmp_path / "run", RunOptions(device="cpu"), InlineExecutor())  # the patch applies
    assert summary.ok == 1, summary.failures
    source = create_dataset("folder", tiny_data)
    train = [AnomalyDataset(source.samples("disc", "train"), Geometry(SIZE, SIZE))[i]["image"].numpy()
             for i in range(12)]
    test_set = AnomalyDataset(source.samples("disc", "test"), Geometry(SIZE, SIZE))
    test = [test_set[i]["image"].numpy() for i in range(len(test_set))]
    assert len(seen) == 12  # three whole batches of four
    assert all(any(np.array_equal(image, t) for t in train) for image in seen)
    assert not any(np.array_equal(image, t) for image in seen for t in test)


def test_mvtec_ad2_timing_keeps_the_last_half_of_2n_runs():
    durations = iter([0.05] * 3 + [0.03] * 4 + [0.001] * 4)  # warm-up, then the first N, then the last N

    def call():
        time.sleep(next(durations))

    times = time_last_half(call, "cpu", warmup=3, runs=4)
    assert len(times) == 4 and max(times) < 0.02


def test_mvtec_ad2_protocol_times_batch_1_and_says_so(tiny_data):
    method = make("padim").fit(batches(tiny_data))
    job = scored_job(method, tiny_data, ("torch",), protocol="mvtec-ad2", batch_sizes=(4, 8), iterations=3)
    result = deploy(job)
    assert result["protocol"] == "mvtec-ad2" and "last N of 2N" in result["timing"]
    timing = result["runtimes"]["torch"]["batches"]
    assert list(timing) == ["1"] and timing["1"]["iterations"] == 3
    assert timing["1"]["fps"] == pytest.approx(1 / timing["1"]["mean_s"])


def test_a_runtime_without_its_extra_is_one_sentence_naming_the_extra(monkeypatch):
    real = deployment.importlib.import_module

    def without_openvino(name, *args):
        if name == "openvino":
            raise ModuleNotFoundError("No module named 'openvino'")
        return real(name, *args)

    monkeypatch.setattr(deployment.importlib, "import_module", without_openvino)
    with pytest.raises(BenchError, match=r"Runtime 'openvino' \(suite s.toml\) needs the deploy extra \(openvino not "
                                         r"installed\); install it with pip install 'anobench\[deploy\]'"):
        check_runtimes(("torch", "openvino"), "cpu", "suite s.toml")
    with pytest.raises(BenchError, match="Unknown runtime 'tensorrt'"):
        check_runtimes(("tensorrt",), "cpu", "here")
    with pytest.raises(BenchError, match="runs on a CUDA device; pass --device cuda"):
        check_runtimes(("onnxruntime-cuda",), "cpu", "here")


def test_bench_run_refuses_a_runtime_without_its_extra_before_any_work(tiny_data, tmp_path):
    """In a process where openvino cannot be imported: exit 2, one sentence, no run folder."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['openvino'] = None\n")
    suite = write_suite(tmp_path / "s.toml", tiny_data, classes=("disc",))
    result = run_bench("run", "--suite", str(suite), "--device", "cpu", "--runtimes", "torch,openvino",
                       "--out", str(tmp_path / "run"), env={"PYTHONPATH": str(blocker)})
    assert result.returncode == 2, result.stderr
    assert "needs the deploy extra" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def deployed_record(cls: str, fps: dict[str, float], ratio: float, map_rel: float, metric_pp: float, ok: bool) -> dict:
    """A record of one PaDiM cell with a deployment block (torch and onnxruntime at batch 8)."""
    runtimes = {
        "torch": {"status": "ok", "precision": "fp32", "batches": {"8": {"fps": fps["torch"], "latency_ms": 8e3 / fps["torch"]}}},
        "onnxruntime": {"status": "ok", "precision": "fp32", "export_bytes": 2_000_000,
                        "batches": {"8": {"fps": fps["onnxruntime"], "latency_ms": 8e3 / fps["onnxruntime"],
                                          "ratio_to_torch": ratio}},
                        "parity": {"map_max_rel": map_rel, "score_max_rel": map_rel / 2, "within_tolerance": ok,
                                   "metric_difference_pp": {"image_auroc": metric_pp, "aupro": -2 * metric_pp}}},
    }
    return {"cell_id": cls, "status": "ok", "display": {"method": "PaDiM", "encoder": "R18"}, "labels": {},
            "config": {"method": "padim", "encoder": "resnet18", "protocol": "strict", "weights": "imagenet",
                       "params": {}, "resolution": 224, "resize": 256, "class": cls},
            "deployment": {"protocol": "interleaved", "timing": "round-robin", "runtimes": runtimes}}


def test_the_deployment_table_is_recomputable_from_the_records(tmp_path):
    from anobench.reports.deployment import COLUMNS, deployment_table
    from anobench.reports.plots import deployment_fps
    from anobench.reports.rows import RunData

    records = [deployed_record("a", {"torch": 10.0, "onnxruntime": 12.0}, 1.2, 1e-7, 0.001, True),
               deployed_record("b", {"torch": 20.0, "onnxruntime": 30.0}, 1.4, 3e-4, -0.004, False),
               deployed_record("c", {"torch": 30.0, "onnxruntime": 31.0}, 1.1, 2e-7, 0.002, True)]
    run = RunData(tmp_path, records, None, {})  # type: ignore[arg-type]
    table = deployment_table(run)
    rows = {row[4]: dict(zip(COLUMNS, row, strict=True)) for row in table.rows}
    assert list(rows) == ["torch", "onnxruntime"]
    onnx = rows["onnxruntime"]
    assert (onnx["Model"], onnx["Input"], onnx["Batch"], onnx["Timing"]) == ("PaDiM-R18", 224, 8, "interleaved")
    assert onnx["fps"] == 30.0 and rows["torch"]["fps"] == 20.0  # medians over the three cells
    assert onnx["× torch"] == 1.2 and rows["torch"]["× torch"] is None
    assert onnx["Map diff (rel.)"] == "3.0e-04" and onnx["Score diff (rel.)"] == "1.5e-04"  # the largest
    assert onnx["Largest metric diff (pp)"] == "0.0080"
    assert onnx["Parity"] == "differs" and rows["torch"]["Parity"] == "reference"
    assert onnx["Export (MB)"] == 2.0 and onnx["Latency (ms)"] == pytest.approx(8e3 / 30.0)
    assert [plot.key for plot in deployment_fps(run)] == ["deployment-fps"]


def cuda_provider(provider: str):
    """Skip unless this machine has CUDA and ONNX Runtime's ``provider`` (the onnxruntime-gpu package)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    onnxruntime = pytest.importorskip("onnxruntime", reason="the deploy extra is not installed")
    if provider not in onnxruntime.get_available_providers():
        pytest.skip(f"this onnxruntime has no {provider} (install onnxruntime-gpu)")


def on_cuda(method, tmp_path):
    method.save(tmp_path / "model.pt")
    return type(method).load(tmp_path / "model.pt", device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("name", BUILT_IN)
def test_onnxruntime_cuda_scores_the_same_as_eager_pytorch_on_the_gpu(name, tiny_data, tmp_path, monkeypatch):
    cuda_provider("CUDAExecutionProvider")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # float32 against float32
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    method = on_cuda(make(name).fit(batches(tiny_data)), tmp_path)
    result = deploy(scored_job(method, tiny_data, ("torch", "onnxruntime-cuda"), device="cuda"))
    entry = result["runtimes"]["onnxruntime-cuda"]
    assert entry["status"] == "ok", entry.get("reason")
    assert entry["parity"]["map_max_rel"] <= deployment.MAP_TOLERANCE_REL, entry["parity"]
    assert entry["batches"]["4"]["fps"] > 0 and entry["memory"]["gpu_peak_allocated_mb"] is not None


@pytest.mark.gpu
def test_tensorrt_fp16_is_labelled_and_its_difference_recorded(tiny_data, tmp_path):
    cuda_provider("TensorrtExecutionProvider")
    method = on_cuda(make("padim").fit(batches(tiny_data)), tmp_path)
    result = deploy(scored_job(method, tiny_data, ("torch", "onnxruntime-tensorrt-fp16"), device="cuda"))
    entry = result["runtimes"]["onnxruntime-tensorrt-fp16"]
    assert entry["status"] == "ok", entry.get("reason")
    assert entry["precision"].startswith("fp16")
    assert 0 <= entry["parity"]["map_max_rel"] < 0.05 and "metric_difference_pp" in entry["parity"]
