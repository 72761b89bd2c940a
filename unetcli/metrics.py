"""Confusion counts and scores. Counts (TP/FP/FN/TN per class) are kept so any average can be recomputed.

Counting is a numpy bincount (it also yields the confusion matrix); the score formulas are smp.metrics'.
A class that is absent from both prediction and truth scores NaN and is skipped by the means.
"""

from __future__ import annotations

import math

import numpy as np

from .masks import IGNORE_ID

SCORES = ("dice", "iou", "precision", "recall", "accuracy")


def confusion_matrix(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> np.ndarray:
    """(truth class, predicted class) pixel counts; pixels whose truth is IGNORE_ID are left out."""
    keep = truth != IGNORE_ID
    truth, pred = (truth[keep], pred[keep]) if not keep.all() else (truth.ravel(), pred.ravel())
    index = truth.astype(np.int64) * num_classes + pred.astype(np.int64)
    return np.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def counts_from_confusion(matrix: np.ndarray) -> dict[str, np.ndarray]:
    tp = np.diag(matrix).astype(np.int64)
    fp = matrix.sum(axis=0) - tp
    fn = matrix.sum(axis=1) - tp
    tn = matrix.sum() - tp - fp - fn
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn}


def scores_from_counts(counts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-class Dice, IoU, precision, recall, accuracy (arrays over classes; NaN where undefined)."""
    import segmentation_models_pytorch as smp
    import torch

    tp, fp, fn, tn = (torch.as_tensor(np.asarray(counts[k], np.int64))[None] for k in ("tp", "fp", "fn", "tn"))
    nan = float("nan")
    functions = {
        "dice": smp.metrics.f1_score,
        "iou": smp.metrics.iou_score,
        "precision": smp.metrics.precision,
        "recall": smp.metrics.recall,
        "accuracy": smp.metrics.accuracy,
    }
    return {name: fn_(tp, fp, fn, tn, reduction="none", zero_division=nan)[0].double().numpy()
            for name, fn_ in functions.items()}


def nanmean(values) -> float:
    finite = [float(v) for v in values if not math.isnan(float(v))]
    return sum(finite) / len(finite) if finite else float("nan")


def pixel_accuracy(matrix: np.ndarray) -> float:
    total = matrix.sum()
    return float(np.trace(matrix) / total) if total else float("nan")


# The ISBI 2012 challenge's pixel error: 1 - the maximal F-score of the foreground over thresholds of the
# foreground probability, as its Fiji script (trainableSegmentation.metrics.PixelError) computes it: foreground
# = true label > 0 (EM: the cell interior, 255) against probability > t, for t = 0.0, 0.1, ..., 1.0, with TP, FP
# and FN summed over all slices before the F-score. A mask without probabilities is one threshold (the script's
# "binary proposal").
ISBI_THRESHOLDS = tuple(k / 10 for k in range(11))


def foreground_f_counts(probability: np.ndarray, truth_foreground: np.ndarray, thresholds=ISBI_THRESHOLDS) -> np.ndarray:
    """(len(thresholds), 3) int64: TP, FP, FN of `probability > t` against the true foreground, per threshold."""
    probability = np.asarray(probability).ravel()
    truth_foreground = np.asarray(truth_foreground, bool).ravel()
    on_truth, off_truth = probability[truth_foreground], probability[~truth_foreground]
    rows = []
    for t in thresholds:
        tp = int(np.count_nonzero(on_truth > t))
        rows.append((tp, int(np.count_nonzero(off_truth > t)), on_truth.size - tp))
    return np.asarray(rows, np.int64).reshape(len(thresholds), 3)


def max_f_error(counts: np.ndarray) -> tuple[float, int | None]:
    """1 - the maximal F-score over the rows of `counts` (TP, FP, FN), and the row that gives it; (NaN, None)
    when no row has a true or a predicted foreground pixel."""
    counts = np.asarray(counts, np.float64)
    tp, fp, fn = counts[:, 0], counts[:, 1], counts[:, 2]
    bottom = 2 * tp + fp + fn
    if not bottom.any():
        return float("nan"), None
    f = np.divide(2 * tp, bottom, out=np.full(len(tp), -1.0), where=bottom > 0)
    best = int(np.argmax(f))
    return float(1 - f[best]), best
