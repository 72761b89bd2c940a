"""Mask modes: detect how a folder of masks encodes classes, decode masks to class ids, encode ids back.

A `ClassMap` is the single source of truth for which pixel value is which class. It is stored in the
model folder so that predictions are written back in the user's own values.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Iterable, Union

import numpy as np

from .errors import DataError, UsageError
from .images import RawMask

Value = Union[int, tuple[int, int, int]]
IGNORE_ID = 255  # class id used internally for ignored pixels; so at most 255 classes
MAX_CLASSES = 255
MAX_AUTO_COLOURS = 64  # more distinct colours than this almost always means a lossy or resized mask
MAX_AUTO_INDEX = 64  # gray values at or above this are gray levels, not class ids
MASK_MODES = ("auto", "binary", "index", "palette", "rgb")
_UNKNOWN = np.uint16(0xFFFF)

DEFAULT_COLOURS = (
    (0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128),
    (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0),
)


def default_colour(class_id: int) -> tuple[int, int, int]:
    if class_id < len(DEFAULT_COLOURS):
        return DEFAULT_COLOURS[class_id]
    rng = np.random.default_rng(class_id)
    return tuple(int(c) for c in rng.integers(40, 256, 3))


def _rgb_key(values: np.ndarray) -> np.ndarray:
    values = values.astype(np.int32)
    return (values[..., 0] << 16) | (values[..., 1] << 8) | values[..., 2]


def _key_to_rgb(key: int) -> tuple[int, int, int]:
    return (key >> 16) & 255, (key >> 8) & 255, key & 255


def _value_key(value: Value) -> int:
    return (value[0] << 16) | (value[1] << 8) | value[2] if isinstance(value, tuple) else int(value)


def format_value(value: Value) -> str:
    return f"({value[0]},{value[1]},{value[2]})" if isinstance(value, tuple) else str(value)


@dataclass(frozen=True)
class MaskStats:
    """Which values one mask holds and how many pixels each."""

    path: Path
    kind: str  # gray | rgb | palette
    counts: dict  # value -> pixel count
    palette: tuple[int, ...] | None = None


def mask_stats(path: Path, raw: RawMask) -> MaskStats:
    if raw.kind == "rgb":
        keys, counts = np.unique(_rgb_key(raw.values), return_counts=True)
        values = [_key_to_rgb(int(k)) for k in keys]
    else:
        bins = np.bincount(raw.values.ravel())
        keys = np.flatnonzero(bins)
        values, counts = [int(k) for k in keys], bins[keys]
    return MaskStats(path, raw.kind, {v: int(c) for v, c in zip(values, counts)}, raw.palette)


@dataclass(frozen=True)
class SegClass:
    name: str
    value: Value  # the user's pixel value: gray level, palette index or RGB colour
    colour: tuple[int, int, int]  # used for colour previews and overlays


@dataclass(frozen=True)
class ClassMap:
    """How the user's mask values map to class ids 0..N-1 (and back)."""

    mode: str  # binary | index | palette | rgb
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
        keys = [_value_key(c.value) for c in self.classes]
        ids = list(range(len(keys)))
        if self.ignore_value is not None:
            keys.append(_value_key(self.ignore_value))
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

    def colourise(self, ids: np.ndarray) -> np.ndarray:
        return np.asarray([c.colour for c in self.classes], np.uint8)[ids]

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
    def from_dict(cls, data: dict) -> "ClassMap":
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
        keys = [_value_key(c.value) for c in self.classes]
        if len(set(keys)) != len(keys):
            raise ValueError("two classes share one mask value")
        if self.ignore_value is not None and (not isinstance(self.ignore_value, int) or not 0 <= self.ignore_value < 65536
                                              or _value_key(self.ignore_value) in keys):
            raise ValueError(f"ignore value {self.ignore_value!r} is not a free gray level")
        if self.palette is not None and not all(byte(v) for v in self.palette):
            raise ValueError("the palette holds values outside 0..255")


def load_class_map_file(path: Path) -> list[tuple[str, Value]]:
    """Read a `{name: value}` mapping (JSON or YAML); value is a gray level or [r, g, b]. Order = class id."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise UsageError(f"{path}: cannot read the class map ({err.strerror})") from None

    def no_duplicate_names(pairs):
        names = [name for name, _ in pairs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise DataError(f"{path}: class names {', '.join(dupes)} appear twice; each class needs one name")
        return dict(pairs)

    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text, object_pairs_hook=no_duplicate_names)
    except (ValueError, ImportError) as err:
        raise DataError(f"{path}: not a valid class map ({err}); expected e.g. {{\"background\": 0, \"cell\": 255}}") from None
    if not isinstance(data, dict) or not data:
        raise DataError(f"{path}: a class map is an object of name -> value, e.g. {{\"background\": [0,0,0], \"road\": [128,64,128]}}")
    entries: list[tuple[str, Value]] = []
    for name, value in data.items():
        if isinstance(value, int) and 0 <= value < 65536:
            entries.append((str(name), value))
        elif isinstance(value, list) and len(value) == 3 and all(isinstance(v, int) and 0 <= v < 256 for v in value):
            entries.append((str(name), tuple(value)))
        else:
            raise DataError(f"{path}: class {name!r} has value {value!r}; use a gray level 0..65535 or [r, g, b]")
    kinds = {isinstance(v, tuple) for _, v in entries}
    if len(kinds) > 1:
        raise DataError(f"{path}: mixes gray levels and [r, g, b] colours; use one kind for all classes")
    seen: dict[Value, str] = {}
    for name, value in entries:
        if value in seen:
            raise DataError(
                f"{path}: classes {seen[value]!r} and {name!r} share the value {format_value(value)}; "
                "each value must name exactly one class"
            )
        seen[value] = name
    return entries


def _files_with(stats: Iterable[MaskStats], values: set, limit: int = 3) -> str:
    names = [s.path.name for s in stats if values & set(s.counts)]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def infer_class_map(
    stats: list[MaskStats],
    mode: str = "auto",
    ignore_value: int | None = None,
    class_map_file: Path | None = None,
    num_classes: int | None = None,
) -> ClassMap:
    """Decide how the masks encode classes, or refuse with the values found and where."""
    if mode not in MASK_MODES:
        raise UsageError(f"unknown mask mode {mode!r}; choose one of {', '.join(MASK_MODES)}")
    if not stats:
        raise DataError("no masks to read")
    kinds = {s.kind for s in stats}
    if "palette" in kinds and len(kinds) > 1:
        other = next(s for s in stats if s.kind != "palette")
        pal = next(s for s in stats if s.kind == "palette")
        raise DataError(
            f"masks mix indexed-palette PNGs ({pal.path.name}) with plain ones ({other.path.name}); "
            "save every mask the same way"
        )
    colour = "rgb" in kinds or mode == "rgb"
    totals: Counter = Counter()
    for s in stats:
        for value, count in s.counts.items():
            if colour and not isinstance(value, tuple):
                value = (value, value, value)
            totals[value] += count
    if ignore_value is not None:
        if colour:
            raise UsageError("--ignore-index takes a gray level or palette index; for colour masks list an 'ignore' colour in --class-map instead")
        totals.pop(ignore_value, None)
    values = sorted(totals, key=_value_key)

    if class_map_file is not None:
        return _from_mapping(stats, load_class_map_file(class_map_file), values, ignore_value, colour, kinds)
    if mode == "auto":
        if "palette" in kinds:
            mode = "palette"
        elif colour:
            mode = "rgb"
        elif len(values) <= 2 and (len(values) < 2 or values[0] == 0):
            mode = "binary"
        elif values[-1] < MAX_AUTO_INDEX:
            mode = "index"
        else:
            raise DataError(
                f"masks hold {len(values)} gray values ({', '.join(map(str, values[:12]))}): not binary (0 and one "
                "foreground value) and too large to be class ids. If each value is a class, write a class map such "
                'as {"background": 0, "a": 128, "b": 255} and pass --class-map FILE; if the masks were resized or '
                "saved lossy, re-export them with nearest-neighbour interpolation"
            )
    builder = {"binary": _binary, "index": _index, "palette": _palette, "rgb": _rgb}[mode]
    class_map = builder(stats, values, ignore_value, num_classes)
    if num_classes is not None and num_classes != class_map.num_classes and not (class_map.is_binary and num_classes == 1):
        raise DataError(
            f"--classes {num_classes} but the masks define {class_map.num_classes} classes "
            f"({class_map.describe_values()}); drop --classes or fix the masks"
        )
    return class_map


def _check_kind(stats: list[MaskStats], mode: str, allowed: set[str]) -> None:
    wrong = [s for s in stats if s.kind not in allowed]
    if wrong:
        raise DataError(
            f"{wrong[0].path}: a {wrong[0].kind} mask, but --mask-mode {mode} expects {'/'.join(sorted(allowed))} masks"
            + (f" ({len(wrong) - 1} more files like it)" if len(wrong) > 1 else "")
        )


def _binary(stats, values, ignore_value, num_classes) -> ClassMap:
    _check_kind(stats, "binary", {"gray"})
    foreground = [v for v in values if v != 0]
    if len(foreground) > 1:
        extra = set(foreground[1:])
        raise DataError(
            f"binary masks hold at most two values (0 and one foreground value), but these hold "
            f"{', '.join(map(str, values[:12]))} ({', '.join(map(str, sorted(extra)[:5]))} in "
            f"{_files_with(stats, extra)}); a third value usually means masks that were interpolated or saved lossy. "
            "Re-export them, or use --mask-mode index / --class-map for real multi-class masks"
        )
    fg = foreground[0] if foreground else 255
    classes = (SegClass("background", 0, (0, 0, 0)), SegClass("foreground", fg, (255, 255, 255)))
    return ClassMap("binary", classes, ignore_value)


def _index(stats, values, ignore_value, num_classes) -> ClassMap:
    _check_kind(stats, "index", {"gray"})
    count = num_classes if num_classes is not None else values[-1] + 1
    too_big = [v for v in values if v >= count]
    if too_big:
        raise DataError(
            f"mask value {too_big[0]} in {_files_with(stats, set(too_big))} is not a class id of a "
            f"{count}-class index map (ids 0..{count - 1}); raise --classes or fix the masks"
        )
    if count > MAX_CLASSES:
        raise DataError(f"masks define {count} classes; unetcli supports at most {MAX_CLASSES}")
    classes = tuple(SegClass(f"class_{i}", i, default_colour(i)) for i in range(count))
    return ClassMap("index", classes, ignore_value)


def _palette(stats, values, ignore_value, num_classes) -> ClassMap:
    _check_kind(stats, "palette", {"palette"})
    index_map = _index([MaskStats(s.path, "gray", s.counts) for s in stats], values, ignore_value, num_classes)
    palette = stats[0].palette or ()
    colours = [tuple(palette[3 * i: 3 * i + 3]) if len(palette) >= 3 * i + 3 else default_colour(i)
               for i in range(index_map.num_classes)]
    classes = tuple(SegClass(c.name, c.value, colour) for c, colour in zip(index_map.classes, colours))
    return ClassMap("palette", classes, ignore_value, palette)


def _rgb(stats, values, ignore_value, num_classes) -> ClassMap:
    if len(values) > MAX_AUTO_COLOURS:
        raise DataError(
            f"colour masks hold {len(values)} distinct colours; more than {MAX_AUTO_COLOURS} usually means the masks "
            "were saved lossy or resized with interpolation. Re-export them, or pass --class-map FILE listing the classes"
        )
    classes = tuple(SegClass("background" if v == (0, 0, 0) else "rgb_{}_{}_{}".format(*v), v, v) for v in values)
    return ClassMap("rgb", classes)


def _from_mapping(stats, entries, values, ignore_value, colour, kinds) -> ClassMap:
    mapped_colour = isinstance(entries[0][1], tuple)
    if mapped_colour != colour:
        raise DataError(
            "the class map lists " + ("[r, g, b] colours but the masks are gray" if mapped_colour
                                      else "gray levels but the masks are colour") + "; match the map to the masks"
        )
    known = {value for _, value in entries}
    unknown = [v for v in values if v not in known]
    if unknown:
        raise DataError(
            f"mask values {', '.join(format_value(v) for v in unknown[:8])} (in {_files_with(stats, set(unknown))}) "
            "are not in the class map; add them to the map (or pass --ignore-index for a gray value to ignore)"
        )
    mode = "rgb" if colour else ("palette" if "palette" in kinds else "index")
    classes = tuple(
        SegClass(name, value, value if isinstance(value, tuple) else default_colour(i))
        for i, (name, value) in enumerate(entries)
    )
    palette = stats[0].palette if mode == "palette" else None
    return ClassMap(mode, classes, ignore_value, palette)
