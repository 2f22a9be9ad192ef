"""A tiny ShanghaiTech Campus in its published layout, videos written with the same library that reads them."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
from PIL import Image

HEIGHT, WIDTH = 48, 64


def _frame(rng: np.random.Generator, t: int, anomaly: bool) -> tuple[np.ndarray, np.ndarray]:
    """A textured scene with a slowly moving grey walker; an anomaly is a bright square (a 'cyclist')."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    frame = np.stack([60 + 40 * np.sin(x / 5), 80 + 30 * np.cos(y / 7), 70 + 0 * x], axis=-1)
    frame += rng.normal(0, 3, frame.shape)
    col = (5 + 3 * t) % (WIDTH - 8)
    frame[20:30, col:col + 6] = 120
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    if anomaly:
        frame[10:20, 40:52] = 250
        mask[10:20, 40:52] = 1
    return np.clip(frame, 0, 255).astype(np.uint8), mask


def write_fake_stc(root: Path, scenes=("01", "02"), videos=2, train_frames=10, clips=1, test_frames=8) -> Path:
    rng = np.random.default_rng(0)
    (root / "training" / "videos").mkdir(parents=True)
    for kind in ("frames", "test_frame_mask", "test_pixel_mask"):
        (root / "testing" / kind).mkdir(parents=True, exist_ok=True)
    for scene in scenes:
        for v in range(videos):
            with av.open(str(root / "training" / "videos" / f"{scene}_{v + 1:03d}.avi"), "w") as container:
                stream = container.add_stream("mjpeg", rate=25)
                stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuvj420p"
                for t in range(train_frames):
                    frame = av.VideoFrame.from_ndarray(_frame(rng, t, False)[0], format="rgb24")
                    for packet in stream.encode(frame):
                        container.mux(packet)
                for packet in stream.encode():
                    container.mux(packet)
        for c in range(clips):
            clip = f"{scene}_{c + 1:04d}"
            (root / "testing" / "frames" / clip).mkdir()
            labels, masks = [], []
            for t in range(test_frames):
                anomaly = t >= test_frames // 2
                image, mask = _frame(rng, t, anomaly)
                Image.fromarray(image).save(root / "testing" / "frames" / clip / f"{t:03d}.jpg", quality=95)
                labels.append(int(anomaly))
                masks.append(mask)
            np.save(root / "testing" / "test_frame_mask" / f"{clip}.npy", np.array(labels, np.uint8))
            np.save(root / "testing" / "test_pixel_mask" / f"{clip}.npy", np.stack(masks))
    return root
