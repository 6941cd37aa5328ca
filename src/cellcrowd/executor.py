"""Run independent tasks (one per montage, frame or tile) serially, on processes, or on dask.

Stages hand a picklable function and a list of task arguments to
:meth:`Executor.map`; results come back in task order, whichever backend ran them,
so outputs do not depend on the executor.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Protocol, Self, TypeVar

from . import hashes
from .files import (
    WriteSettings,
    call_with_settings,
    confined_roots,
    forget_confinement,
    write_settings,
)
from .heap import given_back_when_idle, kept_heap

__all__ = [
    "DaskExecutor", "Executor", "LocalExecutor", "in_order", "make_executor", "owned_executor",
    "run_tasks",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class Executor(Protocol):
    """Something that maps a function over tasks and yields results in task order."""

    def map(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[R]: ...

    def close(self) -> None: ...


def _exit_with_parent(parent: int, interval: float = 0.5) -> None:
    """Worker initializer: end this worker soon after its parent is gone.

    Pool workers otherwise outlive a parent killed with SIGKILL, waiting forever
    on their task queue (and holding the parent's output pipes open).
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(1)

    threading.Thread(target=watch, name="cellcrowd-parent-watch", daemon=True).start()


def _init_worker(parent: int) -> None:
    """Worker initializer: Ctrl-C is the parent's to handle (no traceback per worker); the
    folders the parent confined writes to when it forked this worker are dropped (each
    task brings its own, see :func:`run_tasks`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    forget_confinement()
    _exit_with_parent(parent)


def _idle_trimmed_call(fn: Callable[[T], R], task: T) -> R:
    """``fn(task)`` in a pool worker, which gives its freed memory back once it has been
    idle a second (:func:`cellcrowd.heap.given_back_when_idle`)."""
    with given_back_when_idle():
        return fn(task)


class _Closes:
    """``with executor:`` closes it at the end of the block."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class LocalExecutor(_Closes):
    """Serial (``workers=1``) or a local process pool (``workers>1``), closed by
    :meth:`close` or at the end of a ``with`` block.

    >>> with LocalExecutor(workers=1) as ex:
    ...     list(ex.map(abs, [-1, 2, -3]))
    [1, 2, 3]
    """

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers if workers is not None else min(os.cpu_count() or 1, 8)
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        self._pool: ProcessPoolExecutor | None = None

    def map(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[R]:
        task_list = list(tasks)
        if self.workers == 1 or len(task_list) <= 1:
            yield from map(fn, task_list)
            return
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers, initializer=_init_worker, initargs=(os.getpid(),)
            )
        pool = self._pool
        yield from in_order(lambda task: pool.submit(_idle_trimmed_call, fn, task),
                            lambda fut: fut.result(), lambda fut: fut.cancel(), task_list,
                            2 * self.workers)

    def worker_pids(self) -> list[int]:
        """Process ids of the pool's workers (empty before the first parallel map)."""
        pool = self._pool
        processes = getattr(pool, "_processes", None) or {}
        return sorted(p.pid for p in processes.values() if p.pid is not None)

    def close(self) -> None:
        if self._pool is not None:
            # Tasks not yet started are dropped (after Ctrl-C); results of a finished
            # map were all taken already.
            self._pool.shutdown(cancel_futures=True)
            self._pool = None


class DaskExecutor(_Closes):
    """Tasks on a dask.distributed cluster (``scheduler`` address, or a given ``Client``);
    closing it closes a client it made itself."""

    def __init__(self, scheduler: str | None = None, client: Any = None) -> None:
        try:
            from distributed import Client
        except ImportError:  # pragma: no cover - depends on the environment
            raise ImportError(
                "dask.distributed is not installed: pip install 'cellcrowd[distributed]'"
            ) from None
        self._own = client is None
        self.client = client if client is not None else Client(scheduler)

    def map(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[R]:
        """Results in task order; the tasks go to the workers in batches (see
        :func:`batch_size`), each task's result or error kept apart."""
        client = self.client

        def result(fut: Any) -> list[tuple[bool, Any]]:
            value: list[tuple[bool, Any]] = fut.result()
            fut.release()
            return value

        task_list = list(tasks)
        threads = sum(client.nthreads().values()) or 1
        size = batch_size(len(task_list), threads)
        batches = [task_list[i:i + size] for i in range(0, len(task_list), size)]
        for outcomes in in_order(
                lambda batch: client.submit(_run_batch, fn, batch, pure=False), result,
                lambda fut: fut.cancel(), batches, 2 * threads):
            for ok, value in outcomes:
                if not ok:
                    raise value
                yield value

    def close(self) -> None:
        if self._own:
            self.client.close()


#: Batches per worker thread in a dask map: enough that a slow batch at the end keeps
#: one worker busy only briefly, few enough that the scheduler's work per task (a few
#: milliseconds of the client's process on each) is shared by several tasks.
BATCHES_PER_THREAD = 8


def batch_size(tasks: int, threads: int) -> int:
    """Tasks per batch sent to a dask worker: about :data:`BATCHES_PER_THREAD` batches a
    worker thread, and at least one task a batch (fewer tasks than twice that: one each).

    >>> batch_size(96, 2), batch_size(6, 2), batch_size(1000, 16)
    (6, 1, 7)
    """
    return max(1, tasks // (threads * BATCHES_PER_THREAD))


def _run_batch(fn: Callable[[T], R], batch: list[T]) -> list[tuple[bool, Any]]:
    """``fn`` over ``batch`` in a dask worker, with freed memory kept for reuse while it
    runs (:func:`cellcrowd.heap.kept_heap`): ``(True, result)`` per task, up to the
    first that raises, ``(False, error)`` (the consumer raises it in its task's place;
    the tasks after it would not be taken)."""
    outcomes: list[tuple[bool, Any]] = []
    with kept_heap():
        for task in batch:
            try:
                outcomes.append((True, fn(task)))
            except Exception as exc:
                outcomes.append((False, exc))
                break
    return outcomes


def in_order(submit: Callable[[T], Any], result: Callable[[Any], R],
             cancel: Callable[[Any], object], tasks: Iterable[T], window: int) -> Iterator[R]:
    """Results of ``tasks`` in task order, with at most ``window`` of them submitted and
    not yet taken: a consumer slower than the workers holds a few results, not all.

    ``submit(task)`` starts a task and returns its future, ``result(future)`` waits for
    it; futures still pending when the consumer stops are cancelled with ``cancel``.

    >>> list(in_order(lambda t: t * 2, lambda f: f, lambda f: None, [1, 2, 3], window=2))
    [2, 4, 6]
    """
    pending: collections.deque[Any] = collections.deque()
    remaining = iter(tasks)
    try:
        pending.extend(submit(task) for task in itertools.islice(remaining, max(window, 1)))
        while pending:
            value = result(pending.popleft())
            pending.extend(submit(task) for task in itertools.islice(remaining, 1))
            yield value
    finally:
        for fut in pending:
            cancel(fut)


def run_tasks(
    fn: Callable[[T], R],
    tasks: Iterable[T],
    *,
    executor: Executor | None = None,
    progress: Callable[[int], None] | None = None,
) -> Iterator[R]:
    """``fn`` over ``tasks`` on ``executor`` (None: serially here), results in task order.

    ``progress`` is called with 1 after each result, for progress bars. Tasks
    run under this process's :func:`cellcrowd.files.write_settings` (deflate
    levels, deferred syncing) and confined to its confined folders
    (:func:`cellcrowd.files.confine`: a run's working folder), wherever the executor
    runs them (a worker started before or during another job included); inside
    :func:`cellcrowd.hashes.hashing_writes` the files they write are hashed where
    they are written and the hashes come back with the results.

    >>> ticks = []
    >>> list(run_tasks(abs, [-1, -2], progress=ticks.append)), ticks
    ([1, 2], [1, 1])
    """
    roots = confined_roots()
    if executor is None:
        results: Iterator[R] = map(fn, tasks)
    elif hashes.hashing():
        results = _remembered(executor.map(
            functools.partial(_call_hashing, write_settings(), fn, roots=roots), tasks))
    else:
        results = executor.map(
            functools.partial(call_with_settings, write_settings(), fn, roots=roots), tasks)
    for result in results:
        if progress is not None:
            progress(1)
        yield result


def _call_hashing(settings: WriteSettings, fn: Callable[[T], R], task: T, *,
                  roots: tuple[Path, ...] = ()) -> tuple[R, list[hashes.FileDigest]]:
    """:func:`cellcrowd.files.call_with_settings`, with the digests of the files it wrote."""
    with hashes.hashing_writes() as found:
        return call_with_settings(settings, fn, task, roots=roots), found


def _remembered(results: Iterator[tuple[R, list[hashes.FileDigest]]]) -> Iterator[R]:
    """The results; the digests that came with them remembered here."""
    for result, found in results:
        hashes.remember(found)
        yield result


def make_executor(workers: int | None = None, scheduler: str | None = None) -> Executor:
    """A dask executor when ``scheduler`` is given, else a local one."""
    if scheduler:
        logger.info("running tasks on the dask scheduler at %s", scheduler)
        return DaskExecutor(scheduler)
    return LocalExecutor(workers)


@contextlib.contextmanager
def owned_executor(given: Executor | None, workers: int | None = None,
                   scheduler: str | None = None) -> Iterator[Executor]:
    """``given``, else :func:`make_executor` ``(workers, scheduler)``, closed at the end."""
    if given is not None:
        yield given
        return
    made = make_executor(workers, scheduler)
    try:
        yield made
    finally:
        made.close()
