"""Score a model (or a folder of predictions) against ground truth, per image and per class."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data import Pair, find_pairs, list_image_files, pair_files, read_sample, resolve_layout
from .display import thumbnail
from .errors import DataError
from .images import read_mask, write_bytes_atomic, write_png
from .mask_modes import infer_class_map
from .masks import ClassMap, mask_stats
from .metrics import SCORES, confusion_matrix, counts_from_confusion, nanmean, pixel_accuracy, scores_from_counts

PREDICTION_EXTRAS = ("_color", "_overlay", "_probs")  # files `unetcli predict --save` writes beside the masks
WORST_KEPT = 6  # worst images kept (as thumbnails, see display.THUMBNAIL) for the --report picture


@dataclass(frozen=True)
class ImageResult:
    stem: str
    matrix: np.ndarray  # confusion matrix (truth, prediction)


def foreground_dice(matrix: np.ndarray) -> float:
    """An image's Dice over its foreground: class 1 of a binary task, the mean over classes 1.. otherwise.
    NaN when no foreground class is in its truth or prediction (nothing to get wrong)."""
    if matrix.shape[0] < 2:
        return float("nan")
    return nanmean(scores_from_counts(counts_from_confusion(matrix))["dice"][1:])


def worst_images(results: list[ImageResult], count: int = WORST_KEPT) -> list[tuple[str, float]]:
    """The `count` images with the lowest foreground Dice, worst first (ties by name): (stem, Dice)."""
    scored = [(foreground_dice(r.matrix), r.stem) for r in results]
    return [(stem, dice) for dice, stem in sorted(s for s in scored if not math.isnan(s[0]))[:count]]


@dataclass(frozen=True)
class WorstImage:
    """A thumbnail row of the report: the image (None for --pred/--gt), its truth and predicted class ids."""

    stem: str
    dice: float
    image: np.ndarray | None
    truth: np.ndarray
    pred: np.ndarray


@dataclass
class Evaluation:
    class_names: list[str]
    images: list[ImageResult] = field(default_factory=list)
    class_colours: list[tuple[int, int, int]] = field(default_factory=list)
    source: str = ""  # what was scored, for the report's title
    worst: list[WorstImage] = field(default_factory=list)  # the WORST_KEPT worst so far, worst first

    def add(self, result: ImageResult, truth: np.ndarray, pred: np.ndarray, *, image: np.ndarray | None = None) -> None:
        """Record an image's counts; keep small copies of it when it is among the worst so far."""
        self.images.append(result)
        dice = foreground_dice(result.matrix)
        if math.isnan(dice):
            return
        if len(self.worst) == WORST_KEPT and (dice, result.stem) >= (self.worst[-1].dice, self.worst[-1].stem):
            return
        thumb = WorstImage(result.stem, dice, None if image is None else thumbnail(image, nearest=False),
                           thumbnail(truth, nearest=True), thumbnail(pred, nearest=True))
        self.worst = sorted([*self.worst, thumb], key=lambda w: (w.dice, w.stem))[:WORST_KEPT]

    def summary(self) -> dict:
        """Micro scores (from counts summed over all images), per-image macro means, class means."""
        total = sum(r.matrix for r in self.images)
        counts = counts_from_confusion(total)
        micro = scores_from_counts(counts)
        per_image = [scores_from_counts(counts_from_confusion(r.matrix)) for r in self.images]
        classes = {}
        for c, name in enumerate(self.class_names):
            entry = {s: _clean(micro[s][c]) for s in SCORES}
            entry.update({f"{s}_image_mean": _clean(nanmean([p[s][c] for p in per_image])) for s in ("dice", "iou")})
            entry.update({k: int(v[c]) for k, v in counts.items()})
            classes[name] = entry
        accuracy = pixel_accuracy(total)
        return {
            "images": len(self.images),
            "pixel_accuracy": _clean(accuracy),
            "pixel_error": _clean(1 - accuracy),
            "mean_dice": _clean(nanmean(micro["dice"])),
            "mean_iou": _clean(nanmean(micro["iou"])),
            "classes": classes,
            "confusion_matrix": total.tolist(),
        }

    def per_image_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        header = ["image", "pixel_accuracy"]
        for name in self.class_names:
            header += [f"{s}_{name}" for s in ("dice", "iou", "precision", "recall")]
            header += [f"{k}_{name}" for k in ("tp", "fp", "fn", "tn")]
        writer.writerow(header)
        for result in self.images:
            counts = counts_from_confusion(result.matrix)
            scores = scores_from_counts(counts)
            row = [result.stem, _fmt(pixel_accuracy(result.matrix))]
            for c in range(len(self.class_names)):
                row += [_fmt(scores[s][c]) for s in ("dice", "iou", "precision", "recall")]
                row += [int(counts[k][c]) for k in ("tp", "fp", "fn", "tn")]
            writer.writerow(row)
        return buffer.getvalue()

    def write(self, per_image: Path | None = None, summary: Path | None = None, report: Path | None = None) -> None:
        if per_image is not None:
            write_bytes_atomic(per_image, self.per_image_csv().encode())
        if summary is not None:
            write_bytes_atomic(summary, (json.dumps(self.summary(), indent=2) + "\n").encode())
        if report is not None:
            from .report import evaluation_report

            write_png(report, evaluation_report(self.summary(), self.worst, self.class_colours, self.source))


def _clean(value) -> float | None:
    value = float(value)
    return None if math.isnan(value) else round(value, 6)


def _fmt(value) -> str:
    value = float(value)
    return "" if math.isnan(value) else f"{value:.6f}"


def evaluate_model(model_dir: Path, data: Path | None, images: Path | None = None, *, masks: Path | None = None,
                   device: str = "auto", precision: str = "auto", tile: str = "auto", tta: bool = False) -> Iterator:
    """Predict every pair of DATA with the model (as `predict` would) and score it. Yields ImageResults,
    then the finished Evaluation."""
    from .predictor import Predictor

    predictor = Predictor.from_folder(model_dir, device, precision, tile=tile, tta=tta)
    pairs = find_pairs(*resolve_layout(data, images, masks))
    evaluation = Evaluation(predictor.class_map.names, class_colours=predictor.class_map.display_colours.tolist(),
                            source=f"model {model_dir} on {data if data is not None else images}")
    for pair in pairs:
        sample = read_sample(pair)
        truth = predictor.class_map.decode(sample.raw_mask, pair.mask)
        pred = predictor.predict_image(sample.image, pair.image)
        result = ImageResult(pair.stem, confusion_matrix(pred, truth, len(evaluation.class_names)))
        evaluation.add(result, truth, pred, image=sample.image)
        yield result
    yield evaluation


def _prediction_pairs(pred_dir: Path, gt_dir: Path) -> list[Pair]:
    """Pair predicted masks with true masks, leaving out predict's colour/overlay files."""
    files = list_image_files(pred_dir)
    stems = {p.stem for p in files}
    masks = [p for p in files if not _predict_extra(p.stem, stems)]
    return pair_files(masks, list_image_files(gt_dir), pred_dir, gt_dir)


def _predict_extra(stem: str, stems: set[str]) -> bool:
    """Whether `stem` names one of predict's extra files for another file among `stems` (a_color, a_probs_2)."""
    for extra in PREDICTION_EXTRAS:
        head, found, tail = stem.rpartition(extra)
        if found and head in stems and (not tail or extra == "_probs" and tail[:1] == "_" and tail[1:].isdigit()):
            return True
    return False


def evaluate_folders(pred_dir: Path, gt_dir: Path, mask_mode: str = "auto", class_map_file: Path | None = None,
                     class_map: ClassMap | None = None) -> Iterator:
    """Score a folder of predicted masks against a folder of true masks (matched by file stem)."""
    pairs = _prediction_pairs(Path(pred_dir), Path(gt_dir))
    raws = []
    for pair in pairs:
        pred, truth = read_mask(pair.image), read_mask(pair.mask)
        if pred.values.shape[:2] != truth.values.shape[:2]:
            raise DataError(f"{pair.image}: prediction is {pred.values.shape[1]}x{pred.values.shape[0]} but the truth "
                            f"{pair.mask.name} is {truth.values.shape[1]}x{truth.values.shape[0]}")
        raws.append((pair, pred, truth))
    if class_map is None:
        stats = [mask_stats(p.mask, t) for p, _, t in raws] + [mask_stats(p.image, q) for p, q, _ in raws]
        class_map = infer_class_map(stats, mask_mode, class_map_file=class_map_file)
    evaluation = Evaluation(class_map.names, class_colours=class_map.display_colours.tolist(),
                            source=f"predictions {pred_dir} against {gt_dir}")
    for pair, pred, truth in raws:
        pred_ids, truth_ids = class_map.decode(pred, pair.image), class_map.decode(truth, pair.mask)
        result = ImageResult(pair.stem, confusion_matrix(pred_ids, truth_ids, class_map.num_classes))
        evaluation.add(result, truth_ids, pred_ids)
        yield result
    yield evaluation
