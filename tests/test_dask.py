"""The same harvest on a dask.distributed cluster gives the same bytes as on local processes;
the dask executor sends tasks in batches, keeps the workers' heap while they run and
confines their writes to the sender's folders."""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cellcrowd.config import load_config
from cellcrowd.errors import UnsafePathError
from cellcrowd.executor import DaskExecutor, LocalExecutor, batch_size, run_tasks
from cellcrowd.files import atomic_write_text, confine
from cellcrowd.heap import RESTORE_AFTER
from cellcrowd.pipeline import STAGES, run
from cellcrowd.sim.demo import ExampleSettings, emulated_job, make_example, save_config
from helpers import file_hashes

dask = pytest.importorskip("dask")
distributed = pytest.importorskip("distributed")

SETTINGS = ExampleSettings(frames=20, shape=(96, 96), cells=6, divisions=1, montage_len=5,
                           row_length=5)



@pytest.mark.slow
def test_dask_cluster_and_local_processes_write_identical_file_hashes(tmp_path: Path) -> None:
    example = make_example(tmp_path / "prepared", SETTINGS)
    with emulated_job(example, api_key="dask-key") as (_, served):
        configs = {}
        for name in ("local", "dask", "scheduler"):
            dest = tmp_path / name
            shutil.copytree(example.config.base, dest)
            save_config(served.model_copy(update={"base": dest, "raw": None}),
                        dest / "cellcrowd.toml")
            configs[name] = load_config(dest / "cellcrowd.toml")

        local = LocalExecutor(2)
        try:
            assert run(configs["local"], executor=local).ran == list(STAGES)
        finally:
            local.close()

        with dask.config.set({"temporary-directory": str(tmp_path / "scratch")}), \
                distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                         dashboard_address=":0") as cluster, \
                distributed.Client(cluster) as client:
            executor = DaskExecutor(client=client)
            with distributed.get_task_stream(client) as tasks:
                assert run(configs["dask"], executor=executor).ran == list(STAGES)
            # montages cleaned, frames chopped, parts stitched... all ran on the workers
            assert len(tasks.data) >= 50
            # the same through the configuration (a scheduler address), as `--scheduler` does
            by_address = configs["scheduler"].with_overrides(
                {"executor.scheduler": cluster.scheduler_address})
            assert run(by_address).ran == list(STAGES)
            assert len(client.scheduler_info()["workers"]) == 2

    expected = file_hashes(tmp_path / "local")
    assert len(expected) > 100
    assert file_hashes(tmp_path / "dask") == expected
    assert file_hashes(tmp_path / "scheduler") == expected


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    scratch = tmp_path_factory.mktemp("dask")  # not dask's own, in the system's temp folder
    with dask.config.set({"temporary-directory": str(scratch)}), \
            distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                     dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as made:
        made.wait_for_workers(2, timeout=120)
        yield made


def _square_unless_17(task: tuple[Path, int]) -> int:
    folder, x = task
    (folder / str(x)).touch()  # it ran
    if x == 17:
        raise ValueError(f"task {x} is bad")
    return x * x


def test_tasks_go_in_batches_and_an_error_comes_in_its_place(client: Any,
                                                              tmp_path: Path) -> None:
    executor = DaskExecutor(client=client)
    taken: list[int] = []
    with distributed.get_task_stream(client) as stream, \
            pytest.raises(ValueError, match="task 17 is bad"):
        taken.extend(executor.map(_square_unless_17, [(tmp_path, x) for x in range(64)]))
    assert taken == [x * x for x in range(17)]  # every result before the bad task, in order
    ran = {int(p.name) for p in tmp_path.iterdir()}
    assert set(range(18)) <= ran
    assert not ran & {18, 19}  # its batch (16-19) stopped at the error
    assert list(executor.map(abs, range(-64, 0))) == list(range(64, 0, -1))
    size = batch_size(64, 2)
    assert size == 4
    # 64 tasks, 4 to a batch: 16 batches for the first map (or fewer: those after the
    # error may be cancelled before they start)
    assert 0 < len(stream.data) <= 64 // size
    assert [batch_size(n, 2) for n in (1, 15, 16, 31, 32, 1000)] == [1, 1, 1, 1, 2, 62]


def _faults_of_big_arrays(_: int) -> int:
    import resource

    import numpy as np

    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(50):
        a = np.ones(1 << 20, np.uint8)
        del a
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_cellcrowd_tasks_keep_the_workers_heap(client: Any) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc's malloc settings only")
    trim = client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_"))
    assert set(trim.values()) == {"65536"}  # distributed's default for its workers
    pages = 50 * (1 << 20) // 4096
    time.sleep(RESTORE_AFTER + 0.5)  # no cellcrowd task lately (an earlier test's)
    plain = client.submit(_faults_of_big_arrays, 0, pure=False).result()
    assert plain >= 0.9 * pages
    ours = list(DaskExecutor(client=client).map(_faults_of_big_arrays, range(8)))
    assert min(ours[1:]) < 0.05 * pages  # the first touches the kept heap once
    time.sleep(RESTORE_AFTER + 0.5)
    assert client.submit(_faults_of_big_arrays, 1, pure=False).result() >= 0.9 * pages


def _write(path: Path) -> str:
    return atomic_write_text(path, "x").name


def test_tasks_on_dask_workers_are_confined_to_the_senders_folder(client: Any,
                                                                    tmp_path: Path) -> None:
    mine, outside = tmp_path / "mine", tmp_path / "outside"
    mine.mkdir()
    outside.mkdir()
    executor = DaskExecutor(client=client)
    with confine(mine):
        assert list(run_tasks(_write, [mine / "a", mine / "b"], executor=executor)) == ["a", "b"]
        with pytest.raises(UnsafePathError, match="outside the working folder"):
            list(run_tasks(_write, [outside / "c"], executor=executor))
    assert list(outside.iterdir()) == []
    # the workers keep no folder of their own once the tasks are done
    assert list(run_tasks(_write, [outside / "d"], executor=executor)) == ["d"]
