"""``cellcrowd emulator serve`` on any prepared folder: a label movie or earlier annotations.

The README's "Dry run against the emulator", step by step: ``cellcrowd init``,
``cellcrowd prepare``, ``cellcrowd emulator serve --labels`` (a subprocess on
127.0.0.1), ``cellcrowd run``; the harvest must give back the label movie. And its
"Try ``watch`` against the emulator": ``emulator serve --live 20 --webhook URL`` in one
subprocess, ``cellcrowd watch --listen`` in another, to the bytes of one ``run``.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cellcrowd.cli import main
from cellcrowd.config import load_config
from cellcrowd.errors import InputError
from cellcrowd.export.npz import load_npz
from cellcrowd.files import list_images, read_image, write_image
from cellcrowd.layout import WorkingFolder, montage_of_part, part_numbers
from cellcrowd.movies import read_movie_geometry
from cellcrowd.pipeline import run
from cellcrowd.sim.emulator import Emulator
from cellcrowd.sim.serve_folder import crowd_from_annotations, crowd_from_labels
from cellcrowd.sim.synthetic import SyntheticMovie, synthetic_movie, write_movie_frames
from cellcrowd.sim.testing import same_up_to_relabel
from helpers import file_hashes

KEY = "dry-run-key-4f1c"
TOKEN = "dry-run-hook-token-8e2a"
#: One worker; a report being generated is asked for again after 0.2 s, not 10 s.
FAST = ("--workers", "1", "--set", "service.poll_interval=0.2")
ID, JOB, LENGTH, FRAMES = "dry", 7, 5, 10


@pytest.fixture(scope="module")
def movie() -> SyntheticMovie:
    return synthetic_movie(frames=FRAMES, shape=(64, 64), cells=4, divisions=0, seed=3)


def _prepared(folder: Path, movie: SyntheticMovie) -> tuple[Path, Path]:
    """``cellcrowd init`` + ``cellcrowd prepare`` on raw frames; the label movie beside."""
    write_movie_frames(movie, folder / "raw")
    labels = folder.parent / f"{folder.name}-segmentation"
    write_movie_frames(movie.labels.astype(np.uint16), labels, suffix=".png")
    config = folder / "cellcrowd.toml"
    assert main(["-q", "init", str(config), "--identifier", ID, "--job-id", str(JOB)]) == 0
    text = config.read_text().replace("montage_len = 10", f"montage_len = {LENGTH}")
    config.write_text(text.replace('url_prefix = ""', 'url_prefix = "https://lab.example/m/"'))
    assert main(["-q", "prepare", str(config), "--workers", "1"]) == 0
    return config, labels


def _lines(stream: object, into: queue.Queue[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        into.put(line)


class Served:
    """``cellcrowd emulator serve`` in a subprocess: its URL and what it printed."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cellcrowd", "emulator", "serve", *args],
            env={**os.environ, "CELLCROWD_API_KEY": KEY, **env}, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.reader = threading.Thread(target=_lines, args=(self.proc.stdout, self.lines),
                                       daemon=True)
        self.reader.start()
        try:
            ready = self.lines.get(timeout=60)
        except queue.Empty:
            self.stop()
            pytest.fail("the emulator did not say where it serves within 60 s")
        match = re.search(r"http://127\.0\.0\.1:\d+/v1", ready)
        assert match, ready
        self.url = match[0]

    def stop(self, sig: int = signal.SIGTERM) -> str:
        """Stop the emulator; return the rest of what it printed."""
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.reader.join(timeout=30)
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        self.proc.stdout.close()
        self.proc.stderr.close()
        rest: list[str] = []
        while not self.lines.empty():
            rest.append(self.lines.get())
        return "".join(rest)


@pytest.fixture
def served_labels(tmp_path: Path, movie: SyntheticMovie) -> Iterator[tuple[Path, str]]:
    config, labels = _prepared(tmp_path / "work", movie)
    served = Served([str(config.parent), "--identifier", ID, "--job-id", str(JOB),
                     "--labels", str(labels), "--port", "0"], {})
    try:
        yield config, served.url
    finally:
        served.stop()


@pytest.mark.slow
def test_dry_run_with_a_label_movie(
    served_labels: tuple[Path, str], movie: SyntheticMovie, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config, url = served_labels
    monkeypatch.setenv("CELLCROWD_API_KEY", KEY)
    monkeypatch.setenv("CELLCROWD_API_URL", url)
    assert main(["-q", "run", str(config), "--workers", "1"]) == 0
    assert capsys.readouterr().err == ""
    wf = read_movie_geometry(load_config(config).working_folder()).wf
    grid = read_movie_geometry(wf).grid
    checked = 0
    for part in part_numbers(FRAMES // LENGTH):
        data = load_npz(wf.npz_part(part))
        for i, name in enumerate(data.positions):
            pos = next(p for p in grid.positions if name == f"x_{p.x:02d}_y_{p.y:02d}")
            for f in range(LENGTH):
                t = montage_of_part(part) * LENGTH + f
                truth = grid.tile(movie.labels[t], pos)
                assert same_up_to_relabel(data.y[i, f, ..., 0], truth), (part, name, f)
                np.testing.assert_array_equal(data.X[i, f, ..., 0], grid.tile(movie.raw[t], pos))
            checked += 1
    assert checked >= 6  # 8 montages, a broken link or two may leave one out


def test_annotations_are_served_unchanged(tmp_path: Path, movie: SyntheticMovie) -> None:
    config, _ = _prepared(tmp_path / "work", movie)
    wf = load_config(config).working_folder()
    earlier = tmp_path / "earlier"
    names = sorted(p.stem for p in list_images(wf.montages))
    rng = np.random.default_rng(0)
    for name in names[1:]:  # the first montage has none: left out of the job
        write_image(earlier / f"{name}_annotation.png",
                    rng.integers(0, 255, (*read_image(wf.montages / f"{name}.png").shape[:2], 3),
                                 dtype=np.uint8))
    job = crowd_from_annotations(wf, earlier, job_id=JOB)
    assert sorted(u.montage for u in job.units) == names[1:]
    cfg = load_config(config)
    with Emulator(job, api_key=KEY, report_polls=0) as emu:
        served = cfg.model_copy(update={"service": cfg.service.model_copy(
            update={"api_url": emu.url})})
        run(served, until_stage="fetch", api_key=lambda: KEY)
    for name in names[1:]:
        np.testing.assert_array_equal(read_image(wf.annotation_path(name)),
                                      read_image(earlier / f"{name}_annotation.png"))
    assert not wf.annotation_path(names[0]).exists()


def test_bad_label_movies_and_annotations_are_refused(
    tmp_path: Path, movie: SyntheticMovie
) -> None:
    config, labels = _prepared(tmp_path / "work", movie)
    wf = WorkingFolder(config.parent, ID)
    short = tmp_path / "short"
    shutil.copytree(labels, short)
    list_images(short)[-1].unlink()
    with pytest.raises(InputError, match=f"{FRAMES - 1} label frames for a movie of {FRAMES}"):
        crowd_from_labels(wf, short, job_id=JOB)
    for name, frame, match in [
        ("small", np.zeros((32, 64), np.uint16), "give full-size label frames"),
        ("float", np.zeros((64, 64), np.float32), "not a label image"),
        ("big", np.full((64, 64), 70_000, np.int32), "outside 0…65535"),
    ]:
        bad = tmp_path / name
        shutil.copytree(labels, bad)
        first = list_images(bad)[0]
        first.unlink()
        write_image(first.with_suffix(".tif"), frame)
        with pytest.raises(InputError, match=match):
            crowd_from_labels(wf, bad, job_id=JOB)
    (tmp_path / "none").mkdir()
    with pytest.raises(InputError, match="no annotation for any row of the upload CSV"):
        crowd_from_annotations(wf, tmp_path / "none", job_id=JOB)
    wf.upload_csv.write_text("identifier,image_url\n")
    with pytest.raises(InputError, match="the upload CSV has no rows"):
        crowd_from_labels(wf, labels, job_id=JOB)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cellcrowd(*args: str, url: str) -> str:
    env = {**os.environ, "CELLCROWD_API_KEY": KEY, "CELLCROWD_API_URL": url,
           "CELLCROWD_WEBHOOK_TOKEN": TOKEN}
    done = subprocess.run([sys.executable, "-m", "cellcrowd", *args], env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert "error" not in done.stderr.lower()  # warnings: montages not annotated yet
    return done.stdout


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="Ctrl-C (SIGINT) is POSIX")
def test_try_watch_against_the_live_emulator(tmp_path: Path, movie: SyntheticMovie) -> None:
    """The README's commands: a live emulator in one process, ``watch --listen`` in another."""
    config, labels = _prepared(tmp_path / "work", movie)
    reference = tmp_path / "reference"
    shutil.copytree(config.parent, reference)
    port, hook = _free_port(), f"http://127.0.0.1:{_free_port()}/hook"
    serve = [str(config.parent), "--identifier", ID, "--job-id", str(JOB),
             "--labels", str(labels), "--port", str(port)]
    live = Served([*serve, "--live", "20", "--webhook", hook],
                  {"CELLCROWD_WEBHOOK_TOKEN": TOKEN})
    try:
        out = _cellcrowd("watch", str(config), "--interval", "2", *FAST,
                         "--listen", hook.removeprefix("http://").removesuffix("/hook"),
                         url=live.url)
    finally:
        served = live.stop(signal.SIGINT)
    # the finished job, served again on the same port (the reports name its URLs)
    finished = Served(serve, {})
    try:
        _cellcrowd("-q", "run", str(reference / config.name), *FAST,
                   url=finished.url)
    finally:
        finished.stop()
    assert f"job {JOB} is complete" in out
    assert len(re.findall(r"harvested \(", out)) >= 2  # units were harvested as they came
    assert file_hashes(config.parent) == file_hashes(reference)
    job = crowd_from_labels(WorkingFolder(config.parent, ID), labels, job_id=JOB)
    annotations = sum(j.annotation is not None for j in job.judgments)
    numbers = re.search(r"(\d+) annotations \((\d+) distinct\), webhooks: (\d+) delivered, "
                        r"(\d+) duplicated", " ".join(served.split()))
    assert numbers, served
    assert [int(n) for n in numbers.groups()[:2]] == [annotations, annotations]  # each once
    assert int(numbers[3]) >= 1
    assert int(numbers[4]) >= 1
    seen = (config.parent / ".cellcrowd" / "webhooks.jsonl").read_text().splitlines()
    assert 1 <= len(seen) <= len(job.units) + 1


def test_live_options_are_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CELLCROWD_API_KEY", KEY)
    monkeypatch.delenv("HOOK_TOKEN", raising=False)
    base = ["emulator", "serve", str(tmp_path), "--identifier", ID]
    cases = [
        (["--webhook", "http://127.0.0.1:9/hook"], "--webhook needs --live SECONDS"),
        (["--live", "0"], "--live needs a positive number of seconds, not 0"),
        (["--live", "5", "--webhook", "http://127.0.0.1:9/hook", "--webhook-token-env",
          "HOOK_TOKEN"], "--webhook needs the webhook token in $HOOK_TOKEN"),
    ]
    for extra, message in cases:
        assert main([*base, *extra]) == 2
        assert message in " ".join(capsys.readouterr().err.split())
