"""`unetcli evaluate --pred DIR --gt DIR` on hand-made masks whose counts are known exactly."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from helpers import cli, ok, user_error, write_image


def binary_masks(tmp_path):
    """Two 10x10 images. a: truth rows 0-4 (50 px), prediction rows 2-6 (50 px) -> TP 30, FP 20, FN 20, TN 30.
    b: truth a 4x4 square (16 px), prediction empty -> TP 0, FP 0, FN 16, TN 84."""
    truth_a = np.zeros((10, 10), np.uint8)
    truth_a[0:5] = 255
    pred_a = np.zeros((10, 10), np.uint8)
    pred_a[2:7] = 255
    truth_b = np.zeros((10, 10), np.uint8)
    truth_b[3:7, 3:7] = 255
    pred_b = np.zeros((10, 10), np.uint8)
    for name, truth, pred in (("a", truth_a, pred_a), ("b", truth_b, pred_b)):
        write_image(tmp_path / "gt" / f"{name}.png", truth)
        write_image(tmp_path / "pred" / f"{name}.png", pred)
    return tmp_path / "pred", tmp_path / "gt"


def test_perfect_predictions_score_one(tmp_path):
    pred, gt = binary_masks(tmp_path)
    for path in gt.iterdir():
        (pred / path.name).write_bytes(path.read_bytes())
    summary = json.loads(ok(cli("evaluate", "--pred", pred, "--gt", gt, "--json")).stdout)
    assert summary["pixel_accuracy"] == 1.0 and summary["mean_dice"] == 1.0
    for entry in summary["classes"].values():
        assert entry["dice"] == entry["iou"] == entry["precision"] == entry["recall"] == 1.0
        assert entry["fp"] == entry["fn"] == 0
    assert summary["classes"]["foreground"]["tp"] == 50 + 16


def test_known_confusion_gives_exact_counts(tmp_path):
    pred, gt = binary_masks(tmp_path)
    per_image, summary_file = tmp_path / "per_image.csv", tmp_path / "summary.json"
    result = ok(cli("evaluate", "--pred", pred, "--gt", gt, "--per-image", per_image, "--summary", summary_file,
                    "--json"))
    summary = json.loads(result.stdout)
    assert json.loads(summary_file.read_text()) == summary
    fg = summary["classes"]["foreground"]
    assert (fg["tp"], fg["fp"], fg["fn"], fg["tn"]) == (30, 20, 36, 114)
    assert fg["dice"] == pytest.approx(2 * 30 / (2 * 30 + 20 + 36), abs=1e-6)
    assert fg["iou"] == pytest.approx(30 / (30 + 20 + 36), abs=1e-6)
    assert fg["precision"] == pytest.approx(30 / 50, abs=1e-6)
    assert fg["recall"] == pytest.approx(30 / 66, abs=1e-6)
    bg = summary["classes"]["background"]
    assert (bg["tp"], bg["fp"], bg["fn"], bg["tn"]) == (114, 36, 20, 30)
    assert summary["confusion_matrix"] == [[114, 20], [36, 30]]  # rows: truth, columns: prediction
    assert summary["pixel_accuracy"] == pytest.approx(144 / 200)
    # image b has no predicted and 16 true foreground pixels: its Dice is 0, the image mean is (0.6 + 0) / 2
    assert fg["dice_image_mean"] == pytest.approx(0.3, abs=1e-6)

    with open(per_image, newline="") as handle:
        rows = {row["image"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"a", "b"}
    a, b = rows["a"], rows["b"]
    assert [int(a[f"{k}_foreground"]) for k in ("tp", "fp", "fn", "tn")] == [30, 20, 20, 30]
    assert [int(b[f"{k}_foreground"]) for k in ("tp", "fp", "fn", "tn")] == [0, 0, 16, 84]
    assert float(a["dice_foreground"]) == pytest.approx(0.6)
    assert float(b["dice_foreground"]) == 0.0
    assert float(a["pixel_accuracy"]) == pytest.approx(0.6)


def test_class_absent_from_truth_and_prediction_is_nan_and_skipped(tmp_path):
    empty = np.zeros((8, 8), np.uint8)
    write_image(tmp_path / "gt" / "empty.png", empty)
    write_image(tmp_path / "pred" / "empty.png", empty)
    full = np.full((8, 8), 255, np.uint8)
    write_image(tmp_path / "gt" / "full.png", full)
    write_image(tmp_path / "pred" / "full.png", full)
    with_images = tmp_path / "per_image.csv"
    summary = json.loads(ok(cli("evaluate", "--pred", tmp_path / "pred", "--gt", tmp_path / "gt",
                                "--per-image", with_images, "--json")).stdout)
    rows = {row["image"]: row for row in csv.DictReader(with_images.open())}
    assert rows["empty"]["dice_foreground"] == ""  # undefined, not 0 and not 1
    assert float(rows["full"]["dice_foreground"]) == 1.0
    assert summary["classes"]["foreground"]["dice_image_mean"] == 1.0  # the NaN image is skipped


def test_multiclass_confusion(tmp_path):
    truth = np.array([[0, 0, 1, 1], [2, 2, 2, 0]], np.uint8)
    pred = np.array([[0, 1, 1, 1], [2, 0, 2, 2]], np.uint8)
    write_image(tmp_path / "gt" / "x.png", truth)
    write_image(tmp_path / "pred" / "x.png", pred)
    summary = json.loads(ok(cli("evaluate", "--pred", tmp_path / "pred", "--gt", tmp_path / "gt", "--json")).stdout)
    assert summary["confusion_matrix"] == [[1, 1, 1], [0, 2, 0], [1, 0, 2]]
    counts = {name: (e["tp"], e["fp"], e["fn"]) for name, e in summary["classes"].items()}
    assert counts == {"class_0": (1, 1, 2), "class_1": (2, 1, 0), "class_2": (2, 1, 1)}


def test_colour_and_overlay_files_of_predict_are_not_scored(tmp_path):
    pred, gt = binary_masks(tmp_path)
    write_image(pred / "a_color.png", np.zeros((10, 10, 3), np.uint8))
    write_image(pred / "a_overlay.png", np.zeros((10, 10, 3), np.uint8))
    summary = json.loads(ok(cli("evaluate", "--pred", pred, "--gt", gt, "--json")).stdout)
    assert summary["images"] == 2


def test_table_output(tmp_path):
    pred, gt = binary_masks(tmp_path)
    result = ok(cli("evaluate", "--pred", pred, "--gt", gt))
    assert "2 images, pixel error 0.2800" in result.stdout
    assert any(line.split("│")[1].strip() == "foreground" and "0.5172" in line
               for line in result.stdout.splitlines() if line.count("│") > 2)


def test_errors(tmp_path):
    pred, gt = binary_masks(tmp_path)
    user_error(cli("evaluate", "--pred", pred), 2, "--pred DIR --gt DIR")
    user_error(cli("evaluate"), 2, "MODEL")
    write_image(gt / "c.png", np.zeros((10, 10), np.uint8))
    user_error(cli("evaluate", "--pred", pred, "--gt", gt), 3, "c.png")
    write_image(pred / "c.png", np.zeros((12, 10), np.uint8))
    user_error(cli("evaluate", "--pred", pred, "--gt", gt), 3, "10x12", "10x10")
