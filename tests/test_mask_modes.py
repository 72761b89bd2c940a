"""Mask modes: detection (`unetcli check`), refusals, and predictions written back in the user's own values."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import (
    cli,
    describe,
    ok,
    read_values,
    unique_values,
    user_error,
    write_image,
    write_multiclass_dataset,
    write_palette_png,
)
from PIL import Image

PALETTE = [0, 0, 0, 230, 25, 75, 60, 180, 75, 0, 130, 200]  # indices 0..3
COLOURS = [(0, 0, 0), (255, 0, 0), (0, 0, 255)]
# quick but enough for the brightness-coded classes to be learnt (all classes predicted)
MULTI_TRAIN = ("--encoder", "resnet18", "--decoder-width", "128", "--crop", "64", "--epochs", "4", "--samples-per-epoch",
               "32", "--batch-size", "4", "--lr", "6e-3", "--augment", "light", "--seed", "0", "--no-plan", "--quiet")


def as_colours(ids: np.ndarray) -> np.ndarray:
    return np.asarray(COLOURS, np.uint8)[ids]


def gray_levels(levels):
    return lambda ids: np.asarray(levels, np.uint8)[ids]


def check_json(*args) -> dict:
    return json.loads(ok(cli("check", *args, "--json")).stdout)


def class_values(report: dict) -> list:
    return [c["value"] for c in report["classes"]["classes"]]


def problems_of(result) -> list[str]:
    """`unetcli check` lists every problem on stderr and exits 3."""
    assert result.exit_code == 3, describe(result)
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and all(line.startswith("problem:") for line in lines), describe(result)
    return lines


# -------------------------------------------------------------------------------------------- detection


@pytest.mark.parametrize("foreground", [255, 1])
def test_auto_detects_binary(tmp_path, foreground):
    data = write_multiclass_dataset(tmp_path, gray_levels([0, foreground]), count=3, classes=2)
    report = check_json(data)
    assert report["pairs"] == 3 and report["problems"] == []
    assert report["classes"]["mode"] == "binary"
    assert class_values(report) == [0, foreground]
    assert [c["name"] for c in report["classes"]["classes"]] == ["background", "foreground"]
    assert sum(report["class_pixels"]) == 3 * 72 * 88


def test_binary_accepts_an_all_background_mask(tmp_path):
    data = write_multiclass_dataset(tmp_path, gray_levels([0, 255]), count=3, classes=2)
    write_image(data / "masks" / "img_0.png", np.zeros((72, 88), np.uint8))
    report = check_json(data, "--mask-mode", "binary")
    assert report["classes"]["mode"] == "binary" and class_values(report) == [0, 255]


def test_auto_detects_index_and_prints_the_table(tmp_path):
    data = write_multiclass_dataset(tmp_path, lambda ids: ids, count=3, classes=4)
    report = check_json(data)
    assert report["classes"]["mode"] == "index"
    assert class_values(report) == [0, 1, 2, 3]

    result = ok(cli("check", data))
    assert "mask values -> classes (index)" in result.stdout
    rows = [line.split("│")[1:4] for line in result.stdout.splitlines() if line.count("│") >= 4]
    table = [[cell.strip() for cell in row] for row in rows]
    assert table == [[str(i), f"class_{i}", str(i)] for i in range(4)]
    assert "no problems found" in result.stdout
    assert "3 pairs, 3 readable; 1 channel" in result.stdout


def test_auto_detects_palette_pngs(tmp_path):
    data = write_multiclass_dataset(tmp_path, lambda ids: ids, count=3, classes=4,
                                    writer=lambda path, ids: write_palette_png(path, ids, PALETTE))
    with Image.open(data / "masks" / "img_0.png") as mask:
        assert mask.mode == "P"
    report = check_json(data)
    assert report["classes"]["mode"] == "palette"
    assert class_values(report) == [0, 1, 2, 3]
    assert [c["colour"] for c in report["classes"]["classes"]] == [PALETTE[i:i + 3] for i in range(0, 12, 3)]


def test_auto_detects_rgb_colour_masks(tmp_path):
    data = write_multiclass_dataset(tmp_path, as_colours, count=3, classes=3)
    report = check_json(data)
    assert report["classes"]["mode"] == "rgb"
    assert class_values(report) == [[0, 0, 0], [0, 0, 255], [255, 0, 0]]
    assert [c["name"] for c in report["classes"]["classes"]] == ["background", "rgb_0_0_255", "rgb_255_0_0"]
    result = ok(cli("check", data))
    assert "mask values -> classes (rgb)" in result.stdout and "(255,0,0)" in result.stdout


def test_rgb_with_a_class_map_file(tmp_path):
    data = write_multiclass_dataset(tmp_path / "data", as_colours, count=3, classes=3)
    mapping = tmp_path / "classes.json"
    mapping.write_text(json.dumps({"sky": [0, 0, 0], "road": [255, 0, 0], "car": [0, 0, 255]}))
    report = check_json(data, "--class-map", mapping)
    assert report["classes"]["mode"] == "rgb"
    assert [c["name"] for c in report["classes"]["classes"]] == ["sky", "road", "car"]  # the map's order
    assert class_values(report) == [[0, 0, 0], [255, 0, 0], [0, 0, 255]]


def test_class_map_must_cover_every_colour(tmp_path):
    data = write_multiclass_dataset(tmp_path / "data", as_colours, count=3, classes=3)
    mapping = tmp_path / "classes.json"
    mapping.write_text(json.dumps({"sky": [0, 0, 0], "road": [255, 0, 0]}))
    (line,) = problems_of(cli("check", data, "--class-map", mapping))
    assert "(0,0,255)" in line and "not in the class map" in line


def test_class_map_with_duplicate_colours_is_refused(tmp_path):
    data = write_multiclass_dataset(tmp_path / "data", as_colours, count=3, classes=3)
    mapping = tmp_path / "classes.json"
    mapping.write_text(json.dumps({"sky": [0, 0, 0], "road": [255, 0, 0], "car": [255, 0, 0]}))
    (line,) = problems_of(cli("check", data, "--class-map", mapping))
    assert "'road' and 'car' share the value (255,0,0)" in line
    user_error(cli("train", data, "-o", tmp_path / "run", "--class-map", mapping), 3, "share the value (255,0,0)")


# --------------------------------------------------------------------------------------------- refusals


def test_binary_refuses_a_third_value_naming_the_values(tmp_path):
    data = write_multiclass_dataset(tmp_path / "data", gray_levels([0, 128, 255]), count=3, classes=3)
    (line,) = problems_of(cli("check", data, "--mask-mode", "binary"))
    assert "0, 128, 255" in line and "img_0.png" in line
    user_error(cli("train", data, "-o", tmp_path / "run", "--mask-mode", "binary"), 3, "0, 128, 255")
    assert not (tmp_path / "run").exists()  # nothing created for a refused dataset


def test_auto_refuses_gray_levels_that_are_not_class_ids(tmp_path):
    data = write_multiclass_dataset(tmp_path, gray_levels([0, 128, 255]), count=3, classes=3)
    (line,) = problems_of(cli("check", data))
    assert "0, 128, 255" in line and "--class-map" in line


def test_gray_levels_with_a_class_map_are_accepted(tmp_path):
    data = write_multiclass_dataset(tmp_path / "data", gray_levels([0, 128, 255]), count=3, classes=3)
    mapping = tmp_path / "classes.json"
    mapping.write_text(json.dumps({"background": 0, "nucleus": 128, "membrane": 255}))
    report = check_json(data, "--class-map", mapping)
    assert class_values(report) == [0, 128, 255]


def test_index_refuses_a_value_beyond_classes(tmp_path):
    data = write_multiclass_dataset(tmp_path / "data", lambda ids: ids, count=3, classes=3)
    mask = np.zeros((72, 88), np.uint8)
    mask[:10, :10] = 7
    write_image(data / "masks" / "img_1.png", mask)
    (line,) = problems_of(cli("check", data, "--mask-mode", "index", "--classes", "3"))
    assert "mask value 7" in line and "img_1.png" in line and "3-class" in line
    user_error(cli("train", data, "-o", tmp_path / "run", "--classes", "3"), 3, "mask value 7")


def test_jpeg_masks_are_refused(tmp_path):
    data = write_multiclass_dataset(tmp_path, gray_levels([0, 255]), count=2, classes=2, mask_ext=".jpg")
    lines = problems_of(cli("check", data))
    assert len(lines) == 2
    assert all("lossless" in line and ".jpg" in line for line in lines)


def test_unknown_mask_mode_is_a_usage_error(tmp_path):
    data = write_multiclass_dataset(tmp_path / "data", gray_levels([0, 255]), count=2, classes=2)
    user_error(cli("train", data, "-o", tmp_path / "run", "--mask-mode", "nonsense"), 2, "nonsense")


# ------------------------------------------------------------------ training, predictions in user values


def predict_folder(run, data, out) -> tuple[dict, list]:
    ok(cli("predict", run, data / "images", "-o", out))
    meta = json.loads((run / "model-best" / "unetcli.json").read_text())
    return meta, sorted(out.iterdir())


def train_and_predict(tmp_path, data, *extra) -> tuple[dict, list]:
    run = tmp_path / "run"
    ok(cli("train", data, "-o", run, *MULTI_TRAIN, *extra))
    return predict_folder(run, data, tmp_path / "pred")


@pytest.fixture(scope="module")
def index_run(tmp_path_factory):
    """One model trained on class-id masks, shared by the two tests that only predict with it (they trained
    the same model twice before)."""
    root = tmp_path_factory.mktemp("index")
    data = write_multiclass_dataset(root / "data", lambda ids: ids, classes=3)
    ok(cli("train", data, "-o", root / "run", *MULTI_TRAIN))
    return root / "run", data


def test_index_predictions_use_the_class_ids(index_run, tmp_path):
    run, data = index_run
    meta, outputs = predict_folder(run, data, tmp_path / "pred")
    assert meta["classes"]["mode"] == "index"
    assert len(outputs) == 6
    assert unique_values(outputs) == {0, 1, 2}


def test_multiclass_probabilities_one_16_bit_png_per_class(index_run, tmp_path):
    """`<stem>_probs_<id>.png` per class: they sum to 1 at every pixel and their argmax is the mask,
    whole and in 64-pixel tiles."""
    run, data = index_run
    for tile in ("off", "64"):
        out = tmp_path / f"pred-{tile}"
        ok(cli("predict", run, data / "images", "-o", out, "--save", "mask,probs", "--tile", tile, "--quiet"))
        for image in sorted((data / "images").iterdir()):
            probs = np.stack([read_values(out / f"{image.stem}_probs_{k}.png") for k in range(3)])
            mask = read_values(out / f"{image.stem}.png")
            assert probs.dtype == np.uint16
            assert np.abs(probs.astype(np.int64).sum(axis=0) - 65535).max() <= 2  # rounding only
            assert np.mean(probs.argmax(axis=0) == mask) > 0.999
        assert not list(out.glob("*_probs.png"))


def test_gray_class_map_predictions_use_the_gray_levels(tmp_path):
    data = write_multiclass_dataset(tmp_path / "data", gray_levels([0, 128, 255]), classes=3)
    mapping = tmp_path / "classes.json"
    mapping.write_text(json.dumps({"background": 0, "nucleus": 128, "membrane": 255}))
    meta, outputs = train_and_predict(tmp_path, data, "--class-map", mapping)
    assert [c["name"] for c in meta["classes"]["classes"]] == ["background", "nucleus", "membrane"]
    assert unique_values(outputs) == {0, 128, 255}


def test_rgb_predictions_use_the_training_colours(tmp_path):
    data = write_multiclass_dataset(tmp_path / "data", as_colours, classes=3)
    meta, outputs = train_and_predict(tmp_path, data)
    assert meta["classes"]["mode"] == "rgb"
    assert read_values(outputs[0]).shape == (72, 88, 3)
    assert unique_values(outputs) == set(COLOURS)


def test_palette_predictions_are_indexed_pngs_with_the_same_palette(tmp_path):
    data = write_multiclass_dataset(tmp_path / "data", lambda ids: ids, classes=3,
                                    writer=lambda path, ids: write_palette_png(path, ids, PALETTE))
    meta, outputs = train_and_predict(tmp_path, data)
    assert meta["classes"]["mode"] == "palette"
    for path in outputs:
        with Image.open(path) as mask:
            assert mask.mode == "P"
            assert mask.getpalette()[:12] == PALETTE
    assert unique_values(outputs) == {0, 1, 2}


def test_ignore_index_pixels_are_left_out(tmp_path):
    """--ignore-index: the value is no class (not predicted, not scored)."""
    data = write_multiclass_dataset(tmp_path / "data", lambda ids: ids, classes=3)
    for mask_path in (data / "masks").iterdir():
        mask = read_values(mask_path).copy()
        mask[:4, :] = 9  # an unlabelled strip
        write_image(mask_path, mask)
    report = check_json(data, "--ignore-index", "9")
    assert class_values(report) == [0, 1, 2] and report["classes"]["ignore_value"] == 9
    _, outputs = train_and_predict(tmp_path, data, "--ignore-index", "9")
    assert unique_values(outputs) <= {0, 1, 2}
    summary = json.loads(ok(cli("evaluate", tmp_path / "run", data, "--json")).stdout)
    assert np.array(summary["confusion_matrix"]).sum() == 6 * (72 - 4) * 88
