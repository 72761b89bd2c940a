"""Class maps: which of the user's mask values is which class; masks decoded to class ids and ids encoded back.

A `ClassMap` is the single source of truth for which pixel value is which class. It is stored in the
model folder so that predictions are written back in the user's own values. How a folder of masks
encodes its classes is worked out in `mask_modes`.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from .errors import DataError
from .images import RawMask

Value = int | tuple[int, int, int]
IGNORE_ID = 255  # class id used internally for ignored pixels; so at most 255 classes
MAX_CLASSES = 255
MASK_MODES = ("auto", "binary", "index", "palette", "rgb", "instances")
_UNKNOWN = np.uint16(0xFFFF)
MIN_OBJECTS = 8  # gray masks with this many non-zero values get their regions counted (instance_masks.MIN_OBJECTS)

# Colours for pictures of class tables that bring none of their own (binary and index masks): saturated hues
# that stand out from gray and natural images, none near white, gray or black (class 0, the background, is black
# in `--save color` pictures and left unpainted in overlays). Binary foreground is magenta: of white, red, yellow,
# orange, cyan, green, blue and purple it changes bright, dark, mid-gray and colourful images the most.
DISPLAY_COLOURS = (
    (0, 0, 0), (255, 0, 255), (255, 225, 25), (70, 240, 240), (60, 180, 75), (245, 130, 48), (0, 130, 200),
    (230, 25, 75), (145, 30, 180), (210, 245, 60), (0, 128, 128), (170, 110, 40), (128, 0, 0), (128, 128, 0),
    (0, 0, 128),
)
NEAR_GRAY = 64  # a colour whose channels differ by less than this is near gray (white and black included)


def default_colour(class_id: int) -> tuple[int, int, int]:
    """Class `class_id`'s display colour: DISPLAY_COLOURS, then saturated hues a golden angle apart."""
    if class_id < len(DISPLAY_COLOURS):
        return DISPLAY_COLOURS[class_id]
    hue = (class_id * 0.618034) % 1.0
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.75 + 0.25 * (class_id % 2), 0.7 + 0.3 * (class_id % 3) / 2)
    return round(255 * red), round(255 * green), round(255 * blue)


def near_gray(colour) -> bool:
    return int(max(colour)) - int(min(colour)) < NEAR_GRAY


def overlay_colours(colours: list) -> list[tuple[int, int, int]]:
    """The user's class colours for overlays, but each near-gray one (white, gray, black: lost on gray and bright
    images) replaced by a display colour far from all the others."""
    chosen = [tuple(int(v) for v in c) for c in colours]
    candidates = (default_colour(k) for k in range(1, 1000))
    for i, colour in enumerate(chosen):
        if i == 0 or not near_gray(colour):  # class 0 (background) is left unpainted
            continue
        for candidate in candidates:
            others = [c for c in chosen if not near_gray(c)]
            if all(sum((a - b) ** 2 for a, b in zip(candidate, c)) >= 80 ** 2 for c in others):
                chosen[i] = candidate
                break
    return chosen


def _rgb_key(values: np.ndarray) -> np.ndarray:
    values = values.astype(np.int32)
    return (values[..., 0] << 16) | (values[..., 1] << 8) | values[..., 2]


def _key_to_rgb(key: int) -> tuple[int, int, int]:
    return (key >> 16) & 255, (key >> 8) & 255, key & 255


def value_key(value: Value) -> int:
    """One integer per mask value (RGB packed as 0xRRGGBB), for sorting and lookup tables."""
    return (value[0] << 16) | (value[1] << 8) | value[2] if isinstance(value, tuple) else int(value)


def format_value(value: Value) -> str:
    return f"({value[0]},{value[1]},{value[2]})" if isinstance(value, tuple) else str(value)


@dataclass(frozen=True)
class MaskStats:
    """Which values one mask holds and how many pixels each."""

    path: Path
    kind: str  # gray | rgb | palette | objects (a label image built from one mask file per object)
    counts: dict  # value -> pixel count
    palette: tuple[int, ...] | None = None
    bits: int = 8  # 8 or 16: how the mask stores its values
    regions: int | None = None  # gray masks with many values: connected regions of one value (instance_masks)


def mask_stats(path: Path, raw: RawMask) -> MaskStats:
    regions = None
    if raw.kind == "rgb":
        keys, counts = np.unique(_rgb_key(raw.values), return_counts=True)
        values = [_key_to_rgb(int(k)) for k in keys]
    else:
        bins = np.bincount(raw.values.ravel())
        keys = np.flatnonzero(bins)
        values, counts = [int(k) for k in keys], bins[keys]
        if raw.kind == "gray" and np.count_nonzero(keys) >= MIN_OBJECTS:
            from .instance_masks import count_regions

            regions = count_regions(raw.values)
    return MaskStats(path, raw.kind, {v: int(c) for v, c in zip(values, counts)}, raw.palette,
                     bits=8 * raw.values.dtype.itemsize, regions=regions)


@dataclass(frozen=True)
class SegClass:
    name: str
    value: Value  # the user's pixel value: gray level, palette index or RGB colour
    colour: tuple[int, int, int]  # palette and colour masks: the user's colour; pictures use ClassMap.display_colours


@dataclass(frozen=True)
class ClassMap:
    """How the user's mask values map to class ids 0..N-1 (and back)."""

    mode: str  # binary | index | palette | rgb | instances (mask values are object ids; see instance_masks)
    classes: tuple[SegClass, ...]
    ignore_value: int | None = None
    palette: tuple[int, ...] | None = field(default=None, repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def is_binary(self) -> bool:
        return self.mode == "binary"

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    @cached_property
    def _decode_keys(self) -> tuple[np.ndarray, np.ndarray]:
        keys = [value_key(c.value) for c in self.classes]
        ids = list(range(len(keys)))
        if self.ignore_value is not None:
            keys.append(value_key(self.ignore_value))
            ids.append(IGNORE_ID)
        order = np.argsort(keys)
        return np.asarray(keys, np.int64)[order], np.asarray(ids, np.uint8)[order]

    @cached_property
    def _gray_lut(self) -> np.ndarray:
        lut = np.full(65536, _UNKNOWN, np.uint16)
        for key, class_id in zip(*self._decode_keys):
            lut[key] = class_id
        return lut

    def decode(self, raw: RawMask, path: Path | str) -> np.ndarray:
        """Class ids (uint8, IGNORE_ID for ignored pixels). Values that are no class raise DataError."""
        if self.mode == "rgb":
            return self._decode_rgb(raw, path)
        if self.mode == "instances":
            return self._decode_instances(raw, path)
        if raw.kind == "objects":
            raise DataError(f"{path}: one mask file per object, but this model expects {self.mode} masks; "
                            "use --mask-mode instances (or auto)")
        if raw.kind == "rgb":
            raise DataError(f"{path}: a colour mask, but this model expects {self.mode} masks; save it as a gray PNG")
        ids = self._gray_lut[raw.values]
        bad = ids == _UNKNOWN
        if bad.any():
            found = ", ".join(str(v) for v in np.unique(raw.values[bad])[:10])
            raise DataError(
                f"{path}: mask values {found} are not classes of this {self.mode} map "
                f"(classes are {self.describe_values()}); check the mask or choose --mask-mode/--class-map"
            )
        return ids.astype(np.uint8)

    def _decode_instances(self, raw: RawMask, path: Path | str) -> np.ndarray:
        from .instance_masks import object_classes

        if raw.kind not in ("gray", "objects"):
            raise DataError(f"{path}: a {raw.kind} mask, but instance masks are gray label images (one value per object)")
        return object_classes(raw.values, border=len(self.classes) == 3, ignore_value=self.ignore_value)

    def _decode_rgb(self, raw: RawMask, path: Path | str) -> np.ndarray:
        values = raw.values
        keys = _rgb_key(values) if values.ndim == 3 else values.astype(np.int32) * 0x010101
        sorted_keys, ids = self._decode_keys
        position = np.clip(np.searchsorted(sorted_keys, keys), 0, len(sorted_keys) - 1)
        bad = sorted_keys[position] != keys
        if bad.any():
            found = ", ".join(format_value(_key_to_rgb(int(k))) for k in np.unique(keys[bad])[:10])
            raise DataError(
                f"{path}: mask colours {found} are not classes (classes are {self.describe_values()}); "
                "add them to the --class-map file or fix the mask"
            )
        return ids[position]

    def encode(self, ids: np.ndarray) -> np.ndarray:
        """Class ids back to the user's pixel values (gray levels, palette indices or RGB)."""
        if self.mode == "rgb":
            return np.asarray([c.value for c in self.classes], np.uint8)[ids]
        values = [c.value for c in self.classes]
        dtype = np.uint16 if max(values) > 255 else np.uint8
        return np.asarray(values, dtype)[ids]

    @cached_property
    def display_colours(self) -> np.ndarray:
        """N x 3 uint8, each class's colour in pictures (`--save color`, val_examples.png, the report): the user's
        own for palette and colour masks, DISPLAY_COLOURS for binary and index masks (whatever the model stored)."""
        own = self.mode in ("palette", "rgb")
        return np.asarray([c.colour if own else default_colour(i) for i, c in enumerate(self.classes)], np.uint8)

    @cached_property
    def overlay_colours(self) -> np.ndarray:
        """N x 3 uint8 for overlays: display_colours with near-gray ones replaced (see overlay_colours)."""
        return np.asarray(overlay_colours(self.display_colours.tolist()), np.uint8)

    def colourise(self, ids: np.ndarray) -> np.ndarray:
        return self.display_colours[ids]

    def describe_values(self) -> str:
        return ", ".join(format_value(c.value) for c in self.classes)

    def to_dict(self) -> dict:
        return {
            "mode": self.mode,
            "ignore_value": self.ignore_value,
            "palette": list(self.palette) if self.palette else None,
            "classes": [
                {"id": i, "name": c.name, "value": list(c.value) if isinstance(c.value, tuple) else c.value,
                 "colour": list(c.colour)}
                for i, c in enumerate(self.classes)
            ],
        }

    @classmethod
    def from_dict(cls, data: dict) -> ClassMap:
        """The inverse of `to_dict`; a table that `to_dict` cannot have written raises ValueError (or
        KeyError/TypeError for missing or mistyped entries)."""
        classes = tuple(
            SegClass(str(c["name"]), tuple(c["value"]) if isinstance(c["value"], list) else int(c["value"]),
                     tuple(c["colour"]))
            for c in data["classes"]
        )
        palette = tuple(data["palette"]) if data.get("palette") else None
        class_map = cls(data["mode"], classes, data.get("ignore_value"), palette)
        class_map._check()
        return class_map

    def _check(self) -> None:
        def byte(v) -> bool:
            return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 256

        if self.mode not in MASK_MODES[1:]:
            raise ValueError(f"unknown mask mode {self.mode!r} (known: {', '.join(MASK_MODES[1:])})")
        if not 1 <= len(self.classes) <= MAX_CLASSES or (self.is_binary and len(self.classes) != 2):
            raise ValueError(f"{len(self.classes)} classes for a {self.mode} map")
        top = 256 if self.mode == "palette" else 65536
        for c in self.classes:
            good = (isinstance(c.value, tuple) and len(c.value) == 3 and all(byte(v) for v in c.value)
                    if self.mode == "rgb" else not isinstance(c.value, tuple) and 0 <= c.value < top)
            if not good:
                raise ValueError(f"class {c.name!r} has value {c.value!r}, not a {self.mode} mask value")
            if len(c.colour) != 3 or not all(byte(v) for v in c.colour):
                raise ValueError(f"class {c.name!r} has colour {c.colour!r}, not [r, g, b]")
        keys = [value_key(c.value) for c in self.classes]
        if len(set(keys)) != len(keys):
            raise ValueError("two classes share one mask value")
        if self.mode == "instances":  # class values are what predictions write; the masks hold object ids
            from .instance_masks import check_instance_classes

            check_instance_classes(self)
            keys = [0]
        if self.ignore_value is not None and (not isinstance(self.ignore_value, int) or not 0 <= self.ignore_value < 65536
                                              or value_key(self.ignore_value) in keys):
            raise ValueError(f"ignore value {self.ignore_value!r} is not a free gray level")
        if self.palette is not None and not all(byte(v) for v in self.palette):
            raise ValueError("the palette holds values outside 0..255")
