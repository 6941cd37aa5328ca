"""The fast PNG and TIFF decoders give what Pillow and tifffile give, or step aside.

``cellcrowd.fastread`` decodes the plain files cellcrowd writes; for every other file
(other filters, chunks, layouts; anything malformed) it returns None and
``read_image`` uses Pillow or tifffile as before. Each case is checked against those
libraries' own reading of the same bytes: values, shape and dtype.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from PIL import Image

from cellcrowd.codec import encode_png, encode_tiff
from cellcrowd.errors import InputError
from cellcrowd.fastread import decode_png, decode_tiff
from cellcrowd.files import MAX_PIXELS, read_image

RNG = np.random.default_rng(5)


def _labels(shape: tuple[int, int], top: int = 60000) -> np.ndarray:
    """Blocks of ids on a zero background (runs, as in label images), plus noise rows."""
    out = np.zeros(shape, np.int64)
    for _ in range(12):
        r, c = RNG.integers(0, shape[0]), RNG.integers(0, shape[1])
        out[r:r + RNG.integers(1, 20), c:c + RNG.integers(1, 20)] = RNG.integers(1, top)
    out[RNG.integers(0, shape[0])] = RNG.integers(0, top, size=shape[1])
    return out


def _pillow(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im)


def _same(fast: np.ndarray | None, reference: np.ndarray) -> None:
    assert fast is not None
    assert fast.dtype == reference.dtype
    assert fast.shape == reference.shape
    np.testing.assert_array_equal(fast, reference)


def _png_arrays() -> dict[str, np.ndarray]:
    """Every form fastread decodes: 16-bit grey labels and extremes, 8-bit with 1-4
    channels, from one pixel to one column to many rows."""
    arrays = {"labels16": _labels((61, 97)).astype(np.uint16),
              "labels16-below-256": _labels((37, 55), top=256).astype(np.uint16),
              "uint16-extremes": RNG.choice(np.array([0, 1, 255, 256, 65535], np.uint16),
                                            size=(23, 31)),
              "uint16-one-pixel": np.array([[65535]], np.uint16)}
    for channels, (rows, cols) in ((1, (40, 33)), (1, (50, 1)), (2, (9, 14)), (3, (17, 29)),
                                   (4, (12, 5))):
        size = (rows, cols) if channels == 1 else (rows, cols, channels)
        arrays[f"uint8-{rows}x{cols}x{channels}"] = RNG.integers(0, 256, size=size,
                                                                  dtype=np.uint8)
    return arrays


PNG_ARRAYS = _png_arrays()


@pytest.mark.parametrize("name", sorted(PNG_ARRAYS))
def test_cellcrowds_pngs_decode_fast_to_pillows_array(name: str) -> None:
    pytest.importorskip("isal")
    data = encode_png(PNG_ARRAYS[name], 1, "isal")
    _same(decode_png(data, MAX_PIXELS), _pillow(data))


def _png(rows: np.ndarray, filters: np.ndarray, depth: int, colour: int,
         extra: bytes = b"", interlace: int = 0) -> bytes:
    """A PNG of already filtered ``rows`` (uint8, one row of bytes each)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(body, zlib.crc32(kind))))
    height = rows.shape[0]
    samples = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    width = rows.shape[1] // (samples * depth // 8)
    raw = np.column_stack([filters.astype(np.uint8), rows]).tobytes()
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + extra
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


@pytest.mark.parametrize(("depth", "colour"), [(8, 0), (16, 0), (8, 2), (8, 4), (8, 6)])
def test_rows_filtered_none_and_sub_in_any_mix(depth: int, colour: int) -> None:
    samples = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    rows = RNG.integers(0, 256, size=(21, 13 * samples * depth // 8), dtype=np.uint8)
    for filters in (np.zeros(21), np.ones(21), RNG.integers(0, 2, size=21)):
        data = _png(rows, filters, depth, colour)
        _same(decode_png(data, MAX_PIXELS), _pillow(data))


def _others() -> dict[str, bytes]:
    rows = RNG.integers(0, 256, size=(8, 24), dtype=np.uint8)
    good = _png(rows, np.ones(8), 8, 2)
    idat = good.index(b"IDAT")
    text = struct.pack(">I", 5) + b"tEXta\x00bcd" + struct.pack(">I", zlib.crc32(b"a\x00bcd",
                                                                       zlib.crc32(b"tEXt")))
    return {
        "up-filter": _png(rows, np.full(8, 2), 8, 2),
        "paeth-filter": _png(rows, np.full(8, 4), 8, 2),
        "16-bit-rgb": _png(RNG.integers(0, 256, size=(8, 48), dtype=np.uint8), np.ones(8), 16, 2),
        "text-chunk": _png(rows, np.ones(8), 8, 2, extra=text),
        "pillow-adaptive": _pillow_png(RNG.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)),
        "palette": _pillow_png(RNG.integers(0, 256, size=(6, 7), dtype=np.uint8), "P"),
        "bad-idat-crc": good[:idat + 10] + bytes([good[idat + 10] ^ 1]) + good[idat + 11:],
        "cut-short": good[:-20],
        "trailing-bytes": good + b"\x00",
    }


def _pillow_png(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("name", sorted(_others()))
def test_other_pngs_are_left_to_pillow(tmp_path: Path, name: str) -> None:
    data = _others()[name]
    assert decode_png(data, MAX_PIXELS) is None
    path = tmp_path / "x.png"
    path.write_bytes(data)
    try:
        reference: Any = _pillow(data)
        if reference.dtype == np.uint8 and Image.open(io.BytesIO(data)).mode == "P":
            reference = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    except Exception:  # Pillow cannot read it: neither can read_image
        with pytest.raises(InputError, match="cannot read this image"):
            read_image(path)
        return
    _same(read_image(path), reference)


def test_a_png_too_large_is_refused_before_it_is_inflated(tmp_path: Path) -> None:
    rows = np.zeros((4, 4), np.uint8)
    data = bytearray(_png(rows, np.ones(4), 8, 0))
    data[16:24] = struct.pack(">II", 100_000, 100_000)  # the header lies: 10^10 pixels
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    assert decode_png(bytes(data), MAX_PIXELS) is None
    assert decode_png(_png(rows, np.ones(4), 8, 0), 15) is None  # 16 pixels > 15
    path = tmp_path / "bomb.png"
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="decompression bomb"):
        read_image(path)


TIFF_ARRAYS: dict[str, np.ndarray] = {
    "uint8": RNG.integers(0, 256, size=(37, 41), dtype=np.uint8),
    "uint16-labels": _labels((700, 300)).astype(np.uint16),  # several strips
    "int16": RNG.integers(-30000, 30000, size=(19, 23)).astype(np.int16),
    "int32": _labels((33, 17), top=2**31 - 1).astype(np.int32),
    "uint32": RNG.integers(0, 2**32, size=(5, 1000), dtype=np.uint32),
    "float32": RNG.normal(size=(64, 65)).astype(np.float32),
    "float64": RNG.normal(size=(9, 3)),
    "one-pixel": np.array([[7]], np.uint16),
}


@pytest.mark.parametrize("name", sorted(TIFF_ARRAYS))
@pytest.mark.parametrize("codec", ["isal", "zlib", "none"])
def test_plain_tiffs_decode_fast_to_tifffiles_array(name: str, codec: str) -> None:
    if codec == "isal":
        pytest.importorskip("isal")
    data = encode_tiff(TIFF_ARRAYS[name], 0 if codec == "none" else 1,
                       "zlib" if codec == "none" else codec)
    _same(decode_tiff(data, MAX_PIXELS), tifffile.imread(io.BytesIO(data)))


def _tiff(array: np.ndarray, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, array, **kwargs)
    return buf.getvalue()


def _other_tiffs() -> dict[str, bytes]:
    image = RNG.integers(0, 4000, size=(30, 20), dtype=np.uint16)
    plain = _tiff(image, compression="zlib")
    return {
        "predictor": _tiff(image, compression="zlib", predictor=True),
        "big-endian": _tiff(image, byteorder=">"),
        "two-pages": _tiff(np.stack([image, image])),
        "one-page-as-3d": _tiff(image[None]),
        "rgb": _tiff(RNG.integers(0, 256, size=(10, 12, 3), dtype=np.uint8)),
        "tiled": _tiff(image, tile=(16, 16)),
        "imagej": _tiff(image, imagej=True),
        "bigtiff": _tiff(image, bigtiff=True),
        "no-description": _tiff(image, description=None, metadata=None),
        "lzw": _tiff(image, compression="lzw") if _has_lzw() else plain,
        "cut-short": plain[:len(plain) // 2],
    }


def _has_lzw() -> bool:
    try:
        _tiff(np.zeros((2, 2), np.uint8), compression="lzw")
    except Exception:  # tifffile needs imagecodecs to write LZW
        return False
    return True


@pytest.mark.parametrize("name", sorted(_other_tiffs()))
def test_other_tiffs_read_as_tifffile_reads_them(tmp_path: Path, name: str) -> None:
    data = _other_tiffs()[name]
    fast = decode_tiff(data, MAX_PIXELS)
    path = tmp_path / "x.tif"
    path.write_bytes(data)
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            reference = tif.series[0].asarray()
    except Exception:
        assert fast is None
        with pytest.raises(InputError):
            read_image(path)
        return
    if fast is not None:  # only where the file is one plain page, as tifffile reads it
        assert name == "no-description"
        _same(fast, reference)
    _same(read_image(path), reference)


def test_tiff_strips_past_the_end_or_too_short_are_left_to_tifffile() -> None:
    pytest.importorskip("isal")
    data = bytearray(encode_tiff(TIFF_ARRAYS["uint16-labels"], 1, "isal"))
    assert decode_tiff(bytes(data), MAX_PIXELS) is not None
    with tifffile.TiffFile(io.BytesIO(bytes(data))) as tif:
        page = tif.pages.first
        offsets_at = page.tags["StripOffsets"].valueoffset
        counts_at = page.tags["StripByteCounts"].valueoffset
        strips = len(page.dataoffsets)
    moved = bytearray(data)
    moved[offsets_at:offsets_at + 4] = struct.pack("<I", len(data) - 2)  # first strip's offset
    assert decode_tiff(bytes(moved), MAX_PIXELS) is None
    shorter = bytearray(data)
    count = struct.unpack_from("<I", data, counts_at)[0]
    shorter[counts_at:counts_at + 4] = struct.pack("<I", count // 2)  # a strip cut in half
    assert strips > 1
    assert decode_tiff(bytes(shorter), MAX_PIXELS) is None
    assert decode_tiff(bytes(data), 700 * 300 - 1) is None  # more pixels than allowed
