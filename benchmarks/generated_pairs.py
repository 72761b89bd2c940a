"""Generated image/mask folders for the scale benchmarks: written once in threads, reused while complete."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np


def write_pairs(folder: Path, count: int, draw: Callable[[int], tuple[np.ndarray, np.ndarray]], digits: int = 6) -> Path:
    """folder/images and folder/masks holding `count` PNG pairs, pair i = draw(i) -> (image (BGR or gray), mask);
    a folder that already holds `count` masks is reused as it is."""
    masks = folder / "masks"
    if masks.is_dir() and sum(1 for _ in masks.iterdir()) == count:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "images").mkdir(parents=True)
    masks.mkdir()

    def one(i: int) -> None:
        image, mask = draw(i)
        cv2.imwrite(str(folder / "images" / f"{i:0{digits}d}.png"), image)
        cv2.imwrite(str(masks / f"{i:0{digits}d}.png"), mask)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(count)))
    return folder
