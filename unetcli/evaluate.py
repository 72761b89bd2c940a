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

from .calibration import PixelSample, brier_score, reliability
from .data import Pair, find_pairs, list_image_files, pair_files, read_sample, resolve_layout
from .display import thumbnail
from .errors import DataError
from .images import read_mask, write_bytes_atomic, write_png
from .mask_modes import infer_class_map
from .masks import IGNORE_ID, ClassMap, mask_stats
from .metrics import (
    ISBI_THRESHOLDS,
    SCORES,
    confusion_matrix,
    counts_from_confusion,
    foreground_f_counts,
    max_f_error,
    nanmean,
    pixel_accuracy,
    scores_from_counts,
)
from .object_metrics import (
    FIELDS,
    ObjectScores,
    prediction_labels,
    prediction_regions,
    score_objects,
    summarise_objects,
    truth_labels,
)
from .outputs import SUFFIXES
from .predictor import PROB_SCALE

PREDICTION_EXTRAS = tuple(suffix for suffix in SUFFIXES.values() if suffix)  # what `predict --save` adds beside masks
WORST_KEPT = 6  # worst images kept (as thumbnails, see display.THUMBNAIL) for the --report picture
MASK_THRESHOLDS = (0.0,)  # --pred/--gt: the predicted mask is the ISBI pixel error's only "probability" (0 or 1)


@dataclass(frozen=True)
class ImageResult:
    stem: str
    matrix: np.ndarray  # confusion matrix (truth, prediction)
    objects: dict[str, ObjectScores] = field(default_factory=dict)  # object and boundary scores per object class
    foreground_f: np.ndarray | None = None  # two-class tasks: TP, FP, FN per threshold of Evaluation.f_thresholds


def score_image(stem: str, truth: np.ndarray, pred: np.ndarray, class_map: ClassMap, *, raw_truth,
                probability: np.ndarray | None = None, thresholds=MASK_THRESHOLDS) -> ImageResult:
    """An image's confusion matrix, its object and boundary scores per object class (object_metrics: the objects
    `predict --save instances` would write, and for Rand and VI the connected regions of each predicted class),
    and for two-class tasks its foreground counts for the ISBI pixel error: at `thresholds` of `probability` (the
    foreground's), or of the predicted mask itself when there is none. Ignored pixels count nowhere."""
    valid = truth != IGNORE_ID
    valid = None if valid.all() else valid
    truths = truth_labels(raw_truth, truth, class_map)
    preds, regions = prediction_labels(pred, class_map), prediction_regions(pred, list(truths))
    objects = {class_map.names[c]: score_objects(truths[c], preds[c], valid, regions=regions[c]) for c in truths}
    counts = None
    if class_map.num_classes == 2:
        proposal = (pred == 1).astype(np.float32) if probability is None else probability
        keep = slice(None) if valid is None else valid
        counts = foreground_f_counts(proposal[keep], truth[keep] == 1, thresholds)
    return ImageResult(stem, confusion_matrix(pred, truth, class_map.num_classes), objects, counts)


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
    f_thresholds: tuple[float, ...] = MASK_THRESHOLDS  # the ISBI pixel error's thresholds (ImageResult.foreground_f)
    probabilities: PixelSample | None = None  # MODEL DATA: a bounded sample of the pixels' 16-bit probabilities

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
            **self.object_summary(),
            **self.calibration_summary(),
        }

    def calibration_summary(self) -> dict:
        """How well the model's (calibrated) probabilities match how often it is right, over the sampled pixels
        (ignored ones left out): `ece` (15 confidence bins), `brier`, `calibration_pixels` and `reliability` (per
        bin: pixels, mean confidence, accuracy); None for --pred/--gt, which have no probabilities."""
        values, labels = self.probabilities.arrays() if self.probabilities is not None else (None, ())
        if len(labels) == 0:
            return {"ece": None, "brier": None, "calibration_pixels": 0, "reliability": None}
        probs = values / np.float32(PROB_SCALE)
        bins = reliability(probs, labels)
        return {"ece": _clean(bins.ece), "brier": _clean(brier_score(probs, labels)),
                "calibration_pixels": len(labels), "reliability": bins.to_dict()}

    @property
    def object_names(self) -> list[str]:
        """The object classes scored (object_metrics.object_classes), in class order."""
        return [name for name in self.class_names if any(name in r.objects for r in self.images)]

    def object_summary(self) -> dict:
        """`objects`: per object class, summed counts and micro precision / recall / F1 at IoU 0.5, image means
        of the DSB2018 score, Rand and VI (object_metrics.summarise_objects); `isbi_pixel_error`: two-class tasks,
        1 - the maximal foreground F-score over `isbi_thresholds` from TP/FP/FN summed over all images (None
        otherwise); `isbi_threshold`: the probability threshold that gives it (None for --pred/--gt masks)."""
        objects = {name: summarise_objects([r.objects[name] for r in self.images if name in r.objects])
                   for name in self.object_names}
        counts = [r.foreground_f for r in self.images if r.foreground_f is not None]
        error, best = max_f_error(sum(counts)) if counts else (float("nan"), None)
        threshold = self.f_thresholds[best] if best is not None and len(self.f_thresholds) > 1 else None
        return {"objects": objects, "isbi_pixel_error": _clean(error), "isbi_threshold": threshold}

    def per_image_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        header = ["image", "pixel_accuracy"]
        for name in self.class_names:
            header += [f"{s}_{name}" for s in ("dice", "iou", "precision", "recall")]
            header += [f"{k}_{name}" for k in ("tp", "fp", "fn", "tn")]
        objects, isbi = self.object_names, any(r.foreground_f is not None for r in self.images)
        header += [f"{key}_{name}" for name in objects for key in FIELDS] + (["isbi_pixel_error"] if isbi else [])
        writer.writerow(header)
        for result in self.images:
            counts = counts_from_confusion(result.matrix)
            scores = scores_from_counts(counts)
            row = [result.stem, _fmt(pixel_accuracy(result.matrix))]
            for c in range(len(self.class_names)):
                row += [_fmt(scores[s][c]) for s in ("dice", "iou", "precision", "recall")]
                row += [int(counts[k][c]) for k in ("tp", "fp", "fn", "tn")]
            row += [_cell(result.objects[name].values()[key]) if name in result.objects else ""
                    for name in objects for key in FIELDS]
            row += [_fmt(max_f_error(result.foreground_f)[0]) if result.foreground_f is not None else ""] if isbi else []
            writer.writerow(row)
        return buffer.getvalue()

    def write(self, per_image: Path | None = None, summary: Path | None = None, report: Path | None = None) -> None:
        if per_image is not None:
            write_bytes_atomic(per_image, self.per_image_csv().encode())
        if summary is not None:
            write_bytes_atomic(summary, (json.dumps(self.summary(), indent=2) + "\n").encode())
        if report is not None:
            from .reliability import reliability_diagram
            from .report import evaluation_report

            summary = self.summary()
            write_png(report, evaluation_report(summary, self.worst, self.class_colours, self.source,
                                                reliability=reliability_diagram(summary)))


def _clean(value) -> float | None:
    value = float(value)
    return None if math.isnan(value) else round(value, 6)


def _fmt(value) -> str:
    value = float(value)
    return "" if math.isnan(value) else f"{value:.6f}"


def _cell(value) -> str:
    """A CSV cell: counts as integers, scores with six decimals, NaN empty."""
    return str(value) if isinstance(value, (int, np.integer)) else _fmt(value)


def evaluate_model(model_dir: Path, data: Path | None, images: Path | None = None, *, masks: Path | None = None,
                   device: str = "auto", precision: str = "auto", tile: str = "auto", tta: bool = False) -> Iterator:
    """Predict every pair of DATA with the model (as `predict` would) and score it. Yields ImageResults,
    then the finished Evaluation. Its probabilities are those `predict --save probs` writes (calibrated by the
    model's temperature, 16-bit), sampled for the calibration measures."""
    from .predictor import Predictor

    predictor = Predictor.from_folder(model_dir, device, precision, tile=tile, tta=tta)
    pairs = find_pairs(*resolve_layout(data, images, masks))
    class_map = predictor.class_map
    evaluation = Evaluation(class_map.names, class_colours=class_map.display_colours.tolist(),
                            source=f"model {model_dir} on {data if data is not None else images}",
                            f_thresholds=ISBI_THRESHOLDS, probabilities=PixelSample(len(pairs), class_map.is_binary))
    for pair in pairs:
        sample = read_sample(pair)
        truth = class_map.decode(sample.raw_mask, pair.mask)
        pred, maps = predictor.predict_image_maps(sample.image, pair.image, probs=True)
        evaluation.probabilities.add(maps, truth)
        two_class = class_map.num_classes == 2  # the ISBI pixel error needs the foreground probability
        probability = maps[-1] / np.float32(PROB_SCALE) if two_class else None  # binary: 1 map; else class 1's
        result = score_image(pair.stem, truth, pred, class_map, raw_truth=sample.raw_mask, probability=probability,
                             thresholds=ISBI_THRESHOLDS)
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


def _folders_class_map(raws, mask_mode: str, class_map_file: Path | None) -> ClassMap:
    """The class table of true and predicted masks together; true object-id masks (instances) alone, since the
    predictions of an instances model are its class ids."""
    truth_stats = [mask_stats(pair.mask, truth) for pair, _, truth in raws]
    truth_map = infer_class_map(truth_stats, mask_mode, class_map_file=class_map_file)
    if truth_map.mode == "instances":
        return truth_map
    return infer_class_map(truth_stats + [mask_stats(pair.image, pred) for pair, pred, _ in raws], mask_mode,
                           class_map_file=class_map_file)


def _prediction_ids(pred, path: Path, class_map: ClassMap) -> np.ndarray:
    """A predicted mask's class ids: decoded by the class table, or as written for an instances model (0/1/2)."""
    if class_map.mode != "instances":
        return class_map.decode(pred, path)
    ids = pred.values if pred.values.ndim == 2 else pred.values[:, :, 0]
    if pred.kind != "gray" or int(ids.max(initial=0)) >= class_map.num_classes:
        raise DataError(f"{path}: holds values above {class_map.num_classes - 1}; with object-id truth masks the "
                        "predictions are an instances model's class ids (0 background, 1 object, 2 border), as "
                        "`unetcli predict` writes them")
    return ids.astype(np.uint8)


def evaluate_folders(pred_dir: Path, gt_dir: Path, mask_mode: str = "auto", class_map_file: Path | None = None,
                     class_map: ClassMap | None = None) -> Iterator:
    """Score a folder of predicted masks against a folder of true masks (matched by file stem)."""
    pairs = _prediction_pairs(Path(pred_dir), Path(gt_dir))
    raws = []
    for pair in pairs:
        pred, truth = read_mask(pair.image, pair.page), read_mask(pair.mask, pair.mask_page)  # (pages of stacks)
        if pred.values.shape[:2] != truth.values.shape[:2]:
            raise DataError(f"{pair.image}: prediction is {pred.values.shape[1]}x{pred.values.shape[0]} but the truth "
                            f"{pair.mask.name} is {truth.values.shape[1]}x{truth.values.shape[0]}")
        raws.append((pair, pred, truth))
    class_map = class_map or _folders_class_map(raws, mask_mode, class_map_file)
    evaluation = Evaluation(class_map.names, class_colours=class_map.display_colours.tolist(),
                            source=f"predictions {pred_dir} against {gt_dir}")
    for pair, pred, truth in raws:
        pred_ids, truth_ids = _prediction_ids(pred, pair.image, class_map), class_map.decode(truth, pair.mask)
        result = score_image(pair.stem, truth_ids, pred_ids, class_map, raw_truth=truth)
        evaluation.add(result, truth_ids, pred_ids)
        yield result
    yield evaluation
