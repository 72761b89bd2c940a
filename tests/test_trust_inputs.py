"""Inputs that used to pass without a word (issue 14, found by a fuzz run): float images holding NaN or Inf are
refused by every command that reads images, and folder entries named like images that are no readable file (a
dangling symlink, a folder `x.png/`) are reported instead of skipped silently."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import tifffile
from helpers import cli, describe, json_lines, ok, user_error
from test_bad_input import dataset, train_fails


def float_image(path: Path, bad_value: float, bad_pixels: int = 3, shape=(40, 48)) -> Path:
    """A float32 TIFF of values in [0, 1] with `bad_pixels` pixels set to `bad_value` (NaN or Inf)."""
    array = np.random.default_rng(0).random(shape).astype(np.float32)
    array.flat[np.linspace(0, array.size - 1, bad_pixels).astype(int)] = bad_value
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, array)
    return path


def data_with_float_image(folder: Path, bad_value: float) -> Path:
    """dataset() whose img_0 is a float32 TIFF with 3 bad pixels (its mask stays img_0.png)."""
    data = dataset(folder)
    (data / "images" / "img_0.png").unlink()
    float_image(data / "images" / "img_0.tif", bad_value)
    return data


# ------------------------------------------------------------------------------------------- NaN and Inf


def test_predict_refuses_nan_and_inf_images_and_goes_on_with_the_others(trained, tmp_path):
    nan = float_image(tmp_path / "in" / "with_nan.tif", np.nan)
    inf = float_image(tmp_path / "in" / "with_inf.tif", np.inf, bad_pixels=5)
    good = trained.images[:2]
    out = tmp_path / "out"
    result = cli("predict", trained.model, *good, nan, inf, "-o", out, "--json", "--quiet")
    assert result.exit_code == 5, describe(result)
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2, describe(result)
    assert errors[0].startswith(f"error: {nan}: 3 of {40 * 48} pixels are NaN or Inf"), describe(result)
    assert errors[1].startswith(f"error: {inf}: 5 of {40 * 48} pixels are NaN or Inf"), describe(result)
    assert all("replace them" in line for line in errors)
    records = {Path(r["input"]).name: r for r in json_lines(result.stdout)}
    assert records["with_nan.tif"]["status"] == records["with_inf.tif"]["status"] == "error"
    assert "NaN" in records["with_nan.tif"]["error"]
    assert [records[p.name]["status"] for p in good] == ["ok", "ok"]
    assert sorted(os.listdir(out)) == sorted(p.name for p in good)


def test_a_finite_float_image_is_still_predicted(trained, tmp_path):
    image = tmp_path / "fine.tif"
    tifffile.imwrite(image, np.random.default_rng(1).random((40, 48)).astype(np.float32))
    ok(cli("predict", trained.model, image, "-o", tmp_path / "out", "--quiet"))
    assert (tmp_path / "out" / "fine.png").is_file()


def test_check_reports_a_nan_image_as_a_problem(tmp_path):
    data = data_with_float_image(tmp_path / "data", np.nan)
    result = cli("check", data, "--json")
    assert result.exit_code == 3, describe(result)
    report = json.loads(result.stdout)
    assert report["readable"] == 2
    assert [p for p in report["problems"] if "img_0.tif: 3 of 1920 pixels are NaN or Inf" in p], report["problems"]


def test_train_refuses_an_inf_image(tmp_path):
    data = data_with_float_image(tmp_path / "data", -np.inf)
    train_fails(data, tmp_path, 3, "img_0.tif", "3 of 1920 pixels are NaN or Inf")


def test_evaluate_refuses_a_nan_image(trained, tmp_path):
    data = data_with_float_image(tmp_path / "data", np.nan)
    user_error(cli("evaluate", trained.model, data), 3, "img_0.tif", "pixels are NaN or Inf")


# ------------------------------------------------------------------- folder entries that are no image file


def odd_entries(folder: Path) -> tuple[Path, Path]:
    """A dangling symlink `gone.png` and a folder `folder.png` inside `folder`."""
    dangling, directory = folder / "gone.png", folder / "folder.png"
    dangling.symlink_to(folder / "no-such-file.png")
    directory.mkdir()
    return dangling, directory


def test_predict_reports_a_dangling_symlink_and_a_folder_named_like_an_image(trained, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for image in trained.images[:2]:
        shutil.copy(image, inputs / image.name)
    dangling, directory = odd_entries(inputs)
    out = tmp_path / "out"
    result = cli("predict", trained.model, inputs, "-o", out, "--json", "--quiet")
    assert result.exit_code == 5, describe(result)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    reasons = {directory: "Is a directory", dangling: "No such file or directory"}
    assert errors == [f"error: {path}: cannot read the file ({reason}); check that it exists and is readable"
                      for path, reason in reasons.items()], describe(result)
    records = {Path(r["input"]).name: r for r in json_lines(result.stdout)}
    assert records["gone.png"]["status"] == records["folder.png"]["status"] == "error"
    assert sorted(name for name, r in records.items() if r["status"] == "ok") == sorted(p.name for p in trained.images[:2])


def test_check_warns_about_entries_it_skips(tmp_path):
    data = dataset(tmp_path / "data")
    dangling, _ = odd_entries(data / "images")
    directory = data / "masks" / "img_9.png"
    directory.mkdir()
    result = ok(cli("check", data))
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert sorted(warnings) == sorted([
        f"warning: {dangling}: skipped, a symbolic link to a missing file named like an image; remove or rename it",
        f"warning: {data / 'images' / 'folder.png'}: skipped, a folder named like an image; remove or rename it",
        f"warning: {directory}: skipped, a folder named like an image; remove or rename it"]), describe(result)
    assert "3 pairs, 3 readable" in result.stdout


def test_evaluate_folders_warn_about_entries_they_skip(tmp_path):
    data = dataset(tmp_path / "data")
    _, directory = odd_entries(data / "masks")
    result = ok(cli("evaluate", "--pred", data / "masks", "--gt", data / "masks", "--json"))
    assert f"warning: {directory}: skipped, a folder named like an image" in result.stderr, describe(result)
    assert json.loads(result.stdout)["images"] == 3
