"""Making written files durable: many files synced to disk at once.

:func:`sync_paths` is the one durable sync of a pipeline stage (or of a download, or
of a notebook step): what :func:`cellcrowd.files.deferred_sync` left unsynced is on
disk when it returns. Few files are synced one by one (``fsync``, on a few threads,
which the file system commits together); many files on Linux with one ``syncfs`` per
file system, which writes everything dirty on it and commits its journal once:
measured about twice as fast as 1 920 ``fsync`` calls for the harvest's movie frames
(``docs/performance.md``). ``syncfs`` also waits for data other programs wrote to the
same file system; below :data:`SYNCFS_FROM` files that costs more than it saves. It is
used only on local file systems known to sync everything it asks for
(:data:`SYNCFS_TYPES`); on others (NFS, FUSE mounts, cluster file systems) each file is
fsynced, as a FUSE file system may answer ``syncfs`` without syncing anything.
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import logging
import os
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

__all__ = ["SYNCFS_FROM", "SYNCFS_TYPES", "parse_mountinfo", "sync_paths"]

logger = logging.getLogger(__name__)

#: From this many files, the files of one file system are synced with one ``syncfs``.
SYNCFS_FROM = 256
#: File system types (``/proc/self/mountinfo``) whose ``syncfs`` writes and commits all.
SYNCFS_TYPES = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "zfs", "tmpfs"})


def sync_paths(paths: Iterable[str | Path]) -> int:
    """Sync ``paths`` (files or folders) and the folders holding them to disk.

    Missing paths are ignored. Folders cannot be synced on Windows; there only
    files are. Returns how many files and folders were synced.

    Raises
    ------
    OSError
        A sync failed (e.g. the disk reported a write error).
    """
    files: set[Path] = set()
    folders: set[Path] = set()
    for p in map(Path, paths):
        if p.is_dir():
            folders.add(p)
        elif p.is_file():
            files.add(p)
            folders.add(p.parent)
    syncfs = _syncfs()
    if syncfs is not None and len(files) >= SYNCFS_FROM:
        local = _one_folder_per_file_system(folders)
        if local is not None:
            for folder in local:
                _sync_file_system(syncfs, folder)
            return len(files) + len(folders)
    _fsync_all(sorted(files))
    if os.name != "nt":
        _fsync_all(sorted(folders))
    return len(files) + (len(folders) if os.name != "nt" else 0)


@functools.cache
def _syncfs() -> Callable[[int], int] | None:
    """libc's ``syncfs`` (Linux), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).syncfs
    except (AttributeError, OSError):  # pragma: no cover - a libc without it
        return None


def _one_folder_per_file_system(folders: set[Path]) -> list[Path] | None:
    """One of ``folders`` on each file system they are on; None when one of those is not
    of :data:`SYNCFS_TYPES`."""
    chosen: dict[int, Path] = {}
    for folder in sorted(folders):
        chosen.setdefault(os.stat(folder).st_dev, folder)
    types = _file_system_types()
    if any(types.get((os.major(dev), os.minor(dev))) not in SYNCFS_TYPES for dev in chosen):
        return None
    return list(chosen.values())


def _file_system_types() -> dict[tuple[int, int], str]:
    """The type of each mounted file system by device number (empty when
    ``/proc/self/mountinfo`` cannot be read)."""
    try:
        return parse_mountinfo(Path("/proc/self/mountinfo").read_text())
    except OSError:
        return {}


def parse_mountinfo(text: str) -> dict[tuple[int, int], str]:
    """``{(major, minor): type}`` from the text of ``/proc/self/mountinfo``.

    >>> parse_mountinfo("36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw")
    {(98, 0): 'ext3'}
    """
    types: dict[tuple[int, int], str] = {}
    for line in text.splitlines():  # "id parent major:minor root mount opts... - type ..."
        fields, _, rest = line.partition(" - ")
        numbers, kind = fields.split()[2:3], rest.split()[:1]
        if numbers and kind and numbers[0].count(":") == 1:
            major, minor = numbers[0].split(":")
            if major.isdigit() and minor.isdigit():
                types[int(major), int(minor)] = kind[0]
    return types


def _sync_file_system(syncfs: Callable[[int], int], folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        if syncfs(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), str(folder))
    finally:
        os.close(fd)
    logger.debug("synced the file system of %s", folder)


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_all(paths: list[Path]) -> None:
    if len(paths) < 4:
        for path in paths:
            _fsync(path, os.O_RDONLY)
        return
    with ThreadPoolExecutor(min(16, len(paths)), thread_name_prefix="cellcrowd-sync") as pool:
        for _ in pool.map(_fsync, paths, itertools.repeat(os.O_RDONLY)):
            pass
