from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cellcrowd.errors import UnsafePathError
from cellcrowd.executor import LocalExecutor, in_order, make_executor, run_tasks
from cellcrowd.files import atomic_write_text, confine


def _square(x: int) -> int:
    return x * x


def _mark_started(task: tuple[Path, int]) -> int:
    folder, n = task
    (folder / f"started_{n}").touch()
    return n


@pytest.mark.parametrize("workers", [1, 2], ids=["serial", "processes"])
def test_results_come_back_in_task_order(workers: int) -> None:
    ex = LocalExecutor(workers)
    try:
        assert list(ex.map(_square, range(20))) == [x * x for x in range(20)]
    finally:
        ex.close()


def test_a_with_block_closes_the_pool() -> None:
    with LocalExecutor(2) as ex:
        assert list(ex.map(_square, range(6))) == [x * x for x in range(6)]
        pids = ex.worker_pids()
        assert len(pids) == 2
    assert ex.worker_pids() == []
    for pid in pids:  # the workers are gone, not just forgotten
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def _write(path: Path) -> str:
    return atomic_write_text(path, "x").name


@pytest.mark.parametrize("start", ["inline", "before", "during another job"])
def test_tasks_are_confined_to_the_senders_folders(tmp_path: Path, start: str) -> None:
    """Wherever a task runs, it may write in the folders its sender confined writes to,
    and nowhere else: also in a worker started before any job (nothing confined then) or
    forked during another job (that job's folder confined then)."""
    other, mine, outside = (tmp_path / n for n in ("other", "mine", "outside"))
    for folder in (other, mine, outside):
        folder.mkdir()
    with LocalExecutor(1 if start == "inline" else 2) as ex:
        if start == "before":
            assert list(ex.map(_square, [1, 2])) == [1, 4]  # the pool starts here
        if start == "during another job":
            with confine(other):
                assert list(run_tasks(_write, [other / "a", other / "b"], executor=ex)) == [
                    "a", "b"]
        with confine(mine):
            assert list(run_tasks(_write, [mine / "c", mine / "d"], executor=ex)) == ["c", "d"]
            for refused in (outside, other):
                with pytest.raises(UnsafePathError, match="outside the working folder"):
                    list(run_tasks(_write, [refused / "e", refused / "f"], executor=ex))
        # A task sent from outside any job is not confined (library use).
        assert list(run_tasks(_write, [outside / "g", outside / "h"], executor=ex)) == [
            "g", "h"]
    assert sorted(p.name for p in mine.iterdir()) == ["c", "d"]
    assert sorted(p.name for p in outside.iterdir()) == ["g", "h"]
    assert "e" not in {p.name for p in other.iterdir()}


def test_a_slow_consumer_holds_few_results(tmp_path: Path) -> None:
    """Workers run at most 2 x workers tasks ahead of the one being taken, so results a
    slow consumer has not taken yet (e.g. whole stitched parts) never pile up."""
    ex = LocalExecutor(2)
    ahead = []
    try:
        for n in ex.map(_mark_started, [(tmp_path, n) for n in range(30)]):
            time.sleep(0.05)  # slower than the tasks: without a bound all would start
            ahead.append(len(list(tmp_path.glob("started_*"))) - (n + 1))
    finally:
        ex.close()
    assert max(ahead) <= 4
    assert max(ahead) >= 1  # and the workers did run ahead


def test_in_order_cancels_what_a_stopped_consumer_leaves() -> None:
    submitted: list[int] = []
    cancelled: list[int] = []

    def submit(task: int) -> int:
        submitted.append(task)
        return task

    results = in_order(submit, lambda f: f * 10, cancelled.append, range(100), window=3)
    assert [next(results), next(results)] == [0, 10]
    results.close()
    assert submitted == [0, 1, 2, 3, 4]
    assert cancelled == [2, 3, 4]


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
