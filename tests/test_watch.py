"""Tests of cellcrowd.watch: following a running job to the same bytes as one run after it.

One synthetic job is prepared per module (the pipeline tests' size) and its simulated
crowd is served either finished (the reference: one ``run`` after completion) or live
(:class:`cellcrowd.sim.live.LiveJob`): units complete in random order over 60 s of a
clock. In-process tests use a :class:`ManualClock` that the watch's own ``wait`` moves
forward (a minute of the job takes no real minute: a scaled clock); the kill test runs
``cellcrowd watch`` in subprocesses, the test moving the clock between them.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from cellcrowd.cli import main
from cellcrowd.config import Config, ServiceConfig, load_config
from cellcrowd.errors import TemporaryServiceError
from cellcrowd.pipeline import run, status
from cellcrowd.sim.crowd import CrowdJob, crowd_from_folder
from cellcrowd.sim.demo import Example, ExampleSettings, make_example, save_config
from cellcrowd.sim.emulator import Emulator, Faults
from cellcrowd.sim.live import LiveJob, ManualClock, WebhookSender
from cellcrowd.watch import JobProgress, WatchRound, wait_for_wake, watch
from cellcrowd.webhook import WEBHOOK_TOKEN_ENV, listen_for_webhooks
from helpers import file_hashes

SETTINGS = ExampleSettings(frames=20, shape=(96, 96), cells=6, divisions=1, montage_len=5,
                           row_length=5)
KEY = "watch-test-KEY-93ac"
TOKEN = "watch-hook-TOKEN-51d7"


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Example:
    return make_example(tmp_path_factory.mktemp("prepared"), SETTINGS)


@pytest.fixture(scope="module")
def crowd(example: Example) -> CrowdJob:
    return crowd_from_folder(example.wf, job_id=example.config.job_id, seed=0)


def _copy(example: Example, dest: Path, url: str) -> Path:
    """A copy of the prepared folder whose configuration points at ``url``."""
    shutil.copytree(example.config.base, dest)
    service = ServiceConfig(api_url=url, poll_interval=0.05)
    path = dest / "cellcrowd.toml"
    save_config(example.config.model_copy(update={"base": dest, "raw": None,
                                                  "service": service}), path)
    return path



def _reference(example: Example, url: str, dest: Path) -> dict[str, str]:
    """The outputs of one ``run`` in a fresh copy (after the job completed)."""
    path = _copy(example, dest, url)
    run(load_config(path), api_key=lambda: KEY)
    return file_hashes(path.parent)


def _annotation_paths(emu: Emulator) -> list[str]:
    return [r.path for r in emu.api_requests if r.path.endswith("/annotation.png")]


@pytest.mark.slow
def test_watch_follows_a_live_job_to_the_bytes_of_one_run(
    example: Example, crowd: CrowdJob, tmp_path: Path
) -> None:
    clock = ManualClock()
    wake = threading.Event()
    base = tmp_path / "work"
    wf = example.config.model_copy(update={"base": base}).working_folder()
    base.mkdir()
    rounds: list[WatchRound] = []
    with listen_for_webhooks(wf, "127.0.0.1:0", wake, path="/cellcrowd/hook",
                             token=TOKEN) as receiver:
        sender = WebhookSender(receiver.url, TOKEN, lost={1}, duplicated={4})
        live = LiveJob(crowd, duration=60.0, clock=clock, seed=3, webhooks=sender)

        def wait(event: threading.Event, seconds: float) -> bool:
            clock.advance(seconds)  # the job's minute passes as the watch waits
            live.pump()  # webhooks of the units completed meanwhile, delivered now
            return wait_for_wake(event, 0)

        with Emulator([], api_key=KEY, live=live) as emu:
            base.rmdir()
            config = load_config(_copy(example, base, emu.url))
            result = watch(config, api_key=lambda: KEY, interval=20.0, wake=wake, wait=wait,
                           on_round=rounds.append, max_rounds=50)
            fetched = _annotation_paths(emu)
            reference = _reference(example, emu.url, tmp_path / "reference")
        counts = dict(receiver.counts)
    assert result.complete
    assert file_hashes(base) == reference
    assert status(config).left == []
    # Units finished over several rounds, and later harvests fetched only new annotations.
    done = [r.progress.units_done for r in rounds]
    assert done == sorted(done)
    assert len(set(done)) >= 4
    assert 3 <= result.harvests <= len(rounds)
    assert len(fetched) == len(set(fetched))
    assert len(fetched) == sum(j.annotation is not None for j in crowd.judgments)
    # Later harvests redo only the units that changed: clean and movies reuse what an
    # earlier round made.
    later = [r.summary for r in rounds if r.harvested and r.summary is not None][1:]
    for stage in ("clean", "movies"):
        runs = [s.units for summary in later for s in summary.stages
                if s.name == stage and s.status == "ran"]
        assert runs, f"no later {stage} run"
        assert any(u["reused"] > 0 for u in runs), (stage, runs)
    # One webhook lost, one duplicated (and ignored), the others woke the loop.
    units = len({j.unit_id for j in crowd.judgments})
    assert sender.counts["lost"] == 1
    assert sender.counts["duplicated"] == 1
    assert counts == {"accepted": units + 1 - 1, "duplicate": 1, "refused": 0}
    assert any(r.woken for r in rounds)
    assert all(r.seconds_left is None or r.seconds_left >= 0 for r in rounds)
    assert rounds[-1].seconds_left == 0.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(config: Path, port: int, **hook: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CELLCROWD_API_KEY": KEY, WEBHOOK_TOKEN_ENV: TOKEN, **hook}
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("pausing_cli.py")), "-q", "watch",
         str(config), "--interval", "0.5",
         "--listen", f"127.0.0.1:{port}", "--workers", "1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_until(check: Any, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"watch ended early (code {proc.returncode}): {err.decode()}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.communicate()
            pytest.fail("the watch never got there")
        time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_killed_watch_resumes_to_the_samefile_hashes(
    example: Example, crowd: CrowdJob, tmp_path: Path
) -> None:
    """SIGKILL in the middle of a harvest, Ctrl-C (SIGINT) later, then a watch to the end."""
    port = _free_port()
    sender = WebhookSender(f"http://127.0.0.1:{port}/hook", TOKEN, retries=1)
    clock = ManualClock(20.0)  # moved by hand between the runs: no race with wall time
    live = LiveJob(crowd, duration=60.0, clock=clock, seed=5, webhooks=sender)
    paused = tmp_path / "paused"
    with Emulator([], api_key=KEY, live=live) as emu:
        config = _copy(example, tmp_path / "work", emu.url)
        wf = load_config(config).working_folder()
        # the pause hook of tests/pausing_cli.py holds the first harvest in the clean stage
        proc = _start(config, port, CELLCROWD_TEST_PAUSE_AFTER="clean:2",
                      CELLCROWD_TEST_PAUSE_SIGNAL=str(paused))
        _wait_until(paused.exists, proc, timeout=60)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
        assert proc.returncode == -signal.SIGKILL
        assert status(load_config(config)).stage("clean").state == "interrupted"

        clock.advance(20.0)
        proc = _start(config, port)
        _wait_until(wf.watch_state.exists, proc, timeout=60)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130
        assert err.decode().splitlines() == [
            "cellcrowd: interrupted; run the same command again to resume"]
        assert json.loads(wf.watch_state.read_text())["judgments"] == len(
            live.job_at(live.completed()).judgments)

        clock.advance(20.0)
        assert live.complete
        proc = _start(config, port)
        out, err = proc.communicate(timeout=120)
        reference = _reference(example, emu.url, tmp_path / "reference")
    assert proc.returncode == 0, err.decode()
    assert (out, err) == (b"", b"")
    assert file_hashes(config.parent) == reference
    assert status(load_config(config)).left == []


def test_watch_of_a_finished_job_harvests_once_prints_progress_and_resends(
    example: Example, crowd: CrowdJob, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CELLCROWD_API_KEY", KEY)
    with Emulator(crowd, api_key=KEY) as emu:
        config = _copy(example, tmp_path / "work", emu.url)
        args = ["watch", str(config), "--interval", "0", "--workers", "1", "--resend"]
        codes = [main(args), main(args)]
        reference = _reference(example, emu.url, tmp_path / "reference")
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    units = len(crowd.units)
    assert codes == [0, 0]
    assert f"round 1: units {units}/{units} done (100%)" in out
    assert "harvested (report, fetch, clean" in out
    assert "harvested (report)" in out  # the second watch: nothing new after the report
    assert "is complete" in out
    # rows re-uploaded: the montages the report left with broken links only, once each
    wf = load_config(config).working_folder()
    with open(wf.reupload_csv(crowd.job_id), newline="") as fh:
        broken = [row["image_url"] for row in csv.DictReader(fh)]
    assert broken
    assert [r["image_url"] for r in emu.inbox.rows[crowd.job_id]] == broken
    assert out.count(f"sent {len(broken)} unit(s) back") == 1
    outputs = file_hashes(config.parent)
    assert outputs.pop(wf.resend_csv(crowd.job_id).relative_to(config.parent).as_posix())
    assert outputs == reference


def test_temporary_errors_are_retried_then_reported(
    example: Example, crowd: CrowdJob, tmp_path: Path
) -> None:
    faults = Faults(error_rate=1.0, kinds=frozenset({"status"}), max_faults_per_path=10**6)
    waits: list[float] = []

    def wait(event: threading.Event, seconds: float) -> bool:
        waits.append(seconds)
        return False

    rounds: list[WatchRound] = []
    with Emulator(crowd, api_key=KEY, faults=faults) as emu:
        config = load_config(_copy(example, tmp_path / "work", emu.url))
        with pytest.raises(TemporaryServiceError, match="gave up after"):
            watch(config, api_key=lambda: KEY, interval=5.0, wait=wait, max_failures=2,
                  on_round=rounds.append)
    assert waits.count(5.0) == 1  # one wait between the two failed rounds
    assert len(waits) > 1  # the client's retries waited through `wait` too
    assert rounds == []  # no progress could be read
    assert not config.working_folder().watch_state.exists()


def test_watch_refuses_a_negative_interval(example: Example, tmp_path: Path) -> None:
    config = load_config(_copy(example, tmp_path / "work", "http://127.0.0.1:9/v1"))
    with pytest.raises(ValueError, match="interval must be 0 or more"):
        watch(config, api_key=lambda: KEY, interval=-1)


@pytest.mark.parametrize(
    ("progress", "complete"),
    [
        (JobProgress(3, 10, 5, 7, "running"), False),
        (JobProgress(10, 10, 20, 0, "running"), True),
        (JobProgress(10, 10, 20, 2, "running"), False),
        (JobProgress(4, 10, 5, 7, "canceled"), True),
        (JobProgress(0, 0, 0, 0, ""), False),
    ],
    ids=["running", "all-done", "judgments-needed", "cancelled", "empty"],
)
def test_job_progress_complete(progress: JobProgress, complete: bool) -> None:
    assert progress.complete is complete


def test_status_of_a_stopped_watch_config(example: Example, tmp_path: Path) -> None:
    """A watch stopped by ``stop`` ends after the round, without waiting."""
    stop = threading.Event()
    stop.set()
    config: Config = load_config(_copy(example, tmp_path / "work", "http://127.0.0.1:9/v1"))
    result = watch(config, api_key=lambda: KEY, stop=stop)
    assert (result.rounds, result.harvests, result.complete) == (0, 0, False)

