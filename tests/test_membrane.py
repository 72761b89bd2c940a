"""Optional: the ISBI 2012 membrane data of the U-Net paper (../shared/datasets/membrane), when present.

A short training run on slices 0-24 must beat the majority-class baseline on held-out slices 25-29
(255 = cell interior is 78 % of the pixels, so predicting all 255 scores 0.78 pixel accuracy).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import MEMBRANE, cli, link_slices, ok, read_values

pytestmark = [
    pytest.mark.slow,
    pytest.mark.membrane,
    pytest.mark.skipif(not (MEMBRANE / "images").is_dir(), reason=f"{MEMBRANE} is not present"),
]


def test_short_training_beats_the_majority_baseline(tmp_path):
    train = link_slices(tmp_path / "train", range(25))
    test = link_slices(tmp_path / "test", range(25, 30))
    ok(cli("train", train, "-o", tmp_path / "run", "--encoder", "resnet18", "--crop", "256", "--epochs", "8",
           "--samples-per-epoch", "64", "--batch-size", "8", "--val-split", "0", "--augment", "light", "--quiet"))
    summary = json.loads(ok(cli("evaluate", tmp_path / "run", test, "--json")).stdout)

    truth = np.concatenate([read_values(p).ravel() for p in sorted((test / "masks").iterdir())])
    majority = float(np.mean(truth == 255))
    assert 0.7 < majority < 0.85  # the data are what the README says
    assert summary["images"] == 5
    assert summary["pixel_accuracy"] >= majority + 0.08, summary  # about 0.91 against 0.78
    assert summary["classes"]["background"]["dice"] > 0.6, summary  # membranes (value 0) are found, not just cells
