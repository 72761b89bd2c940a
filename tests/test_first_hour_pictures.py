"""Issue 16, points 3, 4, 7 and 9: overlays that can be seen, `--save` adding to the mask, val_examples.png on
fixed cells, curves.png without validation and with epoch ticks."""

from __future__ import annotations

import json
import types
from pathlib import Path

import cv2
import numpy as np
from helpers import cli, ok, read_values, user_error

from unetcli.masks import ClassMap, SegClass
from unetcli.outputs import PredictOptions, write_outputs
from unetcli.report import example_grid, training_curves

BINARY = ClassMap("binary", (SegClass("background", 0, (0, 0, 0)), SegClass("foreground", 255, (255, 255, 255))))


def textured(mean: float, size=(96, 128), seed=0) -> np.ndarray:
    """A gray H x W x 1 image of about `mean` brightness with some texture."""
    noise = cv2.GaussianBlur(np.random.default_rng(seed).normal(0, 20, size), (0, 0), 3) * 3
    return (mean + noise).clip(0, 255).astype(np.uint8)[:, :, None]


def written(tmp_path: Path, class_map: ClassMap, image: np.ndarray, ids: np.ndarray, save=("overlay", "color")) -> dict:
    """What predict's writer puts in each file for these class ids (as a model with this class table would)."""
    predictor = types.SimpleNamespace(class_map=class_map, probability_channels=1)
    options = PredictOptions(out_dir=tmp_path, save=save)
    result = write_outputs(predictor, Path("input.png"), image, ids=ids, probs=None, options=options)
    assert result.status == "ok", result.error
    return {kind: read_values(Path(path)) for kind, path in result.outputs.items()}


def mostly_foreground(shape) -> np.ndarray:
    ids = np.ones(shape, np.uint8)
    ids[:, :3] = 0  # 98 % foreground, as on the bright nuclei images of the issue
    return ids


# ------------------------------------------------------------------------------- point 3: visible overlays

def test_binary_overlay_stands_out_on_bright_and_dark_images(tmp_path):
    """White at 50 % moved a bright image's foreground by ~30 RGB levels (218 -> 236): all but invisible."""
    for mean in (218, 30):
        image = textured(mean, seed=mean)
        ids = mostly_foreground(image.shape[:2])
        out = written(tmp_path, BINARY, image, ids)
        before, after = np.repeat(image, 3, axis=2).astype(float), out["overlay"].astype(float)
        fg = ids > 0
        change = np.linalg.norm(after[fg] - before[fg], axis=1).mean()
        assert change > 80, f"on a {mean} image the overlay moves foreground pixels by only {change:.0f} RGB levels"
        painted = after[fg].mean(axis=0)
        assert np.linalg.norm(painted - 255) > 80, f"the foreground is painted near white {painted}"
        assert np.linalg.norm(painted - before.mean()) > 80, f"the foreground is painted near the image's mean {painted}"
        np.testing.assert_array_equal(out["overlay"][~fg], before[~fg].astype(np.uint8))  # background left unpainted


def test_binary_colour_picture_uses_the_display_colour_not_white(tmp_path):
    image = textured(128)
    ids = mostly_foreground(image.shape[:2])
    colour = written(tmp_path, BINARY, image, ids)["color"]
    foreground = {tuple(c) for c in colour[ids > 0]}
    assert len(foreground) == 1 and foreground != {(255, 255, 255)}
    (r, g, b), = foreground
    assert max(r, g, b) - min(r, g, b) > 128, f"foreground colour {(r, g, b)} is near gray"
    assert {tuple(c) for c in colour[ids == 0]} == {(0, 0, 0)}


def test_overlay_outlines_each_region_in_full_colour(tmp_path):
    image = textured(200, size=(64, 64))
    ids = np.zeros((64, 64), np.uint8)
    ids[16:48, 16:48] = 1
    out = written(tmp_path, BINARY, image, ids)
    colour = out["color"][32, 32]
    np.testing.assert_array_equal(out["overlay"][16, 20:44], np.tile(colour, (24, 1)))  # the region's top edge
    inside = out["overlay"][32, 32].astype(float)
    assert 0 < np.linalg.norm(inside - colour) < np.linalg.norm(image[32, 32, 0] - colour.astype(float))  # a translucent fill


def test_multiclass_colours_are_distinct_and_saturated(tmp_path):
    """Index masks bring no colours: pictures use saturated, distinct ones (whatever the model stored)."""
    index = ClassMap("index", tuple(SegClass(f"class_{i}", i, (i, i, i)) for i in range(20)))
    ids = np.repeat(np.arange(20, dtype=np.uint8), 4)[None].repeat(8, axis=0)
    out = written(tmp_path, index, textured(230, size=ids.shape), ids)
    colours = out["color"][0, ::4].astype(int)
    assert tuple(colours[0]) == (0, 0, 0)
    assert len({tuple(c) for c in colours}) == 20
    assert all(c.max() - c.min() >= 64 for c in colours[1:]), "a class colour is near gray"
    np.testing.assert_array_equal(index.overlay_colours, index.display_colours)


def test_user_colours_stay_but_near_gray_ones_are_swapped_in_overlays(tmp_path):
    classes = (SegClass("void", (0, 0, 0), (0, 0, 0)), SegClass("sky", (255, 255, 255), (255, 255, 255)),
               SegClass("road", (128, 64, 128), (128, 64, 128)), SegClass("wall", (120, 120, 120), (120, 120, 120)))
    rgb = ClassMap("rgb", classes)
    assert rgb.display_colours.tolist() == [list(c.colour) for c in classes]  # --save color: the user's colours
    overlay = rgb.overlay_colours.astype(int)
    assert overlay[2].tolist() == [128, 64, 128]
    for k in (1, 3):
        assert overlay[k].max() - overlay[k].min() >= 64, f"class {k} keeps a near-gray overlay colour {overlay[k]}"
        assert all(np.linalg.norm(overlay[k] - overlay[j]) >= 80 for j in (1, 2, 3) if j != k)
    image = textured(200)
    ids = np.random.default_rng(0).integers(0, 4, image.shape[:2]).astype(np.uint8)
    out = written(tmp_path, rgb, image, ids, save=("color", "overlay"))
    np.testing.assert_array_equal(out["mask"], out["color"])  # rgb masks: the colour picture is the mask


# ------------------------------------------------------------------------------- point 4: --save adds files

def test_save_color_overlay_writes_the_mask_too(trained, tmp_path):
    """The README: `--save color` and `--save overlay` add files to the mask."""
    image = trained.images[0]
    out = tmp_path / "out"
    ok(cli("predict", trained.model, image, "-o", out, "--save", "colour,overlay", "-q"))
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{image.stem}{s}.png" for s in ("", "_color", "_overlay"))
    assert read_values(out / f"{image.stem}.png").ndim == 2  # the mask in the user's values (0/255)


def test_save_minus_mask_leaves_the_mask_out(trained, tmp_path):
    image = trained.images[0]
    ok(cli("predict", trained.model, image, "-o", tmp_path / "out", "--save", "overlay,-mask", "-q"))
    assert [p.name for p in (tmp_path / "out").iterdir()] == [f"{image.stem}_overlay.png"]
    user_error(cli("predict", trained.model, image, "-o", tmp_path / "none", "--save", "-mask"), 2, "nothing left to write")
    user_error(cli("predict", trained.model, image, "-o", tmp_path / "none", "--save", "colr"), 2, "'colr'")


def test_skip_existing_and_evaluate_read_folders_of_extras(trained, tmp_path):
    out = tmp_path / "out"
    ok(cli("predict", trained.model, *trained.images, "-o", out, "-q"))
    again = json.loads(ok(cli("predict", trained.model, trained.images[0], "-o", out, "--save", "overlay,probs",
                              "--skip-existing", "--json")).stdout)
    assert again["status"] == "ok"  # its overlay and probabilities were missing
    skipped = json.loads(ok(cli("predict", trained.model, trained.images[0], "-o", out, "--save", "overlay,probs",
                                "--skip-existing", "--json")).stdout)
    assert skipped["status"] == "skipped"
    summary = json.loads(ok(cli("evaluate", "--pred", out, "--gt", trained.data / "masks", "--json")).stdout)
    assert summary["images"] == len(trained.images)  # _overlay and _probs files are not taken for predictions


# ------------------------------------------------------------------------------- point 7: val_examples.png

def bands(mask: np.ndarray) -> list[tuple[int, int]]:
    """Runs of True in a 1-D mask, as (first, last) index pairs."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return [(a, b - 1) for a, b in zip(edges[::2], edges[1::2])]


def test_example_grid_columns_line_up_under_their_headers_whatever_the_widths():
    rows = []
    for width in (40, 190, 90):  # validation images of different widths, one height
        ids = np.ones((60, width), np.uint8)
        rows.append((np.full((60, width, 1), 128, np.uint8), ids, ids * 2))
    colours = np.array([(0, 0, 0), (0, 160, 0), (0, 0, 200)], np.uint8)
    grid = example_grid(rows, colours, height=60).astype(int)
    gray = (np.abs(grid - 128).max(axis=2) == 0)
    kinds = {"image": gray, "truth": (grid == (0, 160, 0)).all(axis=2), "prediction": (grid == (0, 0, 200)).all(axis=2)}
    row_bands = bands(kinds["truth"].any(axis=1))
    assert len(row_bands) == 3
    centres = {}
    for kind, where in kinds.items():
        spans = [bands(where[(top + bottom) // 2]) for top, bottom in row_bands]
        assert all(len(s) == 1 for s in spans), f"{kind}: {spans}"
        centres[kind] = [(s[0][0] + s[0][1]) / 2 for s in spans]
        assert max(centres[kind]) - min(centres[kind]) <= 1, f"the {kind} column wanders: centres {centres[kind]}"
    image, truth, prediction = (np.mean(centres[k]) for k in kinds)
    assert abs((truth - image) - (prediction - truth)) <= 1, "the cells are not of one width"
    ink = (grid[: row_bands[0][0]].max(axis=2) < 100)  # header text above the first row
    labels = bands(ink.any(axis=0))
    words = [labels[0]]
    for span in labels[1:]:  # letters closer than 12 px belong to one word
        if span[0] - words[-1][1] < 12:
            words[-1] = (words[-1][0], span[1])
        else:
            words.append(span)
    assert len(words) == 3, words
    for (left, right), centre in zip(words, (image, truth, prediction)):
        assert abs((left + right) / 2 - centre) <= 4, f"header centred at {(left + right) / 2}, its column at {centre}"


# ------------------------------------------------------------------------------- point 9: curves.png

def frames(picture: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Bounding boxes (x, y, w, h) of the plot frames: large outlines in the frame gray."""
    outline = (picture == (160, 160, 160)).all(axis=2).astype(np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(outline)
    boxes = [[int(x), int(y), int(x + w), int(y + h)] for x, y, w, h in stats[1:count, :4] if max(w, h) > 20]
    merged, near = True, 8
    while merged:  # curves and ticks drawn over a frame cut it into pieces a few pixels apart: join them
        merged = False
        for a in boxes:
            for b in boxes:
                if a is not b and a[0] <= b[2] + near and b[0] <= a[2] + near and a[1] <= b[3] + near and b[1] <= a[3] + near:
                    a[:] = [min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])]
                    boxes.remove(b)
                    merged = True
                    break
            if merged:
                break
    return [(x0, y0, x1 - x0, y1 - y0) for x0, y0, x1, y1 in boxes if x1 - x0 > 100 and y1 - y0 > 100]


def check_panels(picture: np.ndarray, epochs: int) -> int:
    """Every plot frame holds a curve and has epoch ticks under it; returns the number of frames."""
    found = frames(picture)
    assert found, "no plot frame found"
    for x, y, w, h in found:
        inside = picture[y + 2:y + h - 2, x + 2:x + w - 2].astype(int)
        assert ((inside.max(axis=2) - inside.min(axis=2)) > 60).any(), f"the panel at x={x} is empty"
        under = picture[y + h + 1, x - 2:x + w + 2].max(axis=1) < 140
        ticks = bands(under)
        assert 2 <= len(ticks) <= min(epochs, 11), f"{len(ticks)} epoch ticks under the panel at x={x}"
    return len(found)


def history(epochs: int, validation: bool) -> list[dict]:
    rows = []
    for e in range(1, epochs + 1):
        row = {"epoch": e, "train_loss": 1 / e, "val_loss": 1.1 / e if validation else ""}
        row.update({"dice_background": 0.9 + e / 1000, "dice_foreground": 0.3 + e / 100} if validation
                   else {"dice_background": "", "dice_foreground": ""})
        rows.append(row)
    return rows


def test_curves_without_validation_have_no_empty_panel_and_epoch_ticks():
    assert check_panels(training_curves(history(12, validation=False)), 12) == 1
    no_columns = [{"epoch": e, "train_loss": 1 / e} for e in range(1, 4)]
    assert check_panels(training_curves(no_columns), 3) == 1


def test_curves_with_validation_have_both_panels_with_epoch_ticks():
    assert check_panels(training_curves(history(40, validation=True)), 40) == 2
