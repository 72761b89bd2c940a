"""Hostile and broken input through the real CLI: one clear `error: <file>: ...` line and a documented exit code
(2 usage, 3 data/output, 4 model folder, 5 some inputs of a batch failed), never a traceback, nothing
half-written (outputs go to `.NAME.PID.tmp` files and `.NAME.tmp-PID` folders and are renamed into place)."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from helpers import cli, describe, ok, read_values, user_error, write_image, write_palette_png

ROOT = os.geteuid() == 0  # root ignores file permissions: use a path below a regular file instead


# ------------------------------------------------------------------------------------------------ helpers


def leftovers(folder: Path) -> list[str]:
    """Temporary or moved-aside files and folders of an unfinished write, anywhere below `folder`."""
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*")
                  if p.name.endswith(".tmp") or ".tmp-" in p.name or ".old-" in p.name)


def tree(folder: Path) -> dict[str, str]:
    """name -> sha256 of every file below `folder` (to show that a failed command changed nothing)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def gray(rng: np.random.Generator, height: int = 40, width: int = 48, dtype=np.uint8) -> np.ndarray:
    top = np.iinfo(dtype).max
    return (rng.random((height, width)) * top).astype(dtype)


def binary_mask(height: int = 40, width: int = 48, foreground: int = 255, dtype=np.uint8) -> np.ndarray:
    mask = np.zeros((height, width), dtype)
    mask[5:20, 8:30] = foreground
    return mask


def dataset(folder: Path, count: int = 3, seed: int = 0) -> Path:
    """Small gray images with 0/255 masks: DATA/images/img_I.png + DATA/masks/img_I.png."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        write_image(folder / "images" / f"img_{i}.png", gray(rng))
        write_image(folder / "masks" / f"img_{i}.png", binary_mask())
    return folder


def train_fails(data: Path, tmp_path: Path, code: int, *fragments: str, args=()) -> str:
    """`unetcli train DATA` refuses with one error line; no run folder is created."""
    run = tmp_path / "run"
    line = user_error(cli("train", data, "-o", run, "--encoder", "resnet18", "--epochs", "1", *args), code, *fragments)
    assert not run.exists(), sorted(os.listdir(run))
    return line


def check_json(data: Path, *args) -> dict:
    return json.loads(ok(cli("check", data, "--json", *args)).stdout)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels, with almost no pixel data: a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
            + chunk(b"IEND", b""))


def damaged_png(source: Path) -> bytes:
    """A PNG with one flipped byte in its pixel data (the chunk CRC no longer matches)."""
    data = bytearray(source.read_bytes())
    data[data.find(b"IDAT") + 12] ^= 0xFF
    return bytes(data)


def predict_one_fails(trained, tmp_path: Path, bad: Path, *fragments: str) -> None:
    """Among good inputs, `bad` fails with its own error line and exit code 5; the others are written."""
    good = trained.images[:2]
    out = tmp_path / "out-one"
    result = cli("predict", trained.model, *good, bad, "-o", out, "--quiet")
    assert result.exit_code == 5, describe(result)
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad}: "), describe(result)
    for fragment in fragments:
        assert fragment in lines[0], describe(result)
    assert sorted(os.listdir(out)) == sorted(p.name for p in good)  # nothing for the bad input, no temp files


# ------------------------------------------------------------------------------------ unreadable images


def test_zero_byte_image(tmp_path):
    data = dataset(tmp_path / "data")
    (data / "images" / "img_1.png").write_bytes(b"")
    train_fails(data, tmp_path, 3, "img_1.png", "the file is empty (0 bytes)")


def test_truncated_png(tmp_path):
    data = dataset(tmp_path / "data")
    image = data / "images" / "img_2.png"
    image.write_bytes(image.read_bytes()[:120])
    train_fails(data, tmp_path, 3, f"{image}: not an image that can be decoded")


def test_png_with_a_damaged_chunk(tmp_path):
    data = dataset(tmp_path / "data")
    mask = data / "masks" / "img_0.png"
    mask.write_bytes(damaged_png(mask))
    train_fails(data, tmp_path, 3, f"{mask}: not an image that can be decoded")


def test_text_file_named_png(tmp_path):
    data = dataset(tmp_path / "data")
    (data / "images" / "img_0.png").write_text("this is not an image\n")
    train_fails(data, tmp_path, 3, "img_0.png: not an image that can be decoded", "re-export it")


def write_stack(path: Path, pages: int, size: tuple[int, int] = (40, 48)) -> Path:
    """A multi-page TIFF (how EM volumes such as the ISBI 2012 data are often distributed)."""
    from PIL import Image

    frames = [Image.fromarray(np.full(size, 8 * i, np.uint8)) for i in range(pages)]
    frames[0].save(path, save_all=True, append_images=frames[1:])
    return path


def test_a_tiff_stack_is_never_read_as_its_first_page(tmp_path, trained):
    """A stack pairs page by page with a mask stack of as many pages (test_stacks.py), never with one image."""
    data = dataset(tmp_path / "data")
    stack = write_stack(data / "images" / "img_0.tif", 30)
    (data / "images" / "img_0.png").unlink()
    train_fails(data, tmp_path, 3, f"{stack}: a stack of 30 pages, but its mask img_0.png holds 1", "pages pair one to one")
    masks = write_stack(data / "masks" / "img_0.tif", 30)
    (data / "masks" / "img_0.png").unlink()
    (data / "images" / "img_0.tif").unlink()
    write_image(data / "images" / "img_0.png", np.zeros((40, 48), np.uint8))
    train_fails(data, tmp_path, 3, f"{masks}: holds 30 masks", "its image img_0.png is one image")
    ok(cli("predict", trained.model, write_stack(tmp_path / "volume.tif", 3), "-o", tmp_path / "stack-out", "--quiet"))
    assert tifffile.imread(tmp_path / "stack-out" / "volume.tif").shape == (3, 40, 48)
    from PIL import Image

    single = tmp_path / "single.tif"
    Image.fromarray(np.zeros((40, 48), np.uint8)).save(single)
    ok(cli("predict", trained.model, single, "-o", tmp_path / "single-out", "--quiet"))


def test_predict_bad_files_among_good_ones_exit_5(trained, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("hello")
    predict_one_fails(trained, tmp_path, bad, "not an image that can be decoded")


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n", b"GIF89a" + bytes(20)], ids=["empty", "signature-only", "gif-header"])
def test_predict_unreadable_input_variants(trained, tmp_path, content):
    bad = tmp_path / "bad.png"
    bad.write_bytes(content)
    predict_one_fails(trained, tmp_path, bad)


def test_predict_a_missing_input(trained, tmp_path):
    predict_one_fails(trained, tmp_path, tmp_path / "no-such-image.png", "cannot read the file")


# ----------------------------------------------------------------------------------------- pairing, masks


def test_mask_of_another_size(tmp_path):
    data = dataset(tmp_path / "data")
    write_image(data / "masks" / "img_1.png", binary_mask(40, 47))
    train_fails(data, tmp_path, 3, "img_1.png: mask is 47x40 but its image img_1.png is 48x40")


def test_image_without_mask(tmp_path):
    data = dataset(tmp_path / "data")
    (data / "masks" / "img_2.png").unlink()
    train_fails(data, tmp_path, 3, "1 image(s) without a mask", "img_2.png")


def test_mask_without_image(tmp_path):
    data = dataset(tmp_path / "data")
    write_image(data / "masks" / "stray.png", binary_mask())
    train_fails(data, tmp_path, 3, "1 mask(s) without an image", "stray.png")


def test_jpeg_mask(tmp_path):
    data = dataset(tmp_path / "data")
    (data / "masks" / "img_0.png").unlink()
    write_image(data / "masks" / "img_0.jpg", binary_mask())
    train_fails(data, tmp_path, 3, "img_0.jpg: masks must be lossless", "Re-export the mask as PNG")


def test_binary_mask_with_a_third_value(tmp_path):
    data = dataset(tmp_path / "data")
    mask = binary_mask()
    mask[30:, :] = 128
    write_image(data / "masks" / "img_1.png", mask)
    train_fails(data, tmp_path, 3, "binary masks hold at most two values", "0, 128, 255", "img_1.png",
                args=("--mask-mode", "binary"))


def index_dataset(folder: Path) -> Path:
    data = dataset(folder)
    for i in range(3):
        mask = np.zeros((40, 48), np.uint8)
        mask[:10], mask[10:20] = 1, 2
        if i == 1:
            mask[35:] = 7
        write_image(data / "masks" / f"img_{i}.png", mask)
    return data


def test_index_value_that_is_no_class(tmp_path):
    data = index_dataset(tmp_path / "data")
    train_fails(data, tmp_path, 3, "mask value 7 in img_1.png", "3-class index map",
                args=("--mask-mode", "index", "--classes", "3"))


def test_class_map_without_a_value_of_the_masks(tmp_path):
    data = index_dataset(tmp_path / "data")
    class_map = tmp_path / "classes.json"
    class_map.write_text(json.dumps({"background": 0, "a": 1, "b": 2}))
    train_fails(data, tmp_path, 3, "mask values 7 (in img_1.png) are not in the class map", args=("--class-map", class_map))


def test_rgb_class_map_with_duplicate_colours(tmp_path):
    data = dataset(tmp_path / "data")
    class_map = tmp_path / "colours.json"
    class_map.write_text(json.dumps({"background": [0, 0, 0], "road": [128, 64, 128], "lane": [128, 64, 128]}))
    train_fails(data, tmp_path, 3, f"{class_map}: classes 'road' and 'lane' share the value (128,64,128)",
                args=("--class-map", class_map))


def test_palette_masks_work(tmp_path):
    data = dataset(tmp_path / "data")
    palette = [0, 0, 0, 255, 0, 0, 0, 255, 0]
    for i in range(3):
        indices = np.zeros((40, 48), np.uint8)
        indices[:10], indices[20:25] = 1, 2
        (data / "masks" / f"img_{i}.png").unlink()
        write_palette_png(data / "masks" / f"img_{i}.png", indices, palette)
    report = check_json(data)
    assert report["problems"] == []
    assert report["classes"]["mode"] == "palette"
    assert [c["colour"] for c in report["classes"]["classes"]] == [[0, 0, 0], [255, 0, 0], [0, 255, 0]]


def test_sixteen_bit_images_and_masks_work(tmp_path):
    data = tmp_path / "data"
    rng = np.random.default_rng(1)
    for i in range(3):
        write_image(data / "images" / f"img_{i}.png", gray(rng, dtype=np.uint16))
        write_image(data / "masks" / f"img_{i}.png", binary_mask(foreground=65535, dtype=np.uint16))
    report = check_json(data)
    assert report["problems"] == [] and report["dtypes"] == ["uint16"]
    assert [c["value"] for c in report["classes"]["classes"]] == [0, 65535]


def test_predict_sixteen_bit_rgba_and_float_inputs(trained, tmp_path):
    """A gray 8-bit model takes 16-bit, RGBA and float32 images (converted) and writes its own values."""
    rng = np.random.default_rng(2)
    inputs = [write_image(tmp_path / "in" / "deep.png", gray(rng, 50, 60, np.uint16)),
              write_image(tmp_path / "in" / "rgba.png", (rng.random((50, 60, 4)) * 255).astype(np.uint8)),
              write_image(tmp_path / "in" / "float.tif", rng.random((50, 60)).astype(np.float32))]
    out = tmp_path / "out"
    ok(cli("predict", trained.model, *inputs, "-o", out, "--quiet"))
    for path in inputs:
        values = read_values(out / f"{path.stem}.png")
        assert values.shape == (50, 60) and set(np.unique(values)) <= {0, 255}


def test_rgba_and_gray_mixed_in_one_folder(tmp_path):
    data = dataset(tmp_path / "data", count=4)
    write_image(data / "images" / "img_1.png", (np.random.default_rng(3).random((40, 48, 4)) * 255).astype(np.uint8))
    train_fails(data, tmp_path, 3, "images mix channel counts: most have 1, but img_1.png (4 channels)",
                args=("--val-split", "0"))


# --------------------------------------------------------------------------------------- sizes and limits


def test_one_by_one_image_predicts(trained, tmp_path):
    image = write_image(tmp_path / "dot.png", np.full((1, 1), 200, np.uint8))
    ok(cli("predict", trained.model, image, "-o", tmp_path / "out", "--quiet"))
    values = read_values(tmp_path / "out" / "dot.png")
    assert values.shape == (1, 1) and int(values[0, 0]) in (0, 255)


def test_three_by_100000_image_predicts(trained, tmp_path):
    """A line-scan strip, with the default tiles (clipped to 32 rows, not square) and whole; both agree.

    Both fp32, so that only tiling differs, and checked as test_prediction_sizes.py checks tiled == whole:
    exactly (probabilities within one 16-bit step) on the 59 % of the strip where each covering tile holds a
    pixel's receptive field, which any misplaced tile fails. Overall agreement is a property of the model
    on random noise: the two-epoch `trained` model gave 99.94 % with seed 0 (bf16 or fp32, AVX-512 or AVX2),
    but 98.5-99.99 % over seeds 0-7 (5 of 8 below the 99.9 % bound this test had, which seed 0 met by chance);
    97 % leaves twice the worst disagreement seen."""
    from helpers import check_tiled_against_whole, predict_with_probs

    strip = (np.random.default_rng(4).random((3, 100_000)) * 255).astype(np.uint8)
    image = write_image(tmp_path / "strip.png", strip)
    tiled = predict_with_probs(trained.model, image, tmp_path / "tiled", "--precision", "fp32")
    whole = predict_with_probs(trained.model, image, tmp_path / "whole", "--tile", "off", "--precision", "fp32")
    assert tiled[0].shape == (3, 100_000) and set(np.unique(tiled[0])) <= {0, 255}
    assert check_tiled_against_whole(whole, tiled, 1024) >= 0.97


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    data = dataset(tmp_path / "data")
    bomb = data / "images" / "img_0.png"
    bomb.write_bytes(png_header_only(100_000, 100_000))
    train_fails(data, tmp_path, 3, f"{bomb}: 100000x100000 pixels exceeds the limit", "UNETCLI_MAX_PIXELS")


def test_predict_decompression_bomb_among_good_inputs(trained, tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(60_000, 60_000))
    predict_one_fails(trained, tmp_path, bomb, "60000x60000 pixels exceeds the limit")


def test_max_pixels_environment_variable(trained, tmp_path, monkeypatch):
    monkeypatch.setenv("UNETCLI_MAX_PIXELS", "1000")
    data = dataset(tmp_path / "data")
    train_fails(data, tmp_path, 3, "48x40 pixels exceeds the limit of 1000 pixels")
    monkeypatch.setenv("UNETCLI_MAX_PIXELS", "lots")
    train_fails(data, tmp_path, 2, "UNETCLI_MAX_PIXELS='lots'")
    monkeypatch.setenv("UNETCLI_MAX_PIXELS", str(48 * 40))
    assert check_json(data)["problems"] == []


# --------------------------------------------------------------------------------------- names, folders


def test_unicode_and_spaces_in_file_names(trained, tmp_path):
    data = tmp_path / "dåta sét"
    rng = np.random.default_rng(5)
    names = ["zellé 1", "細胞 2", "a  b (3)"]
    for name in names:
        write_image(data / "images" / f"{name}.png", gray(rng))
        write_image(data / "masks" / f"{name}_mask.png", binary_mask())
    assert check_json(data)["pairs"] == 3
    out = tmp_path / "prédictions ü"
    ok(cli("predict", trained.model, data / "images", "-o", out, "--quiet"))
    assert sorted(os.listdir(out)) == sorted(f"{name}.png" for name in names)


def test_symlink_loops_in_the_data_folder(trained, tmp_path):
    data = dataset(tmp_path / "data")
    os.symlink("loop.png", data / "images" / "loop.png")  # points at itself
    os.symlink("b.png", data / "masks" / "a.png")  # a.png -> b.png -> a.png
    os.symlink("a.png", data / "masks" / "b.png")
    os.symlink("..", data / "images" / "up")  # a folder loop
    assert check_json(data)["pairs"] == 3  # the loops are no image files
    out = tmp_path / "out"
    result = cli("predict", trained.model, data / "images", "-o", out, "--quiet")  # loop.png: a failed input (issue 14)
    assert result.exit_code == 5 and result.stderr.startswith(f"error: {data / 'images' / 'loop.png'}: "), describe(result)
    assert sorted(os.listdir(out)) == ["img_0.png", "img_1.png", "img_2.png"]
    predict_one_fails(trained, tmp_path, data / "images" / "loop.png", "cannot read the file")


def test_empty_folders(trained, tmp_path):
    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "masks").mkdir()
    train_fails(tmp_path / "data", tmp_path, 3, "data/images: no image files found")
    user_error(cli("check", tmp_path / "data"), 3, "no image files found")
    user_error(cli("predict", trained.model, tmp_path / "data" / "images", "-o", tmp_path / "out"), 2, "no input images given")
    assert not (tmp_path / "out").exists()


def unwritable(tmp_path: Path) -> Path:
    """An output path that cannot be created: below a read-only folder, or (as root) below a regular file."""
    if ROOT:
        blocker = tmp_path / "a-file"
        blocker.write_text("not a folder")
        return blocker / "sub"
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    return locked / "sub"


def test_unwritable_output_folder_for_predict(trained, tmp_path):
    out = unwritable(tmp_path)
    user_error(cli("predict", trained.model, trained.images[0], "-o", out), 3, f"{out}: cannot create the output folder")
    assert not out.exists()


def test_unwritable_run_folder_for_train(trained, tmp_path):
    run = unwritable(tmp_path)
    user_error(cli("train", trained.data, "-o", run, "--encoder", "resnet18", "--epochs", "1", "--quiet"), 3,
               f"{run}: cannot create the run folder")
    assert not run.exists()


def test_output_that_would_overwrite_an_input(trained, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(trained.images[0], folder / "a.png")
    shutil.copy(trained.images[1], folder / "a_color.png")  # --save color would write a_color.png over it
    before = tree(folder)
    user_error(cli("predict", trained.model, folder / "a.png", "-o", folder), 3,
               f"{folder / 'a.png'}: the output would overwrite an input image")
    user_error(cli("predict", trained.model, folder / "a.png", folder / "a_color.png", "-o", tmp_path / "in" / ".." / "in",
                   "--save", "color,-mask"), 3, "the output would overwrite an input image")
    assert tree(folder) == before


def limited_file_size(limit: int):
    def set_limit():  # runs in the child: a write past `limit` bytes fails with EFBIG instead of killing it
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return set_limit


def test_disk_full_while_predicting(trained, tmp_path):
    """RLIMIT_FSIZE stands in for a full disk (no root, no tmpfs needed): each write fails with EFBIG."""
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    process = subprocess.run([sys.executable, "-m", "unetcli", "predict", str(trained.model), *map(str, trained.images[:2]),
                              "-o", str(out), "--quiet"], env=env, capture_output=True, text=True, timeout=300,
                             preexec_fn=limited_file_size(100), check=False)
    assert process.returncode == 3, process.stderr  # every input failed, each with exit code 3
    assert "Traceback" not in process.stderr
    lines = process.stderr.splitlines()
    assert [line.split(":")[1].strip() for line in lines] == [str(out / p.name) for p in trained.images[:2]], process.stderr
    assert all("cannot write (File too large)" in line for line in lines), process.stderr
    assert os.listdir(out) == []  # no partial outputs, no temp files


def test_disk_full_while_saving_a_model(trained, tmp_path):
    """Training runs in-process here (a subprocess costs ~10 s of imports), under a 1 MB soft file-size limit:
    run.yaml fits, the ~57 MB model.safetensors does not."""
    run = tmp_path / "run"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))
    try:
        result = cli("train", trained.data, "-o", run, "--encoder", "resnet18", "--crop", "32", "--epochs", "1",
                     "--samples-per-epoch", "4", "--batch-size", "4", "--quiet")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    user_error(result, 3, f"{run / 'model-best'}: cannot write the model folder", "File too large")
    assert sorted(os.listdir(run)) == ["run.yaml"]  # no model folder, no temporary folder
    assert leftovers(run) == []


# ------------------------------------------------------------------------------------------- model folders


@pytest.fixture
def model_copy(trained, tmp_path):
    return shutil.copytree(trained.model, tmp_path / "model")


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def refuses_model(model: Path, trained, tmp_path: Path, *fragments: str, info: bool = True) -> None:
    out = tmp_path / "out"
    user_error(cli("predict", model, trained.images[0], "-o", out), 4, *fragments)
    assert not out.exists() or os.listdir(out) == []
    if info:
        user_error(cli("info", model), 4, *fragments)


@pytest.mark.parametrize("missing", ["config.json", "model.safetensors", "unetcli.json"])
def test_model_folder_missing_a_file(model_copy, trained, tmp_path, missing):
    (model_copy / missing).unlink()
    refuses_model(model_copy, trained, tmp_path, f"{model_copy}: model folder is missing {missing}")


def test_model_folder_wrong_format_version(model_copy, trained, tmp_path):
    edit_json(model_copy / "unetcli.json", lambda meta: meta.update(format_version=3))
    refuses_model(model_copy, trained, tmp_path, "unetcli.json: model format version 3", "retrain")


def test_model_folder_unknown_architecture(model_copy, trained, tmp_path):
    edit_json(model_copy / "config.json", lambda config: config.update(_model_class="TotallyNewNet"))
    refuses_model(model_copy, trained, tmp_path, "config.json: unknown architecture 'TotallyNewNet'")


def test_model_folder_config_that_is_no_object(model_copy, trained, tmp_path):
    (model_copy / "config.json").write_text("[1, 2, 3]")
    refuses_model(model_copy, trained, tmp_path, "config.json: not an smp model configuration")


def set_classes(**change):
    return lambda meta: meta["classes"].update(change)


@pytest.mark.parametrize("change, fragment", [
    (set_classes(mode="hexagonal"), "unknown mask mode 'hexagonal'"),
    (lambda meta: meta["classes"]["classes"].append({"id": 2, "name": "extra", "value": 7, "colour": [1, 2, 3]}),
     "3 classes for a binary map"),
    (lambda meta: meta["classes"]["classes"][1].update(value=70000), "class 'foreground' has value 70000"),
    (lambda meta: meta["classes"]["classes"][1].update(value=0), "two classes share one mask value"),
    (lambda meta: meta["classes"]["classes"][1].pop("name"), "KeyError: 'name'"),
    (set_classes(classes="foreground"), "the class table is invalid"),
    (lambda meta: meta.update(in_channels="gray"), "in_channels is 'gray'"),
    (lambda meta: meta["pipeline"]["eval"].pop("transform"), "the pipeline description is invalid"),
], ids=["unknown-mode", "three-classes-binary", "value-out-of-range", "duplicate-value", "nameless-class",
        "classes-not-a-list", "in-channels", "pipeline"])
def test_model_folder_damaged_class_table(model_copy, trained, tmp_path, change, fragment):
    edit_json(model_copy / "unetcli.json", change)
    refuses_model(model_copy, trained, tmp_path, f"{model_copy / 'unetcli.json'}: ", fragment)


def test_model_folder_classes_that_do_not_fit_the_network(model_copy, trained, tmp_path):
    """A consistent-looking 3-class table on a one-logit network would silently predict class 0 everywhere."""
    def three_classes(meta):
        meta["classes"] = {"mode": "index", "ignore_value": None, "palette": None,
                           "classes": [{"id": i, "name": f"c{i}", "value": i, "colour": [i, i, i]} for i in range(3)]}
        meta["out_channels"] = 3
    edit_json(model_copy / "unetcli.json", three_classes)
    refuses_model(model_copy, trained, tmp_path, "describes 1 input channel(s) and 3 output channel(s)", "has 1 and 1",
                  info=False)


class RunsCode:
    """Unpickling this calls os.system: what a crafted train_state.pt would do with a plain torch.load."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_resume_refuses_a_train_state_that_would_run_code(trained, tmp_path, writer):
    import pickle

    import torch

    run = shutil.copytree(trained.run, tmp_path / "run")
    marker = tmp_path / "MARKER"
    state = {"epoch": 1, "step": 8, "optimizer": RunsCode(marker)}
    if writer == "torch.save":
        torch.save(state, run / "model-last" / "train_state.pt")
    else:
        (run / "model-last" / "train_state.pt").write_bytes(pickle.dumps(state, protocol=2))
    before = tree(run)
    user_error(cli("train", "--resume", run, "--epochs", "3", "--quiet"), 4,
               f"{run / 'model-last' / 'train_state.pt'}: refused or damaged training state")
    assert not marker.exists()
    assert tree(run) == before  # nothing written, model-last/ untouched


# -------------------------------------------------------------------------------------------------- --debug


def test_debug_shows_the_traceback_of_a_user_error(tmp_path):
    data = dataset(tmp_path / "data")
    (data / "images" / "img_0.png").write_bytes(b"")
    plain = cli("train", data, "-o", tmp_path / "run")
    user_error(plain, 3, "the file is empty")
    debug = cli("--debug", "train", data, "-o", tmp_path / "run")
    assert debug.exit_code == 3, describe(debug)
    assert "Traceback (most recent call last)" in debug.stderr and "DataError" in debug.stderr
    assert debug.stderr.rstrip().splitlines()[-1].startswith("error: ")
    assert not (tmp_path / "run").exists()
