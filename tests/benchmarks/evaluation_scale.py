"""Evaluation at the field's real sizes (run by hand): how peak memory and time grow with the test set.

A class the size of one MVTec LOCO AD class (images of 1600×1280, 20 training images) is generated
reproducibly as a ``folder`` dataset (the synthetic "disc" class, rendered at 1600 px and resized to
1600×1280, masks by nearest neighbour), with 50, 100, 200, 400 or any other number of test images (28 % of
them defect-free, as in LOCO). Each size is run as a user would run it: PaDiM-R18 at 256 without a crop,
metrics at the original resolution (every map resized to 1600×1280), 1000 bootstrap resamples, on the CPU,
through ``bench run``, while this script samples the resident memory of the whole process tree every
50 ms. The table gives per test-set size the whole run's peak RSS, the evaluation's own peak and time
(from the record) and the evaluated pixels.

    python tests/benchmarks/evaluation_scale.py scale --work DIR --counts 50,100,200,400 [--out RESULTS.md]
    python tests/benchmarks/evaluation_scale.py loco --work DIR   # the mvtec-loco suite on a fake of LOCO's layout

``loco`` writes a fake of MVTec LOCO AD's layout at its real image size (one class, breakfast_box: 1600×1280,
20 training and 4 validation images, 75 good, 100 logical and 100 structural test images with per-defect
masks and defects_config.json) and runs the ``mvtec-loco`` suite on it (PaDiM only: random weights, its
protocol at the original resolution).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import psutil
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from anobench.datasets.synthetic import SynthSpec, write_dataset  # noqa: E402
from tests.fake_datasets import write_fake_loco  # noqa: E402

WIDTH, HEIGHT = 1600, 1280
SYNTH_SIZE = 400  # rendered at this size, then resized to 1600×1280 (rendering at full size takes seconds an image)
KINDS = 4  # the synthetic class's defect kinds


def make_folder(work: Path, test_images: int, largest: int = 400) -> Path:
    """A ``disc`` class of ``test_images`` test images at 1600×1280: the first images of each kind of one
    generated set of ``largest`` (written once; the same files every time), linked into a folder of its own."""
    full = work / f"data-{largest}"
    if not (full / "disc" / "test").is_dir():
        per_defect = round(largest * 0.72 / KINDS)
        write_dataset(full, SynthSpec(seed=0, size=SYNTH_SIZE, classes=("disc",), train=20,
                                      test_good=largest - KINDS * per_defect, test_per_defect=per_defect))
        for path in sorted(full.rglob("*.png")):
            nearest = "ground_truth" in path.parts
            with Image.open(path) as image:
                resized = image.resize((WIDTH, HEIGHT), Image.NEAREST if nearest else Image.BILINEAR)
            resized.save(path, compress_level=1)
    if test_images == largest:
        return full
    out = work / f"data-{test_images}"
    per_defect = round(test_images * 0.72 / KINDS)
    wanted = {"good": test_images - KINDS * per_defect}
    for kind in sorted(p.name for p in (full / "disc" / "test").iterdir()):
        wanted.setdefault(kind, per_defect)
    for folder in ("train/good", *(f"test/{k}" for k in wanted), *(f"ground_truth/{k}" for k in wanted if k != "good")):
        source = full / "disc" / folder
        if not source.is_dir():
            continue
        target = out / "disc" / folder
        target.mkdir(parents=True, exist_ok=True)
        files = sorted(source.iterdir())
        kind = folder.split("/")[1]
        for path in files if folder.startswith("train") else files[:wanted[kind]]:
            if not (target / path.name).exists():
                (target / path.name).symlink_to(path)
    return out


SUITE = """name = "evaluation-scale"
version = 1
description = "PaDiM-R18 at 256 without a crop, metrics at the original resolution (1600x1280)"
weights = "random"
batch_size = 8
seeds = [0]
metrics_resolution = "original"
[dataset]
name = "folder"
root = "{root}"
classes = ["disc"]
[[grid]]
methods = ["padim"]
encoders = ["resnet18"]
resolutions = [256]
"""


def run_measured(command: list[str]) -> tuple[float, int]:
    """Run ``command``; return its wall time and the peak RSS of its whole process tree (50 ms samples)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT)
    watched = psutil.Process(process.pid)
    peak = 0
    while process.poll() is None:
        try:
            tree = [watched, *watched.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.05)
    if process.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(command)} exited with {process.returncode}")
    return time.perf_counter() - start, peak


def scale(work: Path, counts: list[int], out: Path | None) -> None:
    rows = []
    for count in counts:
        data = make_folder(work, count, max(counts))
        suite = work / f"suite-{count}.toml"
        suite.write_text(SUITE.format(root=data))
        run_dir = work / f"run-{count}"
        wall, peak = run_measured(["bench", "run", "--suite", str(suite), "--out", str(run_dir), "--device", "cpu"])
        record = json.loads((run_dir / "records.jsonl").read_text().splitlines()[-1])
        rows.append({"test images": count, "pixels evaluated (M)": count * WIDTH * HEIGHT / 1e6,
                     "run wall s": round(wall, 1), "run peak RSS GB (tree)": round(peak / 1e9, 2),
                     "evaluation s": round(record["timings"]["evaluate_s"], 1),
                     "evaluation peak RSS GB": round(record["memory"]["evaluate"]["host_peak_rss_mb"] / 1e3, 2),
                     "status": record["status"], "run folder": run_dir.name})
        print(rows[-1], flush=True)
    header = list(rows[0])
    table = "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                       *("| " + " | ".join(str(r[h]) for h in header) + " |" for r in rows)])
    print(table)
    if out:
        out.write_text(table + "\n")
        out.with_suffix(".json").write_text(json.dumps(rows, indent=1))


def loco(work: Path) -> None:
    data = work / "loco"
    if not (data / "breakfast_box").is_dir():
        write_fake_loco(data, ("breakfast_box",), size=(WIDTH, HEIGHT),
                        counts={"train": 20, "validation": 4, "good": 75, "logical_anomalies": 100,
                                "structural_anomalies": 100})
    suite = work / "loco.toml"
    text = (ROOT / "bench/suites/mvtec-loco.toml").read_text()
    suite.write_text(text.replace('methods = ["cflow", "spade", "padim"]', 'methods = ["padim"]')
                     .replace('"wide_resnet50_2.tv_in1k"', '"resnet18"'))
    wall, peak = run_measured(["bench", "run", "--suite", str(suite), "--data-root", str(data), "--classes",
                               "breakfast_box", "--weights", "random", "--allow-random", "--device", "cpu",
                               "--out", str(work / "run-loco")])
    record = json.loads((work / "run-loco" / "records.jsonl").read_text().splitlines()[-1])
    print(json.dumps({"wall_s": round(wall, 1), "peak_rss_tree_gb": round(peak / 1e9, 2),
                      "evaluate_s": record["timings"].get("evaluate_s"), "status": record["status"],
                      "au_spro@0.05": record["metrics"].get("au_spro@0.05")}, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["scale", "loco"])
    parser.add_argument("--work", type=Path, required=True, help="folder for the generated data and the runs")
    parser.add_argument("--counts", default="50,100,200,400", help="test-set sizes (scale)")
    parser.add_argument("--out", type=Path, help="where to write the table (scale)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.what == "scale":
        scale(args.work.absolute(), [int(c) for c in args.counts.split(",")], args.out)
    else:
        loco(args.work.absolute())


if __name__ == "__main__":
    main()
