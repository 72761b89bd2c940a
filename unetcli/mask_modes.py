"""Mask modes: detect how a folder of masks encodes its classes (binary, index, palette, rgb, instances, or a
class map file) and build the `ClassMap`, or refuse with the values found and the files that hold them."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from .class_csv import class_csv_entries
from .errors import DataError, UsageError
from .instance_masks import instance_signs, instances_class_map
from .masks import MASK_MODES, MAX_CLASSES, ClassMap, MaskStats, SegClass, Value, default_colour, format_value, value_key

MAX_AUTO_COLOURS = 64  # more distinct colours than this almost always means a lossy or resized mask
MAX_AUTO_INDEX = 64  # gray values at or above this are gray levels, not class ids

def load_class_map_file(path: Path, *, colour_masks: bool | None = None) -> list[tuple[str, Value]]:
    """(name, value) per class of a class map file (see `read_class_map`), in class-id order."""
    return [(name, value) for name, value, _ in read_class_map(path, colour_masks=colour_masks)]


def read_class_map(path: Path, *, colour_masks: bool | None = None) -> list[tuple[str, Value, tuple | None]]:
    """A class map: a JSON/YAML `{name: value}` mapping, value a gray level or [r, g, b], or a CSV table
    (`name,r,g,b`, `index,name[,r,g,b]`, `name,value`; see class_csv). Order = class id. Entries are
    (name, mask value, colour to draw the class or None); `colour_masks` says whether the masks are colour."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as err:
        raise UsageError(f"{path}: cannot read the class map ({err.strerror})") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not a text file; a class map is JSON, YAML or CSV text (UTF-8)") from None
    if path.suffix.lower() == ".csv":
        entries = class_csv_entries(path, text, colour_masks)
    else:
        entries = [(name, value, None) for name, value in _mapping_entries(path, text)]
    _check_unique(path, entries)
    return entries


def _mapping_entries(path: Path, text: str) -> list[tuple[str, Value]]:
    """The (name, value) pairs of a JSON or YAML class map, values checked."""

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
    return entries


def _check_unique(path: Path, entries: list[tuple[str, Value, tuple | None]]) -> None:
    """One kind of value (gray levels or colours), one class per name and per value."""
    kinds = {isinstance(value, tuple) for _, value, _ in entries}
    if len(kinds) > 1:
        raise DataError(f"{path}: mixes gray levels and [r, g, b] colours; use one kind for all classes")
    names = [name for name, _, _ in entries]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataError(f"{path}: class names {', '.join(dupes)} appear twice; each class needs one name")
    seen: dict[Value, str] = {}
    for name, value, _ in entries:
        if value in seen:
            raise DataError(
                f"{path}: classes {seen[value]!r} and {name!r} share the value {format_value(value)}; "
                "each value must name exactly one class"
            )
        seen[value] = name


def _files_with(stats: Iterable[MaskStats], values: set, limit: int = 3) -> str:
    names = [s.path.name for s in stats if values & set(s.counts)]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def check_mask_mode(mode: str) -> None:
    if mode not in MASK_MODES:
        raise UsageError(f"unknown mask mode {mode!r}; choose one of {', '.join(MASK_MODES)}")


def infer_class_map(stats: list[MaskStats], mode: str = "auto", ignore_value: int | None = None, *,
                    class_map_file: Path | None = None, num_classes: int | None = None) -> ClassMap:
    """Decide how the masks encode classes, or refuse with the values found and where."""
    check_mask_mode(mode)
    if not stats:
        raise DataError("no masks to read")
    kinds = {s.kind for s in stats}
    if "objects" in kinds and (mode not in ("auto", "instances") or class_map_file is not None):
        raise DataError("one mask file per object (the DSB2018 layout) gives instance masks, whose values are object ids, "
                        "not classes; use --mask-mode instances (or auto) without --class-map")
    if "palette" in kinds and len(kinds) > 1:
        other = next(s for s in stats if s.kind != "palette")
        pal = next(s for s in stats if s.kind == "palette")
        raise DataError(
            f"masks mix indexed-palette PNGs ({pal.path.name}) with plain ones ({other.path.name}); "
            "save every mask the same way"
        )
    colour = "rgb" in kinds or mode == "rgb"
    totals = _value_totals(stats, colour)
    if ignore_value is not None:
        if colour:
            raise UsageError("--ignore-index takes a gray level or palette index; for colour masks list an 'ignore' colour in --class-map instead")
        totals.pop(ignore_value, None)
    values = sorted(totals, key=value_key)

    if class_map_file is not None:
        return _from_mapping(stats, read_class_map(class_map_file, colour_masks=colour), values, ignore_value=ignore_value,
                             colour=colour, kinds=kinds)
    if mode == "auto":
        mode = "instances" if instance_signs(stats, ignore_value).clear else _auto_mode(values, kinds, colour)
    builder = {"binary": _binary, "index": _index, "palette": _palette, "rgb": _rgb, "instances": _instances}[mode]
    class_map = builder(stats, values, ignore_value, num_classes=num_classes)
    if num_classes is not None and num_classes != class_map.num_classes and not (class_map.is_binary and num_classes == 1):
        raise DataError(
            f"--classes {num_classes} but the masks define {class_map.num_classes} classes "
            f"({class_map.describe_values()}); drop --classes or fix the masks"
        )
    return class_map


def _value_totals(stats: list[MaskStats], colour: bool) -> Counter:
    """Pixel count per mask value over all masks; with colour masks, gray values count as (v, v, v)."""
    totals: Counter = Counter()
    for s in stats:
        for value, count in s.counts.items():
            if colour and not isinstance(value, tuple):
                value = (value, value, value)
            totals[value] += count
    return totals


def _auto_mode(values: list[Value], kinds: set[str], colour: bool) -> str:
    """--mask-mode auto: palette PNGs, colour masks, two gray values with 0 among them, small class ids; else refuse."""
    if "palette" in kinds:
        return "palette"
    if colour:
        return "rgb"
    if len(values) <= 2 and (len(values) < 2 or values[0] == 0):
        return "binary"
    if values[-1] < MAX_AUTO_INDEX:
        return "index"
    raise DataError(
        f"masks hold {len(values)} gray values ({', '.join(map(str, values[:12]))}): not binary (0 and one "
        "foreground value) and too large to be class ids. If each value is a class, write a class map such "
        'as {"background": 0, "a": 128, "b": 255} and pass --class-map FILE; if the masks were resized or '
        "saved lossy, re-export them with nearest-neighbour interpolation"
    )


def _instances(stats, values, ignore_value, *, num_classes=None) -> ClassMap:
    return instances_class_map(stats, ignore_value)


def _check_kind(stats: list[MaskStats], mode: str, allowed: set[str]) -> None:
    wrong = [s for s in stats if s.kind not in allowed]
    if wrong:
        raise DataError(
            f"{wrong[0].path}: a {wrong[0].kind} mask, but --mask-mode {mode} expects {'/'.join(sorted(allowed))} masks"
            + (f" ({len(wrong) - 1} more files like it)" if len(wrong) > 1 else "")
        )


def _binary(stats, values, ignore_value, *, num_classes=None) -> ClassMap:
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


def _index(stats, values, ignore_value, *, num_classes=None) -> ClassMap:
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


def _palette(stats, values, ignore_value, *, num_classes=None) -> ClassMap:
    _check_kind(stats, "palette", {"palette"})
    index_map = _index([MaskStats(s.path, "gray", s.counts) for s in stats], values, ignore_value, num_classes=num_classes)
    palette = stats[0].palette or ()
    colours = [tuple(palette[3 * i: 3 * i + 3]) if len(palette) >= 3 * i + 3 else default_colour(i)
               for i in range(index_map.num_classes)]
    classes = tuple(SegClass(c.name, c.value, colour) for c, colour in zip(index_map.classes, colours))
    return ClassMap("palette", classes, ignore_value, palette)


def _rgb(stats, values, ignore_value, *, num_classes=None) -> ClassMap:
    if len(values) > MAX_AUTO_COLOURS:
        raise DataError(
            f"colour masks hold {len(values)} distinct colours; more than {MAX_AUTO_COLOURS} usually means the masks "
            "were saved lossy or resized with interpolation. Re-export them, or pass --class-map FILE listing the classes"
        )
    classes = tuple(SegClass("background" if v == (0, 0, 0) else "rgb_{}_{}_{}".format(*v), v, v) for v in values)
    return ClassMap("rgb", classes)


def _from_mapping(stats, entries, values, *, ignore_value, colour, kinds) -> ClassMap:
    """The class map a map file describes; entries are (name, value, colour or None) in class-id order."""
    if ignore_value is not None:  # a row for the --ignore-index value (a void row) is that value, not a class
        entries = [entry for entry in entries if entry[1] != ignore_value] or entries
    mapped_colour = isinstance(entries[0][1], tuple)
    if mapped_colour != colour:
        raise DataError(
            "the class map lists " + ("[r, g, b] colours but the masks are gray" if mapped_colour
                                      else "gray levels but the masks are colour") + "; match the map to the masks"
        )
    known = {value for _, value, _ in entries}
    unknown = [v for v in values if v not in known]
    if unknown:
        raise DataError(
            f"mask values {', '.join(format_value(v) for v in unknown[:8])} (in {_files_with(stats, set(unknown))}) "
            "are not in the class map; add them to the map (or pass --ignore-index for a gray value to ignore)"
        )
    mode = "rgb" if colour else ("palette" if "palette" in kinds else "index")
    classes = tuple(
        SegClass(name, value, drawn or (value if isinstance(value, tuple) else default_colour(i)))
        for i, (name, value, drawn) in enumerate(entries)
    )
    palette = stats[0].palette if mode == "palette" else None
    return ClassMap(mode, classes, ignore_value, palette)
