"""The U-Net paper's loss weight map: w(x) = 1 + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2)), where d1 and d2
are the distances to the nearest and second-nearest object. Thin gaps between touching objects get large
weights, so the network learns to keep them apart. Objects are the connected components of each foreground
class, or, for instance masks, the true objects (their ids); computed once per mask and kept with it."""

from __future__ import annotations

import cv2
import numpy as np

from .masks import IGNORE_ID


def _components(class_ids: np.ndarray) -> list[tuple]:
    """(label, labels, x, y, w, h) of every connected object of every foreground class."""
    objects = []
    for class_id in np.unique(class_ids):
        if class_id in (0, IGNORE_ID):
            continue
        count, labels, stats, _ = cv2.connectedComponentsWithStats((class_ids == class_id).astype(np.uint8), connectivity=4)
        for label in range(1, count):
            x, y, w, h = stats[label, :4]
            objects.append((label, labels, x, y, w, h))
    return objects


def _instances(objects: np.ndarray) -> list[tuple]:
    """(id, ids, x, y, w, h) of every object of an instance label image (0 = background)."""
    from scipy.ndimage import find_objects

    found = []
    for index, box in enumerate(find_objects(objects)):
        if box is not None:
            rows, cols = box
            found.append((index + 1, objects, cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start))
    return found


def border_weight_map(class_ids: np.ndarray, w0: float = 10.0, sigma: float = 5.0, *,
                      objects: np.ndarray | None = None) -> np.ndarray:
    """(H, W) float32 weights >= 1. Distances are computed in a window around each object (beyond 4 sigma
    the term is below exp(-8) and is left out), so the cost grows with the objects, not the image. With
    `objects` (the ids of an instance mask, whose `class_ids` are 0 background, 1 object, 2 border) the objects
    are those ids, not the connected components of the classes (which merge touching objects), and the term
    applies off the object class: on background and on the border class between touching objects."""
    height, width = class_ids.shape
    reach = int(np.ceil(4 * sigma))
    d1 = np.full((height, width), np.inf, np.float32)
    d2 = np.full((height, width), np.inf, np.float32)
    for label, labels, x, y, w, h in (_components(class_ids) if objects is None else _instances(objects)):
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
    foreground = (class_ids == 1) if objects is not None else (class_ids != 0) & (class_ids != IGNORE_ID)
    weight[foreground] = 1.0  # the paper's border term matters between objects, i.e. off the objects' bodies
    return weight.astype(np.float32)
