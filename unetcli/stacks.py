"""Multi-page TIFF stacks (plain multi-page TIFF, OME-TIFF, ImageJ hyperstacks), read with tifffile one page at
a time: pairing a stack's pages with a mask stack (or a folder of per-page masks), splitting them into training
and validation, and predicting a stack into output stacks page by page (stack_outputs.py writes them).

A page is one plane of the file's first series: every leading axis (z, time, channel in a hyperstack) counts
pages, in file order; the pixels of a page are H x W or H x W x samples (RGB). Pages count from 0, as tifffile
and numpy count (Fiji's slice 1 is page 0); a page pair's stem is `<stem>[<page>]`, zero-padded so they sort.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError, UnetcliWarning
from .geotiff import GEO_TAGS, GeoTags, page_geo_tags

TIFF_SUFFIXES = (".tif", ".tiff")


def page_label(path: Path | str, page: int) -> str:
    """How messages name one page of a stack."""
    return f"{path} page {page}"


class Stack:
    """An open TIFF: `len(stack)` pages (1 for an ordinary TIFF), `stack.read(i)` decodes page i alone. Use it
    as a context manager (it holds the file open)."""

    def __init__(self, path: Path | str):
        import tifffile

        self.path = Path(path)
        try:
            self._tif = tifffile.TiffFile(self.path)
        except OSError as err:
            raise DataError(f"{self.path}: cannot read the file ({err.strerror or err}); check that it exists and is readable") from None
        except Exception:  # noqa: BLE001 - tifffile raises several types for damaged files
            raise DataError(f"{self.path}: not a TIFF that can be decoded (truncated or corrupt); re-export it") from None
        try:
            self._locate(tifffile)
        except DataError:
            self._tif.close()
            raise
        except Exception:  # noqa: BLE001 - damaged structure or metadata (tifffile raises many types)
            self._tif.close()
            raise DataError(f"{self.path}: a TIFF whose pages cannot be told apart (damaged structure or "
                            "metadata); re-export it") from None

    def _locate(self, tifffile) -> None:
        if not self._tif.series:
            raise DataError(f"{self.path}: the TIFF holds no image; re-export it")
        series = self._series = self._tif.series[0]
        axes = series.axes
        self._separate = axes[-3:] == "SYX"  # planar RGB: samples before the rows
        self.plane_shape = series.shape[-3:] if axes.endswith("S") or self._separate else series.shape[-2:]
        self.count = math.prod(series.shape[: len(series.shape) - len(self.plane_shape)])
        self.size = self.plane_shape[1:] if self._separate else self.plane_shape[:2]  # (height, width) of a page
        self.geo_tags: GeoTags = page_geo_tags(self._tif.pages.first)
        self._memmap = None
        if len(series.pages) != self.count:  # an ImageJ stack over 4 GB: one IFD, then every page's pixels
            if series.dataoffset is None:
                raise DataError(f"{self.path}: the stack's {self.count} pages cannot be read one at a time; "
                                "save it as a plain multi-page TIFF (e.g. Fiji: File > Save As > Tiff)")
            self._memmap = tifffile.memmap(self.path, series=0, mode="r").reshape(-1, *self.plane_shape)
        elif series.kind not in ("ome", "imagej"):
            full = sum(1 for page in self._tif.pages if not page.is_reduced)  # not the overviews of a (cloud) GeoTIFF
            if full > self.count:
                raise DataError(f"{self.path}: its {full} pages differ in size or pixel type; a stack's pages must all "
                                "be alike (save the odd ones as separate files)")

    def __len__(self) -> int:
        return self.count

    def __enter__(self):  # -> Self (typing.Self needs Python 3.11)
        return self

    def __exit__(self, *exc) -> None:
        self._memmap = None
        self._tif.close()

    def image(self, page: int) -> np.ndarray:
        """Page `page` as images.read_image returns images (H x W x C; a palette page in its colours)."""
        from .images import image_array

        array, palette = self.read(page)
        if palette is not None:
            array = np.asarray(palette, np.uint8).reshape(-1, 3)[array]
        return image_array(array, page_label(self.path, page))

    def read(self, page: int) -> tuple[np.ndarray, tuple[int, ...] | None]:
        """Page `page` as stored: (H x W or H x W x C array, the palette as a flat RGB list for palette pages)."""
        from .images import check_pixel_limit

        if not 0 <= page < self.count:
            raise DataError(f"{self.path}: has no page {page} (pages 0..{self.count - 1})")
        check_pixel_limit(self.path, self.size[1], self.size[0])
        if self._memmap is not None:
            return np.array(self._memmap[page]), None
        tiff_page = self._series.pages[page]
        if tiff_page is None:
            raise DataError(f"{page_label(self.path, page)}: stored in another file (a multi-file OME-TIFF); "
                            "save the stack as one file")
        try:
            array = tiff_page.asarray()
        except Exception:  # noqa: BLE001 - damaged or unsupported compression
            raise DataError(f"{page_label(self.path, page)}: cannot be decoded (truncated, corrupt or an unsupported "
                            "compression); re-export the stack") from None
        if self._separate:
            array = np.ascontiguousarray(np.moveaxis(array, 0, -1))
        keyframe = tiff_page.keyframe
        if keyframe.photometric == 3 and keyframe.colormap is not None:  # palette: indices + a 16-bit colour map
            scale = 257 if int(keyframe.colormap.max()) > 255 else 1
            return array, tuple(int(v) for v in (keyframe.colormap.T[:256] // scale).ravel())
        return array, None


@dataclass(frozen=True)
class TiffLayout:
    """What predict and pairing need to know of a file before reading it."""

    pages: int = 1
    geo_tags: GeoTags = ()


def tiff_layout(path: Path | str) -> TiffLayout:
    """Pages and georeferencing of a TIFF (a header read, cached per file version); other files, and TIFFs that
    cannot be read (their reader reports why), give the plain layout."""
    path = Path(path)
    if path.suffix.lower() not in TIFF_SUFFIXES:
        return TiffLayout()
    try:
        stat = path.stat()
    except OSError:
        return TiffLayout()
    return _layout(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4096)
def _layout(path: str, _mtime: int, _size: int) -> TiffLayout:
    if _one_plain_page(path):
        return TiffLayout()
    try:
        with Stack(path) as stack:
            return TiffLayout(len(stack), stack.geo_tags)
    except DataError:  # the reader (OpenCV or Stack.read) says what is wrong, for the file's own command
        return TiffLayout()


def _one_plain_page(path: str) -> bool:
    """A look at the first IFD alone (a few hundred bytes, a tenth of tifffile's parse; it counts in a folder of
    100,000 TIFF tiles): True for a classic TIFF of one page, without georeferencing and without an ImageJ
    description (an ImageJ stack over 4 GB has one IFD for all its pages). False means: ask tifffile."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
            order = {b"II": "<", b"MM": ">"}.get(head[:2])
            if order is None or struct.unpack(order + "H", head[2:4])[0] != 42:
                return False  # not a classic TIFF (BigTIFF, or no TIFF at all)
            handle.seek(struct.unpack(order + "I", head[4:8])[0])
            count = struct.unpack(order + "H", handle.read(2))[0]
            entries = handle.read(12 * count)
            following = struct.unpack(order + "I", handle.read(4))[0]
            codes = {struct.unpack_from(order + "H", entries, 12 * i)[0]: i for i in range(count)}
            if following or codes.keys() & GEO_TAGS.keys():
                return False
            if 270 in codes:  # ImageDescription: where ImageJ says how many pages
                length, offset = struct.unpack_from(order + "II", entries, 12 * codes[270] + 4)
                if length > 4:
                    handle.seek(offset)
                    return not handle.read(7).startswith(b"ImageJ=")
    except (OSError, struct.error):
        return False
    return True


def page_count(path: Path | str) -> int:
    return tiff_layout(path).pages


def tiff_outputs(path: Path | str) -> bool:
    """Whether predict writes TIFFs for this input: a stack (stacks of pages) or a GeoTIFF (tags kept)."""
    layout = tiff_layout(path)
    return layout.pages > 1 or bool(layout.geo_tags)


def read_page(path: Path | str, page: int) -> tuple[np.ndarray, tuple[int, ...] | None]:
    """One page of a stack file (see Stack.read)."""
    with Stack(path) as stack:
        return stack.read(page)


# ------------------------------------------------------------------------------------------------ pairing


def _natural(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def page_masks(folder: Path) -> list[Path]:
    """A stack's folder of per-page masks (DATA/masks/<stem>/): its image files in natural name order (2 before 10)."""
    from .images import is_image_file

    return sorted((p for p in folder.iterdir() if p.is_file() and is_image_file(p)), key=_natural)


def expand_stacks(pairs: list) -> list:
    """Each pair whose image is a stack becomes one pair per page (data.Pair with `page`), matched with the same
    page of a mask stack (`mask_page`) or the same position in a folder of per-page masks; page counts must agree."""
    expanded = []
    for pair in pairs:
        pages = page_count(pair.image)
        masks = page_masks(pair.mask) if pair.mask.is_dir() else None
        mask_pages = page_count(pair.mask) if masks is None else len(masks)
        if pages == 1 and masks is None and mask_pages == 1:
            expanded.append(pair)
            continue
        if pages == 1:
            raise DataError(f"{pair.mask}: holds {mask_pages} masks (a stack or a folder of per-page masks), but its "
                            f"image {pair.image.name} is one image; give the image as a stack of {mask_pages} pages")
        if mask_pages != pages:
            raise DataError(f"{pair.image}: a stack of {pages} pages, but its mask {pair.mask.name} holds {mask_pages}; "
                            f"pages pair one to one, so the mask needs {pages} pages (a stack, or a folder of {pages} masks)")
        digits = len(str(pages - 1))
        for page in range(pages):
            stem = f"{pair.stem}[{page:0{digits}d}]"
            if masks is None:
                expanded.append(dataclasses.replace(pair, stem=stem, page=page, mask_page=page))
            else:
                expanded.append(dataclasses.replace(pair, stem=stem, page=page, mask=masks[page]))
    return expanded


def stack_pages(pairs: list) -> dict[Path, int]:
    """Stack image file -> its pages among `pairs` (what check reports)."""
    found: dict[Path, int] = {}
    for pair in pairs:
        if getattr(pair, "page", None) is not None:
            found[pair.image] = found.get(pair.image, 0) + 1
    return found


def split_stack_pages(pairs: list, val_fraction: float, fold: int = 0, folds: int = 1) -> tuple[list, list]:
    """Stack pages into training and validation: the last `val_fraction` of each stack's pages (at least one, when
    a stack has two or more) validate; with `fold` k of `folds` K, the k-th of K equal blocks of each stack. Blocks
    rather than random pages, because neighbouring slices of a volume are near copies: a random split would
    validate on pages the model has all but seen (only a block's edge pages have a training neighbour)."""
    if not pairs or (val_fraction == 0 and not fold):
        return list(pairs), []
    stacks: dict[Path, list] = {}
    for pair in pairs:
        stacks.setdefault(pair.image, []).append(pair)
    train, val, parts = [], [], []
    for image, pages in stacks.items():
        count = len(pages)
        if fold:
            start, stop = (fold - 1) * count // folds, fold * count // folds
        else:
            start, stop = count - (max(1, round(count * val_fraction)) if count >= 2 else 0), count
        train += pages[:start] + pages[stop:]
        val += pages[start:stop]
        parts.append(f"{image.name}: pages {start}..{stop - 1} of {count}" if stop > start else f"{image.name}: none")
    share = f"block {fold} of {folds}" if fold else f"the last {val_fraction:.0%}"
    listed = "; ".join(parts[:3]) + ("; ..." if len(parts) > 3 else "")
    warnings.warn(UnetcliWarning(f"stacks split by page: {share} of each stack's pages validate ({listed}), since "
                                 "neighbouring slices look alike; give --val DATA to choose the validation data"), stacklevel=3)
    return train, val
