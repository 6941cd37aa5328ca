"""Decoding the simple PNG and TIFF files cellcrowd writes, faster than Pillow and tifffile.

The harvest reads back thousands of small images it wrote itself (a movie's label
frames and raw tiles, for the ``.npz``; the label montages, for the movies). For such
files most of Pillow's and tifffile's time is their generality: the file's structure
parsed into objects, every PNG filter type, zlib's inflate. :func:`decode_png` and
:func:`decode_tiff` handle only the plain forms :mod:`cellcrowd.codec` writes (and
many other writers too) and inflate with python-isal when it is installed:

- PNG: 8-bit grey, grey + alpha, RGB or RGBA, or 16-bit grey; not interlaced; rows
  filtered with "None" or "Sub"; chunks IHDR, IDAT and IEND only, every CRC right.
- TIFF: little-endian, one page, one sample per pixel (minimum is black), strips
  uncompressed or deflated without a predictor, unsigned or signed integers or floats,
  and no description or tifffile's own ``{"shape": [rows, cols]}``.

Anything else, and anything malformed, gives ``None``: the caller
(:func:`cellcrowd.files.read_image`) then reads the file with Pillow or tifffile as
before, which also reports what is wrong with it. Both return what those libraries
return for the same file: the same values, shape, dtype and native byte order (tested
against them). Sizes come from the header and are checked before anything is
inflated: no stream is inflated past the size its header promises.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .codec import PNG_SIGNATURE, installed_isal

__all__ = ["decode_png", "decode_tiff"]

#: (bit depth, colour type) -> samples per pixel, for the PNGs decoded here (Pillow
#: reads 16-bit colour as 8-bit: those are left to it).
_PNG_FORMS = {(8, 0): 1, (8, 4): 2, (8, 2): 3, (8, 6): 4, (16, 0): 1}

_TIFF_TYPES = {3: ("H", 2), 4: ("I", 4)}  # SHORT, LONG
#: TIFF tags that change how the pixels are laid out or read: a file with any of them
#: (except at the value that changes nothing) is left to tifffile.
_TIFF_PLAIN = {266: (1,), 277: (1,), 284: (1,), 317: (1,)}  # absent is fine too
_TIFF_REFUSED = {320, 322, 323, 324, 325, 330, 338, 34665}
_TIFF_KINDS = {1: "u", 2: "i", 3: "f"}


def _inflate(data: bytes, size: int, head: int = 0,
             check: Callable[[bytes], bool] | None = None) -> bytes | None:
    """``data`` (a zlib stream) inflated, when it holds exactly ``size`` bytes; with
    ``check``, its first ``head`` bytes first, and the rest only if ``check`` passes them."""
    isal = installed_isal()
    inflater = isal.decompressobj() if isal is not None else zlib.decompressobj()
    try:
        out = inflater.decompress(data, head if check is not None and 0 < head < size else size)
        if check is not None and len(out) < size:
            if len(out) != head or not check(out):
                return None
            out += inflater.decompress(inflater.unconsumed_tail, size - head)
    except Exception:  # isal and zlib raise errors of their own: the slow path reports it
        return None
    if len(out) != size or not inflater.eof or inflater.unconsumed_tail:
        return None
    return bytes(out)


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]] | None:
    """``(type, body)`` of each chunk, or None when one is cut short or its CRC is wrong."""
    chunks, pos = [], len(PNG_SIGNATURE)
    while pos < len(data):
        if pos + 12 > len(data):
            return None
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 8 + length
        if end + 4 > len(data):
            return None
        body = data[pos + 8:end]
        if zlib.crc32(body, zlib.crc32(kind)) != struct.unpack_from(">I", data, end)[0]:
            return None
        chunks.append((kind, body))
        pos = end + 4
        if kind == b"IEND":
            return chunks if pos == len(data) else None
    return None


def decode_png(data: bytes, max_pixels: int) -> NDArray[Any] | None:
    """The image in the PNG bytes ``data``, or None when it is not in the plain form
    described above (or has more than ``max_pixels`` pixels)."""
    if not data.startswith(PNG_SIGNATURE):
        return None
    chunks = _png_chunks(data)
    if not chunks or chunks[0][0] != b"IHDR" or len(chunks[0][1]) != 13:
        return None
    width, height, depth, colour, method, filtering, interlace = struct.unpack(
        ">IIBBBBB", chunks[0][1])
    samples = _PNG_FORMS.get((depth, colour))
    if (samples is None or (method, filtering, interlace) != (0, 0, 0)
            or not 0 < width * height <= max_pixels
            or any(kind not in (b"IDAT", b"IEND") for kind, _ in chunks[1:])):
        return None
    step = samples * depth // 8  # bytes per pixel
    row = 1 + width * step  # the filter byte, then the row's bytes

    def plain(rows: bytes) -> bool:  # every row filtered "None" (0) or "Sub" (1)
        return max(rows[::row]) <= 1

    # the first rows' filters, before the rest is inflated: most writers' PNGs (other
    # filters) are left to Pillow after an eighth of the work
    raw = _inflate(b"".join(body for kind, body in chunks if kind == b"IDAT"), height * row,
                   min(height, max(16, height // 8)) * row, plain)
    if raw is None:
        return None
    rows = np.frombuffer(raw, np.uint8).reshape(height, row)
    filters = rows[:, 0]
    pixels = rows[:, 1:].reshape(height, width, step)
    if (filters == 1).all():  # Sub: each byte is the difference to the pixel's left
        if depth == 16 and not pixels[..., 0].any():  # high bytes all 0 (ids below 256)
            return np.cumsum(pixels[..., 1], axis=1, dtype=np.uint8).astype(np.uint16)
        out = np.cumsum(pixels, axis=1, dtype=np.uint8)
    elif (filters <= 1).all():  # None (0) and Sub rows mixed
        out = pixels.copy()
        out[filters == 1] = np.cumsum(pixels[filters == 1], axis=1, dtype=np.uint8)
    else:
        return None
    if depth == 16:
        return out.view(">u2")[..., 0].astype(np.uint16)
    return out[..., 0] if samples == 1 else out


def _tiff_tags(data: bytes) -> dict[int, tuple[int, ...]] | None:
    """The first IFD's SHORT and LONG tags (other types: their raw offset, unread), or
    None when the file is not a little-endian classic TIFF of one page."""
    if len(data) < 8 or data[:4] != b"II*\x00":
        return None
    (ifd,) = struct.unpack_from("<I", data, 4)
    if ifd + 2 > len(data):
        return None
    (count,) = struct.unpack_from("<H", data, ifd)
    end = ifd + 2 + 12 * count
    if end + 4 > len(data) or struct.unpack_from("<I", data, end)[0] != 0:
        return None  # cut short, or more pages
    tags: dict[int, tuple[int, ...]] = {}
    for k in range(count):
        tag, kind, n, value = struct.unpack_from("<HHII", data, ifd + 2 + 12 * k)
        if kind not in _TIFF_TYPES:
            tags[tag] = (-1, value, n)  # read only when needed (ImageDescription)
            continue
        code, size = _TIFF_TYPES[kind]
        where = ifd + 2 + 12 * k + 8 if n * size <= 4 else value
        if where + n * size > len(data):
            return None
        tags[tag] = struct.unpack_from(f"<{n}{code}", data, where)
    return tags


def _tiff_plain(tags: dict[int, tuple[int, ...]], data: bytes) -> bool:
    """Whether the tags describe one plain image, as the module's docstring says."""
    if tags.get(262) != (1,) or any(tag in tags for tag in _TIFF_REFUSED):
        return False
    if any(tags.get(tag, value) != value for tag, value in _TIFF_PLAIN.items()):
        return False
    description = tags.get(270)
    if description is None:
        return True
    if len(description) != 3 or description[0] != -1 or description[2] <= 4:
        return False  # an ASCII description is kept as (-1, offset, length)
    _, offset, n = description
    try:
        shape = json.loads(data[offset:offset + n].rstrip(b"\x00").decode("ascii"))["shape"]
    except (ValueError, KeyError, TypeError):
        return False
    return bool(shape == [tags[257][0], tags[256][0]])


def decode_tiff(data: bytes, max_pixels: int) -> NDArray[Any] | None:
    """The image in the TIFF bytes ``data``, or None when it is not in the plain form
    described above (or has more than ``max_pixels`` pixels)."""
    tags = _tiff_tags(data)
    if tags is None or not {256, 257, 258, 273, 279} <= tags.keys():
        return None
    if not _tiff_plain(tags, data):
        return None
    width, height, bits = tags[256][0], tags[257][0], tags[258]
    compression = tags.get(259, (1,))
    kind = _TIFF_KINDS.get(tags.get(339, (1,))[0])
    if (len(bits) != 1 or bits[0] not in (8, 16, 32, 64) or compression not in ((1,), (8,))
            or kind is None or (kind == "f" and bits[0] < 32)
            or not 0 < width * height <= max_pixels):
        return None
    per_strip = min(tags.get(278, (height,))[0] or height, height)
    offsets, counts = tags[273], tags[279]
    strips = -(-height // per_strip)
    if len(offsets) != strips or len(counts) != strips:
        return None
    row_bytes = width * bits[0] // 8
    pieces = []
    for k, (offset, count) in enumerate(zip(offsets, counts, strict=True)):
        size = row_bytes * min(per_strip, height - k * per_strip)
        if offset + count > len(data):
            return None
        piece = (data[offset:offset + count] if compression == (1,)
                 else _inflate(data[offset:offset + count], size))
        if piece is None or len(piece) != size:
            return None
        pieces.append(piece)
    dtype = np.dtype(f"<{kind}{bits[0] // 8}")
    image = np.frombuffer(b"".join(pieces), dtype).reshape(height, width)
    return image.astype(dtype.newbyteorder("="))
