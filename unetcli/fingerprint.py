"""Fingerprint the training data for the planner: sizes, channels, pairs, class shares and the typical object size."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Fingerprint:
    """What the plan needs to know about the training data."""

    pairs: int
    channels: int
    median_size: tuple[int, int]  # (height, width)
    smallest_side: int
    class_shares: tuple[float, ...]
    object_diameter: float | None  # see typical_object_diameter, pixels
    val_pixels: int = 0
    instances: bool = False  # the masks are object ids (mask mode instances)


def typical_object_diameter(masks: list[np.ndarray], *, limit: int = 32) -> float | None:
    """The equivalent diameter of the object a typical foreground pixel belongs to: the area-weighted median over
    the connected regions of each non-background class (ids 1..254) in up to `limit` masks. Weighting by area
    keeps slivers cut by the image border and specks from pulling the figure down."""
    import cv2

    areas: list[int] = []
    for mask in masks[:limit]:
        for class_id in np.unique(mask):
            if class_id in (0, 255):
                continue
            count, _, stats, _ = cv2.connectedComponentsWithStats((mask == class_id).astype(np.uint8), connectivity=8)
            areas.extend(int(a) for a in stats[1:count, cv2.CC_STAT_AREA])
    if not areas:
        return None
    ordered = np.sort(np.array(areas, np.float64))
    cumulative = np.cumsum(ordered)
    median_area = ordered[np.searchsorted(cumulative, cumulative[-1] / 2)]
    return round(float(np.sqrt(4 * median_area / np.pi)), 1)


def fingerprint(scan, val_scan=None) -> Fingerprint:
    """A DatasetScan (and the validation set's) -> Fingerprint."""
    sizes = np.array(scan.sizes)
    total = sum(scan.class_pixels) or 1
    val_pixels = sum(h * w for h, w in val_scan.sizes) if val_scan is not None else 0
    return Fingerprint(
        pairs=len(scan.samples), channels=scan.in_channels,
        median_size=(int(np.median(sizes[:, 0])), int(np.median(sizes[:, 1]))), smallest_side=int(sizes.min()),
        class_shares=tuple(round(c / total, 4) for c in scan.class_pixels),
        object_diameter=typical_object_diameter([s.mask for s in scan.samples]), val_pixels=val_pixels,
        instances=scan.class_map.mode == "instances")
