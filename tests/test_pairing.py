"""Pairing images with masks, and the dataset problems `check` and `train` refuse (exit 3)."""

from __future__ import annotations

import json

import numpy as np
from helpers import cli, describe, ok, read_values, user_error, write_image

RNG = np.random.default_rng(0)


def gray(h: int = 40, w: int = 48) -> np.ndarray:
    return RNG.integers(0, 255, (h, w), np.uint8)


def colour(h: int = 40, w: int = 48) -> np.ndarray:
    return RNG.integers(0, 255, (h, w, 3), np.uint8)


def mask(h: int = 40, w: int = 48) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[5:20, 10:30] = 255
    return m


def test_stems_match_across_extensions_and_mask_suffixes(tmp_path):
    write_image(tmp_path / "images" / "a.tif", gray())
    write_image(tmp_path / "images" / "b.jpg", gray())
    write_image(tmp_path / "images" / "c.png", gray())
    write_image(tmp_path / "images" / "d.bmp", gray())
    write_image(tmp_path / "masks" / "a.png", mask())
    write_image(tmp_path / "masks" / "b_mask.png", mask())
    write_image(tmp_path / "masks" / "c.tif", mask())
    write_image(tmp_path / "masks" / "d_label.png", mask())
    (tmp_path / "images" / ".hidden.png").write_bytes(b"not an image, and hidden")
    (tmp_path / "images" / "notes.txt").write_text("not an image file")
    report = json.loads(ok(cli("check", tmp_path, "--json")).stdout)
    assert report["pairs"] == 4 and report["readable"] == 4 and report["problems"] == []
    assert report["classes"]["mode"] == "binary"


def test_explicit_images_and_masks_folders(tmp_path):
    write_image(tmp_path / "raw" / "x.png", gray())
    write_image(tmp_path / "truth" / "x_gt.png", mask())
    report = json.loads(ok(cli("check", "--images", tmp_path / "raw", "--masks", tmp_path / "truth", "--json")).stdout)
    assert report["pairs"] == 1


def test_unmatched_images_and_masks_are_listed(tmp_path):
    for name in ("a", "b", "lonely_image"):
        write_image(tmp_path / "images" / f"{name}.png", gray())
    for name in ("a", "b", "lonely_mask"):
        write_image(tmp_path / "masks" / f"{name}.png", mask())
    line = user_error(cli("check", tmp_path), 3, "lonely_image.png", "lonely_mask.png")
    assert "1 image(s) without a mask" in line and "1 mask(s) without an image" in line
    user_error(cli("train", tmp_path, "-o", tmp_path / "run"), 3, "lonely_image.png", "lonely_mask.png")
    assert not (tmp_path / "run").exists()


def test_two_images_with_one_stem_are_refused(tmp_path):
    write_image(tmp_path / "images" / "a.png", gray())
    write_image(tmp_path / "images" / "a.tif", gray())
    write_image(tmp_path / "masks" / "a.png", mask())
    user_error(cli("check", tmp_path), 3, "a.png", "a.tif")


def test_mixed_channel_counts_are_refused_naming_the_odd_files(tmp_path):
    for name in ("g1", "g2", "g3"):
        write_image(tmp_path / "images" / f"{name}.png", gray())
        write_image(tmp_path / "masks" / f"{name}.png", mask())
    write_image(tmp_path / "images" / "odd_rgb.png", colour())
    write_image(tmp_path / "masks" / "odd_rgb.png", mask())
    result = cli("check", tmp_path)
    assert result.exit_code == 3, describe(result)
    problems = [line for line in result.stderr.splitlines() if line.startswith("problem:")]
    assert len(problems) == 1
    assert "odd_rgb.png (3 channels)" in problems[0] and "most have 1" in problems[0]
    assert "g1.png" not in problems[0]
    user_error(cli("train", tmp_path, "-o", tmp_path / "run"), 3, "odd_rgb.png")


def test_mask_of_another_size_is_refused(tmp_path):
    write_image(tmp_path / "images" / "a.png", gray(40, 48))
    write_image(tmp_path / "masks" / "a.png", mask(40, 48))
    write_image(tmp_path / "images" / "b.png", gray(40, 48))
    write_image(tmp_path / "masks" / "b.png", mask(20, 24))
    result = cli("check", tmp_path)
    assert result.exit_code == 3, describe(result)
    assert "b.png: mask is 24x20 but its image b.png is 48x40" in result.stderr
    user_error(cli("train", tmp_path, "-o", tmp_path / "run"), 3, "24x20", "48x40")


def test_unreadable_image_is_a_problem(tmp_path):
    write_image(tmp_path / "images" / "a.png", gray())
    write_image(tmp_path / "masks" / "a.png", mask())
    (tmp_path / "images" / "b.png").write_bytes(b"\x89PNG truncated")
    write_image(tmp_path / "masks" / "b.png", mask())
    result = cli("check", tmp_path)
    assert result.exit_code == 3, describe(result)
    assert "b.png: not an image that can be decoded" in result.stderr


def test_missing_folders(tmp_path):
    user_error(cli("check", tmp_path / "nowhere"), 3, "no such folder")
    (tmp_path / "images").mkdir()
    user_error(cli("check", tmp_path), 3, "no masks/ folder")
    (tmp_path / "masks").mkdir()
    user_error(cli("check", tmp_path), 3, "no image files found")
    user_error(cli("check"), 2, "give a DATA folder")


def test_folder_aliases(tmp_path):
    write_image(tmp_path / "img" / "a.png", gray())
    write_image(tmp_path / "labels" / "a.png", mask())
    assert json.loads(ok(cli("check", tmp_path, "--json")).stdout)["pairs"] == 1


def test_16_bit_and_rgb_images_are_read(tmp_path):
    write_image(tmp_path / "images" / "deep.png", RNG.integers(0, 65535, (40, 48, 3), np.uint16))
    write_image(tmp_path / "images" / "plain.png", colour())
    write_image(tmp_path / "masks" / "deep.png", mask())
    write_image(tmp_path / "masks" / "plain.png", mask())
    report = json.loads(ok(cli("check", tmp_path, "--json")).stdout)
    assert report["channels"] == 3
    assert report["dtypes"] == ["uint16", "uint8"]


# ------------------------------------------------------------------------------------- EXIF orientation


def with_orientation(path, image, orientation: int, fmt: str = "PNG"):
    """Write a Pillow image (its pixels as stored) with an EXIF orientation tag (Pillow writes eXIf chunks in
    PNGs too)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(path, fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {}))
    return path


def test_images_and_masks_are_read_as_viewers_show_them(tmp_path):
    """Every EXIF orientation, against Pillow's own exif_transpose; images (gray, RGB) and palette masks."""
    from PIL import Image, ImageOps

    from unetcli.images import read_image, read_mask

    stored = colour(5, 7)
    for orientation in range(1, 9):
        for name, array in (("rgb", stored), ("gray", stored[:, :, 0])):
            path = with_orientation(tmp_path / f"{name}{orientation}.png", Image.fromarray(array), orientation)
            expected = np.asarray(ImageOps.exif_transpose(Image.open(path)))
            got = read_image(path)
            assert got.shape[:2] == ((5, 7) if orientation < 5 else (7, 5)), orientation
            np.testing.assert_array_equal(got if name == "rgb" else got[:, :, 0], expected, err_msg=f"{name} {orientation}")
        indices = Image.fromarray(stored[:, :, 0] % 3, mode="P")
        indices.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0])
        path = with_orientation(tmp_path / f"palette{orientation}.png", indices, orientation)
        raw = read_mask(path)
        assert raw.kind == "palette"
        np.testing.assert_array_equal(raw.values, np.asarray(ImageOps.exif_transpose(Image.open(path))))


def test_a_phone_photo_with_an_orientation_tag_pairs_with_the_mask_drawn_on_what_viewers_show(trained, tmp_path):
    """A portrait photo stored as landscape pixels + orientation 6 (how phones save them): its mask, drawn in
    the portrait view, pairs; predict writes a portrait mask. A mask drawn on the stored pixels is refused with
    a hint about the tag."""
    from PIL import Image

    portrait = colour(96, 64)  # what the viewer shows: 64 wide, 96 tall
    landscape = np.rot90(portrait, 1).copy()  # stored: turned so that orientation 6 (90 degrees clockwise) undoes it
    photo = with_orientation(tmp_path / "data" / "images" / "photo.jpg", Image.fromarray(landscape), 6, "JPEG")
    assert Image.open(photo).size == (96, 64)
    write_image(tmp_path / "data" / "masks" / "photo.png", mask(96, 64))
    write_image(tmp_path / "data" / "images" / "plain.png", colour(96, 64))
    write_image(tmp_path / "data" / "masks" / "plain.png", mask(96, 64))
    ok(cli("check", tmp_path / "data"))

    ok(cli("predict", trained.model, photo, "-o", tmp_path / "out", "--quiet"))
    assert read_values(tmp_path / "out" / "photo.png").shape == (96, 64)

    write_image(tmp_path / "data" / "masks" / "photo.png", mask(64, 96))  # drawn on the stored landscape pixels
    result = cli("check", tmp_path / "data")
    assert result.exit_code == 3, describe(result)
    assert "photo.png: mask is 96x64 but its image photo.jpg is 64x96; photo.jpg is read turned by its EXIF orientation" in result.stderr
