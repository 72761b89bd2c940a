"""The U-Net paper's loss weight map: w(x) = 1 + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2)), where d1 and d2
are the distances to the nearest and second-nearest object. Thin gaps between touching objects get large
weights, so the network learns to keep them apart. Objects are the connected components of each foreground
class; computed once per mask and kept with it."""

from __future__ import annotations

import cv2
import numpy as np

from .masks import IGNORE_ID


def _components(class_ids: np.ndarray) -> list[np.ndarray]:
    """Boolean masks (with their bounding boxes) of every connected object of every foreground class."""
    objects = []
    for class_id in np.unique(class_ids):
        if class_id in (0, IGNORE_ID):
            continue
        count, labels, stats, _ = cv2.connectedComponentsWithStats((class_ids == class_id).astype(np.uint8), connectivity=4)
        for label in range(1, count):
            x, y, w, h = stats[label, :4]
            objects.append((label, labels, x, y, w, h))
    return objects


def border_weight_map(class_ids: np.ndarray, w0: float = 10.0, sigma: float = 5.0) -> np.ndarray:
    """(H, W) float32 weights >= 1. Distances are computed in a window around each object (beyond 4 sigma
    the term is below exp(-8) and is left out), so the cost grows with the objects, not the image."""
    height, width = class_ids.shape
    reach = int(np.ceil(4 * sigma))
    d1 = np.full((height, width), np.inf, np.float32)
    d2 = np.full((height, width), np.inf, np.float32)
    for label, labels, x, y, w, h in _components(class_ids):
        top, left = max(y - reach, 0), max(x - reach, 0)
        bottom, right = min(y + h + reach, height), min(x + w + reach, width)
        outside = (labels[top:bottom, left:right] != label).astype(np.uint8)
        distance = cv2.distanceTransform(outside, cv2.DIST_L2, 5)
        near1, near2 = d1[top:bottom, left:right], d2[top:bottom, left:right]
        closer = distance < near1
        near2[:] = np.where(closer, near1, np.minimum(near2, distance))
        near1[:] = np.where(closer, distance, near1)
    gap = d1 + d2
    weight = 1.0 + w0 * np.exp(-(gap * gap) / (2 * sigma * sigma))
    weight[~np.isfinite(gap)] = 1.0
    foreground = (class_ids != 0) & (class_ids != IGNORE_ID)
    weight[foreground] = 1.0  # the paper's border term matters between objects, i.e. on background pixels
    return weight.astype(np.float32)
