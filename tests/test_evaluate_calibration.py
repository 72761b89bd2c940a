"""`unetcli evaluate MODEL DATA` reports the expected calibration error and the Brier score of the model's
probabilities, and its report gains a reliability diagram (issue 14, point 1)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from helpers import cli, ok, read_values

from unetcli.calibration import PixelSample, brier_score, expected_calibration_error, reliability
from unetcli.evaluate import Evaluation
from unetcli.masks import IGNORE_ID
from unetcli.predictor import PROB_SCALE
from unetcli.reliability import PLOT, TOP, reliability_diagram
from unetcli.report import BAR


def known_case() -> tuple[np.ndarray, np.ndarray]:
    """Binary foreground probabilities with a known ECE and Brier score: 100 pixels at p = 0.9 of which 80 are
    foreground (confidence 0.9, accuracy 0.8), 100 at p = 0.3 of which 70 are background (confidence and accuracy
    0.7), and 10 ignored pixels. ECE = 0.5 * |0.8 - 0.9| + 0.5 * 0 = 0.05; Brier = (80 * 0.01 + 20 * 0.81 +
    70 * 0.09 + 30 * 0.49) / 200 = 0.19."""
    probs = np.concatenate([np.full(100, 0.9), np.full(100, 0.3), np.full(10, 0.99)])
    labels = np.concatenate([np.repeat([1, 0], [80, 20]), np.repeat([0, 1], [70, 30]), np.full(10, IGNORE_ID)])
    return probs, labels.astype(np.uint8)


def test_ece_and_brier_of_a_known_case():
    probs, labels = known_case()
    assert expected_calibration_error(probs, labels) == pytest.approx(0.05, abs=1e-12)
    assert brier_score(probs, labels) == pytest.approx(0.19, abs=1e-12)
    bins = reliability(probs, labels).to_dict()
    assert sum(bins["pixels"]) == 200 and bins["pixels"][13] == bins["pixels"][10] == 100  # 0.9 -> bin 13, 0.7 -> 10
    assert (bins["confidence"][13], bins["accuracy"][13], bins["accuracy"][10]) == pytest.approx((0.9, 0.8, 0.7))
    assert bins["accuracy"][0] is None  # an empty bin


def test_the_evaluation_summary_measures_the_sampled_probabilities():
    """As evaluate_model feeds it: 16-bit probability maps (1, H, W) and class ids, image by image."""
    probs, labels = known_case()
    maps = np.round(probs * PROB_SCALE).astype(np.uint16).reshape(1, 15, 14)
    evaluation = Evaluation(["background", "foreground"], probabilities=PixelSample(2, binary=True))
    evaluation.probabilities.add(maps[:, :7], labels.reshape(15, 14)[:7])
    evaluation.probabilities.add(maps[:, 7:], labels.reshape(15, 14)[7:])
    summary = evaluation.calibration_summary()
    assert summary["calibration_pixels"] == 200
    assert summary["ece"] == pytest.approx(0.05, abs=1e-4) and summary["brier"] == pytest.approx(0.19, abs=1e-4)
    assert Evaluation(["background", "foreground"]).calibration_summary()["ece"] is None  # --pred/--gt


def test_evaluate_reports_ece_and_brier_of_what_predict_writes(trained, tmp_path):
    summary = json.loads(ok(cli("evaluate", trained.model, trained.data, "--json", "--summary", tmp_path / "s.json")).stdout)
    assert 0 <= summary["ece"] <= 1 and 0 <= summary["brier"] <= 1, summary
    assert json.loads((tmp_path / "s.json").read_text())["ece"] == summary["ece"]
    assert summary["calibration_pixels"] == 6 * 80 * 96  # few pixels: every one is in the sample
    assert sum(summary["reliability"]["pixels"]) == summary["calibration_pixels"]
    # the same figures from predict's 16-bit probability files, computed independently over every pixel
    ok(cli("predict", trained.model, trained.data / "images", "-o", tmp_path / "out", "--save", "probs", "--quiet"))
    probs = np.concatenate([read_values(tmp_path / "out" / f"{p.stem}_probs.png").ravel() / PROB_SCALE
                            for p in trained.images])
    truth = np.concatenate([(read_values(trained.data / "masks" / p.name) > 0).ravel() for p in trained.images])
    assert summary["ece"] == pytest.approx(expected_calibration_error(probs, truth), abs=2e-6)
    assert summary["brier"] == pytest.approx(brier_score(probs, truth), abs=2e-6)
    text = ok(cli("evaluate", trained.model, trained.data)).stdout
    assert f"calibration: ECE {summary['ece']:.4f} (15 confidence bins), Brier score {summary['brier']:.4f}" in text


def test_prediction_folders_have_no_calibration_figures(trained, tmp_path):
    ok(cli("predict", trained.model, trained.data / "images", "-o", tmp_path / "out", "--quiet"))
    result = ok(cli("evaluate", "--pred", tmp_path / "out", "--gt", trained.data / "masks", "--json"))
    summary = json.loads(result.stdout)
    assert (summary["ece"], summary["brier"], summary["reliability"]) == (None, None, None)
    assert "calibration" not in ok(cli("evaluate", "--pred", tmp_path / "out", "--gt", trained.data / "masks")).stdout


def bar_height(panel: np.ndarray, bin_index: int, bins: int = 15) -> int:
    """Pixels of the bar colour in the middle column of a bin of the diagram's plot."""
    from unetcli.reliability import LEFT

    x = LEFT + round(PLOT * (bin_index + 0.5) / bins)
    return int((panel[TOP:TOP + PLOT + 1, x] == BAR).all(axis=1).sum())


def test_diagram_bars_are_as_high_as_the_accuracy():
    probs, labels = known_case()
    bins = reliability(probs, labels)
    panel = reliability_diagram({"ece": bins.ece, "brier": 0.19, "reliability": bins.to_dict()})
    assert bar_height(panel, 13) == pytest.approx(0.8 * PLOT, abs=2)
    assert bar_height(panel, 10) == pytest.approx(0.7 * PLOT, abs=3)  # its confidence mark (0.7) covers the top
    assert bar_height(panel, 5) == 0  # empty bin
    assert reliability_diagram({"ece": None, "brier": None, "reliability": None}) is None


def test_the_report_holds_the_reliability_diagram(trained, tmp_path):
    report = tmp_path / "report.png"
    summary = json.loads(ok(cli("evaluate", trained.model, trained.data, "--report", report, "--json")).stdout)
    picture = cv2.cvtColor(cv2.imread(str(report), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    panel = reliability_diagram(summary)
    found = cv2.matchTemplate(picture, panel, cv2.TM_SQDIFF)  # float32 sums: the best place, then checked exactly
    y, x = np.unravel_index(found.argmin(), found.shape)
    assert (picture[y:y + panel.shape[0], x:x + panel.shape[1]] == panel).all(), "the reliability diagram is not in the report"
    assert (panel == BAR).all(axis=2).sum() > 100  # with bars in it
