from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from cellcrowd.errors import InputError
from cellcrowd.files import (
    atomic_path,
    atomic_write_bytes,
    list_images,
    read_image,
    use_write_settings,
    write_image,
)


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


def test_atomic_write_bytes_writes_everything_when_the_os_writes_a_little_at_a_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    real_write = os.write
    sizes: list[int] = []

    def short_write(fd: int, data: bytes | memoryview) -> int:
        sizes.append(real_write(fd, bytes(data[:7])))  # at most 7 bytes a call
        return sizes[-1]

    data = bytes(range(256)) * 3
    monkeypatch.setattr(os, "write", short_write)
    atomic_write_bytes(tmp_path / "out.bin", data)
    monkeypatch.undo()
    assert (tmp_path / "out.bin").read_bytes() == data
    assert len(sizes) == -(-len(data) // 7)


def test_atomic_write_bytes_failing_sync_closes_once_and_leaves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import os

    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    real_close = os.close
    closed: list[int] = []

    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    def counting_close(fd: int) -> None:
        closed.append(fd)
        real_close(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    monkeypatch.setattr(os, "close", counting_close)
    with use_write_settings(durable=True), pytest.raises(OSError, match="I/O error"):
        atomic_write_bytes(target, b"new")
    monkeypatch.undo()
    assert len(closed) == len(set(closed)) == 1  # closed once: no second close of a reused fd
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


def test_atomic_path_makes_the_folder_keeps_the_file_private_then_gives_it_its_mode(
        tmp_path: Path) -> None:
    import os
    import stat

    target = tmp_path / "new" / "sub" / "out.bin"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent
        assert stat.S_IMODE(tmp.stat().st_mode) == 0o600  # private while written
        tmp.write_bytes(b"data")
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
    assert target.read_bytes() == b"data"
    assert [p.name for p in target.parent.iterdir()] == ["out.bin"]


def test_resolve_path_is_path_resolve(tmp_path: Path) -> None:
    from cellcrowd.hashes import resolve_path

    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "real" / "sub" / "f.txt").write_text("x")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "t.txt").write_text("y")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "real" / "sub" / "file_link").symlink_to(tmp_path / "elsewhere" / "t.txt")
    folders: dict[str, str] = {}
    for path in [tmp_path / "link" / "sub" / "f.txt", tmp_path / "real" / "sub" / "file_link",
                 tmp_path / "real" / "missing" / "x", tmp_path / "real" / "sub" / "..",
                 tmp_path / "link", Path("relative") / "name"]:
        for _ in range(2):  # the second time from the folder cache
            assert resolve_path(path, folders) == path.resolve(), path
    assert resolve_path(tmp_path / "link" / "sub" / "f.txt") == (
        tmp_path / "real" / "sub" / "f.txt").resolve()


def _write_one(path: Path) -> Path:
    from cellcrowd.files import atomic_write_bytes

    return atomic_write_bytes(path, path.name.encode() * 1000)


def test_files_written_on_workers_are_hashed_there(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    from cellcrowd import hashes
    from cellcrowd.executor import LocalExecutor, run_tasks

    targets = [tmp_path / f"f{i}.bin" for i in range(4)]
    executor = LocalExecutor(2)
    try:
        list(executor.map(abs, [-1, -2]))  # the workers exist before the patch below
        reads: list[str] = []
        real = hashes.sha256_file
        monkeypatch.setattr(hashes, "sha256_file", lambda p: reads.append(str(p)) or real(p))
        with hashes.hashing_writes():
            written = list(run_tasks(_write_one, targets, executor=executor))
        for path in written:
            size, sha = hashes.size_and_sha256(path)
            assert (size, sha) == (path.stat().st_size,
                                   hashlib.sha256(path.read_bytes()).hexdigest())
        assert reads == []  # the hashes came back with the results: nothing read here
        path.write_bytes(b"changed")  # a changed file is hashed again
        assert hashes.size_and_sha256(path)[1] == hashlib.sha256(b"changed").hexdigest()
        assert reads == [str(path)]
    finally:
        executor.close()
