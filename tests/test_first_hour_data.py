"""Issue 16, points 2 and 5: RGBA images whose alpha is one constant train a 3-channel model (and an alpha that
varies is kept, and said so); class names come from a CSV class map (CamVid's class_dict.csv and its kin)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import TINY_TRAIN, cli, describe, ok, read_values, user_error, write_binary_dataset, write_image

from unetcli.modelmeta import ModelMeta

# ------------------------------------------------------------------------------------------- alpha channel


def rgba_dataset(folder: Path, alpha, count: int = 6) -> Path:
    """write_binary_dataset's pairs with colour images (three different channels) plus an alpha channel:
    `alpha(i, shape)` gives image i's alpha plane."""
    write_binary_dataset(folder, count=count)
    for i, path in enumerate(sorted((folder / "images").iterdir())):
        gray = read_values(path)
        rgb = np.stack([gray, 255 - gray, gray // 2], axis=2).astype(np.uint8)
        rgba = np.dstack([rgb, alpha(i, gray.shape)]).astype(np.uint8)
        assert cv2.imwrite(str(path), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    return folder


def opaque(i, shape):
    return np.full(shape, 255, np.uint8)


def varying(i, shape):
    alpha = np.full(shape, 255, np.uint8)
    alpha[: shape[0] // 3] = 128  # e.g. a region marked as outside the field of view
    return alpha


def check_json(*args) -> dict:
    return json.loads(ok(cli("check", *args, "--json")).stdout)


@pytest.fixture(scope="module")
def opaque_run(tmp_path_factory):
    """A model trained on RGBA images with alpha 255 everywhere (as many nuclei data sets ship)."""
    root = tmp_path_factory.mktemp("rgba")
    data = rgba_dataset(root / "data", opaque)
    result = ok(cli("train", data, "-o", root / "run", *TINY_TRAIN))
    return data, root / "run" / "model-best", result


def test_check_reports_a_constant_alpha_as_dropped(tmp_path):
    data = rgba_dataset(tmp_path / "data", opaque)
    report = check_json(data)
    assert report["channels"] == 3
    assert report["alpha"]["dropped"] and report["alpha"]["constant"] == 255
    result = ok(cli("check", data))
    assert "alpha channel constant (255) in all 6 images: dropped; the model takes 3 channels" in result.stdout, describe(result)


def test_a_constant_alpha_trains_a_three_channel_model(opaque_run):
    data, model, result = opaque_run
    assert "alpha channel constant (255) in all" in result.stderr and "dropped" in result.stderr, describe(result)
    assert "3 channel(s)" in result.stderr
    assert json.loads((model / "config.json").read_text())["in_channels"] == 3
    description = json.loads((model / "unetcli.json").read_text())
    assert description["in_channels"] == 3 and description["alpha_dropped"] == 255
    assert len(description["pipeline"]["config"]["mean"]) == 3
    assert "3 input channel(s)" in ok(cli("info", model)).stdout
    assert all(cv2.imread(str(p), cv2.IMREAD_UNCHANGED).shape[2] == 4 for p in (data / "images").iterdir())  # untouched


def test_predict_takes_rgba_and_rgb_alike(opaque_run, tmp_path):
    data, model, _ = opaque_run
    rgb_dir = tmp_path / "rgb"
    for path in (data / "images").iterdir():
        write_image(rgb_dir / path.name, read_values(path)[:, :, :3])
    ok(cli("predict", model, data / "images", "-o", tmp_path / "from_rgba", "--quiet"))
    ok(cli("predict", model, rgb_dir, "-o", tmp_path / "from_rgb", "--quiet"))
    for path in (data / "images").iterdir():
        assert np.array_equal(read_values(tmp_path / "from_rgba" / path.name), read_values(tmp_path / "from_rgb" / path.name))
    summary = json.loads(ok(cli("evaluate", model, data, "--json")).stdout)
    assert summary["images"] == 6


def test_a_varying_alpha_is_kept_and_named(tmp_path):
    data = rgba_dataset(tmp_path / "data", varying)
    report = check_json(data)
    assert report["channels"] == 4 and not report["alpha"]["dropped"]
    result = ok(cli("check", data))
    assert "alpha channel varies (not constant in 6 of 6 images): kept as a 4th input channel" in result.stdout


def test_alphas_constant_per_image_but_different_are_kept(tmp_path):
    data = rgba_dataset(tmp_path / "data", lambda i, shape: np.full(shape, 255 if i % 2 else 0, np.uint8))
    report = check_json(data)
    assert report["channels"] == 4
    assert "0 in some images, 255 in others" in report["alpha"]["note"]


def test_a_kept_alpha_trains_four_channels_with_an_opaque_validation_set(tmp_path):
    """The validation images are fitted to the training set's channels, not decided on their own."""
    train = rgba_dataset(tmp_path / "train", varying, count=4)
    val = rgba_dataset(tmp_path / "val", opaque, count=2)
    result = ok(cli("train", train, "--val", val, "-o", tmp_path / "run", *TINY_TRAIN))
    assert "alpha channel varies" in result.stderr, describe(result)
    description = json.loads((tmp_path / "run" / "model-best" / "unetcli.json").read_text())
    assert description["in_channels"] == 4 and description["alpha_dropped"] is None


def test_a_description_without_the_alpha_entry_dropped_no_alpha(opaque_run):
    _, model, _ = opaque_run
    data = json.loads((model / "unetcli.json").read_text())
    assert ModelMeta.from_dict(data).alpha_dropped == 255
    del data["alpha_dropped"]  # written before the entry existed
    assert ModelMeta.from_dict(data).alpha_dropped is None


# ---------------------------------------------------------------------------------------- CSV class maps

ROAD_COLOURS = [(0, 0, 0), (128, 64, 128), (64, 0, 128)]  # void, road, car (CamVid's colours)


def street_dataset(folder: Path, colour: bool, count: int = 3) -> Path:
    """Images with masks of three classes: colour masks in ROAD_COLOURS, or gray masks of ids 0, 1, 2."""
    rng = np.random.default_rng(0)
    for i in range(count):
        ids = np.zeros((48, 64), np.uint8)
        ids[10:30, 5:40], ids[30:45, 35:60] = 1, 2
        image = (np.array([30, 200, 120], np.float32)[ids] + rng.normal(0, 5, ids.shape)).clip(0, 255).astype(np.uint8)
        write_image(folder / "images" / f"f{i}.png", image)
        write_image(folder / "masks" / f"f{i}.png", np.asarray(ROAD_COLOURS, np.uint8)[ids] if colour else ids)
    return folder


CSV_FORMS = {
    "name,r,g,b": (True, "name,r,g,b", ["Void,0,0,0", "Road,128,64,128", "Car,64,0,128"]),
    "index,name,r,g,b colour masks": (True, "index,name,r,g,b", ["0,Void,0,0,0", "1,Road,128,64,128", "2,Car,64,0,128"]),
    "index,name,r,g,b gray masks": (False, "index,name,r,g,b", ["0,Void,0,0,0", "1,Road,128,64,128", "2,Car,64,0,128"]),
    "index,name": (False, "index,name", ["0,Void", "1,Road", "2,Car"]),
    "name,value": (False, "name,value", ["Void,0", "Road,1", "Car,2"]),
}


@pytest.mark.parametrize("header", [True, False], ids=["header", "no header"])
@pytest.mark.parametrize("form", CSV_FORMS)
def test_a_csv_class_map_names_the_classes(tmp_path, form, header):
    colour, head, rows = CSV_FORMS[form]
    data = street_dataset(tmp_path / "data", colour)
    table = tmp_path / "class_dict.csv"
    table.write_text("\n".join(([head] if header else []) + rows) + "\n")
    report = check_json(data, "--class-map", table)
    assert [c["name"] for c in report["classes"]["classes"]] == ["Void", "Road", "Car"]
    values = [c["value"] for c in report["classes"]["classes"]]
    assert values == ([list(c) for c in ROAD_COLOURS] if colour else [0, 1, 2])
    if "r,g,b" in head:  # the table's colours draw the classes
        assert [c["colour"] for c in report["classes"]["classes"]] == [list(c) for c in ROAD_COLOURS]
    result = ok(cli("check", data, "--class-map", table))
    assert "Road" in result.stdout and "Car" in result.stdout and "class_1" not in result.stdout


def test_csv_variants_spreadsheets_write(tmp_path):
    """A byte-order mark, semicolons, spaces, blank and comment lines, and both columns numeric with a header."""
    data = street_dataset(tmp_path / "data", colour=False)
    table = tmp_path / "classes.csv"
    table.write_text("\ufeffindex; name\n# the void class first\n0; Void\n\n1; Road\n2; Car\n", encoding="utf-8")
    assert [c["name"] for c in check_json(data, "--class-map", table)["classes"]["classes"]] == ["Void", "Road", "Car"]
    table.write_text("value,name\n0,0\n1,1\n2,2\n")  # numeric names: the header tells the columns apart
    assert [c["name"] for c in check_json(data, "--class-map", table)["classes"]["classes"]] == ["0", "1", "2"]


def test_a_void_row_is_a_class_unless_its_value_is_ignored(tmp_path):
    """As in a JSON map, a void row is a class; with --ignore-index of its gray level it is the ignored value."""
    data = street_dataset(tmp_path / "data", colour=False)
    table = tmp_path / "classes.csv"
    table.write_text("index,name\n0,void\n1,road\n2,car\n")
    assert [c["name"] for c in check_json(data, "--class-map", table)["classes"]["classes"]] == ["void", "road", "car"]
    report = check_json(data, "--class-map", table, "--ignore-index", "0")
    assert [c["name"] for c in report["classes"]["classes"]] == ["road", "car"]
    assert report["classes"]["ignore_value"] == 0


def test_a_model_trained_with_a_csv_map_shows_the_names(tmp_path):
    data = street_dataset(tmp_path / "data", colour=True, count=4)
    table = tmp_path / "class_dict.csv"
    table.write_text("name,r,g,b\nVoid,0,0,0\nRoad,128,64,128\nCar,64,0,128\n")
    result = ok(cli("train", data, "-o", tmp_path / "run", "--class-map", table, *TINY_TRAIN))
    assert "Road" in result.stderr, describe(result)
    info = ok(cli("info", tmp_path / "run")).stdout
    assert "Road" in info and "Car" in info and "(128,64,128)" in info


@pytest.mark.parametrize("content, fragment", [
    ("name,r,g,b\nVoid,0,0,0\nRoad,128,64\n", "line 3: 3 columns"),
    ("name,r,g,b\nVoid,0,0,0\nRoad,300,64,128\n", "line 3: colour 300,64,128"),
    ("index,name\n0,Void\nx,Road\n", "line 3: 'x' is not a gray level"),
    ("name,value\nVoid,0\n,1\n", "line 3: the class name is empty"),
    ("a,b,c\n0,1,2\n", "line 2: 3 columns"),
    ("0,0\n1,1\n", "line 1: both columns hold numbers"),
    ("name,r,g,b\n", "no class rows"),
])
def test_a_malformed_csv_is_one_usage_error_naming_file_and_line(tmp_path, content, fragment):
    data = street_dataset(tmp_path / "data", colour=True)
    table = tmp_path / "class_dict.csv"
    table.write_text(content)
    user_error(cli("check", data, "--class-map", table), 2, "class_dict.csv", fragment)
