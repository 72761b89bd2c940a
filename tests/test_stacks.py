"""Multi-page TIFF stacks (issue 15): pairing page by page, check's page report, the split by page blocks, train,
predict into stacks that equal predicting the pages one by one, evaluate of stacks; animations stay refused."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
from helpers import MEMBRANE, TINY_TRAIN, cli, describe, ok, read_values, user_error, write_image

from unetcli.data import Pair, find_pairs, split_pairs
from unetcli.images import read_image, read_mask

PAGES = 6


def write_stack(path: Path, pages, **options) -> Path:
    """A multi-page TIFF of `pages` (a list of H x W arrays); gray unless told (3-4 gray pages would otherwise be
    taken for the planes of one RGB(A) image by tifffile)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, np.stack(pages), **({"photometric": "minisblack"} | options))
    return path


def stack_pages(count: int = PAGES, size=(64, 64), seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """`count` gray pages and their 0/255 masks (unetcli.demo's striped shapes on blotches)."""
    from unetcli.demo import make_sample

    rng = np.random.default_rng(seed)
    images, masks = zip(*(make_sample(rng, *size) for _ in range(count)))
    return list(images), [np.where(m > 0, 255, 0).astype(np.uint8) for m in masks]


@pytest.fixture(scope="module")
def stack_data(tmp_path_factory) -> Path:
    """DATA/images/vol.tif and DATA/masks/vol.tif: one stack of PAGES pages and its mask stack."""
    data = tmp_path_factory.mktemp("stack") / "data"
    images, masks = stack_pages()
    write_stack(data / "images" / "vol.tif", images)
    write_stack(data / "masks" / "vol.tif", masks)
    return data


@pytest.fixture(scope="module")
def stack_run(stack_data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("stack-run") / "run"
    result = ok(cli("train", stack_data, "-o", run, *TINY_TRAIN))
    assert "stacks split by page: the last 20% of each stack's pages validate (vol.tif: pages 5..5 of 6)" in result.stderr
    assert "5 training / 1 validation pairs" in result.stderr
    return run / "model-best"


def test_pages_pair_one_to_one_and_read_one_at_a_time(stack_data):
    pairs = find_pairs(stack_data / "images", stack_data / "masks")
    assert [p.stem for p in pairs] == [f"vol[{i}]" for i in range(PAGES)]
    assert [(p.page, p.mask_page) for p in pairs] == [(i, i) for i in range(PAGES)]
    images, masks = stack_pages()
    assert np.array_equal(read_image(pairs[4].image, 4)[:, :, 0], images[4])
    assert np.array_equal(read_mask(pairs[4].mask, 4).values, masks[4])


def test_check_reports_pages(stack_data):
    report = json.loads(ok(cli("check", stack_data, "--json")).stdout)
    assert report["pairs"] == report["readable"] == PAGES
    assert report["stacks"] == {str(stack_data / "images" / "vol.tif"): PAGES}
    assert report["problems"] == []
    assert f"{PAGES} pairs (vol.tif: {PAGES} pages), {PAGES} readable" in ok(cli("check", stack_data)).stdout


def test_a_folder_of_per_page_masks_pairs_in_natural_order(tmp_path):
    images, masks = stack_pages(count=11, size=(32, 32))
    write_stack(tmp_path / "images" / "vol.tif", images)
    for i, mask in enumerate(masks):  # names 0..10: page 10 comes last, not after page 1
        write_image(tmp_path / "masks" / "vol" / f"{i}.png", mask)
    pairs = find_pairs(tmp_path / "images", tmp_path / "masks")
    assert [p.mask.name for p in pairs] == [f"{i}.png" for i in range(11)]
    assert pairs[10].stem == "vol[10]" and pairs[10].page == 10 and pairs[10].mask_page is None
    ok(cli("check", tmp_path))
    (tmp_path / "masks" / "vol" / "10.png").unlink()
    user_error(cli("check", tmp_path), 3, "vol.tif: a stack of 11 pages, but its mask vol holds 10", "pages pair one to one")


def test_page_counts_must_agree(tmp_path):
    images, masks = stack_pages(count=5, size=(32, 32))
    write_stack(tmp_path / "images" / "vol.tif", images)
    write_stack(tmp_path / "masks" / "vol.tif", masks[:4])
    user_error(cli("check", tmp_path), 3, "vol.tif: a stack of 5 pages, but its mask vol.tif holds 4")
    (tmp_path / "images" / "vol.tif").unlink()
    write_image(tmp_path / "images" / "vol.png", images[0])
    user_error(cli("check", tmp_path), 3, "vol.tif: holds 4 masks", "its image vol.png is one image")


def test_stacks_split_by_page_blocks_not_at_random():
    pairs = [Pair(f"vol[{i}]", Path("vol.tif"), Path("m.tif"), page=i, mask_page=i) for i in range(10)]
    singles = [Pair(f"img_{i}", Path(f"img_{i}.png"), Path(f"m_{i}.png")) for i in range(5)]
    with pytest.warns(UserWarning, match=r"the last 20% of each stack's pages validate \(vol.tif: pages 8..9 of 10\)"):
        train, val = split_pairs(pairs + singles, 0.2, seed=0)
    assert [p.page for p in val if p.page is not None] == [8, 9]
    assert len([p for p in val if p.page is None]) == 1  # the single images split at random, as before
    assert len(train) + len(val) == 15
    with pytest.warns(UserWarning, match="block 2 of 5"):
        train, val = split_pairs(pairs, 0.2, seed=0, fold=2, folds=5)
    assert [p.page for p in val] == [2, 3]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no stacks: no statement about them
        assert split_pairs(singles, 0.2, seed=0)[1]


def test_ome_tiff_imagej_and_palette_stacks_read_page_by_page(tmp_path):
    pages = np.arange(5 * 24 * 32, dtype=np.uint16).reshape(5, 24, 32)
    ome = tmp_path / "vol.ome.tif"
    tifffile.imwrite(ome, pages, ome=True, metadata={"axes": "ZYX"})
    imagej = tmp_path / "imagej.tif"  # one IFD, then every page's pixels (how ImageJ saves stacks over 4 GB)
    tifffile.imwrite(imagej, pages, imagej=True, truncate=True)
    for path in (ome, imagej):
        assert np.array_equal(read_image(path, 3)[:, :, 0], pages[3]), path
    palette = np.zeros((3, 256), np.uint16)
    palette[:, 1] = (65535, 0, 0)
    labels = tmp_path / "labels.tif"
    tifffile.imwrite(labels, (pages % 2).astype(np.uint8), photometric="palette", colormap=palette)
    raw = read_mask(labels, 2)
    assert raw.kind == "palette" and raw.palette[3:6] == (255, 0, 0) and set(np.unique(raw.values)) == {0, 1}


def test_an_animation_stays_refused(tmp_path, stack_data):
    from PIL import Image

    frames = [Image.fromarray(np.full((32, 32), 60 * i, np.uint8)) for i in range(3)]
    gif = tmp_path / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    with pytest.raises(Exception, match="an animation of 3 frames, and unetcli reads still images"):
        read_image(gif)
    data = tmp_path / "data"
    images, masks = stack_pages(count=2, size=(32, 32))
    write_image(data / "images" / "a.png", images[0])
    write_image(data / "masks" / "a.png", masks[0])
    frames[0].save(data / "images" / "b.png", save_all=True, append_images=frames[1:])  # an animated PNG
    write_image(data / "masks" / "b.png", masks[1])
    result = cli("check", data)
    assert result.exit_code == 3, describe(result)
    assert "b.png: an animation of 3 frames" in result.stderr


def predict_pages_one_by_one(model: Path, stack: Path, folder: Path, *options) -> Path:
    """Each page of `stack` as its own PNG, predicted as single files (one per forward pass, as a stack is)."""
    for i, page in enumerate(tifffile.imread(stack)):
        write_image(folder / "pages" / f"page_{i:02d}.png", page)
    ok(cli("predict", model, folder / "pages", "-o", folder / "out", "--batch-size", "1", "--quiet", *options))
    return folder / "out"


def test_predict_a_stack_into_stacks_equal_to_its_pages(stack_run, stack_data, tmp_path):
    stack = stack_data / "images" / "vol.tif"
    out = tmp_path / "out"
    result = ok(cli("predict", stack_run, stack, "-o", out, "--save", "mask,color,probs,instances", "--json"))
    line = json.loads(result.stdout)
    assert line["pages"] == PAGES and line["status"] == "ok"
    assert line["outputs"] == {kind: str(out / f"vol{suffix}.tif") for kind, suffix in
                               (("mask", ""), ("color", "_color"), ("probs", "_probs"), ("instances", "_instances"))}
    singles = predict_pages_one_by_one(stack_run, stack, tmp_path, "--save", "mask,color,probs")
    for suffix in ("", "_color", "_probs"):
        pages = tifffile.imread(out / f"vol{suffix}.tif")
        assert len(pages) == PAGES
        assert np.array_equal(pages, np.stack([read_values(singles / f"page_{i:02d}{suffix}.png") for i in range(PAGES)])), suffix
    assert set(np.unique(tifffile.imread(out / "vol.tif"))) <= {0, 255}
    assert len(tifffile.imread(out / "vol_instances.tif")) == PAGES
    rows = (out / "objects.csv").read_text().splitlines()
    assert sum(line["objects"].values()) == len(rows) - 1 and f"{stack}[0]" in rows[1]
    assert not list(out.glob(".*.tmp"))


def test_a_damaged_page_fails_its_stack_and_leaves_no_half_stack(stack_run, stack_data, tmp_path):
    bad = write_stack(tmp_path / "bad.tif", stack_pages()[0], compression="zlib")
    with tifffile.TiffFile(bad) as tif:
        offset, length = tif.pages[4].dataoffsets[0], tif.pages[4].databytecounts[0]
    data = bytearray(bad.read_bytes())
    data[offset:offset + length] = bytes(length)  # page 4's compressed pixels zeroed
    bad.write_bytes(bytes(data))
    out = tmp_path / "out"
    result = cli("predict", stack_run, bad, stack_data / "images" / "vol.tif", "-o", out, "--save", "mask,probs")
    assert result.exit_code == 5, describe(result)
    assert f"error: {bad} page 4: cannot be decoded" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["vol.tif", "vol_probs.tif"]  # nothing of bad.tif, no temporaries


def test_evaluate_scores_stacks_page_by_page(stack_run, stack_data, tmp_path):
    by_model = json.loads(ok(cli("evaluate", stack_run, stack_data, "--json", "--per-image", tmp_path / "scores.csv")).stdout)
    assert by_model["images"] == PAGES
    assert [row.split(",")[0] for row in (tmp_path / "scores.csv").read_text().splitlines()[1:]] == [f"vol[{i}]" for i in range(PAGES)]
    ok(cli("predict", stack_run, stack_data / "images", "-o", tmp_path / "out", "--save", "mask,color", "--quiet"))
    by_files = json.loads(ok(cli("evaluate", "--pred", tmp_path / "out", "--gt", stack_data / "masks", "--json")).stdout)
    assert by_files["images"] == PAGES
    assert by_files["confusion_matrix"] == by_model["confusion_matrix"]


@pytest.mark.slow
@pytest.mark.membrane
@pytest.mark.skipif(not (MEMBRANE / "images").is_dir(), reason=f"{MEMBRANE} is not present")
def test_the_isbi_stacks_as_distributed_train_and_predict(tmp_path):
    """The ISBI 2012 training data as distributed (train-volume.tif, train-labels.tif: 30 pages of 512 x 512), built
    from the membrane PNGs, under one stem in images/ and masks/."""
    data = tmp_path / "data"
    slices = range(30)
    write_stack(data / "images" / "train-volume.tif", [read_values(MEMBRANE / "images" / f"{i}.png") for i in slices])
    write_stack(data / "masks" / "train-volume.tif", [read_values(MEMBRANE / "masks" / f"{i}.png") for i in slices])
    model = tmp_path / "run" / "model-best"
    ok(cli("train", data, "-o", tmp_path / "run", *TINY_TRAIN))
    ok(cli("predict", model, data / "images" / "train-volume.tif", "-o", tmp_path / "out", "--quiet"))
    pages = tifffile.imread(tmp_path / "out" / "train-volume.tif")
    assert pages.shape == (30, 512, 512)
    assert set(np.unique(pages)) <= set(np.unique(tifffile.imread(data / "masks" / "train-volume.tif")))
    singles = predict_pages_one_by_one(model, data / "images" / "train-volume.tif", tmp_path)
    assert np.array_equal(pages, np.stack([read_values(singles / f"page_{i:02d}.png") for i in slices]))
