"""Killing ``cellcrowd run`` (SIGKILL) at any point, then rerunning, gives the same bytes.

Each case copies one prepared synthetic job, starts ``cellcrowd run CONFIG`` in a
subprocess against the emulator (through ``tests/pausing_cli.py``, whose
``CELLCROWD_TEST_PAUSE_AFTER=stage:N`` makes it wait there and create a signal file),
kills it at that known point or as soon as a stage's first file appears, reruns it, and
compares every file with an uninterrupted run's, byte for byte.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
import tifffile
from PIL import Image

from cellcrowd.config import Config, load_config
from cellcrowd.files import TMP_MARK
from cellcrowd.pipeline import STAGES, run, status
from cellcrowd.sim.demo import Example, ExampleSettings, emulated_job, make_example, save_config
from helpers import file_hashes

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")

SETTINGS = ExampleSettings(frames=20, shape=(96, 96), cells=6, divisions=1, montage_len=5,
                           row_length=5)
KEY = "interrupt-test-key"
#: ``cellcrowd`` with the pause hook (see its docstring).
PAUSING_CLI = str(Path(__file__).with_name("pausing_cli.py"))


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Example, Config]]:
    example = make_example(tmp_path_factory.mktemp("interrupt-prepared"), SETTINGS)
    with emulated_job(example, api_key=KEY) as (_, served):
        yield example, served


def _fresh(job: tuple[Example, Config], dest: Path) -> Path:
    example, served = job
    shutil.copytree(example.config.base, dest)
    path = dest / "cellcrowd.toml"
    save_config(served.model_copy(update={"base": dest, "raw": None}), path)
    return path



class Reference(NamedTuple):
    """The uninterrupted run: its folder and the SHA-256 of each of its files."""

    base: Path
    hashes: dict[str, str]


@pytest.fixture(scope="module")
def reference(job: tuple[Example, Config], tmp_path_factory: pytest.TempPathFactory
              ) -> Reference:
    path = _fresh(job, tmp_path_factory.mktemp("reference") / "work")
    summary = run(load_config(path), api_key=lambda: KEY)
    assert summary.ran == list(STAGES)
    return Reference(path.parent, file_hashes(path.parent))


def _start(config: Path, **env: str) -> subprocess.Popen[bytes]:
    full = {**os.environ, "CELLCROWD_API_KEY": KEY, **env}
    return subprocess.Popen([sys.executable, PAUSING_CLI, "-q", "run", str(config)],
                            env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for(proc: subprocess.Popen[bytes], ready: Any, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            _out, err = proc.communicate()
            pytest.fail(f"the run ended (code {proc.returncode}) before the kill point: "
                        f"{err.decode()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the kill point was never reached")
        time.sleep(0.01)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL


def _pixels(path: Path) -> np.ndarray:
    if path.suffix == ".png":
        with Image.open(path) as image:
            return np.asarray(image)
    return np.asarray(tifffile.imread(path))


def _how_they_differ(resumed: Path, uninterrupted: Path) -> str:
    """What a file that differs between the two runs is (to tell a changed image from an
    equivalent deflate stream of the same pixels)."""
    if not resumed.is_file() or not uninterrupted.is_file():
        return "only in the " + ("uninterrupted" if not resumed.is_file() else "resumed") + " run"
    if resumed.suffix in (".png", ".tif"):
        a, b = _pixels(resumed), _pixels(uninterrupted)
        if a.dtype == b.dtype and np.array_equal(a, b):
            return "the same pixels in other bytes"
        return "other pixels"
    return "other bytes"


def _resume_and_compare(config: Path, reference: Reference) -> None:
    proc = _start(config)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    assert (out, err) == (b"", b"")  # -q
    base = config.parent
    assert not list(base.rglob(f"*{TMP_MARK}*")), "half-written files were left behind"
    got = file_hashes(base)
    differ = {name: _how_they_differ(base / name, reference.base / name)
              for name in sorted(set(got) | set(reference.hashes))
              if got.get(name) != reference.hashes.get(name)}
    assert differ == {}, "files differ from the uninterrupted run's"
    assert status(load_config(config)).left == []


@pytest.mark.slow
@pytest.mark.parametrize(
    "pause",
    ["fetch:5", "clean:3", "movies:25", "npz:2", "stitch:end", "ctc:0"],
)
def test_kill_at_a_pause_point_then_resume(
    job: tuple[Example, Config], reference: Reference, tmp_path: Path, pause: str
) -> None:
    config = _fresh(job, tmp_path / "work")
    flag = tmp_path / "paused"
    proc = _start(config, CELLCROWD_TEST_PAUSE_AFTER=pause,
                  CELLCROWD_TEST_PAUSE_SIGNAL=str(flag))
    _wait_for(proc, flag.exists)
    _kill(proc)
    stage = pause.split(":")[0]
    st = status(load_config(config)).stage(stage)
    assert st.state == "interrupted", st
    _resume_and_compare(config, reference)


@pytest.mark.slow
@pytest.mark.parametrize("folder", ["demo_labels", "movies"])
def test_kill_as_soon_as_a_stage_writes(
    job: tuple[Example, Config], reference: Reference, tmp_path: Path, folder: str
) -> None:
    config = _fresh(job, tmp_path / "work")
    target = config.parent / folder
    proc = _start(config)
    _wait_for(proc, lambda: target.is_dir() and any(target.iterdir()))
    _kill(proc)
    _resume_and_compare(config, reference)


@pytest.mark.slow
@pytest.mark.parametrize("pause", ["fetch:5", "clean:3", "npz:2", "stitch:end"])
def test_ctrl_c_prints_one_line_and_status_shows_the_running_stage(
    job: tuple[Example, Config], tmp_path: Path, pause: str
) -> None:
    config = _fresh(job, tmp_path / "work")
    flag = tmp_path / "paused"
    full = {**os.environ, "CELLCROWD_API_KEY": KEY, "CELLCROWD_TEST_PAUSE_AFTER": pause,
            "CELLCROWD_TEST_PAUSE_SIGNAL": str(flag)}
    # Its own process group, so SIGINT reaches the run and its pool workers, like Ctrl-C.
    proc = subprocess.Popen(
        [sys.executable, PAUSING_CLI, "-q", "run", str(config), "--workers", "2"],
        env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        _wait_for(proc, flag.exists)
        stage = status(load_config(config)).stage(pause.split(":")[0])
        assert stage.state == "running", stage
        assert f"pid {proc.pid} on " in stage.reason
        os.killpg(proc.pid, signal.SIGINT)
        _out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 130, err.decode()
    lines = [line for line in err.decode().splitlines() if line.strip()]
    assert lines == ["cellcrowd: interrupted; run the same command again to resume"]
    assert status(load_config(config)).stage(pause.split(":")[0]).state == "interrupted"
