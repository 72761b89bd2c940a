"""Instance masks in (issue 13, point 1): label images whose values are object ids, and the DSB2018 layout
(one mask file per object), read as background / object / border classes; detection by `check` and `auto`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from helpers import TINY_TRAIN, cli, ok, read_values, touching_discs, user_error, write_image, write_label_dataset, write_multiclass_dataset

from unetcli.images import read_mask
from unetcli.instance_masks import object_classes
from unetcli.masks import ClassMap
from unetcli.weightmap import border_weight_map


def write_dsb_dataset(folder, count=3, seed=0):
    """The DSB2018 layout: DATA/<id>/images/<id>.png and DATA/<id>/masks/<k>.png, one 0/255 mask per object."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        image, ids = touching_discs(rng)
        name = f"{i:04x}beef"
        write_image(folder / name / "images" / f"{name}.png", image)
        for k in range(1, int(ids.max()) + 1):
            write_image(folder / name / "masks" / f"m{k:03d}.png", np.where(ids == k, 255, 0).astype(np.uint8))
    return folder


def check_json(*args) -> dict:
    return json.loads(ok(cli("check", *args, "--json")).stdout)


def names(report: dict) -> list[str]:
    return [c["name"] for c in report["classes"]["classes"]]


# ---------------------------------------------------------------------------------------------- decoding


def test_border_pixels_lie_exactly_between_touching_objects():
    """Border: pixels whose 5x5 square (BORDER_RADIUS 2) holds two different objects: 2 pixels deep on each side
    of a contact, and background gaps of up to 3 pixels (bridged), never the far side of an object."""
    ids = np.zeros((7, 16), np.uint16)
    ids[1:6, 1:6] = 7  # touches 9 along a vertical line (columns 5 | 6)
    ids[1:6, 6:10] = 9
    ids[1:6, 12:16] = 3  # two background columns (10, 11) away from 9
    rim = [0, 0, 0, 0, 2, 2, 2, 2, 0, 0, 2, 2, 0, 0, 0, 0]
    body = [0, 1, 1, 1, 2, 2, 2, 2, 1, 1, 2, 2, 1, 1, 1, 1]
    np.testing.assert_array_equal(object_classes(ids), np.array([rim] + [body] * 5 + [rim]))
    thin = object_classes(ids, radius=1)  # 3x3: one pixel on each side of the contact; the 2-pixel gap stays background
    np.testing.assert_array_equal(thin[3], [0, 1, 1, 1, 1, 2, 2, 1, 1, 1, 0, 0, 1, 1, 1, 1])
    lone = np.zeros((6, 6), np.uint16)
    lone[1:5, 1:5] = 40000  # one object, any id: no border anywhere
    np.testing.assert_array_equal(object_classes(lone), (lone > 0).astype(np.uint8))
    ignored = ids.copy()
    ignored[0, 0] = 65535
    assert object_classes(ignored, ignore_value=65535)[0, 0] == 255


def test_border_weight_map_uses_the_object_ids():
    ids = np.zeros((60, 90), np.uint16)
    ids[10:40, 5:25] = 1
    ids[10:40, 25:45] = 2  # touches 1 at columns 24 | 25
    ids[10:40, 65:85] = 3  # alone
    classes = object_classes(ids)
    weight = border_weight_map(classes, objects=ids)
    between, lone_edge = weight[25, 24:26].min(), weight[25, 64]
    assert between > 9 and lone_edge < 2, (between, lone_edge)
    assert weight[25, 35] == 1  # inside an object
    # from the classes alone, 1 and 2 are one object: nothing between them is weighted
    assert border_weight_map((ids > 0).astype(np.uint8))[25, 24:26].max() == 1


def test_instances_class_map_saves_and_loads():
    ids = ClassMap.from_dict({"mode": "instances", "ignore_value": None, "palette": None, "classes": [
        {"id": 0, "name": "background", "value": 0, "colour": [0, 0, 0]},
        {"id": 1, "name": "object", "value": 1, "colour": [255, 0, 255]},
        {"id": 2, "name": "border", "value": 2, "colour": [255, 225, 25]}]})
    assert ids.mode == "instances" and ids.names == ["background", "object", "border"] and not ids.is_binary
    assert ClassMap.from_dict(ids.to_dict()) == ids
    bad = ids.to_dict()
    bad["classes"][2]["name"] = "edge"
    with pytest.raises(ValueError):
        ClassMap.from_dict(bad)


def test_label_images_of_32_bit_tiffs_are_read(tmp_path):
    ids = np.zeros((20, 30), np.uint32)
    ids[2:8, 2:8], ids[10:15, 10:20] = 1, 70
    tifffile.imwrite(tmp_path / "a.tif", ids)
    raw = read_mask(tmp_path / "a.tif")
    assert raw.kind == "gray" and raw.values.dtype == np.uint16 and np.array_equal(raw.values, ids)
    ids[0, 0] = 70000
    tifffile.imwrite(tmp_path / "b.tif", ids)
    with pytest.raises(Exception, match="0..65535"):
        read_mask(tmp_path / "b.tif")


# --------------------------------------------------------------------------------------------- detection


def test_check_recognises_16_bit_label_images(tmp_path):
    data = write_label_dataset(tmp_path / "data")
    report = check_json(data)
    assert report["problems"] == [] and report["classes"]["mode"] == "instances"
    assert names(report) == ["background", "object", "border"]
    assert any("look like object ids" in note for note in report["notes"])
    text = ok(cli("check", data, "--mask-mode", "instances")).stdout
    assert "instances" in text and "border" in text and "no problems found" in text
    report = check_json(data, "--mask-mode", "instances")
    background, objects, border = (share / sum(report["class_pixels"]) for share in report["class_pixels"])
    assert 0.5 < background < 0.9 and 0.1 < objects < 0.5 and 0 < border < 0.03


def test_auto_picks_instances_for_more_than_63_objects(tmp_path):
    """Today's refusal (more than 63 gray values ask for a class map) becomes instances: each value one blob."""
    for i in range(2):
        ids = np.zeros((60, 90), np.uint16)
        for k in range(70 + i):
            y, x = divmod(k, 10)
            ids[y * 8 + 1: y * 8 + 6, x * 9 + 1: x * 9 + 7] = k + 1
        write_image(tmp_path / "images" / f"a{i}.png", (ids > 0).astype(np.uint8) * 200)
        write_image(tmp_path / "masks" / f"a{i}.png", ids.astype(np.uint8 if i else np.uint16))
    assert check_json(tmp_path)["classes"]["mode"] == "instances"


def test_unclear_signs_keep_index_masks_with_a_hint(tmp_path):
    """8-bit ids 1..N, N the same in every mask, all below 64: could be a class table, so auto keeps `index`
    (as before) and check suggests instances."""
    rng = np.random.default_rng(1)
    for i in range(3):
        image, ids = touching_discs(rng, pairs=3, singles=2)
        ids = np.where(ids > 0, (ids - 1) % 8 + 1, 0)  # exactly 8 objects, ids 1..8
        write_image(tmp_path / "images" / f"c{i}.png", image)
        write_image(tmp_path / "masks" / f"c{i}.png", ids.astype(np.uint8))
    report = check_json(tmp_path)
    assert report["classes"]["mode"] == "index" and report["problems"] == []
    assert report["notes"] == [report["notes"][0]] and "use --mask-mode instances" in report["notes"][0]
    assert "hint: masks look like object ids" in ok(cli("check", tmp_path)).stdout


@pytest.mark.parametrize("classes", [3, 5])
def test_index_masks_with_few_classes_stay_index(tmp_path, classes):
    data = write_multiclass_dataset(tmp_path, lambda ids: ids, count=3, classes=classes)
    report = check_json(data)
    assert report["classes"]["mode"] == "index" and report["notes"] == []


# ------------------------------------------------------------------------------------------ DSB2018 layout


def test_dsb_layout_pairs_each_image_with_its_object_masks(tmp_path):
    data = write_dsb_dataset(tmp_path / "dsb")
    report = check_json(data)
    assert report["pairs"] == 3 and report["problems"] == [] and report["classes"]["mode"] == "instances"
    assert all(share > 0 for share in report["class_pixels"])
    refused = cli("check", data, "--mask-mode", "binary")  # object ids are no binary values
    assert refused.exit_code == 3 and refused.stderr.startswith("problem:") and "--mask-mode instances" in refused.stderr
    (data / "stray").mkdir()
    user_error(cli("check", data), 3, "stray", "images/")


def test_dsb_overlapping_masks_later_wins_and_duplicates_are_refused(tmp_path):
    from unetcli.instance_masks import read_object_masks

    masks = tmp_path / "masks"
    a = np.zeros((10, 10), np.uint8)
    a[1:6, 1:6] = 255
    b = np.zeros((10, 10), np.uint8)
    b[1:6, 5:9] = 255  # shares column 5 with a
    write_image(masks / "1.png", a)
    write_image(masks / "2.png", b)
    ids = read_object_masks(masks, (10, 10)).values
    assert ids[3, 5] == 2 and ids[3, 4] == 1 and ids[3, 8] == 2 and ids[0, 0] == 0
    write_image(masks / "3.png", a)  # a drawn twice
    with pytest.raises(Exception, match="1.png.*3.png|drawn twice"):
        read_object_masks(masks, (10, 10))


# ------------------------------------------------------------------------------------------ end to end


def assert_class_mask(path, shape):
    values = read_values(path)
    assert values.shape == shape and set(np.unique(values)) <= {0, 1, 2}


def test_label_image_folder_trains_predicts_and_loads(tmp_path):
    data = write_label_dataset(tmp_path / "data", ext=".tif")
    run = tmp_path / "run"
    ok(cli("train", data, "-o", run, *TINY_TRAIN, "--border-weight", "--quiet"))
    meta = json.loads((run / "model-best" / "unetcli.json").read_text())
    assert meta["classes"]["mode"] == "instances"
    info = ok(cli("info", run / "model-best")).stdout
    assert "instances" in info and "object" in info and "border" in info
    ok(cli("predict", run, data / "images" / "cells_0.png", "-o", tmp_path / "out", "--quiet"))
    assert_class_mask(tmp_path / "out" / "cells_0.png", (80, 96))
    # the written class ids score against the object-id truth as the model does (not read as object ids)
    ok(cli("predict", run, data / "images", "-o", tmp_path / "all", "--quiet"))
    folders = json.loads(ok(cli("evaluate", "--pred", tmp_path / "all", "--gt", data / "masks", "--json")).stdout)
    model = json.loads(ok(cli("evaluate", run, data, "--json")).stdout)
    assert folders["classes"].keys() == model["classes"].keys() == {"background", "object", "border"}
    assert folders["pixel_error"] == pytest.approx(model["pixel_error"], abs=1e-6)
    write_image(tmp_path / "all" / "cells_0.png", np.full((80, 96), 7, np.uint8))
    user_error(cli("evaluate", "--pred", tmp_path / "all", "--gt", data / "masks"), 3, "class ids")


def test_dsb_layout_trains_and_predicts(tmp_path):
    data = write_dsb_dataset(tmp_path / "dsb")
    run = tmp_path / "run"
    ok(cli("train", data, "-o", run, *TINY_TRAIN, "--quiet"))
    ok(cli("predict", run, data / "0001beef" / "images" / "0001beef.png", "-o", tmp_path / "out", "--quiet"))
    assert_class_mask(tmp_path / "out" / "0001beef.png", (80, 96))
    ok(cli("evaluate", run, data, "--json"))
