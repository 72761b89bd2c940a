"""The built-in default: a small synthetic dataset whose foreground differs from the background by shape
and texture (fine stripes vs. smooth blotches of the same mean brightness), not by intensity."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .images import write_png
from .options import TrainOptions


def _blotches(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    noise = cv2.GaussianBlur(rng.standard_normal((height, width)).astype(np.float32), (0, 0), 4)
    return noise / (noise.std() + 1e-6)


def _stripes(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(3.0, 5.0)
    wave = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    return wave * np.sqrt(2.0)  # unit standard deviation, like the blotches


def make_sample(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """One gray image (uint8) and its binary mask (0/255): striped ellipses and blobs on a blotchy ground."""
    mask = np.zeros((height, width), np.uint8)
    for _ in range(rng.integers(2, 6)):
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        axes = (int(rng.integers(10, 35)), int(rng.integers(10, 35)))
        cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
    texture = np.where(mask > 0, _stripes(rng, height, width), _blotches(rng, height, width))
    texture += 0.3 * rng.standard_normal((height, width)).astype(np.float32)
    image = np.clip(128 + 30 * texture, 0, 255).astype(np.uint8)
    return image, mask


def make_dataset(folder: Path, count: int = 48, seed: int = 0) -> Path:
    """Write `count` pairs to folder/images and folder/masks; sizes vary and are not multiples of 32."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        height, width = (int(v) for v in rng.integers(150, 230, 2))
        image, mask = make_sample(rng, height, width)
        write_png(folder / "images" / f"sample_{i:03d}.png", image)
        write_png(folder / "masks" / f"sample_{i:03d}.png", mask)
    return folder


DEMO_BUDGET = 60.0  # seconds of training, planned for this device: the whole demo ends within about 90 s


def demo_train_options(folder: Path, seed: int = 0) -> TrainOptions:
    """A run planned for this device within DEMO_BUDGET (model, crop, epochs and augmentation chosen by the planner)."""
    return TrainOptions.from_values({"out": folder / "run", "data": folder / "data", "time_limit": DEMO_BUDGET,
                                     "seed": seed, "overwrite": True})
