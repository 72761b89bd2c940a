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


@pytest.mark.slow
def test_python_api_on_the_shipped_weights_as_the_readme_shows(tmp_path):
    """README's 'Python API' example: any size, mask in the training masks' values, probabilities that give the
    mask; and the same mask as `unetcli predict` writes."""
    import unetcli

    model = unetcli.load(WEIGHTS)
    image = np.random.default_rng(0).integers(0, 255, (300, 400), dtype=np.uint8)
    mask = model.predict(image)
    probs = model.probabilities(image)
    assert model.classes == {"membrane": 0, "cell": 255}
    assert mask.shape == (300, 400) and set(np.unique(mask)) <= {0, 255}
    assert probs.shape == (2, 300, 400) and probs.dtype == np.float32 and 0 <= probs.min() and probs.max() <= 1
    np.testing.assert_array_equal(np.where(probs.argmax(0) == 1, 255, 0), mask)
    path = write_image(tmp_path / "in" / "random.png", image)
    ok(cli("predict", WEIGHTS, path, "-o", tmp_path / "out", "-q"))
    from unetcli.images import read_image

    np.testing.assert_array_equal(read_image(tmp_path / "out" / "random.png")[:, :, 0], mask)


@pytest.mark.slow
def test_the_format_1_description_of_the_shipped_model_predicts_the_same_masks(tmp_path):
    """weights/membrane as it shipped before format 2 (tests/data/membrane_unetcli_v1.json) still loads and
    gives bitwise the same masks as the current folder."""
    import shutil

    old = shutil.copytree(WEIGHTS, tmp_path / "v1")
    shutil.copyfile(Path(__file__).parent / "data" / "membrane_unetcli_v1.json", old / "unetcli.json")
    from unetcli.demo import make_sample

    image, _ = make_sample(np.random.default_rng(5), 260, 347)
    path = write_image(tmp_path / "in" / "sample.png", image)
    for folder, out in ((WEIGHTS, "new"), (old, "old")):
        ok(cli("predict", folder, path, "-o", tmp_path / out, "-q", "--save", "mask,probs"))
    for name in ("sample.png", "sample_probs_0.png", "sample_probs_1.png"):
        assert (tmp_path / "new" / name).read_bytes() == (tmp_path / "old" / name).read_bytes(), name
