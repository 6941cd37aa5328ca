"""sync_paths: few files fsynced one by one, many with one syncfs per file system."""

from __future__ import annotations

import ctypes
import errno
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from cellcrowd import syncing
from cellcrowd.syncing import sync_paths

REAL_SYNCFS = syncing._syncfs()
linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="syncfs is Linux's")


def _files(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"f{i}.bin" for i in range(count)]
    for i, path in enumerate(paths):
        path.write_bytes(bytes([i % 256]) * 100)
    return paths


def _recording(calls: list[tuple[str, int]]) -> Callable[[int], int]:
    """The real syncfs, recording the folder and file system of each call."""
    real = REAL_SYNCFS
    assert real is not None

    def syncfs(fd: int) -> int:
        calls.append((os.readlink(f"/proc/self/fd/{fd}"), os.fstat(fd).st_dev))
        return real(fd)

    return syncfs


@pytest.fixture
def spied(monkeypatch: pytest.MonkeyPatch) -> tuple[list[tuple[str, int]], list[int]]:
    """``(syncfs calls, fsynced descriptors)`` from now on (the real calls still made)."""
    calls: list[tuple[str, int]] = []
    fsynced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(syncing, "_syncfs", lambda: _recording(calls))
    monkeypatch.setattr(os, "fsync", lambda fd: fsynced.append(fd) or real_fsync(fd))
    return calls, fsynced


@linux
@pytest.mark.parametrize("count", [3, 4, 10])
def test_from_the_threshold_one_syncfs_per_file_system_and_no_fsync(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count: int,
        spied: tuple[list[tuple[str, int]], list[int]]) -> None:
    paths = _files(tmp_path / "a", count // 2) + _files(tmp_path / "b" / "c", count - count // 2)
    calls, fsynced = spied
    monkeypatch.setattr(syncing, "SYNCFS_FROM", 4)
    assert sync_paths([*paths, tmp_path / "missing.bin"]) == count + 2  # files and 2 folders
    if count >= 4:
        assert fsynced == []
        assert len(calls) == 1
        folder, device = calls[0]
        assert Path(folder) in {(tmp_path / "a").resolve(), (tmp_path / "b" / "c").resolve()}
        assert device == tmp_path.stat().st_dev
    else:
        assert calls == []
        assert len(fsynced) == count + 2


@linux
def test_syncfs_once_per_file_system(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = Path("/dev/shm")
    if not other.is_dir() or other.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on a file system of its own")
    calls: list[tuple[str, int]] = []
    monkeypatch.setattr(syncing, "SYNCFS_FROM", 2)
    monkeypatch.setattr(syncing, "_syncfs", lambda: _recording(calls))
    with tempfile.TemporaryDirectory(dir=other) as shm:
        sync_paths(_files(tmp_path / "x", 3) + _files(tmp_path / "y", 3) + _files(Path(shm), 3))
    assert sorted(device for _, device in calls) == sorted(
        [tmp_path.stat().st_dev, other.stat().st_dev])


@linux
def test_a_failing_syncfs_raises_naming_the_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = _files(tmp_path / "out", 5)

    def failing(fd: int) -> int:
        ctypes.set_errno(errno.EIO)
        return -1

    monkeypatch.setattr(syncing, "SYNCFS_FROM", 2)
    monkeypatch.setattr(syncing, "_syncfs", lambda: failing)
    with pytest.raises(OSError, match="out") as caught:
        sync_paths(paths)
    assert caught.value.errno == errno.EIO


def test_without_syncfs_every_file_and_folder_is_fsynced(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        spied: tuple[list[tuple[str, int]], list[int]]) -> None:
    paths = _files(tmp_path / "a", 6)
    _, fsynced = spied
    monkeypatch.setattr(syncing, "SYNCFS_FROM", 2)
    monkeypatch.setattr(syncing, "_syncfs", lambda: None)
    expected = 6 + (1 if os.name != "nt" else 0)
    assert sync_paths(paths) == expected
    assert len(fsynced) == expected


@linux
def test_other_file_systems_get_an_fsync_per_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        spied: tuple[list[tuple[str, int]], list[int]]) -> None:
    """Above the threshold too: a FUSE or network file system may not sync on syncfs."""
    paths = _files(tmp_path / "a", 6)
    dev = tmp_path.stat().st_dev
    calls, fsynced = spied
    monkeypatch.setattr(syncing, "SYNCFS_FROM", 2)
    for kind in ("fuse.sshfs", "nfs4", None):
        monkeypatch.setattr(syncing, "_file_system_types", lambda kind=kind: (
            {} if kind is None else {(os.major(dev), os.minor(dev)): kind}))
        fsynced.clear()
        assert sync_paths(paths) == 7
        assert calls == []
        assert len(fsynced) == 7
    monkeypatch.setattr(syncing, "_file_system_types",
                        lambda: {(os.major(dev), os.minor(dev)): "xfs"})
    fsynced.clear()
    sync_paths(paths)
    assert len(calls) == 1
    assert fsynced == []


def test_mountinfo_types_by_device() -> None:
    text = (
        "22 27 0:21 / /proc rw,relatime - proc proc rw\n"
        "27 1 254:0 / / rw,relatime shared:1 master:2 - ext4 /dev/vda rw,discard\n"
        "40 27 0:45 / /mnt/x rw,nosuid - fuse.sshfs me@host:/data rw,user_id=0\n"
        "garbage line\n"
        "41 27 x:y / /bad rw - ext4 /dev/bad rw\n"
    )
    assert syncing.parse_mountinfo(text) == {
        (0, 21): "proc", (254, 0): "ext4", (0, 45): "fuse.sshfs"}
