from __future__ import annotations

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
