"""Pictures drawn with OpenCV (no plotting dependency): training curves and image | truth | prediction grids."""

from __future__ import annotations

import math

import cv2
import numpy as np

from .images import to_unit_range

PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))
FONT = cv2.FONT_HERSHEY_SIMPLEX


def _text(canvas: np.ndarray, text: str, origin: tuple[int, int], scale: float = 0.45, colour=(0, 0, 0)) -> None:
    cv2.putText(canvas, text, origin, FONT, scale, colour, 1, cv2.LINE_AA)


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
    _text(canvas, f"epoch 1..{epochs}", (x0 + left, y0 + h - 8), 0.4, (90, 90, 90))
    for k, (name, vs) in enumerate(series.items()):
        colour = PALETTE[k % len(PALETTE)]
        points = [point(i, v) for i, v in enumerate(vs) if v is not None and math.isfinite(v)]
        for a, b in zip(points, points[1:]):
            cv2.line(canvas, a, b, colour, 2, cv2.LINE_AA)
        for p in points if len(points) == 1 else []:
            cv2.circle(canvas, p, 3, colour, -1)
        _text(canvas, name, (x0 + left + 8, y0 + top + 16 + 15 * k), 0.4, colour)


def training_curves(history: list[dict]) -> np.ndarray:
    """RGB image: losses on the left, per-class validation Dice on the right."""
    canvas = np.full((320, 900, 3), 255, np.uint8)

    def column(key: str) -> list[float | None]:
        return [float(row[key]) if row.get(key) not in ("", None) else None for row in history]

    losses = {"train loss": column("train_loss")}
    if any(v is not None for v in column("val_loss")):
        losses["val loss"] = column("val_loss")
    dice = {key[5:]: column(key) for key in history[0] if key.startswith("dice_")} if history else {}
    _panel(canvas, (0, 0, 450, 320), losses, "loss")
    _panel(canvas, (450, 0, 450, 320), dice, "validation Dice per class")
    return canvas


def _as_rgb(image: np.ndarray) -> np.ndarray:
    unit = to_unit_range(image)
    if image.dtype == np.float32:
        unit = (unit - unit.min()) / (float(unit.max() - unit.min()) or 1.0)
    unit = unit[:, :, :3] if unit.shape[2] >= 3 else np.repeat(unit[:, :, :1], 3, axis=2)
    return (unit * 255).clip(0, 255).astype(np.uint8)


def example_grid(rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]], colours: np.ndarray, height: int = 160) -> np.ndarray:
    """RGB grid, one row per example: image | truth | prediction (class colours), each `height` px tall."""
    lines = []
    for image, truth, pred in rows:
        scale = height / image.shape[0]
        size = (max(1, int(round(image.shape[1] * scale))), height)
        tiles = [cv2.resize(_as_rgb(image), size, interpolation=cv2.INTER_AREA)]
        for ids in (truth, pred):
            shown = np.where(ids == 255, 0, ids)
            tiles.append(cv2.resize(colours[shown], size, interpolation=cv2.INTER_NEAREST))
        lines.append(np.concatenate([np.pad(t, ((2, 2), (2, 2), (0, 0)), constant_values=255) for t in tiles], axis=1))
    width = max(line.shape[1] for line in lines)
    lines = [np.pad(line, ((0, 0), (0, width - line.shape[1]), (0, 0)), constant_values=255) for line in lines]
    header = np.full((22, width, 3), 255, np.uint8)
    for k, label in enumerate(("image", "truth", "prediction")):
        _text(header, label, (6 + k * (lines[0].shape[1] // 3), 16))
    return np.concatenate([header, *lines], axis=0)
