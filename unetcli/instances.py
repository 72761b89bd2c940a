"""Objects from a semantic prediction: an instance label image (0 = background, 1..N one id per object) and a
table of the objects' measurements (`predict --save instances`, OUT/objects.csv).

Objects are the connected regions (4-connected) of the classes that are objects. Touching objects of one class
are split (`split="auto"`) by the model's border class when it has one (a model trained from instance masks:
mode "instances" with a class named "border"), else by a watershed on the distance transform from markers
that are its extended maxima (see docs/decisions.md, "Objects (issue 13)"). Labelling runs on the whole stitched
prediction, so a tiled image gives the objects its whole prediction gives.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import UsageError
from .masks import ClassMap, format_value

SPLIT_MODES = ("auto", "off")
DEFAULT_MIN_SIZE = 16  # pixels: a 4 x 4 speck (see docs/decisions.md)
BORDER_NAME = "border"  # the border class of a model trained from instance masks
# Markers for the watershed: maxima of the distance transform that rise above their surroundings by at least
# SPLIT_DEPTH times their region's largest distance (its inner radius) and at least SPLIT_MIN_DEPTH pixels
# (measured on touching discs and ellipses: benchmarks/bench_split.py, docs/decisions.md).
SPLIT_DEPTH = 0.05
SPLIT_MIN_DEPTH = 0.5
PROB_SCALE = 65535  # probabilities come as uint16 x 65535 (predictor.PROB_SCALE)
CSV_COLUMNS = ("image", "object_id", "class", "class_value", "area", "centroid_y", "centroid_x", "min_row", "min_col",
               "max_row", "max_col", "equivalent_diameter", "mean_probability")


@dataclass(frozen=True)
class InstanceOptions:
    """objects: class names (None: every class but the background, and but the border class of an instances
    model); split: auto | off; min_size: objects of fewer pixels are dropped."""

    objects: tuple[str, ...] | None = None
    split: str = "auto"
    min_size: int = DEFAULT_MIN_SIZE

    def __post_init__(self) -> None:
        if self.split not in SPLIT_MODES:
            raise UsageError(f"--split {self.split!r}: use auto (split touching objects) or off (connected regions)")
        if isinstance(self.min_size, bool) or not isinstance(self.min_size, int) or self.min_size < 0:
            raise UsageError(f"--min-size {self.min_size}: use 0 (keep every object) or a positive number of pixels")
        if self.objects is not None and not [name for name in self.objects if name.strip()]:
            raise UsageError("--objects: name at least one class (e.g. --objects cell,nucleus)")


def parse_objects(text: str | None) -> tuple[str, ...] | None:
    """--objects CLASS,... -> the names (None when not given)."""
    if text is None:
        return None
    return tuple(name.strip() for name in text.split(",") if name.strip())


def border_class(class_map: ClassMap) -> int | None:
    """The id of the border class of a model trained from instance masks, else None."""
    if class_map.mode != "instances":
        return None
    return next((i for i, name in enumerate(class_map.names) if name == BORDER_NAME), None)


def object_classes(class_map: ClassMap, names: tuple[str, ...] | None) -> tuple[int, ...]:
    """Class ids that are objects: the named ones, or by default every class but 0 (the background) and the
    border class. Unknown names, the background and the border class raise UsageError."""
    border = border_class(class_map)
    if names is None:
        return tuple(i for i in range(1, class_map.num_classes) if i != border)
    ids = []
    for name in names:
        if name not in class_map.names:
            raise UsageError(f"--objects {','.join(names)}: {name!r} is no class of this model "
                             f"(classes: {', '.join(class_map.names)})")
        class_id = class_map.names.index(name)
        if class_id == 0 or class_id == border:
            what = "the background" if class_id == 0 else "the border between objects"
            raise UsageError(f"--objects {','.join(names)}: {name!r} is {what}, not an object class")
        if class_id not in ids:
            ids.append(class_id)
    return tuple(sorted(ids))


@dataclass
class Instances:
    """labels: H x W int32, 0 = background, 1..count one per object; classes[k]: the class id of object k
    (classes[0] = 0)."""

    labels: np.ndarray
    classes: np.ndarray

    @property
    def count(self) -> int:
        return len(self.classes) - 1

    def image(self) -> np.ndarray:
        """The label image to save: uint16, or uint32 when there are more than 65535 objects."""
        return self.labels.astype(np.uint16 if self.count <= 65535 else np.uint32)

    def counts(self, class_map: ClassMap, class_ids: tuple[int, ...]) -> dict[str, int]:
        """Objects per object class, by class name (zero counts included)."""
        per_class = np.bincount(self.classes[1:], minlength=class_map.num_classes)
        return {class_map.names[c]: int(per_class[c]) for c in class_ids}


def components(mask: np.ndarray, connectivity: int = 1) -> np.ndarray:
    """Connected components of a boolean mask: 0 = background, 1..n. 4-connectivity by default (skimage's 1), for
    predict and evaluate alike: a one-pixel boundary drawn with diagonal steps (an EM membrane, the gap between
    touching objects, a border class) keeps the regions on its two sides apart; with 8-connectivity they would
    touch across every diagonal step and merge. The cost, an object joined only by a diagonal pixel counting as
    two, is rare in filled masks."""
    from skimage.measure import label

    return label(np.asarray(mask, bool), connectivity=connectivity).astype(np.int32)


def _grow(elevation: np.ndarray, markers: np.ndarray, mask: np.ndarray, orphans: bool = True) -> np.ndarray:
    """Watershed from `markers` over `mask`; with `orphans`, regions of the mask that hold no marker become objects
    of their own (else they stay 0)."""
    from skimage.segmentation import watershed

    labels = watershed(elevation, markers, mask=mask).astype(np.int32)
    rest = mask & (labels == 0)
    if orphans and rest.any():
        extra = components(rest)
        labels[rest] = extra[rest] + labels.max()
    return labels


def extended_maxima(image: np.ndarray, h: float) -> np.ndarray:
    """The regional maxima of `image` that rise at least `h` above their surroundings, each one connected region
    (MATLAB's imextendedmax): the regional maxima of the reconstruction of image - h under image. (scikit-image's
    h_maxima keeps only each dome's top h, which breaks one flat ridge into several markers.)"""
    from skimage.morphology import local_maxima, reconstruction

    image = np.asarray(image, np.float64)
    return local_maxima(reconstruction(image - h, image, method="dilation"), connectivity=2, allow_borders=True)


def split_foreground(mask: np.ndarray, depth: float = SPLIT_DEPTH, min_depth: float = SPLIT_MIN_DEPTH) -> np.ndarray:
    """One class's foreground (H x W bool) -> labels 0..N, touching objects split: a watershed on the distance
    transform from markers that are its extended maxima with h = max(`min_depth` pixels, `depth` x the region's
    inner radius), i.e. the dip between two maxima must reach h. Each region (4-connected) is split on its own."""
    from scipy import ndimage as ndi

    mask = np.asarray(mask, bool)
    regions = components(mask)
    if regions.max() == 0:
        return regions
    distance = ndi.distance_transform_edt(mask).astype(np.float32)
    radius = np.zeros(regions.max() + 1, np.float32)
    radius[1:] = ndi.maximum(distance, regions, np.arange(1, regions.max() + 1))
    scale = np.maximum(radius, min_depth / depth)[regions]  # per pixel: its region's radius, at least min_depth / depth
    relative = np.where(mask, distance / scale, 0).astype(np.float32)
    markers = components(extended_maxima(relative, depth) & mask, connectivity=2)  # as extended_maxima found them
    return _grow(-distance, markers, mask)


def _by_class(ids: np.ndarray, class_ids: tuple[int, ...], split: bool) -> tuple[np.ndarray, list[int]]:
    """Each object class on its own: components, or split_foreground's objects; ids offset to be unique."""
    labels = np.zeros(ids.shape, np.int32)
    classes = [0]
    for class_id in class_ids:
        mask = ids == class_id
        found = split_foreground(mask) if split else components(mask)
        count = int(found.max())
        labels[mask & (found > 0)] = found[mask & (found > 0)] + (len(classes) - 1)
        classes += [class_id] * count
    return labels, classes


def _with_border(ids: np.ndarray, class_ids: tuple[int, ...], border: int, split: bool) -> tuple[np.ndarray, list[int]]:
    """A model with a border class: objects are the object classes' regions without the border (so touching
    objects come apart), grown back over the border pixels; with split off, the regions with the border."""
    from scipy import ndimage as ndi

    region = np.isin(ids, (*class_ids, border))
    if split:
        cores, classes = _by_class(ids, class_ids, split=False)
        return _grow(ndi.distance_transform_edt(cores == 0).astype(np.float32), cores, region, orphans=False), classes
    labels = components(region)
    # each region's class: the object class with most pixels in it (a region of border pixels only is dropped)
    k = int(max(class_ids)) + 1
    votes = np.bincount(labels.ravel().astype(np.int64) * k + np.where(np.isin(ids, class_ids), ids, 0).ravel(),
                        minlength=(labels.max() + 1) * k).reshape(-1, k)
    votes[:, 0] = 0
    keep = votes.max(axis=1) > 0
    keep[0] = False
    return _keep(labels, [0] + votes.argmax(axis=1)[1:].tolist(), keep)


def _keep(labels: np.ndarray, classes: list[int], keep: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Drop the labels where `keep` is False and number the rest 1..N in their order."""
    new = np.zeros(len(keep), np.int32)
    new[keep] = np.arange(1, int(keep.sum()) + 1)
    return new[labels], [0] + [c for c, k in zip(classes[1:], keep[1:]) if k]


def label_instances(ids: np.ndarray, class_map: ClassMap, options: InstanceOptions | None = None) -> Instances:
    """Class ids (H x W) -> Instances: one id per object of the object classes (options.objects), touching objects
    split as options.split says, objects under options.min_size pixels dropped."""
    options = options or InstanceOptions()
    class_ids = object_classes(class_map, options.objects)
    if not class_ids:  # a model of one class: nothing is an object
        return Instances(np.zeros(ids.shape, np.int32), np.zeros(1, np.int64))
    border = border_class(class_map)
    if border is not None:
        labels, classes = _with_border(ids, class_ids, border, options.split == "auto")
    else:
        labels, classes = _by_class(ids, class_ids, options.split == "auto")
    keep = np.bincount(labels.ravel(), minlength=len(classes)) >= max(options.min_size, 1)
    keep[0] = False
    labels, classes = _keep(labels, classes, keep)
    return Instances(labels, np.asarray(classes, np.int64))


def object_rows(instances: Instances, class_map: ClassMap, probs: np.ndarray | None, image: str) -> list[dict]:
    """One row per object (CSV_COLUMNS): area in pixels, centroid, bounding box (min inclusive, max exclusive, as
    scikit-image gives it), equivalent diameter, and the mean probability of the object's class over it when
    `probs` (uint16 x 65535: the foreground's for a binary model, one map per class otherwise) is given."""
    from scipy import ndimage as ndi
    from skimage.measure import regionprops_table

    if instances.count == 0:
        return []
    table = regionprops_table(instances.labels, properties=("label", "area", "centroid", "bbox", "equivalent_diameter_area"))
    mean = None
    if probs is not None:
        index = np.arange(1, instances.count + 1)
        mean = np.zeros(instances.count)
        for class_id in np.unique(instances.classes[1:]):
            channel = probs[0] if class_map.is_binary else probs[class_id]
            mine = instances.classes[1:] == class_id
            mean[mine] = np.asarray(ndi.mean(channel, instances.labels, index[mine])) / PROB_SCALE
    rows = []
    for i, label in enumerate(table["label"]):
        seg = class_map.classes[int(instances.classes[label])]
        rows.append({
            "image": image, "object_id": int(label), "class": seg.name, "class_value": format_value(seg.value),
            "area": int(table["area"][i]), "centroid_y": round(float(table["centroid-0"][i]), 2),
            "centroid_x": round(float(table["centroid-1"][i]), 2), "min_row": int(table["bbox-0"][i]),
            "min_col": int(table["bbox-1"][i]), "max_row": int(table["bbox-2"][i]), "max_col": int(table["bbox-3"][i]),
            "equivalent_diameter": round(float(table["equivalent_diameter_area"][i]), 3),
            "mean_probability": "" if mean is None else round(float(mean[label - 1]), 4),
        })
    return rows
