from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from cellcrowd.errors import InputError
from cellcrowd.files import atomic_path, list_images, read_image, write_image


@pytest.mark.parametrize(
    ("name", "array"),
    [
        ("a.png", np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000),
        ("b.png", np.arange(12, dtype=np.uint8).reshape(3, 4)),
        ("c.png", np.arange(36, dtype=np.uint8).reshape(3, 4, 3)),
        ("d.tif", np.arange(12, dtype=np.float32).reshape(3, 4) / 7),
        ("e.tif", np.arange(12, dtype=np.uint32).reshape(3, 4) * 100000),
    ],
    ids=["png16", "png8", "rgb", "tif-float", "tif-uint32"],
)
def test_images_round_trip(tmp_path: Path, name: str, array: np.ndarray) -> None:
    path = write_image(tmp_path / name, array)
    back = read_image(path)
    assert back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)
    # Read back by the libraries users use, too.
    other = tifffile.imread(path) if name.endswith(".tif") else np.asarray(Image.open(path))
    np.testing.assert_array_equal(other, array)


def test_writes_are_deterministic(tmp_path: Path) -> None:
    array = np.arange(100, dtype=np.uint16).reshape(10, 10)
    for suffix in (".png", ".tif"):
        a = write_image(tmp_path / f"a{suffix}", array).read_bytes()
        b = write_image(tmp_path / f"b{suffix}", array).read_bytes()
        assert a == b


def test_png_refuses_values_that_would_wrap(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="do not fit a 16-bit PNG"):
        write_image(tmp_path / "x.png", np.array([[70000]], dtype=np.int32))
    with pytest.raises(ValueError, match="colour PNGs must be uint8"):
        write_image(tmp_path / "x.png", np.zeros((2, 2, 3), np.uint16))
    with pytest.raises(ValueError, match=r"use a \.png, \.tif or \.tiff name"):
        write_image(tmp_path / "x.jpg", np.zeros((2, 2), np.uint8))
    assert not list(tmp_path.iterdir())


def test_atomic_path_leaves_nothing_on_error(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def interrupted_write() -> None:
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        interrupted_write()
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_read_image_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="image not found"):
        read_image(tmp_path / "none.png")
    bad = tmp_path / "bad.png"
    png = write_image(tmp_path / "ok.png", np.ones((20, 20), np.uint8)).read_bytes()
    bad.write_bytes(png[: len(png) // 2])
    with pytest.raises(InputError, match=r"bad\.png: cannot read this image"):
        read_image(bad)


def test_list_images_natural_order(tmp_path: Path) -> None:
    for i in (10, 2, 1):
        write_image(tmp_path / f"frame_{i}.tif", np.zeros((2, 2), np.uint8))
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in list_images(tmp_path)] == [
        "frame_1.tif", "frame_2.tif", "frame_10.tif"
    ]
    with pytest.raises(InputError, match="folder not found"):
        list_images(tmp_path / "missing")
