"""Peer comparison, run by hand: our CFLOW-AD beside anomalib's, on identical inputs and encoder weights.

Never collected by pytest (``tests/peers`` is in ``norecursedirs``) and never imported by anobench: anomalib
lives in its own virtual environment, so each side runs in its own interpreter and they meet in files.
``$ANOMALIB_PYTHON`` below is that environment's interpreter (``python -m venv VENV && VENV/bin/pip install
anomalib``, then ``ANOMALIB_PYTHON=VENV/bin/python``); ``W`` is any empty working folder and
``DATA`` a dataset folder in MVTec layout (BSData for the published figures).

    W=$(mktemp -d)
    python tests/peers/cflow_anomalib.py prepare --work $W --data-root DATA
    python tests/peers/cflow_anomalib.py ours --work $W --schedule A --seed 0
    $ANOMALIB_PYTHON tests/peers/cflow_anomalib.py anomalib --work $W --schedule A --seed 0
    python tests/peers/cflow_anomalib.py lockstep-ours --work $W
    $ANOMALIB_PYTHON tests/peers/cflow_anomalib.py lockstep-anomalib --work $W
    python tests/peers/cflow_anomalib.py compare --work $W

``prepare`` writes the resized images (uint8, our dataset pipeline), one set of random ResNet-18 weights
(timm, seed 0) that both sides load, and per seed the image order of every epoch; both sides then train on
the same batches in the same order. Seeds vary the decoders' initialization and the fiber shuffling only.

Schedules (``SCHEDULES``): ``A`` is anomalib's (one epoch, constant lr 1e-4, fiber batch 64, no rotation);
``B`` is a short run of the official one (3 meta-epochs × 2 sub-epochs, lr 1e-3 with the warm-up and cosine
decay, N=256; anomalib gets the same lr trace per image batch through a callback). Both sides build the
encoder with zero padding (timm's, anomalib's); ours takes ``--permute-soft``/``--rotation`` to vary.

Every run saves, per level, the log-likelihoods (log p / C) of every test fiber and the training loss of every
optimizer step. ``compare`` scores all runs under one protocol (the official code's: each level's log p minus
its maximum over the test set, exp, bilinear upsampling, sum; map = max − sum; image score = max of the map),
per level and combined, and prints mean ± std over seeds per group.

``lockstep-*`` is the step-by-step check: one image batch, ours first, recording our initial decoder state,
the encoder features and every fiber permutation; anomalib then starts from that state, takes the same
permutations (``torch.randperm`` replaced for the run) and the same lr, and the two sets of decoder outputs on
the test fibers are compared.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

IMAGE_BATCH = 32
SEEDS_PREPARED = 10
MAX_EPOCHS = 6
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SCHEDULES = {
    "A": {"meta_epochs": 1, "sub_epochs": 1, "lr": 1e-4, "warmup_epochs": 0, "fiber_batch": 64},
    "B": {"meta_epochs": 3, "sub_epochs": 2, "lr": 1e-3, "warmup_epochs": 2, "fiber_batch": 256},
}
LEVELS = ("layer2", "layer3", "layer4")


# -- shared by both sides (plain torch) -------------------------------------------------------------------


def official_lr(lr: float, meta_epoch: int, meta_epochs: int, warmup_epochs: int, progress: float) -> float:
    """The official schedule: cosine per meta-epoch to lr/1000, linear warm-up from lr/10 (progress in [0, 1])."""
    floor = lr * 0.1**3

    def cosine(epoch):
        return floor + (lr - floor) * (1 + math.cos(math.pi * epoch / meta_epochs)) / 2

    if meta_epoch < warmup_epochs:
        return lr / 10 + progress * (cosine(warmup_epochs) - lr / 10)
    return cosine(meta_epoch)


def epoch_batches(order: list[int], batch_size: int = IMAGE_BATCH) -> list[list[int]]:
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def load_inputs(work: Path) -> dict:
    return torch.load(work / "inputs.pt", weights_only=True)


def normalized(images_u8: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images_u8.float() / 255 - mean) / std


class LossRecorder(nn.Module):
    """A decoder that also notes the training loss of each optimizer step (−logsigmoid(log p / C), mean)."""

    def __init__(self, flow: nn.Module, losses: list[float]):
        super().__init__()
        self.flow = flow
        self.losses = losses

    def forward(self, x, c, rev=False):
        z, log_det = self.flow(x, c=c, rev=rev)
        if self.training and not rev:
            channels = z.shape[1]
            log_p = -channels * 0.5 * math.log(2 * math.pi) - 0.5 * z.pow(2).sum(1) + log_det
            self.losses.append(-F.logsigmoid(log_p.detach() / channels).mean().item())
        return z, log_det


def run_name(side: str, schedule: str, seed: int, variant: str) -> str:
    return f"{side}-{schedule}-{variant}-s{seed}"


def save_run(work: Path, name: str, log_p: list[torch.Tensor], losses: list[list[float]], seconds: float,
             settings: dict) -> None:
    out = work / "runs"
    out.mkdir(exist_ok=True)
    torch.save({"log_p": [lp.float() for lp in log_p], "losses": losses, "seconds": seconds, "settings": settings},
               out / f"{name}.pt")
    print(f"{name}: {seconds:.0f} s, final loss per level "
          f"{[round(float(np.mean(v[-20:])), 4) for v in losses]}")


# -- ours (anobench's environment) ------------------------------------------------------------------------


def prepare(args) -> None:
    import timm

    from anobench.datasets import create_dataset
    from anobench.datasets.base import AnomalyDataset, Geometry

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    source = create_dataset("folder", args.data_root)
    geometry = Geometry(args.size, args.size)
    splits = {split: AnomalyDataset(source.samples(args.class_name, split), geometry) for split in ("train", "test")}
    inputs = {f"{split}_images": torch.stack([torch.from_numpy(ds.image_u8(i)).permute(2, 0, 1)
                                              for i in range(len(ds))]) for split, ds in splits.items()}
    inputs["test_masks"] = torch.stack([splits["test"][i]["mask"] for i in range(len(splits["test"]))]).bool()
    inputs["test_labels"] = torch.from_numpy(splits["test"].labels())
    torch.save(inputs, work / "inputs.pt")
    torch.manual_seed(args.weights_seed)
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), work / "resnet18-random.pth")
    n = len(inputs["train_images"])
    orders = {seed: [np.random.RandomState(1000 * seed + epoch).permutation(n).tolist() for epoch in range(MAX_EPOCHS)]
              for seed in range(SEEDS_PREPARED)}
    (work / "orders.json").write_text(json.dumps(orders))
    print(f"{n} training and {len(inputs['test_images'])} test images at {args.size} px in {work}")


class EpochOrderedBatches:
    """Re-iterable training batches: epoch k uses the k-th prepared order (what a shuffling loader gives)."""

    def __init__(self, images: torch.Tensor, orders: list[list[int]]):
        self.images, self.orders, self.epoch = images, orders, 0

    def __len__(self):
        return len(epoch_batches(self.orders[0]))

    def __iter__(self):
        order = self.orders[self.epoch]
        self.epoch += 1
        for batch in epoch_batches(order):
            yield self.images[batch].float() / 255


def our_method(args, work: Path, **extra):
    from anobench.methods.cflow import CFlow

    rotation_mode = args.rotation

    class PeerCFlow(CFlow):
        def _build_decoders(self, draw_soft_permutations: bool = True) -> nn.ModuleList:
            flows = super()._build_decoders(draw_soft_permutations)
            self.level_losses_ = [[] for _ in flows]
            return nn.ModuleList(LossRecorder(f, losses) for f, losses in zip(flows, self.level_losses_, strict=True))

        def _augment(self, images, generator):
            if rotation_mode != "bilinear":
                return super()._augment(images, generator)
            import torchvision.transforms.functional as TF  # the interpolation before this fix

            angles = (torch.rand(len(images), generator=generator) * 2 - 1) * self.rotation_degrees
            return torch.stack([TF.rotate(img, float(a), interpolation=TF.InterpolationMode.BILINEAR)
                                for img, a in zip(images, angles, strict=True)])

    settings = {**SCHEDULES[args.schedule], **extra}
    return PeerCFlow(encoder="resnet18", weights=str(work / "resnet18-random.pth"), encoder_padding=args.padding,
                     permute_soft=args.permute_soft, rotation_degrees=0.0 if args.rotation == "none" else 5.0,
                     protocol="paper", seed=args.seed, **settings), settings


def ours(args) -> None:
    work = Path(args.work)
    inputs = load_inputs(work)
    orders = json.loads((work / "orders.json").read_text())[str(args.seed)]
    torch.manual_seed(args.seed)
    method, settings = our_method(args, work)
    start = time.perf_counter()
    method.fit(EpochOrderedBatches(inputs["train_images"], orders))
    seconds = time.perf_counter() - start
    with torch.no_grad():
        parts = [method.forward_scores(inputs["test_images"][i:i + IMAGE_BATCH].float() / 255)
                 for i in range(0, len(inputs["test_images"]), IMAGE_BATCH)]
    log_p = [torch.cat(level) for level in zip(*parts, strict=True)]
    variant = f"{args.rotation}-{'soft' if args.permute_soft else 'hard'}-{args.padding}"
    save_run(work, run_name("ours", args.schedule, args.seed, variant), log_p, method.level_losses_, seconds,
             {**settings, **vars(args)})


def lockstep_ours(args) -> None:
    """One image batch with our CFLOW, recording what anomalib needs to repeat it exactly."""
    work = Path(args.work)
    inputs = load_inputs(work)
    batch = inputs["train_images"][:IMAGE_BATCH].float() / 255
    permutations = []
    original_randperm = torch.randperm

    def recording_randperm(*a, **k):
        out = original_randperm(*a, **k)
        permutations.append(out.clone())
        return out

    method, settings = our_method(args, work)
    method.encoder_ = method._build_encoder(method.weights)
    initial = {k: v.clone() for k, v in method._build_decoders().state_dict().items()}
    torch.randperm = recording_randperm
    try:
        method.fit([batch])
    finally:
        torch.randperm = original_randperm
    test = inputs["test_images"][:16].float() / 255
    with torch.no_grad():
        features = method.encoder_(batch)
        log_p = method.forward_scores(test)
    flows_initial = {k.replace(".flow.", "."): v for k, v in initial.items()}
    torch.save({"initial": flows_initial, "permutations": permutations, "features": features, "log_p": log_p,
                "losses": method.level_losses_, "lr": learning_rate_of(settings)}, work / "lockstep-ours.pt")
    print(f"lockstep (ours): {sum(len(v) for v in method.level_losses_)} steps, {len(permutations)} permutations")


def learning_rate_of(settings: dict) -> float:
    """The lr of the first image batch (the lockstep runs one)."""
    return official_lr(settings["lr"], 0, settings["meta_epochs"], settings["warmup_epochs"], 0.0)


# -- anomalib (its own environment) -----------------------------------------------------------------------


def anomalib_model(args, work: Path, settings: dict):
    from anomalib.models import Cflow

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    model = Cflow(backbone="resnet18", layers=LEVELS, pre_trained=False, fiber_batch_size=settings["fiber_batch"],
                  permute_soft=args.permute_soft, lr=settings["lr"], pre_processor=False, post_processor=False,
                  evaluator=False, visualizer=False)
    state = torch.load(work / "resnet18-random.pth", weights_only=True)
    missing, unexpected = model.model.encoder.feature_extractor.load_state_dict(state, strict=False)
    assert not missing and all(k.startswith("fc.") for k in unexpected), (missing, unexpected)
    losses = [[] for _ in LEVELS]
    model.model.decoders = nn.ModuleList(LossRecorder(d, v) for d, v in zip(model.model.decoders, losses, strict=True))
    return model, losses


def anomalib_fit(model, images_u8: torch.Tensor, orders: list[list[int]], epochs: int, callbacks=()):
    from anomalib.data import ImageBatch
    from lightning.pytorch import Trainer

    class OrderedSampler:
        def __init__(self):
            self.epoch = 0

        def __len__(self):
            return len(epoch_batches(orders[0]))

        def __iter__(self):
            order = orders[self.epoch]
            self.epoch += 1
            return iter(epoch_batches(order))

    dataset = torch.utils.data.TensorDataset(normalized(images_u8))
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=OrderedSampler(),
                                         collate_fn=lambda items: ImageBatch(image=torch.stack([i[0] for i in items])))
    trainer = Trainer(accelerator="cpu", devices=1, max_epochs=epochs, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                      callbacks=list(callbacks), **model.trainer_arguments)  # no clipping, no sanity steps
    trainer.fit(model, train_dataloaders=loader)


def anomalib_log_p(model, images_u8: torch.Tensor) -> list[torch.Tensor]:
    """Per level log p / C of every test fiber, as anomalib's own forward computes them."""
    captured = []
    generator = model.model.anomaly_map_generator

    class Capture(nn.Module):
        def forward(self, **kwargs):
            captured.append([d.reshape(-1, h, w) for d, h, w in
                             zip(kwargs["distribution"], kwargs["height"], kwargs["width"], strict=True)])
            return generator(**kwargs)

    model.model.anomaly_map_generator = Capture()
    model.model.eval()
    with torch.no_grad():
        for i in range(0, len(images_u8), IMAGE_BATCH):
            model.model(normalized(images_u8[i:i + IMAGE_BATCH]))
    model.model.anomaly_map_generator = generator
    return [torch.cat(level) for level in zip(*captured, strict=True)]


def anomalib(args) -> None:
    from lightning.pytorch.callbacks import Callback

    work = Path(args.work)
    inputs = load_inputs(work)
    settings = SCHEDULES[args.schedule]
    orders = json.loads((work / "orders.json").read_text())[str(args.seed)]
    model, losses = anomalib_model(args, work, settings)
    epochs = settings["meta_epochs"] * settings["sub_epochs"]
    n_batches = len(epoch_batches(orders[0]))

    class OfficialLearningRate(Callback):
        """Our lr trace per image batch (anomalib's own is constant)."""

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            meta, sub = divmod(trainer.current_epoch, settings["sub_epochs"])
            warm = max(settings["warmup_epochs"] * settings["sub_epochs"] * n_batches, 1)
            lr = official_lr(settings["lr"], meta, settings["meta_epochs"], settings["warmup_epochs"],
                             ((meta * settings["sub_epochs"] + sub) * n_batches + batch_idx) / warm)
            for group in trainer.optimizers[0].param_groups:
                group["lr"] = lr

    callbacks = [] if args.schedule == "A" else [OfficialLearningRate()]
    start = time.perf_counter()
    anomalib_fit(model, inputs["train_images"], orders, epochs, callbacks)
    seconds = time.perf_counter() - start
    log_p = anomalib_log_p(model, inputs["test_images"])
    variant = f"none-{'soft' if args.permute_soft else 'hard'}-zeros"
    save_run(work, run_name("anomalib", args.schedule, args.seed, variant), log_p, losses, seconds,
             {**settings, **vars(args)})


def lockstep_anomalib(args) -> None:
    work = Path(args.work)
    inputs = load_inputs(work)
    recorded = torch.load(work / "lockstep-ours.pt", weights_only=True)
    settings = SCHEDULES[args.schedule]
    model, losses = anomalib_model(args, work, settings)
    with torch.no_grad():
        features = model.model.encoder(normalized(inputs["train_images"][:IMAGE_BATCH]))
    feature_diff = max((features[name] - ours).abs().max().item()
                       for name, ours in zip(LEVELS, recorded["features"], strict=True))
    flows = nn.ModuleList(d.flow for d in model.model.decoders)
    flows.load_state_dict(recorded["initial"])
    permutations = list(recorded["permutations"])
    original_randperm = torch.randperm

    def replaying_randperm(n, *a, **k):
        out = permutations.pop(0)
        assert len(out) == n, "anomalib asked for a permutation of another length"
        return out

    model.learning_rate = recorded["lr"]
    torch.randperm = replaying_randperm
    try:
        anomalib_fit(model, inputs["train_images"][:IMAGE_BATCH], [list(range(len(inputs["train_images"][:IMAGE_BATCH])))], 1)
    finally:
        torch.randperm = original_randperm
    log_p = anomalib_log_p(model, inputs["test_images"][:16])
    report = {
        "encoder_feature_max_abs_diff": feature_diff,
        "steps": [len(v) for v in losses], "steps_ours": [len(v) for v in recorded["losses"]],
        "loss_max_abs_diff_per_level": [max(abs(a - b) for a, b in zip(x, y, strict=True)) if len(x) == len(y)
                                        else None for x, y in zip(losses, recorded["losses"], strict=True)],
        "log_p_max_abs_diff_per_level": [(a - b).abs().max().item()
                                         for a, b in zip(log_p, recorded["log_p"], strict=True)],
        "log_p_range_per_level": [[b.min().item(), b.max().item()] for b in recorded["log_p"]],
    }
    (work / "lockstep.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


# -- comparison (anobench's environment) ------------------------------------------------------------------


def official_scores(log_p: list[torch.Tensor], size: tuple[int, int]) -> np.ndarray:
    total = 0
    for level in log_p:
        prob = torch.exp(level.double() - level.max())
        total = total + F.interpolate(prob.unsqueeze(1), size=size, mode="bilinear", align_corners=True).squeeze(1)
    return (total.max() - total).float().numpy()


def level_maps(level: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    return F.interpolate(-level.unsqueeze(1), size=size, mode="bilinear", align_corners=True).squeeze(1).numpy()


def compare(args) -> None:
    from anobench import metrics

    work = Path(args.work)
    inputs = load_inputs(work)
    masks, labels = inputs["test_masks"].numpy(), inputs["test_labels"].numpy()
    size = tuple(masks.shape[-2:])
    groups: dict[str, list[dict]] = {}
    for path in sorted((work / "runs").glob("*.pt")):
        run = torch.load(path, weights_only=False)
        maps = official_scores(run["log_p"], size)
        row = {"img": metrics.image_auroc(labels, maps.reshape(len(maps), -1).max(1)),
               "pix": metrics.pixel_auroc(masks, maps), "aupro": metrics.aupro(masks, maps),
               "seconds": run["seconds"]}
        for i, level in enumerate(run["log_p"]):
            lm = level_maps(level, size)
            row[f"L{i + 2} pix"] = metrics.pixel_auroc(masks, lm)
            row[f"L{i + 2} img"] = metrics.image_auroc(labels, lm.reshape(len(lm), -1).max(1))
            row[f"L{i + 2} logp good"] = float(level[torch.from_numpy(labels == 0)].mean())
            losses = np.asarray(run["losses"][i])
            row[f"L{i + 2} loss first"] = float(losses[: max(len(losses) // 10, 1)].mean())
            row[f"L{i + 2} loss last"] = float(losses[-max(len(losses) // 10, 1):].mean())
        name = path.stem.rsplit("-s", 1)[0]
        groups.setdefault(name, []).append(row)
        print(path.stem, {k: round(v, 4) for k, v in row.items()})
    summary = {}
    for name, rows in groups.items():
        summary[name] = {k: (float(np.mean([r[k] for r in rows])), float(np.std([r[k] for r in rows], ddof=1))
                             if len(rows) > 1 else 0.0) for k in rows[0]}
        summary[name]["n"] = len(rows)
    (work / "summary.json").write_text(json.dumps(summary, indent=1))
    keys = ["img", "pix", "aupro", "L2 pix", "L3 pix", "L4 pix", "L2 img", "L3 img", "L4 img", "L2 loss last",
            "L3 loss last", "L4 loss last", "L2 logp good", "L3 logp good", "L4 logp good", "seconds"]
    print("\n| group | n | " + " | ".join(keys) + " |")
    print("|---|---:|" + "---:|" * len(keys))
    for name, stats in summary.items():
        cells = [f"{stats[k][0]:.3f} ± {stats[k][1]:.3f}" if k != "seconds" else f"{stats[k][0]:.0f}" for k in keys]
        print(f"| {name} | {stats['n']} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("prepare", "ours", "anomalib", "lockstep-ours", "lockstep-anomalib", "compare"):
        p = sub.add_parser(name)
        p.add_argument("--work", required=True)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--schedule", choices=sorted(SCHEDULES), default="A")
        p.add_argument("--permute-soft", action="store_true")
        p.add_argument("--rotation", choices=("none", "nearest", "bilinear"), default="none")
        p.add_argument("--padding", choices=("zeros", "reflect"), default="zeros")
        p.add_argument("--data-root", required=name == "prepare", help="the dataset folder, in MVTec layout")
        p.add_argument("--class-name", default="ball_screw")
        p.add_argument("--size", type=int, default=256)
        p.add_argument("--weights-seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)  # one thread per side: idle OpenMP threads cost tenfold on a shared machine
    {"prepare": prepare, "ours": ours, "anomalib": anomalib, "lockstep-ours": lockstep_ours,
     "lockstep-anomalib": lockstep_anomalib, "compare": compare}[args.command](args)


if __name__ == "__main__":
    main()
