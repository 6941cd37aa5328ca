"""The chaos test of issue 9: a job of over 200 annotations with every fault injected at a
low rate and a few hostile rows, harvested through the ``cellcrowd`` command.

The run must complete, write nothing outside its working folder, hold every good
annotation exactly once, list every bad row with its reason, and produce the same labels,
movies and npz as a clean run over the good units only.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cellcrowd.cli import main
from cellcrowd.config import Config, OutputsConfig, load_config
from cellcrowd.sim.crowd import CrowdConfig, CrowdJob, crowd_from_folder
from cellcrowd.sim.demo import Example, ExampleSettings, make_example, save_config
from cellcrowd.sim.emulator import Emulator, Faults
from cellcrowd.sim.faults import append_rows, bomb_png, damaged_png, hostile_rows

SETTINGS = ExampleSettings(frames=20, shape=(96, 96), cells=6, divisions=1, montage_len=5,
                           row_length=5)
KEY = "chaos-key-5e1f0c9a77"
CROWD = CrowdConfig(workers_per_unit=(12, 15), pool_size=20, broken_share=0.04)
FAULTS = Faults(error_rate=0.03, burst_rate=0.03, retry_after=0, truncate_rate=0.03,
                drop_rate=0.02, max_faults_per_path=2, seed=5)


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Example:
    return make_example(tmp_path_factory.mktemp("chaos-prepared"), SETTINGS,
                        outputs=OutputsConfig(stitched=False, trk=False, ctc=False, qc=False))


@pytest.fixture(scope="module")
def jobs(example: Example) -> tuple[CrowdJob, CrowdJob, dict[str, int]]:
    """The hostile job (a bomb and a damaged PNG among the annotations) and the clean one."""
    job = crowd_from_folder(example.config.working_folder(), job_id=example.config.job_id,
                            config=CROWD, seed=3)
    good = [j for j in job.judgments if j.annotation is not None]
    assert len(good) >= 200
    bad = {"bomb": good[5].judgment_id, "damaged": good[50].judgment_id}
    hostile = dataclasses.replace(job, judgments=tuple(
        dataclasses.replace(j, annotation=bomb_png()) if j.judgment_id == bad["bomb"] else
        dataclasses.replace(j, annotation=damaged_png(j.annotation or b""))
        if j.judgment_id == bad["damaged"] else j for j in job.judgments))
    clean = dataclasses.replace(job, judgments=tuple(
        j for j in job.judgments if j.judgment_id not in bad.values()))
    return hostile, clean, bad


def _folder(example: Example, dest: Path, url: str) -> Path:
    """A copy of the prepared folder, configured for the service at ``url``."""
    shutil.copytree(example.config.base, dest)
    service = example.config.service.model_copy(update={"api_url": url, "poll_interval": 0.1})
    cfg = example.config.model_copy(update={"base": dest, "raw": None, "service": service})
    return save_config(cfg, dest / "cellcrowd.toml")


def _harvest(example: Example, job: CrowdJob, dest: Path, capsys: pytest.CaptureFixture[str],
             **emulator: Any) -> tuple[Config, str, Emulator]:
    setup = emulator.pop("setup", None)
    with Emulator(job, api_key=KEY, **emulator) as emu:
        if setup is not None:
            setup(emu)
        path = _folder(example, dest, emu.url)
        code = main(["run", str(path), "--quiet"])
        _, err = capsys.readouterr()
    assert code == 0, err
    return load_config(path), err, emu


def _listing(folder: Path, skip: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and skip not in p.parents}


def _outputs(cfg: Config) -> dict[str, Any]:
    """Labels, movies (bytes) and npz (arrays) of a harvest."""
    wf = cfg.working_folder()
    out: dict[str, Any] = {}
    for folder in (wf.labels, wf.movies):
        out.update({f"{folder.name}/{k}": v for k, v in _listing(folder, wf.state).items()})
    for path in sorted(wf.npz.glob("*.npz")):
        with np.load(path) as data:
            out.update({f"npz/{path.name}/{k}": data[k] for k in data.files})
    return out


def _poison(emu: Emulator, job_id: int) -> list[Any]:
    _, member = emu.report_member(job_id, "full")
    template = next(csv.DictReader(io.StringIO(member.decode())))
    rows = hostile_rows(template, json.loads(template["annotation"])["url"])
    emu.replace_report(job_id, "full", append_rows(member, rows))
    return rows


@pytest.mark.slow
def test_chaos(example: Example, jobs: tuple[CrowdJob, CrowdJob, dict[str, int]],
               tmp_path: Path, capsys: pytest.CaptureFixture[str],
               monkeypatch: pytest.MonkeyPatch) -> None:
    hostile, clean, bad = jobs
    monkeypatch.setenv("CELLCROWD_API_KEY", KEY)
    clean_cfg, _, _ = _harvest(example, clean, tmp_path / "clean" / "work", capsys)

    parent = tmp_path / "chaos"
    (parent / "sentinel").mkdir(parents=True)
    (parent / "sentinel" / "keep.txt").write_text("do not touch")
    before = _listing(parent, parent / "work")
    rows: list[Any] = []
    cfg, err, emu = _harvest(example, hostile, parent / "work", capsys, faults=FAULTS,
                             setup=lambda e: rows.extend(_poison(e, example.config.job_id)))
    assert "Traceback" not in err
    assert sum(v for k, v in emu.counts.items() if k.startswith("fault_")) > 0
    # nothing outside the working folder changed
    assert _listing(parent, parent / "work") == before
    assert sorted(p.name for p in parent.iterdir()) == ["sentinel", "work"]

    wf, job_id = cfg.working_folder(), cfg.job_id
    # every good annotation exactly once
    good = {(clean.units_by_id[j.unit_id].montage, str(j.unit_id), str(j.judgment_id))
            for j in clean.judgments if j.annotation is not None}
    files = sorted(p.name for p in wf.judgments.glob("*.png"))
    assert files == sorted(wf.judgment_path(*k).name for k in good)
    # every bad row with its reason
    with wf.report_problems_csv(job_id).open(newline="", encoding="utf-8") as fh:
        problems = list(csv.DictReader(fh))
    assert len(problems) == len(rows)
    for problem, row in zip(problems, rows, strict=True):
        assert row.reason in problem["reason"], (row.name, problem)
    with wf.failures_csv(job_id).open(newline="") as fh:
        failures = {r["judgment"]: r["reason"] for r in csv.DictReader(fh)}
    assert set(failures) == {str(v) for v in bad.values()}
    assert "the image is 20000x20000 pixels but the montages" in failures[str(bad["bomb"])]
    assert "damaged image" in failures[str(bad["damaged"])]
    # the same labels, movies and npz as a clean run over the good units
    got, expected = _outputs(cfg), _outputs(clean_cfg)
    assert sorted(got) == sorted(expected)
    for name, value in expected.items():
        assert np.array_equal(got[name], value), name
