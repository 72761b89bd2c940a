"""predict's doubt score (doubt.py) and `--review N` (review.py): the parts, the score, the review files."""

from __future__ import annotations

import json
import math
import shutil

import cv2
import numpy as np
import pytest
from helpers import cli, json_lines, ok, user_error, write_image

from unetcli.doubt import (
    PixelDoubt,
    combine,
    image_doubt,
    image_statistics,
    intensity_z,
    shift_part,
    training_intensity,
    uncertain_pixels,
)
from unetcli.errors import ModelFolderError
from unetcli.modelmeta import ModelMeta

PARTS = ("score", "uncertain", "tta_disagreement", "intensity_shift")


def test_uncertain_pixels_binary_and_softmax():
    z = np.array([[[-3.0, -1.0, 0.0, 1.0, 3.0]]])  # p = 0.05, 0.27, 0.5, 0.73, 0.95
    assert uncertain_pixels(z, binary=True, threshold=0.5) == 3
    assert uncertain_pixels(z, binary=True, threshold=0.95) == 1  # the band follows the threshold: logit 2.94 +- ln 3
    two = np.concatenate([np.zeros_like(z), z])  # softmax of (0, z): the same probabilities
    assert uncertain_pixels(two, binary=False, threshold=0.5) == 3
    flat = np.zeros((3, 4, 4))  # three equally likely classes: every pixel is uncertain
    assert uncertain_pixels(flat, binary=False, threshold=0.5) == 16


def test_score_is_a_noisy_or_of_the_parts_present():
    assert combine((0.2, None, None)) == pytest.approx(0.2)
    assert combine((0.2, 0.5, 0.0)) == pytest.approx(1 - 0.8 * 0.5)
    assert shift_part(1.0) == 0.0 and shift_part(float("nan")) == 1.0
    assert 0 < shift_part(4.0) < shift_part(8.0) < 1


def test_intensity_shift_from_training_statistics():
    rng = np.random.default_rng(0)
    images = [np.clip(rng.normal(120 + 4 * k, 30, (40, 50, 1)), 0, 255).astype(np.uint8) for k in range(5)]
    intensity = training_intensity(image_statistics(image) for image in images)
    assert intensity["images"] == 5 and intensity["mean"][0] == pytest.approx(128 / 255, abs=0.01)
    like = np.clip(rng.normal(125, 30, (60, 70, 1)), 0, 255).astype(np.uint8)
    faint = (like.astype(np.float32) * 0.3 + 100).astype(np.uint8)  # a contrast shift
    assert intensity_z(like, intensity) < 3 < intensity_z(faint, intensity)
    counted = PixelDoubt(60 * 70, 420)
    assert image_doubt(counted, like, intensity).intensity_shift == 0.0
    doubt = image_doubt(counted, faint, intensity)
    assert doubt.uncertain == pytest.approx(0.1) and doubt.intensity_shift > 0.9
    assert image_doubt(counted, faint, None).intensity_shift is None  # older model folders


def test_model_folder_keeps_intensity_and_refuses_damaged(trained):
    meta = ModelMeta.load(trained.model)
    assert set(meta.intensity) >= {"mean", "mean_spread", "log_std", "log_std_spread"}
    assert ModelMeta.from_dict(meta.to_dict()).intensity == meta.intensity
    damaged = {**meta.to_dict(), "intensity": {**meta.intensity, "mean": [0.5, 0.5]}}
    with pytest.raises(ModelFolderError, match="intensity"):
        ModelMeta.from_dict(damaged)


def _doubts(result) -> dict[str, dict]:
    return {line["input"]: line["doubt"] for line in json_lines(result.stdout)}


def test_json_gives_each_image_a_doubt_in_unit_range(trained, tmp_path):
    doubts = _doubts(ok(cli("predict", trained.model, *trained.images, "-o", tmp_path / "out", "--json")))
    assert len(doubts) == len(trained.images)
    for doubt in doubts.values():
        assert set(doubt) == set(PARTS) and doubt["tta_disagreement"] is None
        assert all(0 <= doubt[k] <= 1 for k in ("score", "uncertain", "intensity_shift"))
        assert doubt["score"] == pytest.approx(combine((doubt["uncertain"], doubt["intensity_shift"])), abs=2e-6)


def test_tiled_tta_prediction_has_every_part(trained, tmp_path):
    image = trained.images[0]
    doubts = _doubts(ok(cli("predict", trained.model, image, "-o", tmp_path / "out", "--json", "--tta", "--tile", "64")))
    doubt = doubts[str(image)]
    assert all(0 <= doubt[k] <= 1 for k in PARTS), doubt
    assert doubt["score"] >= max(doubt[k] for k in PARTS[1:])


def _harder_images(trained, folder) -> tuple:
    """A training image as it is, with heavy noise, and with its contrast squeezed and brightened."""
    image = cv2.imread(str(trained.images[0]), cv2.IMREAD_UNCHANGED).astype(np.float32)
    noisy = np.clip(image + np.random.default_rng(0).normal(0, 60, image.shape), 0, 255)
    faint = image * 0.3 + 150
    return tuple(write_image(folder / f"{name}.png", picture.astype(np.uint8))
                 for name, picture in (("clean", image), ("noisy", noisy), ("faint", faint)))


def test_harder_images_get_more_doubt(trained, tmp_path):
    clean, noisy, faint = _harder_images(trained, tmp_path / "in")
    doubts = _doubts(ok(cli("predict", trained.model, clean, noisy, faint, "-o", tmp_path / "out", "--json")))
    assert doubts[str(clean)]["intensity_shift"] == 0.0
    for hard in (noisy, faint):  # the intensity part is a property of the image, whatever the tiny model learned
        assert doubts[str(hard)]["intensity_shift"] > 0.5, doubts
        assert doubts[str(hard)]["score"] > doubts[str(clean)]["score"], doubts


def test_review_lists_the_most_doubtful_first(trained, tmp_path):
    clean, noisy, faint = _harder_images(trained, tmp_path / "in")
    out = tmp_path / "out"
    inputs = [*trained.images[:3], clean, noisy, faint]
    result = ok(cli("predict", trained.model, *inputs, "-o", out, "--json", "--review", "2"))
    doubts = _doubts(result)
    ranked = sorted(doubts, key=lambda path: -doubts[path]["score"])
    assert (out / "review.txt").read_text().splitlines() == ranked[:2]
    sheet = cv2.imread(str(out / "review.png"))
    assert sheet is not None and sheet.shape[0] > 120 and sheet.shape[1] > 2 * 120
    assert "thumbnail" not in result.stdout


def test_review_without_json(trained, tmp_path):
    out = tmp_path / "out"
    result = ok(cli("predict", trained.model, *trained.images, "-o", out, "--review", "10"))
    assert result.stdout == ""
    listed = (out / "review.txt").read_text().splitlines()
    assert sorted(listed) == sorted(str(p) for p in trained.images)  # fewer images than N: all of them
    assert cv2.imread(str(out / "review.png")) is not None
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_folder_without_intensity_has_no_intensity_part(trained, tmp_path):
    old = shutil.copytree(trained.model, tmp_path / "old")
    description = json.loads((old / "unetcli.json").read_text())
    del description["intensity"]
    (old / "unetcli.json").write_text(json.dumps(description))
    doubts = _doubts(ok(cli("predict", old, trained.images[0], "-o", tmp_path / "out", "--json")))
    doubt = doubts[str(trained.images[0])]
    assert doubt["intensity_shift"] is None and math.isclose(doubt["score"], doubt["uncertain"], abs_tol=1e-6)


@pytest.mark.parametrize("count", ["0", "-3", "two"])
def test_bad_review_count_is_refused(tmp_path, count):
    image = write_image(tmp_path / "a.png", np.zeros((8, 8), np.uint8))
    result = cli("predict", tmp_path / "no-model", image, "-o", tmp_path / "out", "--review", count)
    if count == "two":  # Typer's own usage error
        assert result.exit_code == 2 and "Traceback" not in result.output
    else:
        user_error(result, 2, "--review")
    assert not (tmp_path / "out").exists()
