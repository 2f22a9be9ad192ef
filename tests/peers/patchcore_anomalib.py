"""PatchCore fit, ours beside anomalib's, on the same images and machine (run by hand, not by pytest).

    python tests/peers/patchcore_anomalib.py --data DIR/disc [--size 224] [--encoder wide_resnet50_2]
        [--fraction 0.1] [--anomalib-python PYTHON]

``--anomalib-python`` (or the environment variable ``ANOMALIB_PYTHON``) is the interpreter of a virtual
environment with anomalib installed (``python -m venv VENV && VENV/bin/pip install anomalib``; then
``VENV/bin/python``); only ``--side ours`` runs without it.

``DIR/disc`` is one class folder in MVTec layout (``bench data synth --out DIR --size 224 --classes disc
--train 242``). Both sides read ``train/good`` the same way (RGB, bilinear resize to ``--size``, ImageNet
normalization for anomalib; our encoder normalizes inside), use random encoder weights, layers 2 and 3 and
the same coreset fraction, and each runs in its own process (anomalib's in its own virtual environment, via
``--side anomalib``), so that each process's peak RSS is its fit's. Timed: the feature pass (data already in
memory), the coreset selection, and the whole fit. The bank sizes are printed beside each other: both are
int(N·p) for the same N (anomalib's default pipeline resizes to 256 without a crop; here both get ``--size``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def load_images(folder: Path, size: int) -> torch.Tensor:
    """(n, 3, size, size) in [0, 1], as both sides see them."""
    files = sorted(p for p in (folder / "train" / "good").iterdir() if p.suffix.lower() in (".png", ".jpg"))
    images = [np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.BILINEAR)) for p in files]
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def ours(args) -> dict:
    from anobench.methods import create_method

    images = load_images(Path(args.data), args.size)
    batches = [images[i:i + args.batch] for i in range(0, len(images), args.batch)]
    method = create_method("patchcore", encoder=args.encoder, weights="random", coreset_fraction=args.fraction)
    start = time.perf_counter()
    method.fit(batches)
    stats = method.fit_stats()
    return {"side": "anobench", "images": len(images), "patches": stats["training_patches"],
            "bank": stats["coreset_size"], "feature_s": stats["embedding_s"], "coreset_s": stats["coreset_s"],
            "fit_s": time.perf_counter() - start, "peak_rss_gb": peak_rss_gb(), "threads": torch.get_num_threads(),
            "torch": torch.__version__}


def theirs(args) -> dict:
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    images = load_images(Path(args.data), args.size)
    images = (images - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    torch.manual_seed(0)
    model = PatchcoreModel(layers=["layer2", "layer3"], backbone=args.encoder, pre_trained=False).train()
    start = time.perf_counter()
    for i in range(0, len(images), args.batch):
        model(images[i:i + args.batch])
    embedded = time.perf_counter()
    patches = sum(len(e) for e in model.embedding_store)
    model.subsample_embedding(args.fraction)  # the library's own path: KCenterGreedy over the stored embeddings
    done = time.perf_counter()
    return {"side": "anomalib", "images": len(images), "patches": patches, "bank": len(model.memory_bank),
            "feature_s": embedded - start, "coreset_s": done - embedded, "fit_s": done - start,
            "peak_rss_gb": peak_rss_gb(), "threads": torch.get_num_threads(), "torch": torch.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--encoder", default="wide_resnet50_2")
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--side", choices=["both", "ours", "anomalib"], default="both")
    parser.add_argument("--anomalib-python", default=os.environ.get("ANOMALIB_PYTHON"),
                        help="anomalib's interpreter (default: $ANOMALIB_PYTHON)")
    args = parser.parse_args()
    if args.side == "ours":
        print(json.dumps(ours(args)))
        return
    if args.side == "anomalib":
        print(json.dumps(theirs(args)))
        return
    if not args.anomalib_python:
        parser.error("name anomalib's interpreter with --anomalib-python PYTHON or ANOMALIB_PYTHON=PYTHON "
                     "(a virtual environment with anomalib installed), or run --side ours alone")
    results = []
    for side, python in (("ours", sys.executable), ("anomalib", args.anomalib_python)):
        command = [python, __file__, "--side", side, "--data", args.data, "--size", str(args.size),
                   "--encoder", args.encoder, "--fraction", str(args.fraction), "--batch", str(args.batch)]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    a, b = results
    print(f"coreset selection: anobench {a['coreset_s']:.1f} s, anomalib {b['coreset_s']:.1f} s "
          f"({b['coreset_s'] / a['coreset_s']:.1f}x); bank {a['bank']} vs {b['bank']} rows of {a['patches']} patches; "
          f"peak RSS {a['peak_rss_gb']:.2f} vs {b['peak_rss_gb']:.2f} GB")


if __name__ == "__main__":
    main()
