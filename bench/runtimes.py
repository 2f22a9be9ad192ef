"""The deployment runtimes a cell can be scored under, and the tolerances parity is judged by: plain data,
without torch, so that reports read them as well as ``anobench.deployment`` (which runs them)."""

from __future__ import annotations

from dataclasses import dataclass

MAP_TOLERANCE_REL = 1e-4  # parity holds where maps differ by at most this, relative to the largest |value|
METRIC_TOLERANCE_PP = 0.01  # ... and no metric differs by more than this, in percentage points
EXTRA = "pip install 'anobench[deploy]' (in a checkout: pip install -e '.[deploy]')"
TIMING = {
    "interleaved": "random images (on the device for PyTorch, in host memory for the exported runtimes: on a "
                   "GPU their time includes the transfers), warm-up, then the runtimes timed round-robin (as "
                   "bench/speed.py); fps from the median iteration, ratio_to_torch the median paired ratio",
    "mvtec-ad2": "MVTec AD 2's protocol: batch 1, from a decoded image in host memory to the map in host memory "
                 "(transfers included), warm-up, then the mean of the last N of 2N runs",
}


@dataclass(frozen=True)
class Runtime:
    """A deployment runtime: what it imports, where it runs, and the precision it computes in."""

    name: str
    modules: tuple[str, ...]
    precision: str
    provider: str
    device: str  # "cpu" or "cuda": the device a cell must run on to use it


ONNX = ("onnx", "onnxscript")
RUNTIMES = {r.name: r for r in (
    Runtime("torch", (), "fp32", "eager PyTorch (the reference)", "any"),
    Runtime("onnxruntime", (*ONNX, "onnxruntime"), "fp32", "ONNX Runtime, CPUExecutionProvider", "cpu"),
    Runtime("openvino", (*ONNX, "openvino"), "fp32 (precision hint f32)", "OpenVINO, CPU", "cpu"),
    Runtime("openvino-int8", (*ONNX, "openvino", "nncf"),
            "int8 convolutions (NNCF, calibrated on training images; matrix products f32)",
            "OpenVINO, CPU", "cpu"),
    Runtime("onnxruntime-cuda", (*ONNX, "onnxruntime"), "fp32", "ONNX Runtime, CUDAExecutionProvider", "cuda"),
    Runtime("onnxruntime-tensorrt-fp16", (*ONNX, "onnxruntime"), "fp16 (TensorRT, trt_fp16_enable)",
            "ONNX Runtime, TensorrtExecutionProvider", "cuda"),
)}
