"""All image file I/O: decoding with limits, RGB channel order, masks, atomic writes.

Images come back as H x W x C arrays in their stored dtype (uint8, uint16 or float32), channels in RGB(A)
order. Masks come back as raw pixel values: H x W for gray and palette masks, H x W x 3 for colour masks.
Both are turned as their EXIF orientation says, i.e. as image viewers and annotation tools show them.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import DataError, OutputError, UnetcliError, UsageError
from .pngfacts import DamagedPng, PngFacts, png_facts

IMAGE_EXTENSIONS = frozenset(
    [".png", ".jpg", ".jpeg", ".jpe", ".tif", ".tiff", ".bmp", ".dib", ".webp", ".jp2", ".pbm", ".pgm", ".ppm", ".pnm", ".pxm", ".sr", ".ras", ".exr", ".hdr", ".pic"]
)
LOSSY_EXTENSIONS = frozenset([".jpg", ".jpeg", ".jpe", ".jp2"])
DEFAULT_MAX_PIXELS = 1 << 30  # about 32k x 32k; override with UNETCLI_MAX_PIXELS

_PILLOW_LIMIT = threading.Lock()


@contextlib.contextmanager
def _own_pixel_limit():
    """Pillow's decompression-bomb guard off for one header read: unetcli checks the size against its own
    limit (UNETCLI_MAX_PIXELS) with its own message. Pillow's setting is global, so it is restored at once
    (and calls of ours are serialised) rather than turned off for every program that imports unetcli."""
    with _PILLOW_LIMIT:
        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = previous


def _open(source) -> Image.Image:
    with _own_pixel_limit():
        return Image.open(source)


def max_pixels() -> int:
    value = os.environ.get("UNETCLI_MAX_PIXELS", "").strip()
    if not value:
        return DEFAULT_MAX_PIXELS
    try:
        limit = int(float(value))  # 1e9 is fine too
    except ValueError:
        limit = 0
    if limit < 1:
        raise UsageError(f"UNETCLI_MAX_PIXELS={value!r}: use a positive number of pixels, e.g. 2000000000 (or unset it)")
    return limit


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _read_bytes(path: Path) -> np.ndarray:
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except (OSError, ValueError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise DataError(f"{path}: cannot read the file ({reason}); check that it exists and is readable") from None
    if data.size == 0:
        raise DataError(f"{path}: the file is empty (0 bytes); re-export it or remove it from the folder")
    return data


def check_pixel_limit(path: Path, width: int, height: int) -> None:
    limit = max_pixels()
    if width * height > limit:
        raise DataError(
            f"{path}: {width}x{height} pixels exceeds the limit of {limit} pixels "
            "(a guard against decompression bombs); raise UNETCLI_MAX_PIXELS if the image is genuine"
        )


def _peek(data: np.ndarray, path: Path) -> Image.Image | None:
    """Open the header with Pillow (no pixel decoding) so the size is checked before decoding."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            header = _open(io.BytesIO(data.tobytes()))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None  # a format Pillow does not know; OpenCV's own limit still applies
    check_pixel_limit(path, *header.size)
    _check_single_image(header, path)
    return header


def _check_single_image(header: Image.Image, path: Path) -> None:
    """OpenCV would decode only the first page of a TIFF stack (or frame of an animation), silently. TIFF stacks
    are read page by page where pages are asked for (stacks.py); animations are refused."""
    if header.format == "TIFF":
        from .stacks import page_count  # tifffile's count: a GeoTIFF's overviews are not pages

        pages = page_count(path)
        if pages > 1:
            raise DataError(f"{path}: a stack of {pages} pages where one image was expected; stacks pair page by page "
                            "with a mask stack (train, check, evaluate) and predict into stacks, or save each page as "
                            "its own file (e.g. with Fiji: Image > Stacks > Stack to Images)")
        return
    try:
        frames = int(getattr(header, "n_frames", 1))
    except (OSError, ValueError, SyntaxError, EOFError):
        return  # a damaged frame chain: decoding decides
    if frames > 1:
        raise _animation(path, frames)


def _animation(path: Path, frames: int) -> DataError:
    return DataError(f"{path}: an animation of {frames} frames, and unetcli reads still images; save each frame as its "
                     "own file, or the frames as a multi-page TIFF stack (e.g. with Fiji: File > Save As > Tiff)")


def _plain_png(data: np.ndarray, path: Path) -> PngFacts | None:
    """A PNG's facts, its chunks checked and its size within the limit, when it needs no Pillow (no EXIF block that
    could turn it); None for other files and PNGs with EXIF, which take the Pillow path."""
    try:
        facts = png_facts(data)
    except DamagedPng:
        raise _undecodable(path) from None
    if facts is None or facts.exif:
        return None
    check_pixel_limit(path, facts.width, facts.height)
    if facts.frames > 1:
        raise _animation(path, facts.frames)
    return facts


EXIF_ORIENTATION = 0x0112
# EXIF orientation -> how to turn the stored pixels into what image viewers show (checked against Pillow's
# ImageOps.exif_transpose in the tests). Phones store portrait photos as rotated landscape pixels plus this tag.
_ORIENT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 2).swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}


def _orientation(header: Image.Image | None) -> int:
    if header is None or (header.format == "PNG" and "exif" not in header.info):
        return 1  # (Pillow would decode a whole PNG to look for an eXIf chunk after the pixels)
    try:
        value = header.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - a damaged EXIF block: read the pixels as stored
        return 1
    return value if value in _ORIENT else 1


def _as_viewers_show(array: np.ndarray, header: Image.Image | None) -> np.ndarray:
    """Apply the EXIF orientation, so that images, masks and predictions line up as the user sees them."""
    orientation = _orientation(header)
    return array if orientation == 1 else np.ascontiguousarray(_ORIENT[orientation](array))


def exif_rotates(path: Path) -> bool:
    """True if the file's EXIF orientation swaps its width and height (a hint for size mismatch messages)."""
    try:
        with _open(path) as header:
            return _orientation(header) in (5, 6, 7, 8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return False


def _undecodable(path: Path) -> DataError:
    return DataError(
        f"{path}: not an image that can be decoded (truncated, corrupt or not an image at all); "
        "re-export it as PNG or TIFF"
    )


def _check_png(data: np.ndarray, path: Path) -> None:
    """Chunk CRCs and completeness of a PNG (pngfacts.py), checked without decoding pixels: a damaged file is
    refused here rather than by libpng, which also prints its own 'libpng error: ...' line on stderr."""
    try:
        png_facts(data)
    except DamagedPng:
        raise _undecodable(path) from None


def _decode(data: np.ndarray, path: Path, *, checked: bool = False) -> np.ndarray:
    if not checked:  # (a plain PNG's chunks were checked by _plain_png)
        _check_png(data, path)
    try:
        array = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error:
        array = None
    if array is None or array.size == 0:
        raise _undecodable(path)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 3:
        code = cv2.COLOR_BGRA2RGBA if array.shape[2] == 4 else cv2.COLOR_BGR2RGB
        array = cv2.cvtColor(array, code)
    return array


def read_image(path: str | Path, page: int | None = None) -> np.ndarray:
    """Decode an image to H x W x C (C = 1, 3 or 4) in RGB(A) order and its stored dtype; with `page`, that page
    of a TIFF stack (stacks.py)."""
    path = Path(path)
    if page is not None:
        from .stacks import Stack

        with Stack(path) as stack:
            return stack.image(page)
    data = _read_bytes(path)
    if _plain_png(data, path) is not None:
        return image_array(_decode(data, path, checked=True), path)
    header = _peek(data, path)
    return image_array(_as_viewers_show(_decode(data, path), header), path)


def image_array(array: np.ndarray, path: Path | str) -> np.ndarray:
    """Decoded pixels as read_image returns them (H x W x C; uint8, uint16 or float32), or a DataError naming `path`."""
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    elif array.dtype not in (np.uint8, np.uint16, np.float32):
        raise DataError(
            f"{path}: pixel type {array.dtype} is not supported; save it as 8- or 16-bit unsigned, or 32-bit float"
        )
    if array.ndim == 2:
        array = array[:, :, None]
    _check_finite(array, path)
    return array


def _check_finite(array: np.ndarray, path: Path | str) -> None:
    """Float images with NaN or Inf pixels are refused: the network turns them into NaN logits, which come out as
    background everywhere they reach (a silent 'entirely background' prediction)."""
    if array.dtype.kind != "f" or np.isfinite(array).all():
        return
    bad = int(np.count_nonzero(~np.isfinite(array).all(axis=2)))
    total = array.shape[0] * array.shape[1]
    raise DataError(
        f"{path}: {bad} of {total} pixels are NaN or Inf (not a number or infinite); replace them with real values "
        "(e.g. numpy.nan_to_num, or Fiji: Process > Math > Remove NaNs) or crop them out, and save the image again"
    )


def to_unit_range(image: np.ndarray) -> np.ndarray:
    """Scale integer images to float32 in [0, 1] by their dtype's range; float images pass through."""
    if image.dtype == np.uint8:
        return image.astype(np.float32) * (1.0 / 255.0)
    if image.dtype == np.uint16:
        return image.astype(np.float32) * (1.0 / 65535.0)
    return image.astype(np.float32, copy=False)


@dataclass(frozen=True)
class RawMask:
    """A mask's pixel values as stored. kind: 'gray' (H x W), 'rgb' (H x W x 3) or 'palette' (indices)."""

    values: np.ndarray
    kind: str
    palette: tuple[int, ...] | None = None


def read_mask(path: str | Path, page: int | None = None) -> RawMask:
    """A mask's values (see RawMask); with `page`, that page of a TIFF stack (stacks.py)."""
    path = Path(path)
    if path.suffix.lower() in LOSSY_EXTENSIONS:
        raise DataError(
            f"{path}: masks must be lossless (PNG, TIFF or BMP); JPEG compression invents new pixel values "
            "at every edge, so class ids cannot be trusted. Re-export the mask as PNG"
        )
    if page is not None:
        from .stacks import page_label, read_page

        array, palette = read_page(path, page)
        if palette is not None:
            return RawMask(array, "palette", palette)
        return _mask_values(array, page_label(path, page))
    data = _read_bytes(path)
    png = _plain_png(data, path)
    if png is not None and not png.palette:
        return _mask_values(_decode(data, path, checked=True), path)
    header = _peek(data, path)
    if header is not None and header.mode in ("P", "PA"):
        try:
            indices = np.asarray(header.convert("P") if header.mode == "PA" else header)
        except (OSError, ValueError, SyntaxError):
            raise _undecodable(path) from None
        palette = tuple(header.getpalette() or ())
        return RawMask(_as_viewers_show(np.ascontiguousarray(indices), header), "palette", palette)
    return _mask_values(_as_viewers_show(_decode(data, path), header), path)


def _mask_values(array: np.ndarray, path: Path | str) -> RawMask:
    """Decoded mask pixels as a gray or colour RawMask (colour masks whose channels agree are gray)."""
    if array.ndim == 3:
        array = array[:, :, :3]
        if (array[:, :, 0] == array[:, :, 1]).all() and (array[:, :, 0] == array[:, :, 2]).all():
            array = np.ascontiguousarray(array[:, :, 0])
        elif array.dtype != np.uint8:
            raise DataError(f"{path}: colour masks must be 8-bit; save it as an 8-bit RGB PNG")
    if array.dtype not in (np.uint8, np.uint16):
        array = _label_values(array, path)
    return RawMask(array, "rgb" if array.ndim == 3 else "gray")


def _label_values(array: np.ndarray, path: Path) -> np.ndarray:
    """Gray masks stored as other integer types (32-bit or signed TIFF label images, as labelling tools save
    object ids) as 16-bit, when every value fits; float and out-of-range masks are refused."""
    if array.ndim != 2 or array.dtype.kind not in "iu":
        raise DataError(
            f"{path}: mask pixel type {array.dtype} is not supported; masks hold integer class values "
            "(8- or 16-bit PNG)"
        )
    low, high = int(array.min(initial=0)), int(array.max(initial=0))
    if low < 0 or high > 65535:
        raise DataError(
            f"{path}: mask values {low}..{high} ({array.dtype}); masks hold values 0..65535. For object ids, "
            "number the objects 1..N (e.g. skimage.segmentation.relabel_sequential) and save a 16-bit PNG or TIFF"
        )
    return array.astype(np.uint16)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write next to the target, then rename: a reader never sees a half-written file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"{path}: cannot write ({err.strerror or err}); check free space and permissions") from None


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but belongs to someone else
        return True
    return True


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Delete the `.NAME.PID.tmp` files that `write_bytes_atomic` calls of killed processes left in `folder`
    (a live process's files are left alone: it may be writing them now). Returns what was removed."""
    removed = []
    try:
        candidates = [p for p in Path(folder).glob(".*.tmp") if p.is_file()]
    except OSError:
        return removed
    for path in candidates:
        pid = path.name[: -len(".tmp")].rpartition(".")[2]
        if pid.isdigit() and int(pid) != os.getpid() and not process_alive(int(pid)):
            try:
                path.unlink()
                removed.append(path)
            except OSError:
                pass
    return removed


def encode_png(array: np.ndarray, palette: tuple[int, ...] | None = None) -> bytes:
    """PNG bytes of an H x W (gray or palette indices) or H x W x 3/4 RGB(A) array."""
    if palette is not None:
        image = Image.fromarray(array.astype(np.uint8), mode="P")
        image.putpalette(list(palette))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()
    if array.ndim == 3:
        code = cv2.COLOR_RGBA2BGRA if array.shape[2] == 4 else cv2.COLOR_RGB2BGR
        array = cv2.cvtColor(array, code)
    ok, encoded = cv2.imencode(".png", array)
    if not ok:
        raise UnetcliError("could not encode a PNG")
    return encoded.tobytes()


def write_png(path: Path, array: np.ndarray, palette: tuple[int, ...] | None = None) -> None:
    write_bytes_atomic(path, encode_png(array, palette))
