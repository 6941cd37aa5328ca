"""Encoding PNG and TIFF images and gzip streams, and which deflate does it (zlib or
python-isal).

:class:`cellcrowd.files.WriteSettings` names a deflate ``codec``: ``"zlib"``, ``"isal"``
or ``"auto"`` (python-isal when installed). :func:`isal_for` is the one place that
decides, for a codec and a level, whether python-isal compresses. When it does,
``.npz`` members are deflated by it (:mod:`cellcrowd.npzfile`), and PNG and TIFF files
are encoded here instead of by Pillow's and tifffile's zlib:

- PNG: every row with PNG's "Sub" filter (the difference from the pixel to its
  left), one IDAT chunk. Label images are runs of equal values, which Sub turns into
  runs of zeros: files are smaller than Pillow's at level 1 and encoded about five
  times faster. Pillow's adaptive filter choice (every filter tried on every row) is
  most of its time.
- TIFF: 2-D images cut into tifffile's strips (about 256 KiB each), each strip
  deflated here and handed to tifffile as encoded data (other shapes are tifffile's
  to encode).
- gzip (the ``.trk`` and ``.trks`` tars): python-isal's ``igzip`` writer instead of
  the standard library's (:func:`gzip_writer`).

Either file decodes to the same array as under zlib (Pillow, tifffile, browsers); the
bytes differ, as any two deflate implementations' do. Under zlib the files are
Pillow's and tifffile's, byte for byte.
"""

from __future__ import annotations

import gzip
import io
import struct
import zlib
from typing import Any, BinaryIO

import numpy as np
import tifffile
from numpy.typing import NDArray
from PIL import Image

from .labelcheck import fits_uint16

__all__ = ["ISAL_MAX_LEVEL", "PNG_SIGNATURE", "encode_png", "encode_tiff", "gzip_writer",
           "installed_isal", "isal_for"]

#: python-isal's levels are 0-3; higher levels are zlib's.
ISAL_MAX_LEVEL = 3

#: The eight bytes every PNG file starts with.
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: PNG colour type by samples per pixel: grey, grey + alpha, RGB, RGBA.
_COLOUR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}
#: tifffile's strip size for compressed images (``rowsperstrip = 262144 // rowsize``).
_STRIP_BYTES = 262144


def installed_isal() -> Any | None:
    """python-isal's ``isal_zlib`` module, or None when it is not installed."""
    try:
        from isal import isal_zlib
    except ImportError:
        return None
    return isal_zlib


def isal_for(codec: str, level: int) -> Any | None:
    """python-isal's ``isal_zlib`` module when ``codec`` uses it at ``level``, else None
    (zlib encodes).

    ``"zlib"`` never uses it, nor does any codec above level 3; ``"auto"`` uses it
    when installed; ``"isal"`` without it installed raises ``ImportError`` saying how
    to install it.
    """
    if codec == "zlib" or level > ISAL_MAX_LEVEL:
        return None
    isal = installed_isal()
    if isal is None and codec == "isal":
        raise ImportError("python-isal is not installed: pip install 'cellcrowd[fast]', "
                          "or use the codec 'zlib'")
    return isal


def gzip_writer(fileobj: BinaryIO, level: int, codec: str) -> gzip.GzipFile:
    """A gzip stream written to ``fileobj`` at ``level``: python-isal's ``igzip`` when
    ``codec`` uses it at that level (:func:`isal_for`), else the standard library's. No
    file name and time 0 in the header, so equal data give equal bytes."""
    if isal_for(codec, level) is not None:
        from isal import igzip

        return igzip.GzipFile(  # type: ignore[no-untyped-call]
            filename="", fileobj=fileobj, mode="wb", mtime=0, compresslevel=level)
    return gzip.GzipFile(filename="", fileobj=fileobj, mode="wb", mtime=0, compresslevel=level)


def encode_png(array: NDArray[Any], level: int, codec: str) -> bytes:
    """PNG bytes of ``array``: bool, uint8 or uint16 grey, other integers that fit 16
    bits, or uint8 with 2-4 channels (grey + alpha, RGB, RGBA).

    Raises ``ValueError`` for values that do not fit a 16-bit PNG (write a TIFF) and
    for colour images that are not uint8.
    """
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if array.ndim == 2 and array.dtype not in (np.uint8, np.uint16):
        if not fits_uint16(array):
            raise ValueError(
                f"values from {array.min()} to {array.max()} do not fit a 16-bit PNG; "
                "write a TIFF instead"
            )
        array = array.astype(np.uint16)
    if array.ndim == 3 and array.dtype != np.uint8:
        raise ValueError(f"colour PNGs must be uint8, got {array.dtype}")
    isal = isal_for(codec, level)
    if isal is not None and array.size:
        return _png_sub(array, level, isal)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG", compress_level=level)
    return buf.getvalue()


def encode_tiff(array: NDArray[Any], level: int, codec: str) -> bytes:
    """TIFF bytes of ``array`` (any dtype; a 3-D array is a stack of pages unless its
    last axis is 3 or 4 samples), deflated at ``level`` (0: uncompressed)."""
    isal = isal_for(codec, level) if level else None
    if isal is not None and array.ndim == 2 and array.size and array.dtype.kind in "uif":
        return _tiff_strips(array, level, isal)
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.ascontiguousarray(array), compression="zlib" if level else None,
                     compressionargs={"level": level} if level else None)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind))))


def _png_sub(array: NDArray[Any], level: int, isal: Any) -> bytes:
    """A PNG of a uint8/uint16 ``array`` (``(h, w)`` or ``(h, w, 1-4)``), every row
    Sub-filtered, deflated by ``isal.compress`` at ``level`` into one IDAT chunk."""
    height, width = array.shape[:2]
    samples = 1 if array.ndim == 2 else int(array.shape[2])
    if samples not in _COLOUR_TYPE:
        raise ValueError(f"a PNG has 1 to 4 channels, not {samples}")
    step = samples * array.dtype.itemsize  # bytes per pixel: Sub's distance
    rows = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder(">")).view(np.uint8)
    rows = rows.reshape(height, width * step)
    filtered = np.empty((height, width * step + 1), np.uint8)
    filtered[:, 0] = 1  # the Sub filter
    filtered[:, 1:step + 1] = rows[:, :step]
    np.subtract(rows[:, step:], rows[:, :-step], out=filtered[:, step + 1:])
    header = struct.pack(">IIBBBBB", width, height, 8 * array.dtype.itemsize,
                         _COLOUR_TYPE[samples], 0, 0, 0)
    return b"".join((PNG_SIGNATURE, _chunk(b"IHDR", header),
                     _chunk(b"IDAT", isal.compress(filtered, level)), _chunk(b"IEND", b"")))


def _tiff_strips(array: NDArray[Any], level: int, isal: Any) -> bytes:
    """A TIFF of the 2-D ``array`` in tifffile's strips, each deflated by
    ``isal.compress`` at ``level``."""
    array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("="))  # as tifffile
    height = array.shape[0]
    per_strip = min(max(_STRIP_BYTES // (array.nbytes // height), 1), height)
    strips = (isal.compress(array[start:start + per_strip], level)
              for start in range(0, height, per_strip))
    buf = io.BytesIO()
    tifffile.imwrite(buf, strips, shape=array.shape, dtype=array.dtype, compression="zlib",
                     rowsperstrip=per_strip, photometric="minisblack")
    return buf.getvalue()
