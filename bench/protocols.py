"""Datasets' own protocols: what a dataset's official evaluation reports beyond image AUROC, pixel AUROC
and AUPRO@0.3, named by the source's ``protocol_metrics``:

- ``loco`` (MVTec LOCO AD): AU-sPRO at the evaluation's FPR limits (0.01, 0.05, 0.1, 0.3, 1) and image
  AUROC, for logical and structural anomalies separately, each with every good test image; the AU-sPRO
  mean of the two is LOCO's headline (at 0.05).
- ``mvtec_ad2`` (MVTec AD 2): AU-PRO integrated to FPR 0.05 and SegF1 on the public test set, the binary
  maps thresholded at the mean + 3 standard deviations of the validation images' pixel scores (the
  baseline MVTec's ``check_and_prepare_data_for_upload.py`` suggests; no test label is used). On the
  private test sets: the maps, written as the evaluation server expects.
- ``realiad`` (Real-IAD): the sample-level AUROC over the views of each physical sample.

Each returns its metrics, the ones a table should show, the reasons of any it could not compute, and
notes for the record.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from anobench import metrics, metrics_datasets
from anobench.cells import Cell
from anobench.core import BenchError
from anobench.datasets.base import DatasetSource, Geometry, SampleRef, geometry_mask, image_header
from anobench.metrics import LOCO_FPR_LIMITS, LOCO_SUBSETS, checked_pair
from anobench.pixel_metrics import CountCurve, OverlapAccumulator
from anobench.pixelstream import PixelStream

HEADLINE_LOCO_LIMIT = 0.05
AD2_PRO_LIMIT = 0.05
SUBMISSION_DIR = "mvtec_ad2_submission"


@dataclass
class ProtocolInput:
    """One evaluated test set, as the cell scored it."""

    cell: Cell
    source: DatasetSource
    geometry: Geometry
    refs: list[SampleRef]
    labels: np.ndarray
    image_scores: np.ndarray
    pixels: Any  # evaluation.EvaluatedPixels: (mask, map) per image at the evaluated resolution, made on demand
    original: bool  # evaluated at each image's original resolution
    input_maps: np.ndarray  # the method's maps at the input resolution
    predict_maps: Callable[[list[SampleRef]], np.ndarray]  # more images, scored by the same fitted model
    output_dir: Path | None  # where files for an external evaluation go (the run folder)


@dataclass
class ProtocolResult:
    metrics: dict[str, float | None] = field(default_factory=dict)
    headline: list[str] = field(default_factory=list)  # what the accuracy tables show for this dataset
    unavailable: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)


def upsampled(amap: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """A map bilinearly resized to an image's (height, width), as metrics at the original resolution do."""
    tensor = torch.from_numpy(np.ascontiguousarray(amap))[None, None]
    return F.interpolate(tensor, size=size_hw, mode="bilinear", align_corners=False)[0, 0].numpy()


def original_hw(ref: SampleRef) -> tuple[int, int]:
    width, height = image_header(ref.image_path)
    return height, width


# ----------------------------------------------------------------------------------------------------------
# MVTec LOCO AD


def _loco_defects(inp: ProtocolInput, index: int) -> tuple[list[tuple[np.ndarray, int]], int]:
    """One image's scored defects as (mask at the evaluated resolution, saturation area), and how many of its
    annotated defects the centre crop removed."""
    ref, g = inp.refs[index], inp.geometry
    if ref.mask_path is None:
        return [], 0
    scale = 1.0
    if not inp.original:
        height, width = original_hw(ref)
        scale = g.resize * g.resize / (height * width)
    defects, cropped_away = [], 0
    for channel in inp.source.defect_channels(inp.cell.class_name, ref):
        mask = channel.mask if inp.original else geometry_mask(channel.mask, g)
        area = int(mask.sum())
        if area == 0:
            cropped_away += 1
            continue
        defects.append((mask, channel.config.saturation_area(area, scale)))
    return defects, cropped_away


def loco(inp: ProtocolInput) -> ProtocolResult:
    """AU-sPRO (as ``metrics_datasets.au_spro`` defines it) streamed image by image: within each defect its
    ``saturation`` highest-scoring pixels weigh 1/saturation, every pixel outside the image's defects is a
    possible false positive, and the curve is accumulated over the merged pixels of the chosen images."""
    result = ProtocolResult(headline=[*(f"image_auroc_{s}" for s in LOCO_SUBSETS),
                                      *(f"au_spro_{s}@{HEADLINE_LOCO_LIMIT:g}" for s in LOCO_SUBSETS),
                                      f"au_spro@{HEADLINE_LOCO_LIMIT:g}"])
    subset_of = {"good": 0, **{f"{subset}_anomalies": k for k, subset in enumerate(LOCO_SUBSETS, start=1)}}
    n_defects, cropped_away = [], 0
    with PixelStream(inp.output_dir) as stream:
        for i, ref in enumerate(inp.refs):
            defects, removed = _loco_defects(inp, i)
            cropped_away += removed
            shape = defects[0][0].shape if defects else (original_hw(ref) if inp.original else inp.input_maps[i].shape)
            _, amap = checked_pair(i, np.zeros(shape, dtype=bool), inp.pixels.evaluated_map(i, shape))
            union, weight = np.zeros(shape, dtype=bool), np.zeros(amap.size)
            for mask, saturation in defects:
                union |= mask
                inside = np.flatnonzero(mask)
                weight[inside[np.argsort(amap.ravel()[inside], kind="stable")[::-1][:saturation]]] += 1.0 / saturation
            group = 0 if ref.label == 0 else subset_of.get(ref.defect_type, len(subset_of))
            stream.add(union, amap.astype(np.float32), group, {"spro": weight.reshape(shape)})
            n_defects.append(len(defects))
        image, outside = stream.column("image"), ~stream.column("defect")
        accumulators = {}
        for k, subset in enumerate(LOCO_SUBSETS, start=1):
            chosen = np.array([ref.label == 0 or ref.defect_type == f"{subset}_anomalies" for ref in inp.refs])
            names = [f"image_auroc_{subset}", *(f"au_spro_{subset}@{limit:g}" for limit in LOCO_FPR_LIMITS)]
            defects_in = int(np.asarray(n_defects)[chosen].sum())
            if not defects_in or inp.labels[chosen].all():
                result.unavailable.update({n: f"no {subset} anomalies with ground truth in this test "
                                              "set" for n in names})
                continue
            result.metrics[names[0]] = metrics.image_auroc(inp.labels[chosen], inp.image_scores[chosen])
            curve = CountCurve(stream, PixelStream.groups_of([0, k]), outside & chosen[image],
                               stream.column("spro") * chosen[image])
            accumulators[subset] = OverlapAccumulator(curve, defects_in, LOCO_FPR_LIMITS)
        for r in stream.ranges() if accumulators else ():
            for accumulator in accumulators.values():
                accumulator.update(r)
    for subset, accumulator in accumulators.items():
        result.metrics.update({f"au_spro_{subset}@{limit:g}": accumulator.area(limit) for limit in LOCO_FPR_LIMITS})
    for limit in LOCO_FPR_LIMITS:
        values = [result.metrics.get(f"au_spro_{s}@{limit:g}") for s in LOCO_SUBSETS]
        if all(v is not None for v in values):
            result.metrics[f"au_spro@{limit:g}"] = float(np.mean(values))
        else:
            result.unavailable[f"au_spro@{limit:g}"] = "needs both logical and structural anomalies"
    result.notes.append("AU-sPRO: saturation thresholds from each class's defects_config.json; logical and "
                        "structural anomalies scored separately, each with every good test image; au_spro@L "
                        "is their mean.")
    if not inp.original:
        result.notes.append("sPRO at the input resolution: masks resized like the images, absolute "
                            "saturation thresholds scaled by the resize's area ratio (LOCO's evaluation "
                            "works at the original resolution: --metrics-resolution original).")
    if cropped_away:
        result.notes.append(f"{cropped_away} annotated defect(s) lie wholly outside the centre crop and are "
                            "not scored.")
    return result


# ----------------------------------------------------------------------------------------------------------
# MVTec AD 2


def _evaluated(refs: list[SampleRef], maps: np.ndarray, original: bool) -> Iterator[np.ndarray]:
    """Maps at the resolution they are evaluated or written at, one at a time (full-size maps are large)."""
    for ref, amap in zip(refs, maps, strict=True):
        yield upsampled(amap, original_hw(ref)) if original else amap


def model_tag(cell: Cell) -> str:
    """One name per fitted model across a dataset's classes (the cell's configuration without its class)."""
    config = {k: v for k, v in cell.config().items() if k != "class"}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:10]
    return f"{cell.method}-{cell.encoder}@{cell.resolution}-s{cell.seed}-{digest}"


def write_submission(inp: ProtocolInput, threshold: float) -> Path:
    """Each private test image's map at its original resolution, as MVTec's evaluation server expects:
    ``anomaly_images/<class>/<split>/<stem>.tiff`` (float16, one channel) and
    ``anomaly_images_thresholded/<class>/<split>/<stem>.png`` (0 or 255) beside it."""
    if inp.output_dir is None:
        raise ValueError("the private test sets' maps need an output folder (the run folder)")
    import tifffile  # only the private sets need it: machines that never write a submission may lack it

    if inp.geometry.crop != inp.geometry.resize:
        raise BenchError("MVTec AD 2's private maps must cover the whole image, but this cell crops "
                         f"{inp.geometry.crop} of {inp.geometry.resize}; set the grid's resize equal to its "
                         "resolution.")
    root = inp.output_dir / SUBMISSION_DIR / model_tag(inp.cell)
    for ref, amap in zip(inp.refs, _evaluated(inp.refs, inp.input_maps, True), strict=True):
        relative = Path(inp.cell.class_name) / ref.image_path.parent.name / ref.image_path.stem
        continuous = root / "anomaly_images" / relative.with_suffix(".tiff")
        binary = root / "anomaly_images_thresholded" / relative.with_suffix(".png")
        continuous.parent.mkdir(parents=True, exist_ok=True)
        binary.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(continuous, amap.astype(np.float16))
        Image.fromarray(np.where(amap > threshold, 255, 0).astype(np.uint8), "L").save(binary)
    return root


def mvtec_ad2(inp: ProtocolInput) -> ProtocolResult:
    result = ProtocolResult(headline=[f"aupro@{AD2_PRO_LIMIT:g}", "seg_f1"])
    private = getattr(inp.source, "private", False)
    validation = inp.source.samples(inp.cell.class_name, "validation")
    original = inp.original or private
    threshold = metrics_datasets.mean_plus_std_threshold(
        _evaluated(validation, inp.predict_maps(validation), original))
    result.outputs["segmentation_threshold"] = threshold
    where = " at their original resolution" if original else ""
    rule = (f"the mean + 3 std of the class's validation images' pixel scores{where} (MVTec's suggested "
            "baseline; the value is in each record)")
    if private:
        result.outputs["submission"] = str(write_submission(inp, threshold))
        reason = inp.source.ground_truth(inp.cell.class_name)[1]
        result.unavailable.update({name: reason for name in result.headline})
        submission = result.outputs["submission"]
        result.notes.append(f"Maps for MVTec's evaluation server in {submission} (float16 TIFF at each "
                            f"image's size; thresholded PNGs at {rule}); check them with MVTec's "
                            "check_and_prepare_data_for_upload.py before uploading.")
        return result
    result.notes.append(f"SegF1: F1 over all test pixels together of the maps thresholded at {rule}.")
    # AU-PRO@0.05 is one of the metrics every cell computes on these same masks and maps (evaluation's
    # STANDARD_METRICS): the headline names it, nothing computes it twice
    result.metrics["seg_f1"] = metrics_datasets.seg_f1(inp.pixels.masks(), inp.pixels.evaluated_maps(), threshold)
    return result


# ----------------------------------------------------------------------------------------------------------
# Real-IAD


def realiad(inp: ProtocolInput) -> ProtocolResult:
    result = ProtocolResult(headline=["sample_auroc"])
    keys = [inp.source.sample_key(ref) for ref in inp.refs]
    missing = next((ref for ref, key in zip(inp.refs, keys, strict=True) if key is None), None)
    if missing is not None:
        result.unavailable["sample_auroc"] = (f"{missing.image_path.name} has no sample key "
                                              "(<class>_NNNN_<OK|NG_code>_C<view>_)")
        return result
    result.metrics["sample_auroc"] = metrics_datasets.sample_auroc(keys, inp.labels, inp.image_scores)
    result.notes.append(f"Sample AUROC over {len(set(keys))} samples: a sample's score and label are the "
                        "maximum over its views (ADEval).")
    return result


PROTOCOLS: dict[str, Callable[[ProtocolInput], ProtocolResult]] = {"loco": loco, "mvtec_ad2": mvtec_ad2,
                                                                   "realiad": realiad}


def run_protocols(inp: ProtocolInput) -> ProtocolResult:
    """Every protocol the dataset names, merged."""
    merged = ProtocolResult()
    for name in inp.source.protocol_metrics:
        part = PROTOCOLS[name](inp)
        merged.metrics.update(part.metrics)
        merged.headline += part.headline
        merged.unavailable.update(part.unavailable)
        merged.notes += part.notes
        merged.outputs.update(part.outputs)
    return merged
