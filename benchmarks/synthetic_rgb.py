"""A second kind of data for the planner's benchmark, unlike membrane: RGB, four classes, objects of two sizes.

Each image is a colour tissue-like ground (background, class 0) holding large smooth "glands" (class 1, about
70-130 px across), small round "nuclei" (class 2, about 10-18 px across) scattered inside and outside the glands,
and thin dark "fibres" (class 3, 2-4 px wide curves). Colours overlap between classes and every image has its own
stain shift, blur and noise, so colour alone does not separate them: shape, size and texture must be learned.
Masks hold the class index (0-3), the `index` mask mode.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

# Base colours (RGB) of background, gland, nucleus, fibre: close enough that a per-pixel colour rule fails.
COLOURS = np.array([[205, 170, 190], [225, 160, 185], [120, 80, 150], [150, 105, 140]], np.float32)


def _texture(rng: np.random.Generator, height: int, width: int, sigma: float) -> np.ndarray:
    noise = cv2.GaussianBlur(rng.standard_normal((height, width)).astype(np.float32), (0, 0), sigma)
    return noise / (noise.std() + 1e-6)


def _draw_glands(rng: np.random.Generator, mask: np.ndarray) -> None:
    height, width = mask.shape
    for _ in range(rng.integers(1, 4)):
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        axes = (int(rng.integers(35, 65)), int(rng.integers(35, 65)))
        cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)


def _draw_fibres(rng: np.random.Generator, mask: np.ndarray) -> None:
    height, width = mask.shape
    for _ in range(rng.integers(2, 6)):
        points = np.cumsum(rng.normal(0, 18, (8, 2)), axis=0) + (rng.integers(0, width), rng.integers(0, height))
        cv2.polylines(mask, [points.astype(np.int32)], False, 3, int(rng.integers(2, 5)))


def _draw_nuclei(rng: np.random.Generator, mask: np.ndarray) -> None:
    height, width = mask.shape
    for _ in range(rng.integers(15, 40)):
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        cv2.circle(mask, centre, int(rng.integers(5, 10)), 2, -1)


def make_sample(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """One RGB image (uint8, H x W x 3) and its index mask (uint8, values 0-3)."""
    mask = np.zeros((height, width), np.uint8)
    _draw_glands(rng, mask)
    _draw_fibres(rng, mask)
    _draw_nuclei(rng, mask)
    stain = COLOURS + rng.normal(0, 12, (1, 3))  # the whole slide's colour shifts a little
    image = stain[mask]
    coarse, fine = _texture(rng, height, width, 6), _texture(rng, height, width, 1.2)
    grain = np.where(mask == 1, 14 * coarse, np.where(mask == 2, 6 * fine, 10 * fine + 8 * coarse))
    image += grain[..., None] + rng.normal(0, 10, image.shape)
    image = cv2.GaussianBlur(image, (0, 0), float(rng.uniform(0.6, 1.4)))
    return np.clip(image, 0, 255).astype(np.uint8), mask


def make_rgb_dataset(folder: Path, count: int, seed: int) -> Path:
    """Write `count` pairs (PNG) to folder/images and folder/masks; sizes vary between 256 and 384 px a side."""
    rng = np.random.default_rng(seed)
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        height, width = (int(v) for v in rng.integers(256, 385, 2))
        image, mask = make_sample(rng, height, width)
        cv2.imwrite(str(folder / "images" / f"tile_{i:03d}.png"), image[:, :, ::-1])
        cv2.imwrite(str(folder / "masks" / f"tile_{i:03d}.png"), mask)
    return folder


def split_rgb(workdir: Path, train: int = 40, test: int = 10) -> tuple[Path, Path]:
    """Train and test folders of the RGB set (different seeds, so no image is in both)."""
    return (make_rgb_dataset(workdir / "rgb" / "train", train, seed=1),
            make_rgb_dataset(workdir / "rgb" / "test", test, seed=2))
