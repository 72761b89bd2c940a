"""GeoTIFF georeferencing carried from an input onto its outputs, and TIFF encoding of outputs (tifffile).

A GeoTIFF's position on the map lives in six TIFF tags; predict copies them onto every output of the input
(mask, colour, overlay, probabilities, instances), which are then TIFFs, so GIS tools (QGIS, GDAL) lay the
outputs over the input. The outputs have the input's size, so the same tags place them exactly.
"""

from __future__ import annotations

import io

import numpy as np

# The georeferencing tags (GeoTIFF 1.1). GDAL_METADATA (42112) and GDAL_NODATA (42113) are left out on purpose:
# they describe the input's bands (statistics, scale, offset) and its no-data value, which are not true of a
# class mask (a NODATA of 0 would make QGIS draw the background class as a hole).
GEO_TAGS = {
    33550: "ModelPixelScale",
    33922: "ModelTiepoint",
    34264: "ModelTransformation",
    34735: "GeoKeyDirectory",
    34736: "GeoDoubleParams",
    34737: "GeoAsciiParams",
}

GeoTags = tuple  # tifffile `extratags`: (code, dtype, count, value, writeonce) per tag


def page_geo_tags(page) -> GeoTags:
    """The georeferencing tags of a tifffile page as `extratags` (empty when it has none)."""
    found = []
    for code in GEO_TAGS:
        tag = page.tags.get(code)
        if tag is not None:
            value = tag.value
            count = len(value) if isinstance(value, (tuple, list, np.ndarray)) else tag.count
            found.append((code, int(tag.dtype), count, value, False))
    return tuple(found)


def tiff_bytes(array: np.ndarray, *, palette: tuple[int, ...] | None = None, tags: GeoTags = ()) -> bytes:
    """A zlib-compressed TIFF of one H x W (gray, or palette indices with `palette`) or H x W x 3/4 (RGB(A))
    array, with `tags` (see page_geo_tags) added."""
    import tifffile

    buffer = io.BytesIO()
    with tifffile.TiffWriter(buffer) as writer:
        writer.write(array, **page_options(array, palette, tags))
    return buffer.getvalue()


def page_options(array: np.ndarray, palette: tuple[int, ...] | None, tags: GeoTags) -> dict:
    """tifffile `write` options for one page (shared by single outputs and the pages of output stacks)."""
    options = {"compression": "zlib", "metadata": None, "extratags": tags}
    if palette is not None:
        colours = np.zeros((256, 3), np.uint16)
        given = np.asarray(palette[: 256 * 3], np.uint16).reshape(-1, 3)
        colours[: len(given)] = given
        options.update(photometric="palette", colormap=(colours * 257).T)
    elif array.ndim == 3:
        options.update(photometric="rgb", extrasamples=("unassalpha",) if array.shape[2] == 4 else None)
    else:
        options.update(photometric="minisblack")
    return options
