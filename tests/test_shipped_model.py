"""The model shipped in weights/membrane: small, loads offline, predicts, and (where the ISBI 2012 data is
at hand) segments held-out slices far better than the all-cell baseline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import MEMBRANE, cli, link_slices, ok, write_image

REPO = Path(__file__).resolve().parent.parent
WEIGHTS = REPO / "weights" / "membrane"
HELD_OUT = range(25, 30)  # slices the shipped model never saw in training (see its model card)


def test_shipped_model_is_small_complete_and_documented():
    assert sorted(p.name for p in WEIGHTS.iterdir()) == ["README.md", "config.json", "model.safetensors", "unetcli.json"]
    assert sum(p.stat().st_size for p in WEIGHTS.iterdir()) <= 15 * 2**20
    meta = json.loads((WEIGHTS / "unetcli.json").read_text())
    assert meta["weights_dtype"] == "float16"
    assert {c["name"]: c["value"] for c in meta["classes"]["classes"]} == {"membrane": 0, "cell": 255}
    card = (WEIGHTS / "README.md").read_text()
    for needed in ("unetcli train", "25-29", "Cardona", "Arganda-Carreras", "Limitations"):
        assert needed in card, needed


def test_shipped_model_predicts_offline(tmp_path):
    from unetcli.demo import make_sample

    image, _ = make_sample(np.random.default_rng(0), 347, 260)  # not EM, but any gray image must go through
    write_image(tmp_path / "in" / "slice.png", image)
    ok(cli("predict", WEIGHTS, tmp_path / "in", "-o", tmp_path / "out", "--save", "mask,overlay", "-q"))
    from unetcli.images import read_mask

    mask = read_mask(tmp_path / "out" / "slice.png").values
    assert mask.shape == (347, 260) and set(np.unique(mask)) <= {0, 255}
    assert (tmp_path / "out" / "slice_overlay.png").is_file()


@pytest.mark.membrane
@pytest.mark.skipif(not MEMBRANE.is_dir(), reason="needs ../shared/datasets/membrane")
def test_shipped_model_segments_held_out_slices(tmp_path):
    data = link_slices(tmp_path / "held-out", HELD_OUT)
    summary = json.loads(ok(cli("evaluate", WEIGHTS, data, "--json")).stdout)
    baseline_error = 0.22  # calling every pixel "cell" (22 % of pixels are membrane)
    assert summary["pixel_error"] < baseline_error / 2, summary
    assert summary["classes"]["membrane"]["dice"] > 0.7, summary
