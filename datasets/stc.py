"""ShanghaiTech Campus (STC) in its published layout, one class per scene.

    <root>/training/videos/<scene>_<video>.avi          defect-free training videos
    <root>/testing/frames/<scene>_<clip>/<frame>.jpg     test frames
    <root>/testing/test_frame_mask/<scene>_<clip>.npy    (T,) frame labels, 1 = anomalous
    <root>/testing/test_pixel_mask/<scene>_<clip>.npy    (T, H, W) pixel masks

Training frames are decoded once with PyAV (FFmpeg) into a cache, every ``frame_stride``-th frame
(default 1: every frame, as CFLOW-AD did), as JPEG (quality 95) like the published test frames. CFLOW-AD
trains one model per scene 01–12 (scene 13 has no ground truth).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import av
import numpy as np
from PIL import Image

from anobench.core import progress
from anobench.datasets.base import (
    DatasetError,
    DatasetSource,
    SampleRef,
    check_sample_files,
    image_files,
)
from anobench.datasets.mvtec import check_root
from anobench.datasets.synthetic import default_cache_dir

STC_LAYOUT = ("<root>/training/videos/<scene>_<video>.avi, <root>/testing/frames/<scene>_<clip>/*.jpg, "
              "<root>/testing/test_frame_mask/<scene>_<clip>.npy and <root>/testing/test_pixel_mask/<scene>_<clip>.npy")
JPEG_QUALITY = 95


def decode_video(path: Path, stride: int):
    """(frame index, RGB array) of every ``stride``-th frame."""
    try:
        with av.open(str(path)) as container:
            for index, frame in enumerate(container.decode(video=0)):
                if index % stride == 0:
                    yield index, frame.to_ndarray(format="rgb24")
    except av.FFmpegError as exc:
        raise DatasetError(f"Cannot decode video {path} ({exc}); replace or remove the file.") from None


class ShanghaiTechCampus(DatasetSource):
    """ShanghaiTech Campus videos, one class per scene (01–12 have ground truth)."""

    name = "stc"
    hint = "the ShanghaiTech Campus folder holding training/ and testing/"

    def __init__(self, root: str | Path | None = None, *, frame_stride: int = 1, cache: str | None = None):
        self.root = check_root(root, self.name, self.hint)
        if frame_stride < 1:
            raise DatasetError(f"frame_stride must be at least 1, got {frame_stride}.")
        self.frame_stride = frame_stride
        self.cache_root = Path(cache) if cache else default_cache_dir() / "stc"

    # -- layout ------------------------------------------------------------------------------------------

    def _videos(self, scene: str) -> list[Path]:
        return sorted((self.root / "training" / "videos").glob(f"{scene}_*.avi"))

    def _clips(self, scene: str) -> list[Path]:
        frames = self.root / "testing" / "frames"
        return sorted(d for d in frames.glob(f"{scene}_*") if d.is_dir()) if frames.is_dir() else []

    def classes(self) -> list[str]:
        masks = self.root / "testing" / "test_frame_mask"
        scenes = sorted({p.stem.split("_")[0] for p in masks.glob("*.npy")}) if masks.is_dir() else []
        if not scenes:
            raise DatasetError(f"No test masks under {masks}. Expected layout: {STC_LAYOUT}.")
        return scenes

    def validate(self, class_name: str) -> None:
        if not self._videos(class_name):
            raise DatasetError(f"No training video {self.root}/training/videos/{class_name}_*.avi for scene "
                               f"{class_name}; is --data-root {self.root} {self.hint}? Expected layout: {STC_LAYOUT}.")
        clips = self._clips(class_name)
        if not clips:
            raise DatasetError(f"No test clip {self.root}/testing/frames/{class_name}_*/ for scene {class_name}. "
                               f"Expected layout: {STC_LAYOUT}.")
        for clip in clips:
            n_frames = len(image_files(clip))
            for kind in ("test_frame_mask", "test_pixel_mask"):
                mask = self.root / "testing" / kind / f"{clip.name}.npy"
                if not mask.is_file():
                    raise DatasetError(f"Test clip {clip} has no {kind} file {mask}. Expected layout: {STC_LAYOUT}.")
                length = np.load(mask, mmap_mode="r").shape[0]
                if length != n_frames:
                    raise DatasetError(f"{mask} covers {length} frames but {clip} holds {n_frames}; the clip and its "
                                       f"masks must match.")
        # Every frame whole and the size of its pixel mask. Not read: whether anomalous frames have marked
        # pixels (the frame labels are the ground truth of which frames are anomalous, and reading every
        # anomalous frame's mask would read gigabytes).
        check_sample_files(self.samples(class_name, "test"), allow_empty_masks=True)

    # -- samples -----------------------------------------------------------------------------------------

    def _cache_dir(self, scene: str) -> Path:
        key = hashlib.sha256(f"{self.root.resolve()}|{self.frame_stride}".encode()).hexdigest()[:12]
        return self.cache_root / key / scene

    def _decoded_frames(self, scene: str) -> Path:
        """The scene's training frames, decoded on first use into the cache (atomically, per scene)."""
        target = self._cache_dir(scene)
        if (target / "COMPLETE").is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{scene}-", dir=target.parent))
        try:
            for video in progress(self._videos(scene), f"decoding STC scene {scene}"):
                for index, frame in decode_video(video, self.frame_stride):
                    Image.fromarray(frame).save(staging / f"{video.stem}_{index:05d}.jpg", quality=JPEG_QUALITY)
            (staging / "COMPLETE").write_text(f"frame_stride={self.frame_stride}\n")
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    def samples(self, class_name: str, split: str) -> list[SampleRef]:
        if split == "train":
            return [SampleRef(p, None, 0, "good") for p in image_files(self._decoded_frames(class_name))]
        refs = []
        for clip in self._clips(class_name):
            labels = np.load(self.root / "testing" / "test_frame_mask" / f"{clip.name}.npy")
            pixel_masks = self.root / "testing" / "test_pixel_mask" / f"{clip.name}.npy"
            frames = sorted(image_files(clip), key=lambda p: int(p.stem) if p.stem.isdigit() else p.stem)
            for t, frame in enumerate(frames):
                label = int(labels[t] > 0)
                refs.append(SampleRef(frame, pixel_masks, label, "anomaly" if label else "good", mask_frame=t))
        return refs

    def describe(self) -> dict:
        return {"name": self.name, "root": str(self.root), "frame_stride": self.frame_stride}
