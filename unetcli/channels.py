"""Input channels: the one rule that fits an image to a model's channel count, and the alpha check of a dataset.

Training, validation, predict, evaluate and export all fit images to the model with `match_channels`. A
training set whose alpha channel is the same constant in every image (RGBA PNGs saved fully opaque) trains a
model on the colour channels alone; the model folder records the dropped value (`ModelMeta.alpha_dropped`),
and RGBA inputs lose their alpha by the same rule at predict time, while plain RGB inputs fit as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .errors import DataError


def match_channels(image: np.ndarray, channels: int, path: Path | str) -> np.ndarray:
    """Adapt well-defined channel differences (gray<->RGB, dropping alpha); refuse the rest."""
    have = image.shape[2]
    if have == channels:
        return image
    if channels == 1 and have in (3, 4):
        return cv2.cvtColor(np.ascontiguousarray(image[:, :, :3]), cv2.COLOR_RGB2GRAY)[:, :, None]
    if channels == 3 and have == 1:
        return np.repeat(image, 3, axis=2)
    if channels == 3 and have == 4:
        return np.ascontiguousarray(image[:, :, :3])
    raise DataError(f"{path}: image has {have} channel(s) but the model expects {channels}; convert the image")


def alpha_range(image: np.ndarray) -> tuple[float, float] | None:
    """(min, max) of an H x W x 4 image's alpha channel; None for images without one. One pass over the plane."""
    if image.ndim != 3 or image.shape[2] != 4:
        return None
    alpha = image[:, :, 3]
    return float(alpha.min()), float(alpha.max())


def format_alpha(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


@dataclass(frozen=True)
class AlphaCheck:
    """The alpha channel of a set of RGBA images: `value` when it is that constant in every image (then it is
    dropped), else None (it varies within an image or between images, and stays a 4th input channel)."""

    images: int  # images checked (all of them RGBA)
    value: float | None  # the constant alpha of every image, or None
    varying: int = 0  # images whose alpha is not constant within the image
    values: tuple[float, ...] = ()  # with `varying` 0 but no common value: the distinct per-image constants

    @property
    def dropped(self) -> bool:
        return self.value is not None

    def note(self) -> str:
        """The line check and train print."""
        if self.dropped:
            return (f"alpha channel constant ({format_alpha(self.value)}) in all {self.images} images: dropped; "
                    "the model takes 3 channels")
        if self.varying:
            detail = f"not constant in {self.varying} of {self.images} images"
        else:
            detail = "constant per image, but " + " in some images, ".join(format_alpha(v) for v in self.values[:2]) + " in others"
        return f"alpha channel varies ({detail}): kept as a 4th input channel"

    def to_dict(self) -> dict:
        return {"images": self.images, "constant": self.value, "dropped": self.dropped, "note": self.note()}


def check_alpha(ranges: list[tuple[float, float]]) -> AlphaCheck:
    """Decide from each RGBA image's alpha (min, max) whether the alpha channel is one constant throughout."""
    varying = sum(low != high for low, high in ranges)
    constants = sorted({low for low, high in ranges if low == high})
    if not varying and len(constants) == 1:
        return AlphaCheck(len(ranges), constants[0])
    return AlphaCheck(len(ranges), None, varying, tuple(constants) if not varying else ())


ROWS_PER_BLOCK = 256  # channel sums are taken over blocks of rows: a float64 copy of a whole huge image is not needed


def channel_sums(image: np.ndarray) -> np.ndarray:
    """H x W x C stored image -> 2 x C float64: per channel, the sum and the sum of squares of its values in [0, 1]
    units (as the pipeline sees them: integer images scaled by their dtype's range), taken in blocks of rows."""
    from .images import to_unit_range

    sums = np.zeros((2, image.shape[2]))
    for top in range(0, image.shape[0], ROWS_PER_BLOCK):
        block = to_unit_range(image[top: top + ROWS_PER_BLOCK]).reshape(-1, image.shape[2]).astype(np.float64)
        sums += (block.sum(axis=0), np.square(block).sum(axis=0))
    return sums


def mean_and_std(sums: np.ndarray, pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation from `channel_sums` over `pixels` pixels."""
    mean = sums[0] / pixels
    return mean, np.sqrt(np.maximum(sums[1] / pixels - mean**2, 0.0))
