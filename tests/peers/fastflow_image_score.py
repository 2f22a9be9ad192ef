"""Run by hand: how FastFlow's image score (the map's maximum) depends on its training, on real data.

    python tests/peers/fastflow_image_score.py --data-root BSDATA 1 5 20

``BSDATA`` is BSData's folder (class ``ball_screw``, MVTec layout). Every 4th training and every 3rd test
image (the subset of the real-data test), R18 with random weights, 256 px, batch 32. Per epoch count: image
AUROC of the map's maximum and of its mean, pixel AUROC, and where the maximum lies (distance to the image
border; inside the defect or not).
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from anobench import metrics
from anobench.datasets import create_dataset
from anobench.datasets.base import AnomalyDataset, Geometry
from anobench.evaluation import ImageBatches
from anobench.methods import create_method


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("epochs", type=int, nargs="+")
    parser.add_argument("--data-root", required=True, help="the dataset folder, in MVTec layout")
    args = parser.parse_args()
    source = create_dataset("folder", args.data_root)
    geometry = Geometry(256, 256)
    train = AnomalyDataset(source.samples("ball_screw", "train")[::4], geometry)
    test = AnomalyDataset(source.samples("ball_screw", "test")[::3], geometry)
    masks = np.stack([test[i]["mask"].numpy() for i in range(len(test))]).astype(bool)
    labels = test.labels()
    for epochs in args.epochs:
        method = create_method("fastflow", encoder="resnet18", weights="random", epochs=epochs)
        method.fit(ImageBatches(train, 32, shuffle_seed=0))
        maps = method.predict_dataset(ImageBatches(test, 32)).maps
        n, h, w = maps.shape
        flat = maps.reshape(n, -1)
        peak = flat.argmax(1)
        rows, cols = peak // w, peak % w
        to_border = np.minimum.reduce([rows, cols, h - 1 - rows, w - 1 - cols])
        defective = np.flatnonzero(labels == 1)
        print(json.dumps({
            "epochs": epochs,
            "image_auroc_max": metrics.image_auroc(labels, flat.max(1)),
            "image_auroc_mean": metrics.image_auroc(labels, flat.mean(1)),
            "pixel_auroc": metrics.pixel_auroc(masks, maps),
            "peak_px_from_border_median": {"good": float(np.median(to_border[labels == 0])),
                                           "defective": float(np.median(to_border[defective]))},
            "peak_inside_defect": float(np.mean([masks[i].reshape(-1)[peak[i]] for i in defective])),
            "mean_peak": {"good": float(flat[labels == 0].max(1).mean()),
                          "defective": float(flat[defective].max(1).mean())},
        }), flush=True)


if __name__ == "__main__":
    main()
