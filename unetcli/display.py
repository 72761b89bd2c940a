"""Images for people to look at: any stored image as RGB, and thumbnails. Shared by predict's overlays,
evaluate's worst images and the report."""

from __future__ import annotations

import cv2
import numpy as np

from .images import to_unit_range

THUMBNAIL = (120, 240)  # the report's thumbnails fit this height and width, pixels


def display_levels(image: np.ndarray) -> np.ndarray:
    """H x W x C stored image -> H x W x 3 float32 levels in [0, 255]: gray is repeated, channels after the third
    (alpha) are dropped, and float images are stretched from their own minimum and maximum."""
    unit = to_unit_range(image)
    unit = unit[:, :, :3] if unit.shape[2] >= 3 else np.repeat(unit[:, :, :1], 3, axis=2)
    if image.dtype == np.float32:
        low, high = float(unit.min()), float(unit.max())
        unit = (unit - low) / (high - low or 1.0)
    return (unit * 255.0).clip(0, 255)


def as_rgb(image: np.ndarray) -> np.ndarray:
    """H x W x C stored image -> H x W x 3 uint8 RGB (see display_levels)."""
    return display_levels(image).astype(np.uint8)


def outline_width(height: int, width: int) -> int:
    """Overlay outlines: 1 pixel, 2 on images of 600 pixels and more (both sides)."""
    return 1 if min(height, width) < 600 else 2


def class_outlines(ids: np.ndarray, width: int = 1) -> np.ndarray:
    """H x W bool: pixels of a class other than 0 that lie within `width` pixels of another class (not of the
    image's edge)."""
    kernel = np.ones((3, 3), np.uint8)
    low = cv2.erode(ids, kernel, iterations=width, borderType=cv2.BORDER_REPLICATE)
    high = cv2.dilate(ids, kernel, iterations=width, borderType=cv2.BORDER_REPLICATE)
    return (low != high) & (ids > 0)


def thumbnail(array: np.ndarray, *, nearest: bool, enlarge: bool = False) -> np.ndarray:
    """Scale an image (nearest: class ids or colours) to fit THUMBNAIL, keeping its aspect ratio; smaller
    images keep their size unless `enlarge`. Keeps an H x W x 1 array's channel axis."""
    height, width = array.shape[:2]
    scale = min(THUMBNAIL[0] / height, THUMBNAIL[1] / width)
    if not enlarge:
        scale = min(scale, 1.0)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if size == (width, height):
        return array.copy()
    small = cv2.resize(array, size, interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_AREA)
    return small[:, :, None] if array.ndim == 3 and small.ndim == 2 else small
