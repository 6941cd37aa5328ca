"""What glibc does with the memory cellcrowd's tasks free, in the workers that run them.

Kept while tasks run, in a dask worker (:func:`kept_heap`).

``distributed``'s nanny starts every worker with ``MALLOC_TRIM_THRESHOLD_=65536``
(``distributed.nanny.pre-spawn-environ``), so that freed memory goes back to the
system at once. Setting it also fixes glibc's mmap threshold at 128 KiB: every array
of 128 KiB or more is then a fresh ``mmap`` whose pages fault in one by one on first
touch, and every free gives them back. Image tasks make many such short-lived arrays:
measured on the benchmark's harvest, a dask worker took 3.4 million page faults and
23 s of CPU where the same tasks in a process with glibc's defaults took 0.3 million
and 15 s.

:func:`kept_heap` raises both thresholds to 32 MiB while cellcrowd tasks run in the
process; once none has run for a second (:data:`RESTORE_AFTER`: the end of a stage,
not the gap between two of its tasks) it puts back the worker's own values and trims
the heap (``malloc_trim``), so an idle worker holds what its configuration asks. It changes
nothing outside glibc on Linux, nor in a process whose environment does not set
``MALLOC_TRIM_THRESHOLD_`` (glibc's adaptive defaults are fast already), nor where the
environment sets ``MALLOC_MMAP_THRESHOLD_`` (someone chose it).

Given back when idle, in a local worker (:func:`given_back_when_idle`). With glibc's
defaults, memory freed below the top of the heap stays with the process (the heap
shrinks only from its top), so a local pool's worker keeps the high-water mark of its
tasks' fragments and idles holding it, e.g. while the main process writes a whole-movie
file: 101-148 MB a worker in the npz stage at 2048^2 x 200, 88 MB once trimmed. Once no
task has run in the process for :data:`RESTORE_AFTER` seconds, one thread calls
``malloc_trim(0)``, which gives back the free pages inside the heap too.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

__all__ = ["KEPT_BYTES", "RESTORE_AFTER", "given_back_when_idle", "kept_heap"]

logger = logging.getLogger(__name__)

#: The trim and mmap thresholds while tasks run (glibc's largest mmap threshold on 64 bits).
KEPT_BYTES = 32 * 1024 * 1024
#: ``mallopt`` parameters (glibc's ``malloc.h``).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: glibc's default mmap and trim thresholds (the mmap one stays fixed once the trim
#: threshold is set).
_GLIBC_DEFAULT = 128 * 1024

#: Seconds with no task running before the worker's own settings are back: tasks one
#: after the other (a stage) keep the heap; a worker left idle gives its memory back.
RESTORE_AFTER = 1.0


@functools.cache
def _glibc() -> Any | None:
    """This process's C library when it is glibc (it has ``mallopt`` and ``malloc_trim``)."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt, libc.malloc_trim  # noqa: B018 - musl and macOS lack one or both
    except (OSError, AttributeError):
        return None
    return libc


def _libc() -> Any | None:
    """glibc, when this process's environment set a trim threshold and left the mmap
    threshold alone; None otherwise (nothing to do)."""
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return None
    return _glibc()


def _worker_trim() -> int:
    try:
        return int(os.environ["MALLOC_TRIM_THRESHOLD_"])
    except (KeyError, ValueError):
        return _GLIBC_DEFAULT


class _Kept:
    """How many tasks run, and the timer that gives the worker its settings back."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.kept = False
        self.timer: threading.Timer | None = None

    def enter(self, libc: Any) -> None:
        with self.lock:
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            if not self.kept:
                libc.mallopt(_M_MMAP_THRESHOLD, KEPT_BYTES)
                libc.mallopt(_M_TRIM_THRESHOLD, KEPT_BYTES)
                self.kept = True
            self.running += 1

    def leave(self, libc: Any) -> None:
        with self.lock:
            self.running -= 1
            if self.running == 0:
                self.timer = threading.Timer(RESTORE_AFTER, self.restore, (libc,))
                self.timer.daemon = True
                self.timer.start()

    def restore(self, libc: Any) -> None:
        with self.lock:
            if self.running or not self.kept:
                return
            libc.mallopt(_M_TRIM_THRESHOLD, _worker_trim())
            libc.mallopt(_M_MMAP_THRESHOLD, _GLIBC_DEFAULT)
            libc.malloc_trim(0)
            self.kept = False
            self.timer = None
            logger.debug("the worker's malloc settings restored, its heap trimmed")


_state = _Kept()


@contextlib.contextmanager
def kept_heap() -> Iterator[None]:
    """Freed memory kept for reuse (up to 32 MiB) while the block runs, and until
    :data:`RESTORE_AFTER` seconds pass with no such block running; see the module."""
    libc = _libc()
    if libc is None:
        yield
        return
    _state.enter(libc)
    try:
        yield
    finally:
        _state.leave(libc)


class _Idle:
    """How many tasks run and when the last ended, and the thread (one a process, started
    with its first task) that trims the heap once the process has been idle for
    :data:`RESTORE_AFTER` seconds: entering and leaving a task only count."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.idle = threading.Event()  # set when the count falls to 0, until trimmed
        self.running = 0
        self.ended = 0.0  # time.monotonic() when the last task ended
        self.watcher: threading.Thread | None = None

    def enter(self, libc: Any) -> None:
        with self.lock:
            self.running += 1
            self.idle.clear()
            if self.watcher is None:
                self.watcher = threading.Thread(target=self._watch, args=(libc,),
                                                name="cellcrowd-trim", daemon=True)
                self.watcher.start()

    def leave(self) -> None:
        with self.lock:
            self.running -= 1
            self.ended = time.monotonic()
            if self.running == 0:
                self.idle.set()

    def _watch(self, libc: Any) -> None:
        while True:
            self.idle.wait()
            with self.lock:
                wait = RESTORE_AFTER - (time.monotonic() - self.ended)
                if self.running == 0 and wait <= 0:
                    libc.malloc_trim(0)
                    self.idle.clear()
                    logger.debug("idle: the heap trimmed")
                    continue
            if wait > 0:
                time.sleep(wait)


_idle = _Idle()


def _after_fork_in_child() -> None:
    """A forked process has none of its parent's threads: its first task starts its own."""
    global _idle
    _idle = _Idle()


os.register_at_fork(after_in_child=_after_fork_in_child)


@contextlib.contextmanager
def given_back_when_idle() -> Iterator[None]:
    """Run the block as a task of a local worker: once :data:`RESTORE_AFTER` seconds pass
    with no such block running, the freed memory goes back to the system (see the
    module). Nothing happens outside glibc."""
    libc = _glibc()
    if libc is None:
        yield
        return
    _idle.enter(libc)
    try:
        yield
    finally:
        _idle.leave()
