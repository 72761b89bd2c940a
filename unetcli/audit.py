"""`unetcli audit`: find the training masks most likely to be wrong.

K small models are trained by cross-validation (folds.py: OUT/models/fold-1..K, planned within the time budget),
each pair is predicted by the fold model that did not train on it (out of fold), and the pairs are ranked by how
much their mask disagrees with that prediction: the share of labelled (non-ignored) pixels whose class differs
(docs/decisions.md says why this measure). OUT/audit.csv holds every pair, worst first; OUT/audit.png shows the
worst: image | mask | prediction | disagreement.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .display import as_rgb, thumbnail
from .images import write_bytes_atomic, write_png
from .metrics import confusion_matrix, counts_from_confusion, nanmean, scores_from_counts
from .options import TrainOptions
from .report import GREY, INK, _ascii, _blank, _paste, _text

DEFAULT_FOLDS = 5
DEFAULT_TIME_LIMIT = 600.0  # seconds for all folds: K small models, not one good one
DEFAULT_SHOWN = 10  # pairs drawn in audit.png (audit.csv has all)
DISAGREE_COLOUR = (255, 0, 0)


@dataclass(frozen=True)
class AuditRow:
    stem: str
    image: Path
    mask: Path
    fold: int
    disagreement: float  # share of labelled pixels where mask and out-of-fold prediction differ
    dice: float  # mean Dice of the non-background classes (NaN: none in mask nor prediction)
    classes: str  # the largest confusions, "mask class>predicted class share", largest first
    pixels: int  # labelled pixels


@dataclass(frozen=True)
class Predicting:
    """The out-of-fold prediction of one pair is done."""

    done: int
    total: int


@dataclass(frozen=True)
class Audited:
    rows: list[AuditRow]  # worst first
    csv: Path
    png: Path


def score_pair(pred: np.ndarray, truth: np.ndarray, names: list[str]) -> tuple[float, float, str, int]:
    """(disagreement, Dice, confusions, labelled pixels) of one predicted mask against the stored one."""
    matrix = confusion_matrix(pred, truth, len(names))
    total = int(matrix.sum())
    wrong = total - int(np.trace(matrix))
    dice = scores_from_counts(counts_from_confusion(matrix))["dice"][1:]
    off = [(int(matrix[t, p]), t, p) for t in range(len(names)) for p in range(len(names)) if t != p and matrix[t, p]]
    confusions = "; ".join(f"{names[t]}>{names[p]} {count / total:.1%}" for count, t, p in sorted(off, key=lambda c: (-c[0], c[1:]))[:3])
    return (wrong / total if total else 0.0), nanmean(dice), confusions, total


def audit(options: TrainOptions, out: Path, *, shown: int = DEFAULT_SHOWN) -> Iterator:
    """Train the folds (options.out is their run folder), predict every pair out of fold, rank, write audit.csv and
    audit.png into `out`. Yields the folds' events (folds.train_folds), Predicting per pair, then Audited."""
    from .folds import train_folds

    out = Path(out)
    yield from train_folds(options)
    rows, pictures = yield from _out_of_fold(options)
    order = sorted(range(len(rows)), key=lambda i: -rows[i].disagreement)
    rows = [rows[i] for i in order]
    out.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out / "audit.csv", _csv(rows).encode())
    write_png(out / "audit.png", audit_sheet([pictures[i] for i in order[:shown]], rows[:shown]))
    yield Audited(rows, out / "audit.csv", out / "audit.png")


def _out_of_fold(options: TrainOptions):
    """Each fold's model-best predicts that fold's validation pairs; returns (rows, pictures) in pair order."""
    from .data import read_sample
    from .folds import fold_folder, fold_pairs
    from .predictor import Predictor

    held_out = [(fold, pair) for fold in range(1, options.folds + 1) for pair in fold_pairs(options, fold)[1]]
    rows, pictures, predictors = [], [], {}
    for done, (fold, pair) in enumerate(held_out, 1):
        if fold not in predictors:  # one fold's model at a time
            predictors = {fold: Predictor.from_folder(fold_folder(options.out, fold) / "model-best", options.device, options.precision)}
        predictor = predictors[fold]
        sample = read_sample(pair)
        class_map = predictor.class_map
        truth = class_map.decode(sample.raw_mask, pair.mask)
        pred = predictor.predict_image(sample.image, pair.image)
        disagreement, dice, classes, pixels = score_pair(pred, truth, class_map.names)
        rows.append(AuditRow(pair.stem, pair.image, pair.mask, fold, disagreement, dice, classes, pixels))
        pictures.append(_tiles(sample.image, truth, pred, class_map.colourise(np.arange(class_map.num_classes, dtype=np.uint8))))
        yield Predicting(done, len(held_out))
    return rows, pictures


def _csv(rows: list[AuditRow]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["rank", "stem", "disagreement", "dice", "classes", "fold", "pixels", "image", "mask"])
    for rank, row in enumerate(rows, 1):
        writer.writerow([rank, row.stem, f"{row.disagreement:.6f}", "" if np.isnan(row.dice) else f"{row.dice:.6f}",
                         row.classes, row.fold, row.pixels, row.image, row.mask])
    return buffer.getvalue()


def disagreement_picture(image: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """The image, dimmed, with the pixels where mask and prediction differ in red (ignored pixels not)."""
    picture = (as_rgb(image).astype(np.float32) * 0.45).astype(np.uint8)
    picture[(truth != pred) & (truth != 255)] = DISAGREE_COLOUR
    return picture


def audit_sheet(pictures: list, rows: list[AuditRow]) -> np.ndarray:
    """One block per pair, worst first: a caption above image | mask | prediction | disagreement."""
    blocks = [_block(rank, row, picture) for rank, (row, picture) in enumerate(zip(rows, pictures), 1)]
    if not blocks:
        return _blank(40, 400)
    width, gap = max(b.shape[1] for b in blocks), 8
    sheet = _blank(sum(b.shape[0] + gap for b in blocks), width)
    y = 0
    for block in blocks:
        _paste(sheet, block, 0, y)
        y += block.shape[0] + gap
    return sheet


def _tiles(image, truth, pred, colours) -> list[np.ndarray]:
    """The thumbnails of one pair's block (kept instead of the full images while the pairs are predicted)."""
    tiles = [thumbnail(as_rgb(image), nearest=False, enlarge=True)]
    tiles += [thumbnail(colours[np.where(ids == 255, 0, ids)], nearest=True, enlarge=True) for ids in (truth, pred)]
    return tiles + [thumbnail(disagreement_picture(image, truth, pred), nearest=True, enlarge=True)]


def _block(rank: int, row: AuditRow, tiles: list[np.ndarray]) -> np.ndarray:
    height, gap = max(t.shape[0] for t in tiles), 6
    block = _blank(height + 46, sum(t.shape[1] + gap for t in tiles) + 2)
    dice = "-" if np.isnan(row.dice) else f"{row.dice:.3f}"
    _text(block, f"{rank}. {_ascii(row.stem, 40)}   disagreement {row.disagreement:.1%}   Dice {dice}   fold {row.fold}",
          (2, 15), 0.48, INK)
    x = 1
    for tile, label in zip(tiles, ("image", "mask", "prediction (out of fold)", "disagreement")):
        _text(block, label, (x, 35), 0.4, GREY)
        _paste(block, tile, x, 42)
        x += tile.shape[1] + gap
    return block
