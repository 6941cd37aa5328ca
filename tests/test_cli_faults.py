"""Bad inputs and faults reach a ``cellcrowd`` user as one line, never a traceback
(issue 9): bad raw frames, a report of another identifier, a report that never gets
ready, a stale output that resolves outside the working folder."""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cellcrowd.cli import main
from cellcrowd.config import Config
from cellcrowd.files import confine, list_images, read_image, write_image
from cellcrowd.pipeline.manifest import remove_stale
from cellcrowd.sim.demo import Example, ExampleSettings, emulated_job, make_example, save_config

SETTINGS = ExampleSettings(frames=10, shape=(64, 64), cells=4, divisions=1, montage_len=5,
                           row_length=5)
KEY = "clifault-key-3b9d2c7e11"


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Example:
    return make_example(tmp_path_factory.mktemp("clifault-prepared"), SETTINGS)


@pytest.fixture(scope="module")
def served(example: Example) -> Iterator[tuple[Any, Config]]:
    with emulated_job(example, api_key=KEY) as job:
        yield job


@pytest.fixture
def config(example: Example, served: tuple[Any, Config], tmp_path: Path,
           monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CELLCROWD_API_KEY", KEY)
    dest = tmp_path / "work"
    shutil.copytree(example.config.base, dest)
    return save_config(served[1].model_copy(update={"base": dest, "raw": None}),
                       dest / "cellcrowd.toml")


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main([*argv, "--quiet"])
    _, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, err


@pytest.mark.parametrize(
    ("make_bad", "expected"),
    [
        (lambda first: np.zeros((32, 32), first.dtype), r"raw frame 4 is 32x32 pixels, but the "
         r"frames of this movie are 64x64"),
        (lambda first: np.zeros((*first.shape, 3), np.uint8), "raw frame 4 is 3 channels"),
        (lambda first: first.astype(np.float32), r"raw frame 4 is float32, but the first frame"),
        (None, "cannot read this image's header"),
    ],
    ids=["size", "rgb", "dtype", "unreadable"],
)
def test_a_bad_raw_frame_is_one_line_naming_it(
    config: Path, capsys: pytest.CaptureFixture[str], make_bad: Any, expected: str,
) -> None:
    raw = list_images(config.parent / "raw")
    if make_bad is None:
        raw[4].write_bytes(raw[4].read_bytes()[:30])
    else:
        write_image(raw[4], make_bad(read_image(raw[0])))
    code, err = _cli(capsys, "run", str(config))
    assert code == 2
    [line] = [x for x in err.splitlines() if x.startswith("cellcrowd: error:")]
    assert raw[4].name in line
    assert re.search(expected, line), line
    assert not list(config.parent.rglob("*_raw_x_*"))  # no raw frame was used


def test_a_report_of_another_identifier_is_refused_unless_allowed(
    config: Path, served: tuple[Any, Config], capsys: pytest.CaptureFixture[str],
) -> None:
    emu, cfg = served
    _, member = emu.report_member(cfg.job_id, "full")
    emu.replace_report(cfg.job_id, "full", member.replace(b",demo_x_", b",other_x_"))
    try:
        code, err = _cli(capsys, "run", str(config), "--until", "report")
        assert code == 2
        assert "is of identifier 'other', not this configuration's 'demo'" in err
        assert "service.allow_other_identifier = true" in err
        code, err = _cli(capsys, "run", str(config), "--until", "report",
                         "--set", "service.allow_other_identifier=true")
        assert code == 0, err
    finally:
        emu.replace_report(cfg.job_id, "full", member)


def test_a_report_that_never_gets_ready_ends_at_its_deadline(
    config: Path, served: tuple[Any, Config], capsys: pytest.CaptureFixture[str],
) -> None:
    emu, _ = served
    polls, emu.report_polls = emu.report_polls, 10**9
    try:
        code, err = _cli(capsys, "run", str(config), "--until", "report",
                         "--set", "service.report_deadline=0.3",
                         "--set", "service.poll_interval=0.1")
    finally:
        emu.report_polls = polls
    assert code == 2
    assert "still being generated after" in err
    assert "service.report_deadline" in err


def test_a_stale_output_outside_the_folder_is_never_deleted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    base, victim = tmp_path / "work", tmp_path / "victim.txt"
    base.mkdir()
    victim.write_text("precious")
    (base / "old.png").write_text("stale")
    old = {"outputs": {"../victim.txt": [8, "x"], str(victim): [8, "x"], "old.png": [5, "y"]}}
    with confine(base), caplog.at_level(logging.WARNING):
        remove_stale(old, {}, base)
    assert victim.read_text() == "precious"
    assert not (base / "old.png").exists()
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 2
    assert all("not removing a stale output" in w and "victim.txt" in w for w in warned)
    assert json.dumps(old)  # the manifest entry itself is left as it was
