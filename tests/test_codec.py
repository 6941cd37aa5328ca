"""PNG and TIFF encoders under each deflate codec: the same pixels whoever reads them.

Under ``zlib`` the files are Pillow's and tifffile's own, byte for byte. Under
``isal`` they are cellcrowd's (Sub-filtered PNG rows, pre-deflated TIFF strips): read
back by Pillow, imageio, tifffile and Chromium, they hold the same arrays.
"""

from __future__ import annotations

import base64
import io
import json
import re
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
from PIL import Image

from cellcrowd.codec import encode_png, encode_tiff
from cellcrowd.files import read_image, use_write_settings, write_image

isal = pytest.importorskip("isal")

RNG = np.random.default_rng(11)


def _labels(shape: tuple[int, int]) -> np.ndarray:
    """Discs of ids up to 60000 on a zero background, as a label image."""
    rows, cols = np.indices(shape)
    out = np.zeros(shape, np.uint16)
    for cell in RNG.integers(1, 60000, size=30):
        r, c, radius = RNG.integers(0, shape[0]), RNG.integers(0, shape[1]), RNG.integers(2, 9)
        out[(rows - r) ** 2 + (cols - c) ** 2 < radius**2] = cell
    return out


PNG_CASES: dict[str, np.ndarray] = {
    "labels16": _labels((61, 97)),
    "grey16-extremes": RNG.choice(np.array([0, 1, 255, 256, 65534, 65535], np.uint16),
                                  size=(23, 31)),
    "grey8": RNG.integers(0, 256, size=(40, 33), dtype=np.uint8),
    "grey-alpha": RNG.integers(0, 256, size=(9, 14, 2), dtype=np.uint8),
    "rgb": RNG.integers(0, 256, size=(17, 29, 3), dtype=np.uint8),
    "rgba": RNG.integers(0, 256, size=(12, 5, 4), dtype=np.uint8),
    "one-pixel": np.array([[65535]], np.uint16),
    "one-column": RNG.integers(0, 256, size=(50, 1), dtype=np.uint8),
    "big-endian": RNG.integers(0, 65536, size=(20, 30)).astype(">u2"),
    "not-contiguous": RNG.integers(0, 256, size=(30, 20, 3), dtype=np.uint8)[::2, ::-1],
}


def _read_png_every_way(data: bytes, tmp_path: Path) -> list[np.ndarray]:
    path = tmp_path / "x.png"
    path.write_bytes(data)
    with Image.open(io.BytesIO(data)) as im:
        pillow = np.asarray(im)
    return [pillow, np.asarray(iio.imread(path)), read_image(path)]


@pytest.mark.parametrize("name", sorted(PNG_CASES))
@pytest.mark.parametrize("codec", ["zlib", "isal"])
def test_png_pixels_are_the_same_under_either_codec(tmp_path: Path, codec: str,
                                                    name: str) -> None:
    array = PNG_CASES[name]
    for got in _read_png_every_way(encode_png(array, 1, codec), tmp_path):
        assert got.shape == array.shape
        np.testing.assert_array_equal(got.astype(array.dtype), array)


def test_png_of_bool_and_small_ints_are_grey(tmp_path: Path) -> None:
    mask = RNG.random((8, 9)) > 0.5
    ids = RNG.integers(0, 40000, size=(8, 9)).astype(np.int64)
    for array, expect in ((mask, mask.astype(np.uint8)), (ids, ids.astype(np.uint16))):
        got = _read_png_every_way(encode_png(array, 1, "isal"), tmp_path)[0]
        np.testing.assert_array_equal(got, expect)


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    out, at = [], 8
    while at < len(data):
        (size,) = struct.unpack(">I", data[at:at + 4])
        kind, body = data[at + 4:at + 8], data[at + 8:at + 8 + size]
        (crc,) = struct.unpack(">I", data[at + 8 + size:at + 12 + size])
        assert crc == zlib.crc32(kind + body), kind
        out.append((kind, body))
        at += 12 + size
    return out


def test_isal_png_is_sub_filtered_rows_with_valid_chunks() -> None:
    array = PNG_CASES["labels16"]
    chunks = _chunks(encode_png(array, 1, "isal"))
    assert [k for k, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    width, height, depth, colour = struct.unpack(">IIBB", chunks[0][1][:10])
    assert (width, height, depth, colour) == (97, 61, 16, 0)
    rows = np.frombuffer(zlib.decompress(chunks[1][1]), np.uint8).reshape(61, 1 + 97 * 2)
    assert set(rows[:, 0].tolist()) == {1}  # every row: the Sub filter


@pytest.mark.parametrize("level", [0, 1, 6, 9])
def test_zlib_codec_keeps_pillows_and_tifffiles_bytes(level: int) -> None:
    array = PNG_CASES["labels16"]
    pil = io.BytesIO()
    Image.fromarray(array).save(pil, format="PNG", compress_level=level)
    assert encode_png(array, level, "zlib") == pil.getvalue()
    tif = io.BytesIO()
    tifffile.imwrite(tif, array, compression="zlib" if level else None,
                     compressionargs={"level": level} if level else None)
    assert encode_tiff(array, level, "zlib") == tif.getvalue()


def test_levels_above_isals_are_zlibs() -> None:
    array = PNG_CASES["rgb"]
    assert encode_png(array, 6, "isal") == encode_png(array, 6, "zlib")
    assert encode_tiff(array[..., 0], 6, "isal") == encode_tiff(array[..., 0], 6, "zlib")


TIFF_CASES: dict[str, np.ndarray] = {
    "raw16": RNG.integers(0, 65536, size=(47, 83), dtype=np.uint16),
    "big-endian": RNG.integers(0, 65536, size=(20, 30)).astype(">u2"),
    "not-contiguous": np.asfortranarray(RNG.normal(size=(19, 23))),
    "several-strips": RNG.integers(0, 4000, size=(700, 300), dtype=np.uint16),  # 420 KB
    "float32": RNG.normal(100, 20, size=(31, 64)).astype(np.float32),
    "int32": RNG.integers(-(2**31), 2**31 - 1, size=(9, 13), dtype=np.int32),
    "uint8": RNG.integers(0, 256, size=(5, 6), dtype=np.uint8),
    "bool": RNG.random((7, 7)) > 0.5,
    "stack": RNG.integers(0, 9, size=(5, 8, 8), dtype=np.uint16),
    "rgb": RNG.integers(0, 256, size=(6, 10, 3), dtype=np.uint8),
}


@pytest.mark.parametrize("name", sorted(TIFF_CASES))
@pytest.mark.parametrize(("codec", "level"), [("zlib", 1), ("isal", 1), ("isal", 0)])
def test_tiff_pixels_are_the_same_under_either_codec(tmp_path: Path, codec: str, level: int,
                                                     name: str) -> None:
    array = TIFF_CASES[name]
    path = tmp_path / "x.tif"
    path.write_bytes(encode_tiff(array, level, codec))
    with tifffile.TiffFile(path) as tif:
        got = tif.asarray()
        strips = len(tif.pages[0].dataoffsets)
        compression = tif.pages[0].compression
    np.testing.assert_array_equal(got, array)
    np.testing.assert_array_equal(np.asarray(iio.imread(path)), array)
    assert compression == (tifffile.COMPRESSION.ADOBE_DEFLATE if level
                           else tifffile.COMPRESSION.NONE)
    if name == "several-strips" and level:
        assert strips == 2  # tifffile's ~256 KiB strips, whoever deflates them


def test_write_image_follows_the_codec_setting(tmp_path: Path) -> None:
    labels = PNG_CASES["labels16"]
    paths = {}
    for codec in ("zlib", "isal"):
        with use_write_settings(codec=codec):
            paths[codec] = (write_image(tmp_path / f"{codec}.png", labels),
                            write_image(tmp_path / f"{codec}.tif", labels))
    for zlib_path, isal_path in zip(paths["zlib"], paths["isal"], strict=True):
        assert zlib_path.read_bytes() != isal_path.read_bytes()
        np.testing.assert_array_equal(read_image(zlib_path), read_image(isal_path))


_PAGE = """<!doctype html><html><body><pre id="out"></pre><script>
var cases = %s, got = {}, left = cases.length;
cases.forEach(function (c) {
  var img = new Image();
  img.onload = function () {
    var cv = document.createElement("canvas");
    cv.width = img.naturalWidth; cv.height = img.naturalHeight;
    var cx = cv.getContext("2d");
    cx.drawImage(img, 0, 0);
    got[c.name] = [img.naturalWidth, img.naturalHeight,
                   Array.from(cx.getImageData(0, 0, cv.width, cv.height).data)];
    if (--left === 0) document.getElementById("out").textContent = JSON.stringify(got);
  };
  img.onerror = function () {
    got[c.name] = "error";
    if (--left === 0) document.getElementById("out").textContent = JSON.stringify(got);
  };
  img.src = "data:image/png;base64," + c.png;
});
</script></body></html>
"""


def _as_rgba(array: np.ndarray) -> np.ndarray:
    """What a browser draws: 8 bits per channel (16-bit samples rounded), RGBA."""
    if array.dtype.itemsize == 2:  # either byte order
        array = np.round(array.astype(np.uint16) / 257).astype(np.uint8)
    if array.ndim == 2:
        array = array[..., None]
    grey = array.shape[2] <= 2
    rgb = np.repeat(array[..., :1], 3, axis=2) if grey else array[..., :3]
    alpha = array[..., -1:] if array.shape[2] in (2, 4) else np.full_like(array[..., :1], 255)
    return np.concatenate([rgb, alpha], axis=2)


def test_chromium_draws_the_isal_pngs(tmp_path: Path, browse: Callable[..., str]) -> None:
    opaque = {k: v for k, v in PNG_CASES.items() if k not in ("grey-alpha", "rgba")}
    cases = [{"name": k, "png": base64.b64encode(encode_png(v, 1, "isal")).decode()}
             for k, v in opaque.items()]
    page = tmp_path / "png.html"
    page.write_text(_PAGE % json.dumps(cases), encoding="utf-8")
    dom = browse(tmp_path, "--dump-dom", "--virtual-time-budget=10000", page.resolve().as_uri())
    found = re.search(r'<pre id="out">(.*?)</pre>', dom, re.S)
    assert found is not None, dom[:500]
    assert found.group(1), dom[:500]
    drawn: dict[str, Any] = json.loads(found.group(1).replace("&quot;", '"'))
    assert set(drawn) == set(opaque)
    for name, array in opaque.items():
        width, height, pixels = drawn[name]
        assert (height, width) == array.shape[:2], name
        got = np.array(pixels, np.int16).reshape(height, width, 4)
        # 16-bit samples: Chromium keeps the high byte or rounds; within one step
        assert np.abs(got - _as_rgba(array)).max() <= 1, name
