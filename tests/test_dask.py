"""The same harvest on a dask.distributed cluster gives the same bytes as on local processes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cellcrowd.config import load_config
from cellcrowd.executor import DaskExecutor, LocalExecutor
from cellcrowd.pipeline import STAGES, run
from cellcrowd.sim.demo import ExampleSettings, emulated_job, make_example, save_config
from helpers import file_hashes

distributed = pytest.importorskip("distributed")

SETTINGS = ExampleSettings(frames=20, shape=(96, 96), cells=6, divisions=1, montage_len=5,
                           row_length=5)



@pytest.mark.slow
def test_dask_cluster_and_local_processes_write_identicalfile_hashes(tmp_path: Path) -> None:
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

        with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
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
