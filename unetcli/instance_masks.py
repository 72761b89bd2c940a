"""Instance masks in: label images whose values are object ids (0 = background, one id per object), and the
DSB2018 layout (one binary mask file per object). Detection of id-like masks, the `instances` class map
(background, object, border) and its decoding, and reading a folder of per-object masks as one label image.

The border class is the thin line where two different objects touch or nearly touch: every pixel whose
(2 * BORDER_RADIUS + 1)-square neighbourhood holds pixels of two different objects (the pixel's own object
counts). Connected components of the `object` class then separate touching objects.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .errors import DataError
from .images import RawMask, is_image_file, read_mask
from .masks import IGNORE_ID, MIN_OBJECTS, ClassMap, MaskStats, SegClass, default_colour

# MIN_OBJECTS (8), "more than a handful": masks with fewer distinct ids are as likely a few class ids
ONE_REGION_SHARE = 0.9  # at least this share of the ids must each be one connected region
MAX_INDEX_VALUE = 64  # mask_modes.MAX_AUTO_INDEX: gray values from here on are no class ids to `auto`
BORDER_RADIUS = 2  # pixels: separated touching discs more reliably than 1 (docs/decisions.md, Objects)
INSTANCE_CLASSES = (("background", 0), ("object", 1), ("border", 2))  # names and the values predictions are written in


def count_regions(values: np.ndarray) -> int:
    """How many 8-connected regions of one non-zero value a label image holds (an id drawn as two blobs counts
    twice). One labelling pass in C; called only for masks with MIN_OBJECTS or more distinct values."""
    from skimage.measure import label

    return int(label(values, background=0, connectivity=2, return_num=True)[1])


@dataclass(frozen=True)
class InstanceSigns:
    """Whether masks look like per-image object ids rather than class ids, and why (see `instance_signs`)."""

    looks_like_ids: bool = False
    clear: bool = False  # signs strong enough for --mask-mode auto to read the masks as instances
    typical_objects: int = 0
    why: str = ""
    layout: bool = False  # one mask file per object: instances by construction

    def note(self, chosen: bool) -> str:
        if self.layout:
            return "one mask file per object: read as instances (background, object, border)"
        if chosen:
            return (f"masks look like object ids ({self.why}): read as instances (background, object, border); "
                    "use --mask-mode index to read the values as class ids")
        return f"masks look like object ids ({self.why})? use --mask-mode instances"


def instance_signs(stats: list[MaskStats], ignore_value: int | None = None) -> InstanceSigns:
    """The rule, on what `mask_stats` gathered per mask (no pixel is read again):
    looks like ids: gray masks; the median mask holds MIN_OBJECTS or more non-zero values; and over the masks
      with that many, at least ONE_REGION_SHARE of the values are each one connected region (regions <= values
      / ONE_REGION_SHARE);
    clear (auto picks `instances`): looks like ids, and the values cannot be a class table of index masks: some
      value is MAX_INDEX_VALUE or more, or the masks are 16-bit, or every mask numbers its objects 1..N with N
      differing between masks. A per-object mask folder (DSB2018 layout) is instances by construction."""
    if stats and all(s.kind == "objects" for s in stats):
        return InstanceSigns(True, True, 0, "one mask file per object", layout=True)
    if not stats or any(s.kind != "gray" for s in stats):
        return InstanceSigns()
    ids = [sorted(v for v in s.counts if v != 0 and v != ignore_value) for s in stats]
    typical = int(np.median([len(v) for v in ids]))
    counted = [(len(v), s.regions) for s, v in zip(stats, ids) if len(v) >= MIN_OBJECTS and s.regions is not None]
    values, regions = sum(n for n, _ in counted), sum(r for _, r in counted)
    if typical < MIN_OBJECTS or not counted or regions > values / ONE_REGION_SHARE:
        return InstanceSigns(typical_objects=typical)
    why = f"{typical} values per mask, each one connected region"
    numbered = all(v == list(range(1, len(v) + 1)) for v in ids) and len({len(v) for v in ids}) > 1
    wide = any(s.bits > 8 for s in stats)
    large = any(v and v[-1] >= MAX_INDEX_VALUE for v in ids)
    reasons = [text for flag, text in ((large, f"values up to {max(v[-1] for v in ids if v)}"), (wide, "16-bit"),
                                       (numbered, "numbered 1..N per mask")) if flag]
    return InstanceSigns(True, bool(reasons), typical, ", ".join([why, *reasons]))


def instances_class_map(stats: list[MaskStats], ignore_value: int | None = None, *, border: bool = True) -> ClassMap:
    """The `instances` class map: background (0), object (1) and, with `border`, border (2); the values are the
    class ids predictions are written in (the masks' own values are object ids, which no class table lists)."""
    wrong = [s for s in stats if s.kind not in ("gray", "objects")]
    if wrong:
        raise DataError(
            f"{wrong[0].path}: a {wrong[0].kind} mask, but --mask-mode instances expects gray label images "
            "(0 = background, one value per object; 8/16-bit PNG or TIFF) or one mask file per object"
        )
    if ignore_value == 0:
        raise DataError("--ignore-index 0: in instance masks 0 is the background; choose the value that marks unknown pixels")
    classes = tuple(SegClass(name, value, default_colour(value)) for name, value in INSTANCE_CLASSES[: 3 if border else 2])
    return ClassMap("instances", classes, ignore_value)


def check_instance_classes(class_map: ClassMap) -> None:
    """ValueError unless the classes are background, object[, border] with values 0, 1[, 2] (see to_dict)."""
    expected = list(INSTANCE_CLASSES[: len(class_map.classes)])
    if len(class_map.classes) not in (2, 3) or [(c.name, c.value) for c in class_map.classes] != expected:
        raise ValueError("an instances map holds background (0), object (1) and optionally border (2)")


def border_pixels(ids: np.ndarray, radius: int | None = None) -> np.ndarray:
    """True where the (2 radius + 1)-square around a pixel holds pixels of two different objects (ids != 0):
    both sides of every contact, and background pixels in gaps up to 2 radius - 1 pixels wide (BORDER_RADIUS)."""
    radius = BORDER_RADIUS if radius is None else radius
    labels = ids
    if ids.dtype != np.uint16 or ids.max(initial=0) == 65535:  # cv2 filters 8/16-bit and float32 exactly
        _, inverse = np.unique(ids, return_inverse=True)
        labels = inverse.reshape(ids.shape).astype(np.float32 if inverse.max(initial=0) >= 65535 else np.uint16)
    kernel = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    top = np.float32(np.inf) if labels.dtype == np.float32 else np.uint16(65535)
    highest = cv2.dilate(labels, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    lowest = cv2.erode(np.where(labels == 0, top, labels).astype(labels.dtype), kernel,
                       borderType=cv2.BORDER_CONSTANT, borderValue=float(top))
    return (highest != 0) & (lowest != top) & (highest != lowest)


def object_classes(ids: np.ndarray, *, border: bool = True, ignore_value: int | None = None,
                   radius: int | None = None) -> np.ndarray:
    """Class ids (uint8) of an instance label image: 0 background, 1 object, 2 border (see `border_pixels`);
    pixels of `ignore_value` become IGNORE_ID and are no object."""
    ignored = ids == ignore_value if ignore_value is not None else None
    if ignored is not None and ignored.any():
        ids = np.where(ignored, 0, ids)
    classes = (ids != 0).astype(np.uint8)
    if border:
        classes[border_pixels(ids, radius)] = 2
    if ignored is not None:
        classes[ignored] = IGNORE_ID
    return classes


def object_ids(raw: RawMask, ignore_value: int | None = None) -> np.ndarray:
    """The true objects of an instance mask (ids, 0 = background), with ignored pixels as background."""
    if ignore_value is None:
        return raw.values
    return np.where(raw.values == ignore_value, 0, raw.values).astype(raw.values.dtype)


# ----------------------------------------------------------------------- the DSB2018 layout: a file per object


def read_object_masks(folder: Path, shape: tuple[int, int]) -> RawMask:
    """One label image from a folder of per-object masks: object k (1, 2, ...) is the k-th file in name order,
    any non-zero pixel of it belongs to the object. Where masks overlap the later file wins (annotators' outlines
    often share a pixel or two; the border class covers contacts anyway); a mask that later ones cover for more
    than half is refused as a duplicate. An empty folder is an image without objects (`shape`, the image's size).
    Decoded in threads (OpenCV releases the GIL)."""
    try:
        files = sorted(p for p in Path(folder).iterdir() if is_image_file(p) and p.is_file())
    except OSError as err:
        raise DataError(f"{folder}: cannot list the folder ({err.strerror})") from None
    if len(files) >= 65535:
        raise DataError(f"{folder}: {len(files)} object masks; at most 65534 objects per image")
    workers = max(1, min(8, os.cpu_count() or 1, len(files)))
    with ThreadPoolExecutor(workers) as pool:
        masks = list(pool.map(_object_pixels, files))
    shape = masks[0][0] if masks else tuple(shape)
    for path, (size, _) in zip(files, masks):
        if size != shape:
            raise DataError(f"{path}: {size[1]}x{size[0]} but {files[0].name} is {shape[1]}x{shape[0]}; the object "
                            "masks of one image must all have the image's size")
    ids = np.zeros(shape, np.uint16)
    flat = ids.reshape(-1)
    for k, (_, pixels) in enumerate(masks, start=1):
        flat[pixels] = k
    _check_covered(files, masks, ids)
    return RawMask(ids, "objects")


def _object_pixels(path: Path) -> tuple[tuple[int, int], np.ndarray]:
    values = read_mask(path).values
    foreground = values.any(axis=2) if values.ndim == 3 else values
    return foreground.shape[:2], np.flatnonzero(foreground)


def _check_covered(files: list[Path], masks, ids: np.ndarray) -> None:
    """Refuse a mask whose object kept less than half of its pixels (a duplicate, or one object drawn twice)."""
    kept = np.bincount(ids.reshape(-1), minlength=len(files) + 1)
    for k, (path, (_, pixels)) in enumerate(zip(files, masks), start=1):
        if len(pixels) and kept[k] * 2 < len(pixels):
            covered_by = np.unique(ids.reshape(-1)[pixels])
            others = [files[j - 1].name for j in covered_by if j not in (0, k)][:3]
            raise DataError(
                f"{path}: {len(pixels) - kept[k]} of its {len(pixels)} pixels are also in {', '.join(others)} (later "
                "masks win where masks overlap); one object is drawn twice? Remove the duplicate mask file"
            )
