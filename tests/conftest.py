"""Shared fixtures: a small simulated job and an emulator serving it on loopback.

Test modules run with ``--import-mode=importlib``, so they get these through fixtures
(``api_key``, ``job_factory``, ``small_job``, ``emulator``, ``sleeps``/``fake_sleep``,
``folder_hashes``, ``chromium``/``browse``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from cellcrowd.geometry import MontageLayout
from cellcrowd.sim.crowd import CrowdConfig, CrowdJob, SourceRow, simulate_crowd
from cellcrowd.sim.emulator import Emulator

#: A distinctive key, so tests can search files and logs for it.
API_KEY = "cc-test-KEY-5f2b9e71d0"
JOB_ID = 1363594
#: 4 frames of 32x32, two per row: 64x64 montages.
SMALL_LAYOUT = MontageLayout((32, 32), length=4, row_length=2)


def truth_montage(seed: int) -> np.ndarray:
    """A 64x64 uint16 label montage with a few rectangular cells per frame."""
    rng = np.random.default_rng(seed)
    out = np.zeros(SMALL_LAYOUT.montage_shape, np.uint16)
    for sl in SMALL_LAYOUT.iter_slices():
        frame = out[sl]
        for cell in range(1, 4):
            y, x = rng.integers(2, 18, size=2)
            frame[y : y + 12, x : x + 12] = cell
    return out


def make_job(
    units: int,
    *,
    job_id: int = JOB_ID,
    identifier: str = "exp",
    config: CrowdConfig | None = None,
    seed: int = 0,
) -> CrowdJob:
    """A job of ``units`` montages (tile x in 0..9, montage number beyond)."""
    rows = [
        SourceRow(identifier, f"https://bucket.example/{identifier}_x_{i % 10:02d}_y_00"
                              f"_montage_{i // 10:02d}.png")
        for i in range(units)
    ]
    truths = {r.image_url.rsplit("/", 1)[1][:-4]: truth_montage(i) for i, r in enumerate(rows)}
    return simulate_crowd(rows, truths, job_id=job_id, layout=SMALL_LAYOUT,
                          config=config or CrowdConfig(), seed=seed)


@pytest.fixture(scope="session")
def api_key() -> str:
    """A distinctive API key: tests search files, logs and messages for it."""
    return API_KEY


@pytest.fixture(scope="session")
def job_factory() -> Callable[..., CrowdJob]:
    """:func:`make_job`: ``job_factory(units, *, job_id, identifier, config, seed)``."""
    return make_job


@pytest.fixture(scope="session")
def small_job() -> CrowdJob:
    """12 units, 1-3 workers each, some broken links and one re-uploaded unit."""
    return make_job(12, config=CrowdConfig(broken_share=0.1))


@pytest.fixture
def emulator(small_job: CrowdJob) -> Iterator[Emulator]:
    """The small job served on loopback (reports ready after one 202)."""
    with Emulator(small_job, api_key=API_KEY) as emu:
        yield emu


@pytest.fixture
def sleeps() -> list[float]:
    """A list the injected ``sleep`` records into (no real waiting)."""
    return []


@pytest.fixture
def fake_sleep(sleeps: list[float]) -> Callable[[float], None]:
    return sleeps.append


#: Headless Chromium with nothing that reaches the network.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync")


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium; installed with apt-get on CI when missing, else the test skips."""
    found = shutil.which("chromium")
    if found is None and os.environ.get("CI"):
        for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
            subprocess.run(cmd, check=True, timeout=900, capture_output=True)
        found = shutil.which("chromium")
    if found is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium; CI installs it)")
    return found


@pytest.fixture(scope="session")
def browse(chromium: str) -> Callable[..., str]:
    """``browse(profile_dir, *args)``: run headless Chromium (e.g. ``"--dump-dom", url``)
    with its profile in ``profile_dir``; its standard output."""

    def run(tmp: Path, *args: str) -> str:
        out = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp / 'profile'}",
                              *args], capture_output=True, text=True, timeout=180, check=True)
        return out.stdout

    return run
