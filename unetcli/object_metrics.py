"""Objects and boundaries: a predicted label image scored against a true one (H x W integers, 0 = background).

Object level (counting nuclei, cells, buildings): objects matched by IoU, precision / recall / F1 at IoU 0.5,
the DSB2018 score, count error, split and merge counts. Boundary level (EM, the ISBI 2012 challenge):
scikit-image's adapted Rand error and variation of information, restricted to the pixels of the true objects
(true background, e.g. membrane, is left out, as the challenge's foreground-restricted scores did).

Every (true, predicted) overlap comes from one joint histogram of the two label images (scikit-image's sparse
contingency table), never from a loop over objects. At IoU > 0.5 a true object matches at most one predicted
object and a predicted object at most one true one (two disjoint objects cannot each share more than half of
their union with a third), so the one-to-one matching at each threshold 0.5, 0.55, ..., 0.95 is simply the set
of pairs above it: no assignment step is needed.

Where the label images come from: `truth_labels` (connected components of each object class, or an instance
mask's own ids); for the prediction, `prediction_labels` (the objects `predict --save instances` writes with its
defaults, from instances.label_instances: touching objects split, specks dropped) for the object scores, and
`prediction_regions` (connected components of each predicted class) for Rand and VI, which the ISBI challenge
computed on the connected regions of the thresholded map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .instances import components, label_instances, object_classes  # 4-connected regions and object classes, as predict has them
from .masks import IGNORE_ID
from .metrics import nanmean

IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * k, 2) for k in range(10))  # the DSB2018 score's 0.5, 0.55, ..., 0.95
SPLIT_SHARE = 0.1  # a predicted object counts towards a split or merge of a true object covering > 10 % of it
FIELDS = ("true_objects", "predicted_objects", "count_error", "matched_50", "precision_50", "recall_50", "f1_50",
          "dsb_score", "splits", "merges", "rand_error", "rand_precision", "rand_recall", "vi_split", "vi_merge")


def truth_labels(raw_mask, class_ids: np.ndarray, class_map) -> dict[int, np.ndarray]:
    """True label images, one per object class: the mask's own object ids when it is an instance mask
    (class_map.mode == "instances": its one object class), connected components of each object class of
    `class_ids` otherwise. `raw_mask` is the mask as stored (a RawMask); ignored pixels are background."""
    if class_map.mode == "instances":
        ids = np.asarray(raw_mask.values).astype(np.int64)
        return {c: np.where((class_ids == 0) | (class_ids == IGNORE_ID), 0, ids) for c in object_classes(class_map, None)}
    return {c: components(class_ids == c) for c in object_classes(class_map, None)}


def prediction_labels(pred_ids: np.ndarray, class_map) -> dict[int, np.ndarray]:
    """The predicted objects, one label image per object class: what `predict --save instances` writes with its
    defaults (instances.label_instances: --split auto, --min-size 16), so that evaluate scores those objects."""
    found = label_instances(pred_ids, class_map)
    object_class = found.classes[found.labels]
    return {c: np.where(object_class == c, found.labels, 0) for c in object_classes(class_map, None)}


def prediction_regions(pred_ids: np.ndarray, classes) -> dict[int, np.ndarray]:
    """Connected components of each predicted class in `classes`: the regions Rand and VI are computed on."""
    return {c: components(pred_ids == c) for c in classes}


@dataclass(frozen=True)
class ObjectScores:
    """One image, one object class. `matched[k]`: pairs with IoU > IOU_THRESHOLDS[k] (one-to-one by construction).
    rand_* and vi_* are NaN when the truth has no object pixels."""

    true_objects: int
    predicted_objects: int
    matched: tuple[int, ...]
    splits: int  # true objects covered > SPLIT_SHARE each by two or more predicted objects
    merges: int  # predicted objects covering > SPLIT_SHARE each of two or more true objects
    rand_error: float  # skimage.metrics.adapted_rand_error (1 - Rand F-score)
    rand_precision: float  # same-object pairs in both / in the prediction: falls with false merges
    rand_recall: float  # same-object pairs in both / in the truth: falls with false splits
    vi_split: float  # H(prediction | truth), bits: over-segmentation
    vi_merge: float  # H(truth | prediction), bits: under-segmentation

    @property
    def count_error(self) -> int:
        return self.predicted_objects - self.true_objects

    @property
    def dsb_score(self) -> float:
        """Mean over IOU_THRESHOLDS of TP / (TP + FP + FN); NaN when neither side has an object."""
        return dsb_score(self.matched, self.true_objects, self.predicted_objects)

    def values(self) -> dict[str, float | int]:
        """FIELDS by name (precision_50 etc. NaN where undefined)."""
        tp = self.matched[0]
        extra = {"count_error": self.count_error, "matched_50": tp, "dsb_score": self.dsb_score,
                 **detection_scores(tp, self.true_objects, self.predicted_objects)}
        return {name: extra[name] if name in extra else getattr(self, name) for name in FIELDS}


def _ratio(top: float, bottom: float) -> float:
    return top / bottom if bottom else float("nan")


def detection_scores(tp: int, true: int, predicted: int) -> dict[str, float]:
    """Precision, recall and F1 of `tp` one-to-one matches between `true` and `predicted` objects."""
    return {"precision_50": _ratio(tp, predicted), "recall_50": _ratio(tp, true), "f1_50": _ratio(2 * tp, true + predicted)}


def dsb_score(matched, true: int, predicted: int) -> float:
    """The Data Science Bowl 2018 score of one image: the mean over thresholds of TP / (TP + FP + FN), where
    FP = predicted - TP and FN = true - TP; NaN when there is no object on either side."""
    if true + predicted == 0:
        return float("nan")
    return float(np.mean([tp / (true + predicted - tp) for tp in matched]))


def _table(truth: np.ndarray, pred: np.ndarray):
    """The joint histogram: pixel counts of every (true label, predicted label) pair, labels as indices."""
    from skimage.metrics import contingency_table

    return contingency_table(np.asarray(truth).ravel(), np.asarray(pred).ravel(), sparse_type="array")


def overlaps(truth: np.ndarray, pred: np.ndarray):
    """(true label, predicted label, shared pixels, IoU) of every overlapping pair of objects (labels > 0), plus
    the true and predicted object areas indexed by label; from the joint histogram."""
    table = _table(truth, pred).tocoo()
    true_area = np.bincount(table.row, weights=table.data, minlength=table.shape[0])
    pred_area = np.bincount(table.col, weights=table.data, minlength=table.shape[1])
    keep = (table.row > 0) & (table.col > 0) & (table.data > 0)
    rows, cols, shared = table.row[keep], table.col[keep], table.data[keep]
    iou = shared / (true_area[rows] + pred_area[cols] - shared)
    return rows, cols, shared, iou, true_area, pred_area


def boundary_scores(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """scikit-image's adapted Rand error and variation of information on the true objects' pixels (true label 0
    left out: skimage's ignore_labels=(0,)). Predicted background (label 0) inside a true object is one segment,
    as scikit-image counts it. NaN when the truth has no object pixels."""
    from skimage.metrics import adapted_rand_error, variation_of_information

    nan = float("nan")
    truth, pred = np.asarray(truth).ravel(), np.asarray(pred).ravel()
    if not truth.any():
        return {"rand_error": nan, "rand_precision": nan, "rand_recall": nan, "vi_split": nan, "vi_merge": nan}
    with np.errstate(divide="ignore", invalid="ignore"):
        error, skimage_precision, skimage_recall = adapted_rand_error(truth, pred, ignore_labels=(0,))
        split, merge = variation_of_information(truth, pred, ignore_labels=(0,))
    # scikit-image (0.19-0.26) returns the two the other way round from its docstring (scikit-image issue 6485):
    # its "precision" divides by the truth's same-label pairs. Named here by what they measure (see ObjectScores).
    return {"rand_error": float(error), "rand_precision": float(skimage_recall), "rand_recall": float(skimage_precision),
            "vi_split": float(split), "vi_merge": float(merge)}


def score_objects(truth: np.ndarray, pred: np.ndarray, valid: np.ndarray | None = None, *,
                  regions: np.ndarray | None = None) -> ObjectScores:
    """Object scores of label image `pred` against `truth`, and boundary scores of `regions` (default: `pred`)
    against `truth`; pixels outside `valid` (ignored pixels) are left out of every count."""
    truth, pred = np.asarray(truth), np.asarray(pred)
    regions = pred if regions is None else np.asarray(regions)
    if valid is not None and not valid.all():
        truth, pred, regions = truth[valid], pred[valid], regions[valid]
    if truth.size == 0:
        return ObjectScores(0, 0, (0,) * len(IOU_THRESHOLDS), 0, 0, *(float("nan"),) * 5)
    rows, cols, shared, iou, true_area, pred_area = overlaps(truth, pred)
    meaningful = shared > SPLIT_SHARE * true_area[rows]
    splits = int((np.bincount(rows[meaningful]) >= 2).sum())
    merges = int((np.bincount(cols[meaningful]) >= 2).sum())
    boundary = boundary_scores(truth, regions)
    return ObjectScores(int((true_area[1:] > 0).sum()), int((pred_area[1:] > 0).sum()),
                        tuple(int((iou > t).sum()) for t in IOU_THRESHOLDS), splits, merges, **boundary)


def summarise_objects(scores: list[ObjectScores]) -> dict[str, float | int | None]:
    """One object class over many images. Counts (objects, matches, splits, merges, count error) are summed and
    precision / recall / F1 at IoU 0.5 come from the sums (micro); the DSB2018 score, Rand and VI are means over
    the images where they are defined (the DSB2018 leaderboard averaged its score over images)."""
    true = sum(s.true_objects for s in scores)
    predicted = sum(s.predicted_objects for s in scores)
    tp = sum(s.matched[0] for s in scores)
    sums = {"true_objects": true, "predicted_objects": predicted, "count_error": predicted - true, "matched_50": tp,
            "splits": sum(s.splits for s in scores), "merges": sum(s.merges for s in scores),
            **detection_scores(tp, true, predicted)}
    means = {name: nanmean([s.values()[name] for s in scores])
             for name in ("dsb_score", "rand_error", "rand_precision", "rand_recall", "vi_split", "vi_merge")}
    merged = {**sums, **means}
    return {name: _clean(merged[name]) for name in FIELDS}


def _clean(value):
    if isinstance(value, (int, np.integer)):
        return int(value)
    return None if math.isnan(value) else round(float(value), 6)
