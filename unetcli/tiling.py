"""Overlap-tile geometry and Gaussian blending (the U-Net paper's strategy for images of any size).

The image is cut into overlapping tiles and the tiles' logits are blended with a Gaussian weight so seams
vanish. Tiles lie inside the image padded bottom/right to the network stride (reflect, as for whole images)
and start at multiples of the stride, so every pixel is predicted with the same borders and the same
pooling grid as when the image is predicted whole: tiled and whole predictions agree (>= 99.9 % of pixels
for a trained model), whatever the tile size, except for encoders that pool over the whole input
(squeeze-and-excitation: efficientnet, se_resnext, ...), where a tile's global context differs. A tile
never exceeds the padded image along either axis, so a 3 x 100000 strip is cut into 32 x N tiles, not
N x N ones. Rows of tiles are processed in order and blended in a band one tile tall: memory grows with the
image width, not with its area (the caller keeps what it needs of finished rows: uint8 class ids).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .transforms import STRIDE

MAX_OVERLAP = 0.75  # more overlap than this costs over 16x the work of whole-image prediction for little gain


def is_tile_size(size: int) -> bool:
    return size >= STRIDE and size % STRIDE == 0


def is_overlap(overlap: float) -> bool:
    return 0 <= overlap <= MAX_OVERLAP


@dataclass(frozen=True)
class TileGrid:
    height: int  # image size
    width: int
    tile_height: int  # tile size (multiples of the network stride, at most the padded image)
    tile_width: int
    ys: tuple[int, ...]  # tile origins (multiples of the network stride)
    xs: tuple[int, ...]

    @property
    def padded_height(self) -> int:
        return self.ys[-1] + self.tile_height

    @property
    def padded_width(self) -> int:
        return self.xs[-1] + self.tile_width


def _axis(length: int, tile: int, overlap: float) -> tuple[int, tuple[int, ...]]:
    """(tile size, tile origins) along one axis: the tile clipped to `length` padded to the network stride;
    as few tiles as keep neighbours overlapping by at least `overlap`, spread evenly from the start to the
    padded end (so the overlap is as large as that number of tiles allows), at multiples of the stride."""
    extent = -(-length // STRIDE) * STRIDE
    tile = min(tile, extent)
    span = (extent - tile) // STRIDE  # in units of the stride
    step = max(1, int(tile * (1 - overlap)) // STRIDE)
    gaps = -(-span // step)  # tiles - 1
    if gaps == 0:
        return tile, (0,)
    return tile, tuple(round(i * span / gaps) * STRIDE for i in range(gaps + 1))


def plan_tiles(height: int, width: int, tile: int, overlap: float) -> TileGrid:
    if tile < STRIDE or tile % STRIDE:
        raise ValueError(f"tile size {tile} must be a positive multiple of {STRIDE}")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap {overlap} must be in [0, 1)")
    tile_height, ys = _axis(height, tile, overlap)
    tile_width, xs = _axis(width, tile, overlap)
    return TileGrid(height, width, tile_height, tile_width, ys, xs)


def _gaussian(length: int, sigma_scale: float) -> np.ndarray:
    axis = np.arange(length, dtype=np.float64) - (length - 1) / 2
    g = np.exp(-0.5 * (axis / (length * sigma_scale)) ** 2)
    return g / g.max()


def gaussian_weight(height: int, width: int, sigma_scale: float = 0.125) -> np.ndarray:
    """A (height, width) weight peaking at the centre, never below 1e-3 so every pixel gets a weight."""
    weight = np.outer(_gaussian(height, sigma_scale), _gaussian(width, sigma_scale))
    return np.maximum(weight, 1e-3).astype(np.float32)


def mirror_indices(length: int, total: int) -> np.ndarray:
    """Source index of each of `total` positions, the first `length` the image's own, the rest mirrored
    (reflect without repeating the edge pixel, to any depth)."""
    position = np.arange(total)
    if length == 1:
        return np.zeros(total, np.int64)
    period = 2 * (length - 1)
    position = np.mod(position, period)
    return np.where(position < length, position, period - position)


class MirroredImage:
    """The image mirrored at its borders (reflect without repeating the edge) so that every tile of `grid` lies
    inside it; `[rows, cols]` slices cut tiles on demand, so a huge image is never copied whole."""

    def __init__(self, image: np.ndarray, grid: TileGrid):
        self.image = image
        self.rows = mirror_indices(grid.height, grid.padded_height)
        self.cols = mirror_indices(grid.width, grid.padded_width)

    def __getitem__(self, index: tuple[slice, slice]) -> np.ndarray:
        rows, cols = self.rows[index[0]], self.cols[index[1]]
        if _contiguous(rows) and _contiguous(cols):  # inside the image: a view
            return self.image[rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1]
        return self.image[np.ix_(rows, cols)]


def _contiguous(indices: np.ndarray) -> bool:
    return bool(indices[-1] - indices[0] == len(indices) - 1 and np.all(np.diff(indices) == 1))


def blend(
    padded: MirroredImage,
    grid: TileGrid,
    forward: Callable[[list[np.ndarray]], np.ndarray],
    channels: int,
    take_rows: Callable[[int, np.ndarray], None],
    batch_size: int = 4,
) -> None:
    """Run `forward` on batches of tiles and blend their (N, channels, tile_height, tile_width) logits with a
    Gaussian. Rows that get no further tiles go to `take_rows(top, logits)`: the blended (channels, rows, W)
    logits of image rows top, top + 1, ...; only a band one tile high is ever held."""
    tile_height, tile_width = grid.tile_height, grid.tile_width
    weight = gaussian_weight(tile_height, tile_width)
    band = np.zeros((channels, tile_height, grid.padded_width), np.float32)
    band_weight = np.zeros((tile_height, grid.padded_width), np.float32)
    band_top = 0  # image row of band[0]

    def finish(rows: int) -> None:
        """Hand on the band's first `rows` rows (they get no further tiles)."""
        bottom = min(band_top + rows, grid.height)
        if bottom > band_top:
            logits = band[:, : bottom - band_top, : grid.width]
            weights = band_weight[: bottom - band_top, : grid.width]
            take_rows(band_top, logits / weights)

    for y in grid.ys:
        if y > band_top:
            shift = y - band_top
            finish(shift)
            band[:, : tile_height - shift] = band[:, shift:]
            band[:, tile_height - shift:] = 0
            band_weight[: tile_height - shift] = band_weight[shift:]
            band_weight[tile_height - shift:] = 0
            band_top = y
        for start in range(0, len(grid.xs), batch_size):
            xs = grid.xs[start: start + batch_size]
            logits = forward([padded[y: y + tile_height, x: x + tile_width] for x in xs])
            for x, tile_logits in zip(xs, logits):
                band[:, :, x: x + tile_width] += tile_logits * weight
                band_weight[:, x: x + tile_width] += weight
    finish(tile_height)
