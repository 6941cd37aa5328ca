"""One run per working folder: the run lock, and who holds it.

The lock is an ``flock`` on ``wf.state / "lock"``; the file says who holds it
(``pid N on HOST since TIME``) so that a refused run and :func:`lock_holder` can
name the holder. On systems without ``fcntl`` (Windows) there is no lock.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from typing import IO

from ..errors import PipelineError
from ..layout import WorkingFolder

__all__ = ["hold_lock", "lock_holder"]


@contextlib.contextmanager
def hold_lock(wf: WorkingFolder) -> Iterator[None]:
    """Hold the folder's lock for the ``with`` block.

    Raises
    ------
    PipelineError
        Another process holds it (the message names the holder).
    """
    wf.state.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(wf.state / "lock", "a+") as fh:  # not "w": that would erase the holder
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise PipelineError(
                f"another cellcrowd run is using {wf.base} ({_holder_text(fh)}): wait for "
                "it to finish"
            ) from None
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            fh.flush()
            yield
        finally:
            fh.seek(0)
            fh.truncate()
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _holder_text(fh: IO[str]) -> str:
    fh.seek(0)
    return fh.read().strip() or "holder unknown"


def lock_holder(wf: WorkingFolder) -> str | None:
    """Who holds the folder's lock (``pid N on HOST since TIME``), None when nobody does."""
    path = wf.state / "lock"
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return None
    if not path.is_file():
        return None
    with open(path) as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return _holder_text(fh)
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    return None
