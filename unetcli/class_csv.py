"""Class maps as CSV tables, as data sets ship them: `name,r,g,b` (CamVid's class_dict.csv), `index,name`,
`index,name,r,g,b` or `name,value`, with or without a header row.

A row's gray level (`value`, or `index`: the mask's gray level or palette index) or colour is its mask value;
rows are classes in file order, as in a JSON map. `index,name,r,g,b` rows give colour masks their colours as
values, and gray or palette masks their indices (the colours then draw the class). A void/ignore row is a
class like any other, as in a JSON map; `--ignore-index V` leaves a gray level out instead.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError

LEVEL, NAME, RED, GREEN, BLUE = "index", "name", "r", "g", "b"
FORMS = "name,value / index,name / name,r,g,b / index,name,r,g,b"
_LEVEL_HEADERS = {"index", "idx", "id", "class_id", "classid", "label_id", "value", "gray", "grey", "level",
                  "pixel", "pixel_value", "mask_value", "trainid", "palette_index"}


@dataclass(frozen=True)
class CsvClass:
    name: str
    level: int | None  # gray level or palette index
    colour: tuple[int, int, int] | None


def _number(cell: str) -> int | None:
    try:
        return int(cell)
    except ValueError:
        return None


def _rows(text: str) -> list[tuple[int, list[str]]]:
    """(line number, cells) of the non-blank, non-comment lines; the delimiter is `,` unless the first line has
    none but a `;` or a tab (spreadsheets in some locales)."""
    lines = text.splitlines()
    first = next((line for line in lines if line.strip()), "")
    delimiter = "," if "," in first or not ({";", "\t"} & set(first)) else (";" if ";" in first else "\t")
    rows = []
    reader = csv.reader(lines, delimiter=delimiter)
    for cells in reader:
        cells = [cell.strip() for cell in cells]
        if any(cells) and not cells[0].startswith("#"):
            rows.append((reader.line_num, cells))
    return rows


def _layout(path: Path, header: list[str] | None, rows: list[tuple[int, list[str]]]) -> tuple[str, ...]:
    """The columns' roles, from the column count; two columns by which one holds names (or by the header)."""
    width = len(rows[0][1])
    if width == 4:
        return NAME, RED, GREEN, BLUE
    if width == 5:
        return LEVEL, NAME, RED, GREEN, BLUE
    if width != 2:
        raise UsageError(f"{path} line {rows[0][0]}: {width} columns; a class map CSV has rows of {FORMS}")
    for _, cells in rows:
        first, second = (_number(cell) is not None for cell in cells[:2])
        if first != second:
            return (LEVEL, NAME) if first else (NAME, LEVEL)
    if header is not None and len(header) == 2 and header[0].lower() in _LEVEL_HEADERS:
        return LEVEL, NAME
    if header is not None and len(header) == 2 and header[1].lower() in _LEVEL_HEADERS:
        return NAME, LEVEL
    raise UsageError(f"{path} line {rows[0][0]}: both columns hold numbers, so index,name cannot be told from "
                     "name,value; add a header row (index,name or name,value)")


def _parse_row(path: Path, number: int, cells: list[str], layout: tuple[str, ...]) -> CsvClass:
    shape = ",".join(layout).replace(LEVEL, "value" if layout[0] == NAME else LEVEL)
    if len(cells) != len(layout):
        raise UsageError(f"{path} line {number}: {len(cells)} columns where the rows before have {len(layout)} ({shape})")
    cell = dict(zip(layout, cells))
    if not cell[NAME]:
        raise UsageError(f"{path} line {number}: the class name is empty; rows are {shape}")
    level = None
    if LEVEL in cell:
        level = _number(cell[LEVEL])
        if level is None or not 0 <= level < 65536:
            raise UsageError(f"{path} line {number}: {cell[LEVEL]!r} is not a gray level or index 0..65535; rows are {shape}")
    colour = None
    if RED in cell:
        colour = tuple(_number(cell[c]) for c in (RED, GREEN, BLUE))
        if any(v is None or not 0 <= v < 256 for v in colour):
            raise UsageError(f"{path} line {number}: colour {','.join(cell[c] for c in (RED, GREEN, BLUE))} is not "
                             f"three numbers 0..255; rows are {shape}")
    return CsvClass(cell[NAME], level, colour)


def read_class_csv(path: Path, text: str) -> list[CsvClass]:
    """The classes of a CSV class map, in file order; a malformed row is a UsageError naming file and line."""
    rows = _rows(text)
    header = None
    if rows and all(_number(cell) is None for cell in rows[0][1]):
        header = rows.pop(0)[1]
    if not rows:
        raise UsageError(f"{path}: no class rows; a class map CSV has rows of {FORMS}")
    layout = _layout(path, header, rows)
    return [_parse_row(path, number, cells, layout) for number, cells in rows]


def class_csv_entries(path: Path, text: str, colour_masks: bool | None) -> list[tuple[str, object, tuple | None]]:
    """(name, mask value, colour or None) per class: a colour is the value for colour masks (or when the rows
    have no index); with gray or palette masks an index is the value and the colour only draws the class (a
    gray colour r = g = b without an index is the gray level r: colour PNGs of gray values read as gray masks)."""
    rows = read_class_csv(path, text)
    if colour_masks is False and all(r.level is None and len(set(r.colour)) == 1 for r in rows):
        rows = [CsvClass(r.name, r.colour[0], None) for r in rows]
    entries = []
    for row in rows:
        if row.colour is not None and (row.level is None or colour_masks):
            entries.append((row.name, row.colour, None))
        else:
            entries.append((row.name, row.level, row.colour))
    return entries
