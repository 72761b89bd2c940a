"""Calibration (issue 14): temperature scaling fitted at the end of training and by `unetcli calibrate`, used by
every probability the predictor gives; ECE and Brier as functions on probability arrays."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY_TRAIN, cli, json_lines, ok, read_values, user_error

from unetcli.calibration import brier_score, calibrate, expected_calibration_error, fit_temperature, scaled_probabilities
from unetcli.masks import IGNORE_ID
from unetcli.modelmeta import ModelMeta

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "weights" / "membrane"


# ------------------------------------------------------------------------------------------ the fit and the measures


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


@pytest.mark.parametrize("true_t", [0.4, 1.0, 2.5])
def test_binary_fit_recovers_a_known_temperature(true_t):
    rng = np.random.default_rng(3)
    z = rng.normal(0, 5, 300_000)
    labels = (rng.random(len(z)) < sigmoid(z / true_t)).astype(np.uint8)
    labels[:1000] = IGNORE_ID  # ignored pixels are left out
    assert fit_temperature(z, labels, binary=True) == pytest.approx(true_t, rel=0.03)


def test_softmax_fit_recovers_a_known_temperature():
    rng = np.random.default_rng(4)
    z = rng.normal(0, 3, (60_000, 4))
    probs = scaled_probabilities(z, binary=False, temperature=0.5)
    labels = (rng.random(len(z))[:, None] > probs.cumsum(axis=1)).sum(axis=1).astype(np.uint8)
    assert fit_temperature(z, labels, binary=False) == pytest.approx(0.5, rel=0.03)


def test_fitting_makes_an_overconfident_model_honest():
    rng = np.random.default_rng(5)
    z = rng.normal(0, 3, 200_000)
    labels = (rng.random(len(z)) < sigmoid(z / 3)).astype(np.uint8)
    fitted = calibrate(z * 1.0, labels, binary=True)  # raw logits 3x too confident
    assert fitted.temperature == pytest.approx(3, rel=0.05)
    assert fitted.ece_after < 0.01 and fitted.ece_before > 0.05
    assert fitted.brier_after < fitted.brier_before


def brute_force_ece(confidence, correct, bins=15):
    total, n = 0.0, len(confidence)
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = [i for i in range(n) if lo <= confidence[i] < hi or (b == bins - 1 and confidence[i] == 1.0)]
        if inside:
            accuracy = sum(correct[i] for i in inside) / len(inside)
            mean_confidence = sum(confidence[i] for i in inside) / len(inside)
            total += len(inside) / n * abs(accuracy - mean_confidence)
    return total


def test_ece_and_brier_match_a_brute_force_computation():
    rng = np.random.default_rng(6)
    # binary: foreground probabilities; ignored pixels left out; a confidence of exactly 1 falls in the last bin
    p = rng.random(2000)
    p[:5] = [0.0, 1.0, 0.5, 1 / 15 + 0.5, 0.7]
    labels = rng.integers(0, 2, 2000).astype(np.uint8)
    labels[-50:] = IGNORE_ID
    keep = labels != IGNORE_ID
    pk, yk = p[keep], labels[keep]
    confidence = [max(q, 1 - q) for q in pk]
    correct = [(q > 0.5) == (y == 1) for q, y in zip(pk, yk)]
    assert expected_calibration_error(p, labels) == pytest.approx(brute_force_ece(confidence, correct), abs=1e-12)
    assert brier_score(p, labels) == pytest.approx(sum((q - y) ** 2 for q, y in zip(pk, yk)) / len(yk), abs=1e-12)
    # multi-class: top-class confidence, one-hot Brier summed over classes
    probs = rng.random((1500, 3)) ** 3
    probs /= probs.sum(axis=1, keepdims=True)
    labels = rng.integers(0, 3, 1500).astype(np.uint8)
    confidence = [row.max() for row in probs]
    correct = [row.argmax() == y for row, y in zip(probs, labels)]
    assert expected_calibration_error(probs, labels) == pytest.approx(brute_force_ece(confidence, correct), abs=1e-12)
    brier = sum(sum((row[k] - (k == y)) ** 2 for k in range(3)) for row, y in zip(probs, labels)) / len(labels)
    assert brier_score(probs, labels) == pytest.approx(brier, abs=1e-12)
    assert math.isnan(expected_calibration_error(p[:3], np.full(3, IGNORE_ID)))


# ------------------------------------------------------------------------------------------ the model description


def test_older_folders_without_a_temperature_load_uncalibrated(tmp_path):
    data = json.loads((SHIPPED / "unetcli.json").read_text())
    assert "temperature" not in data
    meta = ModelMeta.from_dict(data)
    assert (meta.temperature, meta.calibration) == (1.0, None)
    calibrated = ModelMeta.from_dict({**data, "temperature": 1.7, "calibration": {"temperature": 1.7}})
    assert calibrated.temperature == 1.7
    assert ModelMeta.from_dict(calibrated.to_dict()) == calibrated
    for bad in (0, -1.0, "2", None, float("nan")):
        with pytest.raises(Exception, match="temperature is"):
            ModelMeta.from_dict({**data, "temperature": bad})


# ------------------------------------------------------------------------------------------ trained models


def file_hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def with_temperature(source: Path, target: Path, temperature: float) -> Path:
    shutil.copytree(source, target)
    data = json.loads((target / "unetcli.json").read_text())
    data["temperature"] = temperature
    (target / "unetcli.json").write_text(json.dumps(data))
    return target


def raw_logit(model: Path, image: Path) -> np.ndarray:
    """The model's foreground logit, before any temperature, as predict computes it."""
    from unetcli.images import read_image
    from unetcli.predictor import Predictor

    predictor = Predictor.from_folder(model)
    predictor.temperature = 1.0
    return predictor.image_logits(read_image(image), image)[0].astype(np.float64)


def test_training_fits_a_temperature_on_the_validation_set(trained):
    meta = ModelMeta.load(trained.model)
    assert meta.data["val_pairs"] >= 1
    assert meta.calibration is not None and meta.temperature == meta.calibration["temperature"] > 0
    assert "validation set, epoch" in meta.calibration["source"]
    assert meta.calibration["ece_after"] <= meta.calibration["ece_before"] + 1e-6
    assert f"calibration: temperature {meta.temperature:.3f}" in trained.output


def test_without_validation_nothing_is_fitted_and_train_says_so(binary_data, tmp_path):
    result = ok(cli("train", binary_data, "-o", tmp_path / "run", *TINY_TRAIN, "--val-split", "0"))
    assert "calibration: none (no validation set)" in result.stderr
    meta = ModelMeta.load(tmp_path / "run" / "model-best")
    assert (meta.temperature, meta.calibration) == (1.0, None)
    done = json_lines(ok(cli("train", binary_data, "-o", tmp_path / "run2", *TINY_TRAIN, "--json")).stdout)[-1]
    assert done["event"] == "done" and done["calibration"]["temperature"] > 0


def test_predict_probabilities_and_threshold_use_the_temperature(trained, tmp_path):
    image = trained.images[0]
    hot = with_temperature(trained.model, tmp_path / "hot", 3.0)
    logit = raw_logit(trained.model, image)
    ok(cli("predict", hot, image, "-o", tmp_path / "a", "--quiet", "--save", "mask,probs"))
    probs = read_values(tmp_path / "a" / f"{image.stem}_probs.png").astype(np.float64)
    assert np.abs(probs - np.round(sigmoid(logit / 3.0) * 65535)).max() <= 1
    assert np.abs(probs - np.round(sigmoid(logit) * 65535)).max() > 1000  # not the uncalibrated probabilities
    # masks at the default threshold do not change; another threshold applies to the calibrated probability
    ok(cli("predict", trained.model, image, "-o", tmp_path / "b", "--quiet"))
    assert np.array_equal(read_values(tmp_path / "a" / f"{image.stem}.png"), read_values(tmp_path / "b" / f"{image.stem}.png"))
    ok(cli("predict", hot, image, "-o", tmp_path / "c", "--quiet", "--threshold", "0.7"))
    mask = read_values(tmp_path / "c" / f"{image.stem}.png")
    certain = np.abs(sigmoid(logit / 3.0) - 0.7) > 1e-3  # away from float rounding at the threshold
    assert np.array_equal((mask > 0)[certain], (sigmoid(logit / 3.0) > 0.7)[certain])


def test_calibrate_writes_a_new_folder_and_lowers_the_error_of_an_overconfident_model(trained, tmp_path):
    bad = with_temperature(trained.model, tmp_path / "overconfident", 0.05)
    before = file_hashes(bad)
    result = json.loads(ok(cli("calibrate", bad, trained.data, "-o", tmp_path / "calibrated", "--json")).stdout)
    assert file_hashes(bad) == before  # the given folder is never changed
    assert result["temperature_before"] == 0.05 and result["temperature"] > 0.05
    assert result["ece_after"] < result["ece_before"] and result["brier_after"] < result["brier_before"]
    meta = ModelMeta.load(tmp_path / "calibrated")
    assert meta.temperature == pytest.approx(result["temperature"], rel=1e-5)
    assert meta.calibration["source"].startswith(str(trained.data))
    copied, original = file_hashes(tmp_path / "calibrated"), dict(before)
    assert copied.pop("unetcli.json") != original.pop("unetcli.json") and copied == original
    text = ok(cli("calibrate", tmp_path / "calibrated", trained.data, "-o", tmp_path / "again")).stdout
    assert "temperature" in text and "ECE" in text and "Brier" in text
    user_error(cli("calibrate", bad, trained.data, "-o", tmp_path / "calibrated"), 2, "already exists")
    user_error(cli("calibrate", bad, trained.data, "-o", bad / "inside"), 2, "lies inside")
    assert file_hashes(bad) == before and sorted(p.name for p in bad.iterdir()) == sorted(before)  # nothing added inside
