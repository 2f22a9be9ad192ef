"""Run by hand: where FastFlow-R18's scoring time goes, and the fps ratio its convolutions alone would allow.

    python tests/peers/fastflow_speed_budget.py [--batch 8] [--size 256] [--iterations 9] [--threads 2]

R18 with random weights, a flow trained for one step (speed does not depend on training). Timed in turn,
iteration by iteration after one untimed call each, on one ready batch (medians): the whole R18 encoder
padded with zeros and by reflection (the encoder-only rows of Table 6), FastFlow's own encoder (layers 1–3),
FastFlow end to end, its flows alone on ready features, and the flows' subnet convolutions alone (every one
at its shape, nothing else). The last gives a ceiling: the ratio the method would reach if the coupling's
elementwise work (sigmoid, exp, the affine and the channel permutation) cost nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from anobench.methods import create_method
from anobench.methods.encoders import Encoder


def subnet_convolutions(flows, features) -> None:
    for f, flow in zip(features, flows, strict=True):
        for step in flow.steps:
            first, _, last = step.subnet
            last(first(f[:, : step.passive]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--iterations", type=int, default=9)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    images = torch.rand(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    method = create_method("fastflow", encoder="resnet18", weights="random", epochs=1, max_steps=1).fit([images])
    whole = {padding: Encoder("resnet18", (1, 2, 3, 4), padding=padding) for padding in ("zeros", "reflect")}
    size = (args.size, args.size)
    with torch.inference_mode():
        features = method._normalized_features(images)
        calls = {
            "R18 encoder, zeros": lambda: whole["zeros"](images),
            "R18 encoder, reflect": lambda: whole["reflect"](images),
            "FastFlow's encoder": lambda: method.encoder_(images),
            "FastFlow end to end": lambda: method.postprocess(method.forward_scores(images), size),
            "flows alone": lambda: [flow.latent(f.clone()) for f, flow in zip(features, method.flows_, strict=True)],
            "flows' convolutions alone": lambda: subnet_convolutions(method.flows_, features),
        }
        for call in calls.values():
            call()
        times: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(args.iterations):
            for name, call in calls.items():
                start = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - start)
    ms = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    print()
    for name, value in ms.items():
        print(f"{name:28s} {value:8.1f} ms per batch of {args.batch}  ({1e3 * args.batch / value:6.2f} fps)")
    rest = ms["FastFlow end to end"] - ms["FastFlow's encoder"] - ms["flows alone"]
    convolutions = ms["flows' convolutions alone"]
    print(f"elementwise work of the flows: {ms['flows alone'] - convolutions:.1f} ms; "
          f"layer norms and post-processing: {rest:.1f} ms")
    ceiling = ms["FastFlow's encoder"] + convolutions
    for row in ("R18 encoder, zeros", "R18 encoder, reflect", "FastFlow's encoder"):
        print(f"fps ratio against {row}: measured {ms[row] / ms['FastFlow end to end']:.3f}, "
              f"with the convolutions alone {ms[row] / ceiling:.3f}")


if __name__ == "__main__":
    main()
