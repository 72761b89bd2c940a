"""Property tests (hypothesis): mask values survive predict's writer and the readers in every mode, tile geometry
covers and restores every image size, pairing by stem works for any names, and the readers turn any bytes into
an array or one of our errors. Kept small (max_examples) so the file runs in seconds."""

from __future__ import annotations

import string
import tempfile
import types
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from unetcli.data import MASK_STEM_SUFFIXES, find_pairs, pair_files
from unetcli.errors import DataError, UnetcliError
from unetcli.images import IMAGE_EXTENSIONS, RawMask, encode_png, read_image, read_mask
from unetcli.masks import ClassMap, SegClass, default_colour
from unetcli.outputs import PredictOptions, write_outputs
from unetcli.tiling import MirroredImage, blend, gaussian_weight, mirror_indices, plan_tiles

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
QUICK = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ------------------------------------------------------------------------------------------- mask modes

sizes = st.tuples(st.integers(1, 40), st.integers(1, 40))
byte = st.integers(0, 255)
colours = st.tuples(byte, byte, byte)


@st.composite
def class_maps(draw) -> ClassMap:
    """A class map of any mode, as training would store it (values are what the user's masks hold)."""
    mode = draw(st.sampled_from(["binary", "index", "palette", "rgb"]))
    if mode == "binary":
        foreground = draw(st.integers(1, 65535))
        return ClassMap("binary", (SegClass("background", 0, (0, 0, 0)), SegClass("foreground", foreground, (255, 255, 255))))
    count = draw(st.integers(1, 12))
    if mode == "rgb":
        values = draw(st.lists(colours, min_size=count, max_size=count, unique=True))
        return ClassMap("rgb", tuple(SegClass(f"c{i}", v, v) for i, v in enumerate(values)))
    if mode == "palette":
        palette = tuple(draw(st.lists(byte, min_size=768, max_size=768)))
        classes = tuple(SegClass(f"c{i}", i, palette[3 * i: 3 * i + 3]) for i in range(count))
        return ClassMap("palette", classes, None, palette)
    # index: plain ids, or any distinct gray levels from a --class-map (8- or 16-bit)
    top = draw(st.sampled_from([count - 1, 255, 65535]))
    values = draw(st.lists(st.integers(0, top), min_size=count, max_size=count, unique=True)) if top >= count else list(range(count))
    ignore = draw(st.one_of(st.none(), st.integers(0, 65535).filter(lambda v: v not in values)))
    return ClassMap("index", tuple(SegClass(f"c{i}", v, default_colour(i)) for i, v in enumerate(values)), ignore)


@FAST
@given(class_map=class_maps(), size=sizes, seed=st.integers(0, 2**31))
def test_masks_round_trip_through_predicts_writer_and_the_reader(class_map, size, seed):
    """ids -> predict writes the user's values -> read_mask -> decode gives the very ids back, in every mode."""
    ids = np.random.default_rng(seed).integers(0, class_map.num_classes, size).astype(np.uint8)
    with tempfile.TemporaryDirectory() as folder:
        options = PredictOptions(out_dir=Path(folder), save=("mask", "color"))
        predictor = types.SimpleNamespace(class_map=class_map, probability_channels=1)
        image = np.zeros((*size, 1), np.uint8)
        result = write_outputs(predictor, Path("input.tif"), image, ids=ids, probs=None, options=options)
        assert result.status == "ok", result.error
        raw = read_mask(Path(folder) / "input.png")
        colour_values = class_map.mode == "rgb" and any(len(set(c.value)) > 1 for c in class_map.classes)
        assert raw.kind == ("palette" if class_map.mode == "palette" else "rgb" if colour_values else "gray")
        if class_map.mode == "palette":
            assert raw.palette[: 3 * class_map.num_classes] == class_map.palette[: 3 * class_map.num_classes]
        np.testing.assert_array_equal(class_map.decode(raw, "input.png"), ids)
        colour = read_image(Path(folder) / "input_color.png")
        np.testing.assert_array_equal(colour, class_map.colourise(ids))


@FAST
@given(class_map=class_maps())
def test_class_maps_survive_the_model_folder_description(class_map):
    assert ClassMap.from_dict(class_map.to_dict()) == class_map


@FAST
@given(class_map=class_maps(), size=sizes, seed=st.integers(0, 2**31))
def test_values_that_are_no_class_are_refused_by_decode(class_map, size, seed):
    ids = np.random.default_rng(seed).integers(0, class_map.num_classes, size).astype(np.uint8)
    values = class_map.encode(ids)
    known = {c.value for c in class_map.classes} | {class_map.ignore_value}
    if class_map.mode == "rgb":
        stranger = next(c for c in ((1, 2, 3), (4, 5, 6), (7, 8, 9), (10, 11, 12)) if c not in known)
        values[0, 0] = stranger
        raw = RawMask(values, "rgb")
    else:
        stranger = next(v for v in range(300) if v not in known)
        values = values.astype(np.uint16)
        values[0, 0] = stranger
        raw = RawMask(values, "palette" if class_map.mode == "palette" else "gray", class_map.palette)
    with pytest.raises(DataError, match="are not classes"):
        class_map.decode(raw, "m.png")


# ------------------------------------------------------------------------------------------ tile geometry

tiles = st.sampled_from([32, 64, 96, 128, 256, 512, 1024])
overlaps = st.floats(0, 0.75)
lengths = st.integers(1, 5000)


def covered(starts, tile: int, begin: int, end: int) -> bool:
    """Do the intervals [s, s + tile) cover [begin, end) without a hole?"""
    reach = begin
    for start in sorted(starts):
        if start > reach:
            return False
        reach = max(reach, start + tile)
    return reach >= end


@FAST
@given(height=lengths, width=lengths, tile=tiles, overlap=overlaps)
def test_tiles_cover_every_pixel(height, width, tile, overlap):
    grid = plan_tiles(height, width, tile, overlap)
    for starts, length, size, padded in ((grid.ys, height, grid.tile_height, grid.padded_height),
                                         (grid.xs, width, grid.tile_width, grid.padded_width)):
        assert list(starts) == sorted(set(starts)) and starts[0] == 0
        assert all(s % 32 == 0 for s in starts) and size % 32 == 0 and size <= tile
        assert covered(starts, size, 0, length)
        assert padded == -(-length // 32) * 32 and starts[-1] + size == padded  # never more than the stride's padding


@FAST
@given(length=lengths, tile=tiles, overlap=overlaps, seed=st.integers(0, 2**31))
def test_padding_crops_back_to_the_exact_image(length, tile, overlap, seed):
    """The mirrored image that tiles are cut from: its top-left window is the image itself and the rest is
    mirrored from it, for any size 1..5000 along either axis."""
    rng = np.random.default_rng(seed)
    for shape in ((length, 1), (1, length)):
        image = rng.integers(0, 65535, (*shape, 2)).astype(np.uint16)
        grid = plan_tiles(*shape, tile, overlap)
        padded = MirroredImage(image, grid)[:, :]
        assert padded.shape == (grid.padded_height, grid.padded_width, 2)
        np.testing.assert_array_equal(padded[: shape[0], : shape[1]], image)
        assert set(np.unique(padded)) <= set(np.unique(image))  # mirrored, never invented
    rows = mirror_indices(length, length + 3000)
    assert rows.min() >= 0 and rows.max() < length


@FAST
@given(height=st.integers(1, 700), width=st.integers(1, 700), tile=st.sampled_from([32, 64, 128, 256]), overlap=overlaps)
def test_blending_weights_are_positive_everywhere(height, width, tile, overlap):
    grid = plan_tiles(height, width, tile, overlap)
    total = np.zeros((grid.padded_height, grid.padded_width), np.float64)
    weight = gaussian_weight(grid.tile_height, grid.tile_width)
    assert weight.shape == (grid.tile_height, grid.tile_width) and weight.min() > 0
    for y in grid.ys:
        for x in grid.xs:
            total[y: y + grid.tile_height, x: x + grid.tile_width] += weight
    window = total[:height, :width]
    assert window.shape == (height, width) and window.min() > 0 and np.isfinite(window).all()


@QUICK
@given(height=st.integers(1, 300), width=st.integers(1, 300), tile=st.sampled_from([32, 64, 96]), overlap=overlaps,
       batch=st.integers(1, 5), seed=st.integers(0, 2**31))
def test_blend_with_an_identity_network_returns_the_image(height, width, tile, overlap, batch, seed):
    """A 'network' whose logits are the tile's own pixels: blending must give back every pixel of the image,
    at its exact size (the band bookkeeping, the crop-back and the weights' normalisation all have to be right)."""
    image = np.random.default_rng(seed).integers(0, 256, (height, width, 1)).astype(np.uint8)
    grid = plan_tiles(height, width, tile, overlap)
    seen = []

    def forward(batch_tiles):
        assert all(t.shape == (grid.tile_height, grid.tile_width, 1) for t in batch_tiles) and len(batch_tiles) <= batch
        seen.extend(batch_tiles)
        return np.stack([t.transpose(2, 0, 1).astype(np.float32) for t in batch_tiles])

    ids = np.zeros(image.shape[:2], np.uint8)
    handed = []  # (top, rows): every image row exactly once, in order

    def take_rows(top: int, logits: np.ndarray) -> None:
        assert logits.shape[0] == 1 and logits.shape[2] == width
        handed.append((top, logits.shape[1]))
        ids[top: top + logits.shape[1]] = np.rint(logits[0]).astype(np.uint8)

    blend(MirroredImage(image, grid), grid, forward, 1, take_rows, batch)
    assert len(seen) == len(grid.ys) * len(grid.xs)
    assert [top for top, _ in handed] == list(np.cumsum([0] + [rows for _, rows in handed])[:-1]) and sum(r for _, r in handed) == height
    np.testing.assert_array_equal(ids, image[:, :, 0])


# ---------------------------------------------------------------------------------------------- pairing

stem_chars = st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\\x00")
stems = st.text(stem_chars, min_size=1, max_size=24).filter(lambda s: not s.startswith(".") and s.strip(" ") == s
                                                            and s not in (".", ".."))
extensions = st.sampled_from(sorted(IMAGE_EXTENSIONS) + [".PNG", ".Tif", ".JPG"])


@st.composite
def named_pairs(draw):
    """Distinct stems (none another's stem plus a mask suffix), each with an image and a mask file name."""
    names = draw(st.lists(stems, min_size=1, max_size=8, unique=True))
    assume(all(Path(n + ".png").stem == n for n in names))
    assume(not any(a != b and a == b + s for a in names for b in names for s in MASK_STEM_SUFFIXES if s))
    pairs = []
    for name in names:
        image = name + draw(extensions)
        mask = name + draw(st.sampled_from(MASK_STEM_SUFFIXES)) + draw(st.sampled_from([".png", ".tif", ".bmp", ".PNG"]))
        pairs.append((name, image, mask))
    return pairs


@FAST
@given(pairs=named_pairs(), order=st.randoms(use_true_random=False))
def test_pairing_by_stem_under_arbitrary_names(pairs, order):
    images = [Path("imgs") / image for _, image, _ in pairs]
    masks = [Path("gt") / mask for _, _, mask in pairs]
    order.shuffle(images)
    order.shuffle(masks)
    found = pair_files(images, masks, Path("imgs"), Path("gt"))
    assert {(p.stem, p.image.name, p.mask.name) for p in found} == set(pairs)


@FAST
@given(pairs=named_pairs(), drop=st.integers(0, 7), dropped=st.sampled_from(["image", "mask"]))
def test_pairing_names_a_lonely_file(pairs, drop, dropped):
    assume(len(pairs) >= 2)
    stem, image, mask = pairs[drop % len(pairs)]
    images = [Path("imgs") / i for s, i, _ in pairs if not (dropped == "image" and s == stem)]
    masks = [Path("gt") / m for s, _, m in pairs if not (dropped == "mask" and s == stem)]
    lonely = mask if dropped == "image" else image
    with pytest.raises(DataError, match="without") as caught:
        pair_files(images, masks, Path("imgs"), Path("gt"))
    assert lonely in str(caught.value)


@QUICK
@given(pairs=named_pairs())
def test_find_pairs_on_a_real_folder(pairs):
    """The same through the file system: unicode, spaces, dots and mixed-case extensions in real file names."""
    with tempfile.TemporaryDirectory() as folder:
        images, masks = Path(folder) / "images", Path(folder) / "masks"
        images.mkdir()
        masks.mkdir()
        for _, image, mask in pairs:
            (images / image).write_bytes(b"")
            (masks / mask).write_bytes(b"")
        found = find_pairs(images, masks)
    assert {(p.stem, p.image.name, p.mask.name) for p in found} == set(pairs)


# ------------------------------------------------------------------------------------ readers and bytes


def sample_files() -> list[bytes]:
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (12, 17)).astype(np.uint8)
    rgb = rng.integers(0, 256, (12, 17, 3)).astype(np.uint8)
    return [encode_png(gray), encode_png(rgb), encode_png(gray.astype(np.uint16) * 200),
            encode_png(gray % 3, palette=tuple(range(256)) * 3)]


SAMPLES = sample_files()


def valid_image(array) -> bool:
    return (array.ndim == 3 and array.shape[2] in (1, 2, 3, 4) and min(array.shape[:2]) >= 1
            and array.dtype in (np.uint8, np.uint16, np.float32))


def valid_mask(raw) -> bool:
    return (raw.kind in ("gray", "rgb", "palette") and raw.values.dtype in (np.uint8, np.uint16)
            and raw.values.ndim == (3 if raw.kind == "rgb" else 2) and raw.values.size > 0)


def read_both(data: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"file{suffix}"
        path.write_bytes(data)
        for reader, valid in ((read_image, valid_image), (read_mask, valid_mask)):
            try:
                result = reader(path)
            except UnetcliError:
                continue
            assert valid(result), (reader.__name__, result)


@FAST
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".png", ".tif", ".jpg", ".bmp", ".webp"]))
def test_random_bytes_give_an_array_or_our_error(data, suffix):
    read_both(data, suffix)


@FAST
@given(sample=st.sampled_from(SAMPLES), edits=st.lists(st.tuples(st.integers(0, 10**6), byte), max_size=6),
       cut=st.one_of(st.none(), st.integers(1, 10**6)))
def test_damaged_images_give_an_array_or_our_error(sample, edits, cut):
    """Real PNGs (gray, colour, 16-bit, palette) with flipped bytes or cut short."""
    data = bytearray(sample)
    for position, value in edits:
        data[position % len(data)] = value
    if cut is not None:
        data = data[: cut % len(data) or 1]
    read_both(bytes(data), ".png")


def test_every_printable_name_is_a_valid_stem_for_the_generator():
    """A guard for the strategy above: plain ASCII names pair too (the strategy is not vacuous)."""
    name = string.ascii_letters + " -_()"
    assert pair_files([Path(name + ".png")], [Path(name + "_mask.tif")], Path("."), Path("."))[0].stem == name
