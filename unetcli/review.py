"""`predict --review N`: the N most doubtful predictions (doubt.py) as OUT/review.png, a contact sheet of their
overlays, and OUT/review.txt, their paths most doubtful first (one per line, so `predict MODEL @review.txt` works).

Only a small overlay thumbnail of each of the N most doubtful images so far is held, whatever the batch size."""

from __future__ import annotations

import heapq
import itertools
from pathlib import Path

import cv2
import numpy as np

from .display import THUMBNAIL, thumbnail
from .images import write_bytes_atomic, write_png
from .outputs import PredictResult, overlay
from .report import FRAME, GREY, INK, _ascii, _blank, _paste, _text

REVIEW_PNG = "review.png"
REVIEW_TXT = "review.txt"
COLUMNS = 4  # thumbnails per row of the sheet
CAPTION = 34  # pixels above each thumbnail: rank, name, score; the parts
GAP = 8


def review_thumbnail(image: np.ndarray, ids: np.ndarray, colours: np.ndarray, alpha: float) -> np.ndarray:
    """An overlay (as `--save overlay` draws it) at thumbnail size, drawn on the shrunken image and mask so a huge
    image never needs a full-size overlay."""
    return overlay(thumbnail(image, nearest=False, enlarge=True), colours,
                   thumbnail(ids, nearest=True, enlarge=True), alpha=alpha)


class ReviewSheet:
    """Keeps the `count` most doubtful results offered (ties: the earlier input first) and writes the review."""

    def __init__(self, count: int):
        self.count = count
        self.kept: list = []  # min-heap of (score, -order, path, doubt, thumbnail)
        self.order = itertools.count()
        self.predicted = 0

    def offer(self, result: PredictResult) -> None:
        if result.doubt is None or result.thumbnail is None:
            return  # failed or skipped (--skip-existing): nothing was predicted here
        self.predicted += 1
        entry = (result.doubt.score, -next(self.order), str(result.input), result.doubt, result.thumbnail)
        if len(self.kept) < self.count:
            heapq.heappush(self.kept, entry)
        elif entry[:2] > self.kept[0][:2]:
            heapq.heapreplace(self.kept, entry)

    def ranked(self) -> list:
        """(path, doubt, thumbnail), most doubtful first."""
        return [entry[2:] for entry in sorted(self.kept, key=lambda e: e[:2], reverse=True)]

    def write(self, out_dir: Path) -> tuple[Path, Path]:
        """OUT/review.txt and OUT/review.png, each written to a temporary name and renamed."""
        ranked = self.ranked()
        text = "".join(f"{path}\n" for path, _, _ in ranked)
        write_bytes_atomic(out_dir / REVIEW_TXT, text.encode())
        write_png(out_dir / REVIEW_PNG, contact_sheet(ranked, self.predicted))
        return out_dir / REVIEW_PNG, out_dir / REVIEW_TXT


def _parts(doubt) -> str:
    parts = [f"uncertain {doubt.uncertain:.3f}"]
    if doubt.tta_disagreement is not None:
        parts.append(f"tta {doubt.tta_disagreement:.3f}")
    if doubt.intensity_shift is not None:
        parts.append(f"shift {doubt.intensity_shift:.2f}")
    return "  ".join(parts)


def contact_sheet(ranked: list, predicted: int) -> np.ndarray:
    """RGB sheet: a title, then each (path, doubt, thumbnail) in reading order, captioned with its rank, file name,
    doubt score and parts, in cells of THUMBNAIL's size."""
    cell_h, cell_w = THUMBNAIL[0] + CAPTION, THUMBNAIL[1]
    columns = max(1, min(COLUMNS, len(ranked)))
    rows = -(-len(ranked) // columns)
    width = max(GAP + columns * (cell_w + GAP), 360)
    sheet = _blank(30 + rows * (cell_h + GAP) + GAP, width)
    title = f"{len(ranked)} most doubtful of {predicted} predicted image(s)" if ranked else "no image was predicted"
    _text(sheet, title, (GAP, 20), 0.5, INK)
    for k, (path, doubt, picture) in enumerate(ranked):
        x, y = GAP + (k % columns) * (cell_w + GAP), 30 + (k // columns) * (cell_h + GAP)
        _text(sheet, f"{k + 1}. {_ascii(Path(path).name, 22)}  {doubt.score:.3f}", (x, y + 13), 0.42, INK)
        _text(sheet, _parts(doubt), (x, y + 28), 0.36, GREY)
        top = y + CAPTION
        _paste(sheet, picture, x + (cell_w - picture.shape[1]) // 2, top)
        cv2.rectangle(sheet, (x - 1, top - 1), (x + cell_w, top + THUMBNAIL[0]), FRAME, 1)
    return sheet
