from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from cellcrowd.executor import LocalExecutor, make_executor


def _square(x: int) -> int:
    return x * x


@pytest.mark.parametrize("workers", [1, 2], ids=["serial", "processes"])
def test_results_come_back_in_task_order(workers: int) -> None:
    ex = LocalExecutor(workers)
    try:
        assert list(ex.map(_square, range(20))) == [x * x for x in range(20)]
    finally:
        ex.close()


def test_bad_worker_count() -> None:
    with pytest.raises(ValueError, match="workers must be at least 1"):
        LocalExecutor(0)
    assert isinstance(make_executor(workers=1), LocalExecutor)


def test_pool_workers_end_when_their_parent_is_killed() -> None:
    code = (
        "import os, sys, time\n"
        "from cellcrowd.executor import LocalExecutor\n"
        "from cellcrowd.files import natural_key\n"
        "ex = LocalExecutor(2)\n"
        "list(ex.map(natural_key, ['a1', 'b2', 'c3', 'd4']))\n"
        "print(' '.join(str(p) for p in ex.worker_pids()), flush=True)\n"
        "time.sleep(60)\n"
    )
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                          text=True) as proc:
        assert proc.stdout is not None
        workers = [int(p) for p in proc.stdout.readline().split()]
        assert len(workers) == 2
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.1)
    assert not any(_alive(p) for p in workers), "pool workers outlived their parent"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except FileNotFoundError:
        return False
