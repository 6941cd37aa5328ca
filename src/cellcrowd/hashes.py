"""SHA-256 of files, each hashed once while it is unchanged, and fast path resolution.

The manifest (:mod:`cellcrowd.pipeline.manifest`) records the size and SHA-256 of every
file a stage reads and writes. :func:`size_and_sha256` hashes a file once per process
while its identity (resolved path, inode, size, modification and change times) stays
the same. Inside :func:`hashing_writes`, every file :func:`cellcrowd.files.atomic_path`
puts in place is hashed right away, by the process that wrote it (while it is in the
page cache), and its hash is remembered: :func:`cellcrowd.executor.run_tasks` brings
the hashes of files its workers wrote back to the process that started the tasks
(:func:`remember`), so the pipeline does not read every output again to record it.
:func:`known` lists the digests a process holds, and ``remember(found, check=True)``
takes back those of another process (an earlier run) whose files still have the same
identity: a file is hashed again when its inode, size, modification or change time
differ (a write, a rename onto it, a copy, ``touch``), as ``git`` and ``make`` judge
files by what ``stat`` says; content changed with none of these changing is not seen.

:func:`resolve_path` is :meth:`pathlib.Path.resolve` that resolves each folder once
per cache it is given (the file's own name is still checked for a symbolic link).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

__all__ = ["FileDigest", "forget_stale", "hashing", "hashing_writes", "known", "note_written",
           "remember", "resolve_path", "resolved_text", "sha256_file", "size_and_sha256"]

#: ``((resolved path, inode, size, mtime_ns, ctime_ns), sha256)`` of one file version.
FileDigest = tuple[tuple[str, int, int, int, int], str]

_KNOWN: dict[tuple[str, int, int, int, int], str] = {}
_MAX_KNOWN = 1 << 17
_COLLECTING: list[list[FileDigest]] = []
_LOCK = threading.Lock()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def resolve_path(path: str | Path, folders: dict[str, str] | None = None) -> Path:
    """``Path(path).resolve()``, resolving the folder through ``folders`` (a cache).

    Only absolute paths with a plain last name use the cache; the last name is still
    followed when it is a symbolic link. A cache must not outlive a change of a
    folder into a symbolic link (keep it to one stage or one call).
    """
    return Path(resolved_text(path, folders))


def resolved_text(path: str | Path, folders: dict[str, str] | None = None) -> str:
    """:func:`resolve_path` as a string."""
    text = os.fspath(path)
    parent, name = os.path.split(text)
    if folders is None or not os.path.isabs(text) or name in ("", ".", ".."):
        return str(Path(text).resolve())
    resolved = folders.get(parent)
    if resolved is None:
        resolved = folders[parent] = os.path.realpath(parent)
    try:
        if stat.S_ISLNK(os.lstat(text).st_mode):
            return str(Path(text).resolve())
    except FileNotFoundError:
        pass
    except OSError:
        return str(Path(text).resolve())
    return os.path.join(resolved, name)


def _identity(resolved: str, st: os.stat_result) -> tuple[str, int, int, int, int]:
    return (resolved, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _keep(key: tuple[str, int, int, int, int], sha: str) -> None:
    with _LOCK:
        if len(_KNOWN) >= _MAX_KNOWN:
            _KNOWN.clear()
        _KNOWN[key] = sha


def size_and_sha256(path: str | Path, folders: dict[str, str] | None = None, *,
                    resolved: str | None = None) -> tuple[int, str]:
    """Size and SHA-256 of a file, hashed once per process while the file is unchanged.

    ``folders``: a :func:`resolve_path` cache; ``resolved``: the path's
    :func:`resolved_text` when the caller has it.
    """
    st = os.stat(path)
    key = _identity(resolved if resolved is not None else resolved_text(path, folders), st)
    sha = _KNOWN.get(key)
    if sha is None:
        sha = sha256_file(path)
        _keep(key, sha)
    return st.st_size, sha


def hashing() -> bool:
    """True inside :func:`hashing_writes` (in this process)."""
    return bool(_COLLECTING)


@contextlib.contextmanager
def hashing_writes() -> Iterator[list[FileDigest]]:
    """Hash every file atomic writes put in place in the block; yields their digests.

    The hashes are remembered in this process (:func:`size_and_sha256` finds them);
    give the yielded list to :func:`remember` in another process to share them.
    """
    found: list[FileDigest] = []
    with _LOCK:
        _COLLECTING.append(found)
    try:
        yield found
    finally:
        with _LOCK:  # by identity: lists with equal digests are different blocks
            del _COLLECTING[next(i for i, f in enumerate(_COLLECTING) if f is found)]


def note_written(path: Path) -> None:
    """Hash ``path`` (just put in place) for every :func:`hashing_writes` block open.

    A file that cannot be read back (already moved or removed) is left to be hashed
    when it is recorded.
    """
    try:
        st = os.stat(path)
        key = _identity(resolved_text(path.absolute(), {}), st)
        entry = (key, sha256_file(path))
    except OSError:
        return
    _keep(*entry)
    with _LOCK:
        for found in _COLLECTING:
            found.append(entry)


def remember(found: Iterable[FileDigest], *, check: bool = False) -> int:
    """Remember digests another process computed (see :func:`hashing_writes`); returns
    how many.

    With ``check``, only those whose file is still there with the same identity (for
    digests an earlier run kept: :func:`known`).
    """
    count = 0
    for key, sha in found:
        if check and not _unchanged(key):
            continue
        _keep(key, sha)
        count += 1
    return count


def _unchanged(key: tuple[str, int, int, int, int]) -> bool:
    """The file named by ``key`` is still there with that identity."""
    try:
        return _identity(key[0], os.stat(key[0])) == key
    except OSError:
        return False


def forget_stale(select: Callable[[str], bool]) -> int:
    """Forget the digests of files ``select(path)`` picks that are gone or changed since
    (``stat``: another inode, size or time); returns how many were forgotten.

    A long-lived process (a notebook running the harvest again and again) would
    otherwise hold, and keep in the folder's cache, a digest of every file it ever wrote
    there: a forced run replaces every output with new files.
    """
    with _LOCK:
        chosen = [key for key in _KNOWN if select(key[0])]
    stale = [key for key in chosen if not _unchanged(key)]
    with _LOCK:
        for key in stale:
            _KNOWN.pop(key, None)
    return len(stale)


def known() -> list[FileDigest]:
    """Every digest this process holds (to keep for the next run: :func:`remember`)."""
    with _LOCK:
        return list(_KNOWN.items())
