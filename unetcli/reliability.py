"""The reliability diagram of the evaluation report: how often the model is right against how sure it is.

Drawn with OpenCV like the report's other panels (report.py), from the summary's `reliability` entry (see
calibration.Reliability.to_dict): one bar per confidence bin, as high as the bin's accuracy, the diagonal where
accuracy equals confidence (a perfectly calibrated model's bars reach it), and under the plot each bin's share
of the pixels (most pixels of a good model lie in the top bin).
"""

from __future__ import annotations

import cv2
import numpy as np

from .report import BAR, GREY, INK, LIGHT, _blank, _paste, _text, _vertical_text, _width

PLOT = 240  # side of the square plot, pixels
SHARE_H = 36  # height of the pixel-share strip under it
GAP_COLOUR = (222, 120, 110)  # the mean confidence of a bin, where it differs from its accuracy
LEFT, TOP = 52, 44


def reliability_diagram(summary: dict) -> np.ndarray | None:
    """RGB panel of the reliability diagram, or None when the evaluation had no probabilities (--pred/--gt)."""
    bins = summary.get("reliability")
    if not bins:
        return None
    canvas = _blank(TOP + PLOT + SHARE_H + 64, LEFT + PLOT + 24)
    heading = f"reliability   ECE {summary['ece']:.4f}   Brier {summary['brier']:.4f}"
    _text(canvas, heading, (10, 24), 0.6 if _width(heading, 0.6) <= canvas.shape[1] - 14 else 0.5, INK)
    x0, y0, count = LEFT, TOP, len(bins["pixels"])
    cv2.rectangle(canvas, (x0, y0), (x0 + PLOT, y0 + PLOT), LIGHT, -1)
    total = max(1, sum(bins["pixels"]))
    for b, (pixels, confidence, accuracy) in enumerate(zip(bins["pixels"], bins["confidence"], bins["accuracy"])):
        left, right = x0 + round(PLOT * b / count), x0 + round(PLOT * (b + 1) / count)
        if accuracy is not None:
            top = y0 + PLOT - round(PLOT * accuracy)
            cv2.rectangle(canvas, (left, top), (right - 1, y0 + PLOT), BAR, -1)
            mark = y0 + PLOT - round(PLOT * confidence)  # the bin's mean confidence: the bar's target height
            cv2.line(canvas, (left, mark), (right - 1, mark), GAP_COLOUR, 2)
        share_h = round((SHARE_H - 6) * pixels / total)
        strip = y0 + PLOT + SHARE_H
        if share_h:
            cv2.rectangle(canvas, (left, strip - share_h), (right - 1, strip), GREY, -1)
    cv2.line(canvas, (x0, y0 + PLOT), (x0 + PLOT, y0), INK, 1, cv2.LINE_AA)  # perfect calibration
    cv2.rectangle(canvas, (x0, y0), (x0 + PLOT, y0 + PLOT), GREY, 1)
    _axes(canvas, x0, y0)
    return canvas


def _axes(canvas: np.ndarray, x0: int, y0: int) -> None:
    """Ticks at 0, 0.5 and 1 on both axes, the axis names and the share strip's label."""
    for frac in (0.0, 0.5, 1.0):
        label = f"{frac:g}"
        x, y = x0 + round(PLOT * frac), y0 + PLOT - round(PLOT * frac)
        cv2.line(canvas, (x, y0 + PLOT + SHARE_H), (x, y0 + PLOT + SHARE_H + 4), GREY, 1)
        _text(canvas, label, (x - _width(label, 0.4) // 2, y0 + PLOT + SHARE_H + 18), 0.4, GREY)
        cv2.line(canvas, (x0 - 4, y), (x0, y), GREY, 1)
        _text(canvas, label, (x0 - 8 - _width(label, 0.4), y + 5), 0.4, GREY)
    for k, name in enumerate(("confidence", "bars: accuracy, red: mean confidence")):
        _text(canvas, name, (max(4, x0 + (PLOT - _width(name, 0.4)) // 2), y0 + PLOT + SHARE_H + 36 + 16 * k), 0.4, GREY)
    _text(canvas, "pixels", (4, y0 + PLOT + SHARE_H - 4), 0.38, GREY)
    label = _vertical_text("accuracy", 0.45, GREY)
    _paste(canvas, label, 4, y0 + (PLOT - label.shape[0]) // 2)
