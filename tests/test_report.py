"""`unetcli evaluate --report FILE`: one PNG with Dice per class, the confusion matrix and the worst images."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from helpers import cli, ok, user_error, write_image

from unetcli.evaluate import WORST_KEPT, ImageResult, evaluate_folders, foreground_dice, worst_images


def read_report(path):
    assert path.is_file(), f"{path} was not written"
    picture = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert picture is not None, f"{path} is not a PNG OpenCV can decode"
    assert not [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")], "a temporary file was left behind"
    return picture


def overlap_masks(tmp_path, rows_wrong: dict[str, int]):
    """20x20 masks, truth = top half; the prediction shifts it down by `rows_wrong[name]` rows (more = worse)."""
    truth = np.zeros((20, 20), np.uint8)
    truth[:10] = 255
    for name, shift in rows_wrong.items():
        pred = np.zeros((20, 20), np.uint8)
        pred[shift:10 + shift] = 255
        write_image(tmp_path / "gt" / f"{name}.png", truth)
        write_image(tmp_path / "pred" / f"{name}.png", pred)
    return tmp_path / "pred", tmp_path / "gt"


def test_report_for_prediction_folders(tmp_path):
    pred, gt = overlap_masks(tmp_path, {"good": 1, "bad": 8, "middling": 4, "perfect": 0})
    empty = np.zeros((20, 20), np.uint8)  # no foreground anywhere: nothing to get wrong, never among the worst
    write_image(gt / "empty.png", empty)
    write_image(pred / "empty.png", empty)
    report = tmp_path / "out" / "report.png"
    report.parent.mkdir()
    summary = json.loads(ok(cli("evaluate", "--pred", pred, "--gt", gt, "--report", report, "--json")).stdout)
    assert summary["images"] == 5  # --report changes no score
    picture = read_report(report)
    height, width = picture.shape[:2]
    assert 700 <= width <= 2000 and 400 <= height <= 2000, picture.shape
    assert (picture < 128).mean() > 0.01, "the report is (nearly) blank"

    evaluation = list(evaluate_folders(pred, gt))[-1]
    assert [w.stem for w in evaluation.worst] == ["bad", "middling", "good", "perfect"]
    assert [w.image for w in evaluation.worst] == [None] * 4  # --pred/--gt: truth | prediction only
    assert evaluation.worst[0].dice == pytest.approx(2 * 2 / 20)  # shift 8: 2 of 10 rows overlap


def test_report_for_a_model(trained, tmp_path):
    report = tmp_path / "report.png"
    ok(cli("evaluate", trained.model, trained.data, "--report", report))
    picture = read_report(report)
    assert picture.shape[1] >= 700 and picture.shape[0] >= 400, picture.shape


def test_report_with_many_classes_and_long_names(tmp_path):
    truth = np.array([[0, 0, 1, 1], [2, 2, 2, 0], [3, 3, 1, 0]], np.uint8).repeat(8, 0).repeat(8, 1)
    pred = np.roll(truth, 3, axis=1)
    write_image(tmp_path / "gt" / "x.png", truth)
    write_image(tmp_path / "pred" / "x.png", pred)
    (tmp_path / "map.json").write_text(json.dumps({"background": 0, "a rather long class name": 1, "noyau élargi": 2,
                                                   "mitochondrion": 3}))
    report = tmp_path / "report.png"
    ok(cli("evaluate", "--pred", tmp_path / "pred", "--gt", tmp_path / "gt", "--class-map", tmp_path / "map.json",
           "--report", report))
    read_report(report)


def test_unwritable_report_is_a_clean_error(tmp_path):
    pred, gt = overlap_masks(tmp_path, {"a": 1})
    user_error(cli("evaluate", "--pred", pred, "--gt", gt, "--report", tmp_path / "missing" / "report.png"), 3, "report.png")


def matrix(tp: int, fp: int, fn: int, tn: int = 100) -> np.ndarray:
    return np.array([[tn, fp], [fn, tp]])


def test_worst_images_are_ordered_by_foreground_dice():
    results = [ImageResult("c", matrix(10, 0, 10)),   # Dice 2/3
               ImageResult("a", matrix(0, 5, 5)),     # Dice 0
               ImageResult("empty", matrix(0, 0, 0)),  # no foreground: NaN, left out
               ImageResult("b", matrix(10, 0, 10)),   # ties with c: by name
               ImageResult("d", matrix(10, 0, 0))]    # Dice 1
    assert [stem for stem, _ in worst_images(results)] == ["a", "b", "c", "d"]
    assert worst_images(results, 2) == [("a", 0.0), ("b", pytest.approx(2 / 3))]
    assert np.isnan(foreground_dice(matrix(0, 0, 0)))
    # several foreground classes: their mean; a class absent from truth and prediction is skipped
    three = np.array([[50, 5, 0], [5, 10, 0], [0, 0, 0]])
    assert foreground_dice(three) == pytest.approx(2 * 10 / (2 * 10 + 5 + 5))
    three[1, 2] = 10  # class 2 predicted where it is not: its Dice 0 counts
    assert foreground_dice(three) == pytest.approx((2 * 10 / (2 * 10 + 5 + 15) + 0) / 2)


def test_evaluation_keeps_the_same_worst_images_while_streaming():
    from unetcli.evaluate import Evaluation

    rng = np.random.default_rng(0)
    evaluation = Evaluation(["background", "foreground"])
    ids = np.zeros((4, 4), np.uint8)
    for k in range(3 * WORST_KEPT):
        tp, fp, fn = (int(v) for v in rng.integers(0, 20, 3))
        evaluation.add(ImageResult(f"img_{k:02d}", matrix(tp, fp, fn)), ids, ids)
    assert [w.stem for w in evaluation.worst] == [stem for stem, _ in worst_images(evaluation.images)]
    assert len(evaluation.worst) == WORST_KEPT
