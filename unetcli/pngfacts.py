"""What a PNG holds, from one walk over its chunks with every chunk's CRC checked (as Pillow's verify() does),
in C through zlib: about a tenth of the time of opening it with Pillow twice (header, then verify), which is most
of the cost of reading a small PNG, and counts in a folder of 100,000 of them."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
PALETTE_COLOUR_TYPE = 3


class DamagedPng(ValueError):
    """A chunk's CRC does not match, or the file ends before its IEND chunk."""


@dataclass(frozen=True)
class PngFacts:
    width: int
    height: int
    palette: bool  # indexed colour (mode P): the indices are the values, read through Pillow
    frames: int  # an APNG's frame count (acTL), else 1
    exif: bool  # an eXIf chunk: the orientation may turn the pixels (read through Pillow)


def png_facts(data: np.ndarray) -> PngFacts | None:
    """The facts of a PNG file's bytes (uint8 array); None when the bytes are no PNG. Raises DamagedPng."""
    raw = memoryview(data)
    if bytes(raw[:8]) != SIGNATURE:
        return None
    pos, size, header, frames, exif = 8, len(raw), None, 1, False
    while pos + 12 <= size:
        length, kind = struct.unpack(">I4s", raw[pos: pos + 8])
        end = pos + 12 + length
        if end > size:
            break
        if zlib.crc32(raw[pos + 4: pos + 8 + length]) != struct.unpack(">I", raw[pos + 8 + length: end])[0]:
            raise DamagedPng(f"CRC mismatch in chunk {kind!r}")
        if kind == b"IHDR" and length >= 13:
            header = struct.unpack(">IIBB", raw[pos + 8: pos + 18])
        elif kind == b"acTL" and length >= 8:
            frames = struct.unpack(">I", raw[pos + 8: pos + 12])[0]
        elif kind == b"eXIf":
            exif = True
        elif kind == b"IEND":
            if header is None:
                break
            width, height, _, colour_type = header
            return PngFacts(width, height, colour_type == PALETTE_COLOUR_TYPE, frames, exif)
        pos = end
    raise DamagedPng("no IHDR, or truncated before IEND")
