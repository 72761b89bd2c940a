"""Pictures drawn with OpenCV (no plotting dependency): training curves, image | truth | prediction grids and
the evaluation report (Dice per class, confusion matrix, object and boundary scores, worst images)."""

from __future__ import annotations

import itertools
import math
import unicodedata

import cv2
import numpy as np

from .display import as_rgb, thumbnail

PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))
FONT = cv2.FONT_HERSHEY_SIMPLEX
INK, GREY, LIGHT = (30, 30, 30), (110, 110, 110), (225, 225, 225)
FRAME = (170, 170, 170)  # around each cell of the example grid
BAR = (70, 130, 180)


def _text(canvas: np.ndarray, text: str, origin: tuple[int, int], scale: float = 0.45, colour=(0, 0, 0)) -> None:
    cv2.putText(canvas, text, origin, FONT, scale, colour, 1, cv2.LINE_AA)


def _epoch_ticks(epochs: int) -> list[int]:
    """Epoch numbers to label: multiples of a round step (1, 2, 5, 10, 20, 50, ...), and 1; at most 11."""
    step = next(s for s in itertools.chain.from_iterable((k, 2 * k, 5 * k) for k in (10 ** e for e in itertools.count()))
                if epochs / s <= 10)
    ticks = list(range(step, epochs + 1, step))
    return ticks if step in (1, 2) else [1, *ticks]


def _panel(canvas: np.ndarray, box: tuple[int, int, int, int], series: dict[str, list[float]], title: str) -> None:
    """Line chart of `series` (name -> values per epoch) inside box = (x, y, w, h) of an RGB canvas."""
    x0, y0, w, h = box
    left, bottom, top = 50, 30, 25
    plot_w, plot_h = w - left - 10, h - bottom - top
    values = [v for vs in series.values() for v in vs if v is not None and math.isfinite(v)]
    _text(canvas, title, (x0 + left, y0 + 17), 0.5)
    cv2.rectangle(canvas, (x0 + left, y0 + top), (x0 + left + plot_w, y0 + top + plot_h), (160, 160, 160), 1)
    if not values:
        return
    low, high = min(values), max(values)
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5
    epochs = max(len(vs) for vs in series.values())

    def point(i: int, v: float) -> tuple[int, int]:
        px = x0 + left + (int(plot_w * i / (epochs - 1)) if epochs > 1 else plot_w // 2)
        py = y0 + top + int(plot_h * (high - v) / (high - low))
        return px, py

    for frac in (0.0, 0.5, 1.0):
        value = high - frac * (high - low)
        _text(canvas, f"{value:.3g}", (x0 + 2, y0 + top + int(frac * plot_h) + 4), 0.38, (90, 90, 90))
    axis_y = y0 + top + plot_h
    for epoch in _epoch_ticks(epochs):
        x = point(epoch - 1, high)[0]
        cv2.line(canvas, (x, axis_y), (x, axis_y + 4), (90, 90, 90), 1)
        _text(canvas, str(epoch), (x - _width(str(epoch), 0.38) // 2, axis_y + 16), 0.38, (90, 90, 90))
    _text(canvas, "epoch", (x0 + 2, axis_y + 16), 0.38, (90, 90, 90))
    for k, (name, vs) in enumerate(series.items()):
        colour = PALETTE[k % len(PALETTE)]
        points = [point(i, v) for i, v in enumerate(vs) if v is not None and math.isfinite(v)]
        for a, b in itertools.pairwise(points):
            cv2.line(canvas, a, b, colour, 2, cv2.LINE_AA)
        for p in points if len(points) == 1 else []:
            cv2.circle(canvas, p, 3, colour, -1)
        _text(canvas, name, (x0 + left + 8, y0 + top + 16 + 15 * k), 0.4, colour)


def training_curves(history: list[dict]) -> np.ndarray:
    """RGB image: losses on the left, per-class validation Dice on the right; without validation (--val-split 0)
    the training loss alone, across the whole picture."""
    canvas = np.full((320, 900, 3), 255, np.uint8)

    def column(key: str) -> list[float | None]:
        return [float(row[key]) if row.get(key) not in ("", None) else None for row in history]

    losses = {"train loss": column("train_loss")}
    if any(v is not None for v in column("val_loss")):
        losses["val loss"] = column("val_loss")
    dice = {key[5:]: column(key) for key in history[0] if key.startswith("dice_")} if history else {}
    if not any(v is not None for vs in dice.values() for v in vs):
        _panel(canvas, (0, 0, 900, 320), losses, "training loss (no validation set)")
        return canvas
    _panel(canvas, (0, 0, 450, 320), losses, "loss")
    _panel(canvas, (450, 0, 450, 320), dice, "validation Dice per class")
    return canvas


def _fit(array: np.ndarray, height: int, width: int, *, nearest: bool) -> np.ndarray:
    """Scale an H x W x 3 picture to fit height x width, keeping its aspect ratio (smaller ones are enlarged)."""
    scale = min(height / array.shape[0], width / array.shape[1])
    size = (max(1, min(width, round(array.shape[1] * scale))), max(1, min(height, round(array.shape[0] * scale))))
    shrink = scale < 1
    return cv2.resize(array, size, interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def example_grid(rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]], colours: np.ndarray, height: int = 160) -> np.ndarray:
    """RGB grid, one row per example: image | truth | prediction (class colours), in cells of one size (`height`
    pixels tall, as wide as the widest example, at most twice `height`), each picture fitted and centred in its
    cell, under one header of the three column names."""
    labels, gap, margin, header_h = ("image", "truth", "prediction"), 6, 4, 22
    widest = max(round(image.shape[1] * height / image.shape[0]) for image, _, _ in rows)
    cell_w = max(min(widest, 2 * height), max(_width(label, 0.45) for label in labels) + 8)
    canvas = _blank(header_h + len(rows) * (height + gap) + margin, margin + 3 * (cell_w + gap))
    lefts = [margin + k * (cell_w + gap) for k in range(3)]
    for x, label in zip(lefts, labels):
        _text(canvas, label, (x + (cell_w - _width(label, 0.45)) // 2, 16), 0.45, INK)
    for r, (image, truth, pred) in enumerate(rows):
        y = header_h + r * (height + gap)
        pictures = [(as_rgb(image), False)] + [(colours[np.where(ids == 255, 0, ids)], True) for ids in (truth, pred)]
        for x, (picture, nearest) in zip(lefts, pictures):
            tile = _fit(picture, height, cell_w, nearest=nearest)
            _paste(canvas, tile, x + (cell_w - tile.shape[1]) // 2, y + (height - tile.shape[0]) // 2)
            cv2.rectangle(canvas, (x - 1, y - 1), (x + cell_w, y + height), FRAME, 1)
    return canvas


# ------------------------------------------------------------------------------------ evaluation report



def _ascii(text: str, limit: int) -> str:
    """Hershey fonts draw ASCII only; long names are shortened to `limit` characters."""
    text = unicodedata.normalize("NFKD", str(text)).encode("ascii", "ignore").decode() if not str(text).isascii() else str(text)
    text = "".join(c if 32 <= ord(c) < 127 else "?" for c in text) or "?"
    return text if len(text) <= limit else text[: limit - 2] + ".."


def _width(text: str, scale: float) -> int:
    return cv2.getTextSize(text, FONT, scale, 1)[0][0]


def _blank(height: int, width: int) -> np.ndarray:
    return np.full((height, width, 3), 255, np.uint8)


def _paste(canvas: np.ndarray, tile: np.ndarray, x: int, y: int) -> None:
    canvas[y:y + tile.shape[0], x:x + tile.shape[1]] = tile


def _vertical_text(text: str, scale: float, colour=INK) -> np.ndarray:
    """Text reading bottom to top, on white."""
    (w, h), base = cv2.getTextSize(text, FONT, scale, 1)
    strip = _blank(h + base + 4, w + 4)
    _text(strip, text, (2, h + 2), scale, colour)
    return cv2.rotate(strip, cv2.ROTATE_90_COUNTERCLOCKWISE)


def _count(value: int) -> str:
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= limit:
            return f"{value / limit:.3g}{suffix}"
    return str(int(value))


def _dice_bars(summary: dict, colours: list) -> np.ndarray:
    """Horizontal bars: micro Dice per class, with the class colour as a swatch before the name."""
    names = [_ascii(n, 22) for n in summary["classes"]]
    dices = [entry["dice"] for entry in summary["classes"].values()]
    label_w = max(_width(n, 0.5) for n in names) + 34
    bar_w, row_h, top = 260, 28, 44
    canvas = _blank(top + row_h * len(names) + 34, label_w + bar_w + 70)
    mean = summary.get("mean_dice")
    _text(canvas, "Dice per class" + (f"  (mean {mean:.3f})" if mean is not None else ""), (10, 24), 0.6, INK)
    x0 = label_w
    for k, (name, dice) in enumerate(zip(names, dices)):
        y = top + k * row_h
        swatch = tuple(int(c) for c in colours[k]) if k < len(colours) else PALETTE[k % len(PALETTE)]
        cv2.rectangle(canvas, (10, y + 6), (24, y + 20), swatch, -1)
        cv2.rectangle(canvas, (10, y + 6), (24, y + 20), GREY, 1)
        _text(canvas, name, (32, y + 19), 0.5, INK)
        cv2.rectangle(canvas, (x0, y + 4), (x0 + bar_w, y + 22), (242, 242, 242), -1)
        if dice is None:
            _text(canvas, "n/a (absent)", (x0 + 6, y + 18), 0.45, GREY)
            continue
        cv2.rectangle(canvas, (x0, y + 4), (x0 + round(bar_w * dice), y + 22), BAR, -1)
        _text(canvas, f"{dice:.3f}", (x0 + bar_w + 8, y + 19), 0.5, INK)
    axis_y = top + row_h * len(names) + 4
    cv2.line(canvas, (x0, axis_y), (x0 + bar_w, axis_y), GREY, 1)
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        x = x0 + round(bar_w * frac)
        cv2.line(canvas, (x, axis_y), (x, axis_y + 4), GREY, 1)
        label = f"{frac:g}"
        _text(canvas, label, (x - _width(label, 0.4) // 2, axis_y + 18), 0.4, GREY)
    return canvas


def _cell_colour(share: float) -> tuple[int, int, int]:
    """White (0) through light blue to dark blue (1)."""
    stops = np.array([(255, 255, 255), (158, 202, 225), (33, 113, 181), (8, 48, 107)], np.float64)
    position = min(max(share, 0.0), 1.0) * (len(stops) - 1)
    low = min(int(position), len(stops) - 2)
    mix = stops[low] + (stops[low + 1] - stops[low]) * (position - low)
    return tuple(int(c) for c in mix.round())


def _confusion(matrix: list, names: list[str]) -> np.ndarray:
    """Row-normalised confusion matrix (rows: truth, columns: prediction), share and count in each cell."""
    counts = np.asarray(matrix, np.int64)
    n = len(names)
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.full(counts.shape, np.nan), where=totals > 0)
    names = [_ascii(name, 18) for name in names]
    cell = int(min(max(380 // max(n, 1), 18), 84))
    row_label_w = max(_width(name, 0.45) for name in names) + 12
    vertical = any(_width(name, 0.45) > cell - 6 for name in names)
    col_label_h = max(_width(name, 0.45) for name in names) + 10 if vertical else 22
    left, top = 30 + row_label_w, 44 + 20 + col_label_h
    heading = "confusion matrix (share of each true class)"
    canvas = _blank(top + n * cell + 14, max(left + n * cell + 14, _width(heading, 0.6) + 20))
    _text(canvas, heading, (10, 24), 0.6, INK)
    title = "prediction"
    _text(canvas, title, (left + (n * cell - _width(title, 0.5)) // 2, 56), 0.5, GREY)
    label = _vertical_text("truth", 0.5, GREY)
    _paste(canvas, label, 6, top + max(0, (n * cell - label.shape[0]) // 2))
    for j, name in enumerate(names):
        x = left + j * cell
        if vertical:
            text = _vertical_text(name, 0.45)
            _paste(canvas, text, x + (cell - text.shape[1]) // 2, top - 4 - text.shape[0])
        else:
            _text(canvas, name, (x + (cell - _width(name, 0.45)) // 2, top - 8), 0.45, INK)
    for i, name in enumerate(names):
        y = top + i * cell
        _text(canvas, name, (left - 8 - _width(name, 0.45), y + cell // 2 + 5), 0.45, INK)
        for j in range(n):
            x, share = left + j * cell, shares[i, j]
            fill = (240, 240, 240) if np.isnan(share) else _cell_colour(share)
            cv2.rectangle(canvas, (x, y), (x + cell, y + cell), fill, -1)
            ink = (255, 255, 255) if not np.isnan(share) and share > 0.45 else INK
            if cell >= 44:
                main = "-" if np.isnan(share) else f"{100 * share:.0f}%" if share in (0, 1) else f"{100 * share:.1f}%"
                dy = -4 if cell >= 56 else 5
                _text(canvas, main, (x + (cell - _width(main, 0.45)) // 2, y + cell // 2 + dy), 0.45, ink)
                if cell >= 56:
                    count = _count(counts[i, j])
                    _text(canvas, count, (x + (cell - _width(count, 0.38)) // 2, y + cell // 2 + 14), 0.38,
                          ink if ink != INK else GREY)
    for k in range(n + 1):
        cv2.line(canvas, (left, top + k * cell), (left + n * cell, top + k * cell), (200, 200, 200), 1)
        cv2.line(canvas, (left + k * cell, top), (left + k * cell, top + n * cell), (200, 200, 200), 1)
    return canvas


def _worst_block(rank: int, worst, colours: np.ndarray) -> np.ndarray:
    """One worst image: a caption above image | truth | prediction (truth | prediction without an image)."""
    tiles = [] if worst.image is None else [thumbnail(as_rgb(worst.image), nearest=False, enlarge=True)]
    for ids in (worst.truth, worst.pred):
        tiles.append(thumbnail(colours[np.where(ids == 255, 0, ids)], nearest=True, enlarge=True))
    labels = ["image", "truth", "prediction"][-len(tiles):]
    height, gap = max(t.shape[0] for t in tiles), 6
    block = _blank(height + 46, sum(t.shape[1] + gap for t in tiles) + 2)
    caption = f"{rank}. {_ascii(worst.stem, 40)}   Dice {worst.dice:.3f}"
    _text(block, caption, (2, 15), 0.48, INK)
    x = 1
    for tile, label in zip(tiles, labels):
        _text(block, label, (x, 35), 0.4, GREY)
        _paste(block, tile, x, 42)
        cv2.rectangle(block, (x - 1, 41), (x + tile.shape[1], 42 + tile.shape[0]), (170, 170, 170), 1)
        x += tile.shape[1] + gap
    return block


OBJECT_ROWS = (("objects true / predicted", ("true_objects", "predicted_objects")),
               ("F1 at IoU 0.5", ("f1_50",)), ("precision / recall at IoU 0.5", ("precision_50", "recall_50")),
               ("DSB2018 score", ("dsb_score",)), ("splits / merges", ("splits", "merges")),
               ("adapted Rand error", ("rand_error",)), ("VI split / merge (bits)", ("vi_split", "vi_merge")))
OBJECT_COLUMNS = 6  # object classes drawn; the CSV and JSON have them all


def _objects_panel(summary: dict, colours: np.ndarray) -> np.ndarray | None:
    """A table of the object and boundary scores: one row per measure, one column per object class (at most
    OBJECT_COLUMNS), the ISBI pixel error in its heading. None when nothing was scored as objects."""
    objects = summary.get("objects") or {}
    if not objects:
        return None
    names = list(objects)[:OBJECT_COLUMNS]
    heading = "objects (counts summed; DSB, Rand, VI: image means)"
    if summary.get("isbi_pixel_error") is not None:
        heading += f"   ISBI pixel error (1 - max F) {summary['isbi_pixel_error']:.4f}"
    label_w, col_w, row_h, top = max(_width(label, 0.45) for label, _ in OBJECT_ROWS) + 24, 150, 24, 62
    canvas = _blank(top + row_h * len(OBJECT_ROWS) + 10, max(label_w + col_w * len(names) + 20, _width(heading, 0.6) + 20))
    _text(canvas, heading, (10, 24), 0.6, INK)
    class_ids = {name: k for k, name in enumerate(summary["classes"])}
    for j, name in enumerate(names):
        x = label_w + j * col_w
        swatch = tuple(int(c) for c in colours[class_ids.get(name, 0) % len(colours)])
        cv2.rectangle(canvas, (x, top - 20), (x + 12, top - 8), swatch, -1)
        _text(canvas, _ascii(name, 16), (x + 18, top - 8), 0.45, INK)
    for i, (label, keys) in enumerate(OBJECT_ROWS):
        y = top + i * row_h
        if i % 2 == 0:
            cv2.rectangle(canvas, (6, y + 2), (canvas.shape[1] - 6, y + row_h - 2), (245, 245, 245), -1)
        _text(canvas, label, (10, y + 17), 0.45, INK)
        for j, name in enumerate(names):
            cell = " / ".join(_score(objects[name][key]) for key in keys)
            _text(canvas, cell, (label_w + j * col_w + 18, y + 17), 0.45, INK)
    return canvas


def _score(value) -> str:
    return "-" if value is None else str(value) if isinstance(value, int) else f"{value:.3f}"


def evaluation_report(summary: dict, worst: list, class_colours: list, source: str = "",
                      reliability: np.ndarray | None = None) -> np.ndarray:
    """One RGB picture of an evaluation: Dice per class, the confusion matrix, the reliability diagram (a panel
    drawn by reliability.py, when the evaluation had probabilities), the object and boundary scores and the
    worst images."""
    names = list(summary["classes"])
    colours = np.asarray([tuple(c) for c in class_colours] or [PALETTE[k % len(PALETTE)] for k in range(len(names))], np.uint8)
    bars, matrix = _dice_bars(summary, colours), _confusion(summary["confusion_matrix"], names)
    row = [bars, matrix] + ([] if reliability is None else [reliability])
    objects = _objects_panel(summary, colours)
    blocks = [_worst_block(k + 1, w, colours) for k, w in enumerate(worst)]
    margin = 16
    width = max(sum(panel.shape[1] + margin for panel in row) + margin, 1000,
                2 * margin + max((b.shape[1] for b in blocks), default=0),
                0 if objects is None else objects.shape[1] + 2 * margin)
    # worst images side by side as far as the width allows
    lines: list[list[np.ndarray]] = []
    for block in blocks:
        if lines and sum(b.shape[1] + 24 for b in lines[-1]) + block.shape[1] <= width - 2 * margin:
            lines[-1].append(block)
        else:
            lines.append([block])
    header_h, panels_h = 64, max(panel.shape[0] for panel in row) + (0 if objects is None else objects.shape[0] + 8)
    worst_h = 40 + sum(max(b.shape[0] for b in line) + 12 for line in lines) if blocks else 0
    canvas = _blank(header_h + panels_h + worst_h + margin, width)
    mean_iou = summary.get("mean_iou")
    title = (f"{summary['images']} images   mean Dice {_fmt3(summary.get('mean_dice'))}   mean IoU {_fmt3(mean_iou)}   "
             f"pixel error {_fmt3(summary.get('pixel_error'))}")
    _text(canvas, title, (margin, 28), 0.7, INK)
    if source:
        _text(canvas, _ascii(source, 120), (margin, 52), 0.45, GREY)
    cv2.line(canvas, (margin, header_h - 4), (width - margin, header_h - 4), LIGHT, 1)
    x = margin
    for panel in row:  # Dice bars | confusion matrix | reliability diagram
        _paste(canvas, panel, x, header_h)
        x += panel.shape[1] + margin
    if objects is not None:
        _paste(canvas, objects, margin, header_h + panels_h - objects.shape[0])
    if blocks:
        y = header_h + panels_h + 8
        cv2.line(canvas, (margin, y), (width - margin, y), LIGHT, 1)
        _text(canvas, "worst images (lowest foreground Dice)", (margin + 10, y + 26), 0.6, INK)
        y += 40
        for line in lines:
            x = margin + 10
            for block in line:
                _paste(canvas, block, x, y)
                x += block.shape[1] + 24
            y += max(b.shape[0] for b in line) + 12
    return canvas


def _fmt3(value) -> str:
    return "-" if value is None else f"{value:.3f}"
