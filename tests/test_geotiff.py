"""GeoTIFF inputs (issue 15): their georeferencing tags are copied onto every output, which are TIFFs then; inputs
without the tags are predicted as before."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tifffile
from helpers import cli, ok, read_values

from unetcli.geotiff import GEO_TAGS, tiff_bytes

# A projected tile (WGS 84 / UTM zone 33N, 0.5 m pixels) with every georeferencing tag, and GDAL's no-data value.
GEO = [
    (33550, "d", 3, (0.5, 0.5, 0.0), False),  # ModelPixelScale
    (33922, "d", 6, (0.0, 0.0, 0.0, 500000.0, 4000000.0, 0.0), False),  # ModelTiepoint
    (34264, "d", 16, tuple(float(v) for v in (0.5, 0, 0, 500000, 0, -0.5, 0, 4000000, 0, 0, 0, 0, 0, 0, 0, 1)), False),
    (34735, "H", 20, (1, 1, 0, 4, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32633, 2049, 34737, 7, 0), False),
    (34736, "d", 2, (6378137.0, 298.257223563), False),  # GeoDoubleParams
    (34737, "s", 0, "WGS 84|", False),  # GeoAsciiParams
    (42113, "s", 0, "0", False),  # GDAL_NODATA: the input's, not true of a mask (left out, see geotiff.py)
]


def geo_tags(path: Path, page: int = 0) -> dict:
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[page].tags
        return {code: tags[code].value for code in (*GEO_TAGS, 42112, 42113) if code in tags}


def write_geotiff(path: Path, image: np.ndarray) -> Path:
    tifffile.imwrite(path, image, photometric="minisblack", extratags=GEO)
    return path


def test_a_geotiff_keeps_its_tags_on_every_output(trained, tmp_path):
    image = read_values(trained.images[0])
    source = write_geotiff(tmp_path / "tile.tif", image)
    expected = geo_tags(source)
    assert set(expected) == {*GEO_TAGS, 42113}
    del expected[42113]
    out = tmp_path / "out"
    line = json.loads(ok(cli("predict", trained.model, source, "-o", out, "--save", "mask,color,overlay,probs,instances",
                             "--json")).stdout)
    assert line["outputs"] == {kind: str(out / f"tile{suffix}.tif") for kind, suffix in
                               (("mask", ""), ("color", "_color"), ("overlay", "_overlay"), ("probs", "_probs"),
                                ("instances", "_instances"))}
    for written in line["outputs"].values():
        assert geo_tags(Path(written)) == expected, written
        assert tifffile.imread(written).shape[:2] == image.shape
    plain = tmp_path / "plain"  # the same pixels as a PNG: the same mask and probabilities
    ok(cli("predict", trained.model, trained.images[0], "-o", plain, "--save", "probs", "--quiet"))
    assert np.array_equal(tifffile.imread(out / "tile.tif"), read_values(plain / f"{trained.images[0].stem}.png"))
    assert np.array_equal(tifffile.imread(out / "tile_probs.tif"), read_values(plain / f"{trained.images[0].stem}_probs.png"))


def test_a_geotiff_stack_keeps_its_tags_on_every_page(trained, tmp_path):
    pages = np.stack([read_values(p) for p in trained.images[:3]])
    source = tmp_path / "tiles.tif"
    tifffile.imwrite(source, pages, photometric="minisblack", extratags=GEO[:6])
    ok(cli("predict", trained.model, source, "-o", tmp_path / "out", "--save", "mask,color", "--quiet"))
    for name in ("tiles.tif", "tiles_color.tif"):
        assert [geo_tags(tmp_path / "out" / name, page) for page in range(3)] == [geo_tags(source)] * 3


def test_without_tags_nothing_changes(trained, tmp_path):
    image = read_values(trained.images[0])
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, image, photometric="minisblack")
    ok(cli("predict", trained.model, plain, "-o", tmp_path / "out", "--save", "mask,color,instances", "--quiet"))
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_file()) == [
        "objects.csv", "plain.png", "plain_color.png", "plain_instances.tif"]
    assert geo_tags(tmp_path / "out" / "plain_instances.tif") == {}


def test_a_palette_mask_is_written_as_a_palette_tiff():
    palette = (0, 0, 0, 255, 0, 0, 0, 0, 255)
    data = tiff_bytes(np.array([[0, 1], [2, 1]], np.uint8), palette=palette, tags=tuple(GEO[:2]))
    import io

    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        page = tif.pages[0]
        assert page.photometric == 3 and tuple(page.colormap[:, 1] // 257) == (255, 0, 0)
        assert page.tags[33550].value == (0.5, 0.5, 0.0)
