"""`unetcli audit` (issue 14): out-of-fold models rank the pairs whose masks disagree most with their prediction."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest
from helpers import cli, ok, user_error, write_binary_dataset

from unetcli.audit import score_pair

TINY_FOLDS = "encoder: resnet18\ncrop: 64\nepochs: 3\nsamples_per_epoch: 32\nbatch_size: 4\nplan: false\n"


def test_score_pair_counts_labelled_pixels_only():
    truth = np.array([[0, 0, 1, 1], [0, 255, 1, 1]], np.uint8)
    pred = np.array([[0, 1, 1, 0], [0, 1, 1, 1]], np.uint8)
    disagreement, dice, classes, pixels = score_pair(pred, truth, ["background", "cell"])
    assert pixels == 7 and disagreement == pytest.approx(2 / 7)
    assert dice == pytest.approx(2 * 3 / (4 + 4))
    assert classes.startswith("background>cell 14.3%; cell>background 14.3%")


@pytest.mark.slow
def test_audit_ranks_an_inverted_mask_first(tmp_path):
    data = write_binary_dataset(tmp_path / "data", count=8, seed=2)
    bad = data / "masks" / "sample_5.png"
    cv2.imwrite(str(bad), 255 - cv2.imread(str(bad), cv2.IMREAD_GRAYSCALE))  # every pixel's class flipped
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_FOLDS)
    out = tmp_path / "audit"
    result = ok(cli("audit", data, "-o", out, "--folds", "2", "--config", config, "--time-limit", "10m"))
    with open(out / "audit.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["rank"] for row in rows] == [str(i) for i in range(1, 9)]
    disagreements = [float(row["disagreement"]) for row in rows]
    assert disagreements == sorted(disagreements, reverse=True)
    assert rows[0]["stem"] == "sample_5", rows
    assert "foreground" in rows[0]["classes"] and {row["fold"] for row in rows} == {"1", "2"}
    sheet = cv2.imread(str(out / "audit.png"))
    assert sheet is not None and sheet.shape[0] > 8 * 100  # one block per pair (8 < --show 10)
    assert (out / "models" / "ensemble.json").is_file()
    assert "sample_5" in result.stdout.splitlines()[0]


def test_audit_refuses_bad_folds_in_one_line(tmp_path):
    data = write_binary_dataset(tmp_path / "data", count=3)
    user_error(cli("audit", data, "-o", tmp_path / "a", "--folds", "4"), 2, "only 3 pairs")
    user_error(cli("audit", data, "-o", tmp_path / "b", "--folds", "1"), 2, "--folds 1")
