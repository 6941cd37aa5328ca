"""glibc keeps freed memory for reuse while cellcrowd's tasks run under dask's malloc settings.

``distributed``'s nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``: every array
of 128 KiB or more is then a fresh ``mmap`` whose pages fault in on first touch. Page
faults are counted (``ru_minflt``) around 50 allocations of a 1 MiB array, in a process
started with that setting: outside :func:`cellcrowd.heap.kept_heap`, inside it, and
once the worker's own settings are back.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import time

import pytest

from cellcrowd import heap
from cellcrowd.heap import RESTORE_AFTER

GLIBC = sys.platform.startswith("linux") and hasattr(ctypes.CDLL(None), "malloc_trim")
needs_glibc = pytest.mark.skipif(not GLIBC, reason="glibc's malloc settings only")

COUNT = """
import json, resource, sys, time
import numpy as np
from cellcrowd.heap import RESTORE_AFTER, kept_heap

def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(50):
        a = np.ones(1 << 20, np.uint8)  # 1 MiB, every page touched
        del a
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

plain = faults()
with kept_heap():
    faults()  # the kept heap's pages touched once
    kept = faults()
    with kept_heap():  # nested (two tasks on two threads): still kept
        nested = faults()
    inner_done = faults()
soon = faults()  # the last task ended just now: still kept
time.sleep(RESTORE_AFTER + 0.5)
json.dump({"plain": plain, "kept": kept, "nested": nested, "inner_done": inner_done,
           "soon": soon, "restored": faults()}, sys.stdout)
"""

PAGES = 50 * (1 << 20) // 4096  # every page of every allocation


def _faults(malloc: dict[str, str]) -> dict[str, int]:
    """The counts, in a process whose only malloc settings are ``malloc``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", COUNT], env={**env, **malloc},
                         capture_output=True, text=True, timeout=120, check=True)
    result: dict[str, int] = json.loads(out.stdout)
    return result


@needs_glibc
def test_dasks_trim_setting_faults_every_page_and_a_kept_heap_does_not() -> None:
    got = _faults({"MALLOC_TRIM_THRESHOLD_": "65536"})
    assert got["plain"] >= 0.9 * PAGES  # the setting's cost: a fault per page
    for kept in ("kept", "nested", "inner_done", "soon"):
        assert got[kept] < 0.05 * PAGES, (kept, got)
    assert got["restored"] >= 0.9 * PAGES  # the worker's own setting is back


@needs_glibc
def test_nothing_changes_without_the_trim_setting_or_with_a_chosen_mmap_threshold(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert heap._libc() is None  # glibc's adaptive defaults: nothing to do
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    assert heap._libc() is not None
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1048576")  # someone chose it: left alone
    assert heap._libc() is None
    chosen = _faults({"MALLOC_TRIM_THRESHOLD_": "65536", "MALLOC_MMAP_THRESHOLD_": "131072"})
    assert chosen["kept"] >= 0.9 * PAGES  # their setting holds inside the block too


_PINS: list[object] = []


def _fragment(_: int) -> int:
    """Leave about 190 MiB of freed blocks in this worker's heap under a live one: glibc
    cannot give them back by shrinking the heap from its top."""
    import numpy as np

    blocks = [np.ones(64 * 1024, np.uint8) for _ in range(3000)]  # under the mmap threshold
    _PINS.append(np.ones(64 * 1024, np.uint8))  # above them all, kept
    del blocks
    return os.getpid()


@needs_glibc
def test_a_local_worker_gives_its_freed_memory_back_once_idle() -> None:
    import psutil

    from cellcrowd.executor import LocalExecutor

    with LocalExecutor(2) as ex:
        pids = set(ex.map(_fragment, range(2)))
        busy = {pid: psutil.Process(pid).memory_info().rss for pid in pids}
        idle = busy
        deadline = time.monotonic() + RESTORE_AFTER + 10
        while time.monotonic() < deadline:  # bounded: the trim comes RESTORE_AFTER s after
            time.sleep(0.2)
            idle = {pid: psutil.Process(pid).memory_info().rss for pid in pids}
            if all(busy[pid] - idle[pid] > 150e6 for pid in pids):
                break
    for pid in pids:
        assert busy[pid] - idle[pid] > 150e6, (busy, idle)  # the freed 190 MiB went back
