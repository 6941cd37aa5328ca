"""``cellcrowd emulator serve`` on any prepared folder: a label movie or earlier annotations.

The README's "Dry run against the emulator", step by step: ``cellcrowd init``,
``cellcrowd prepare``, ``cellcrowd emulator serve --labels`` (a subprocess on
127.0.0.1), ``cellcrowd run``; the harvest must give back the label movie.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
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

KEY = "dry-run-key-4f1c"
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


@pytest.fixture
def served_labels(tmp_path: Path, movie: SyntheticMovie) -> Iterator[tuple[Path, str]]:
    config, labels = _prepared(tmp_path / "work", movie)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cellcrowd", "emulator", "serve", str(config.parent),
         "--identifier", ID, "--job-id", str(JOB), "--labels", str(labels), "--port", "0"],
        env={**os.environ, "CELLCROWD_API_KEY": KEY}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=_lines, args=(proc.stdout, lines), daemon=True)
    reader.start()
    try:
        try:
            ready = lines.get(timeout=60)
        except queue.Empty:
            pytest.fail("the emulator did not say where it serves within 60 s")
        match = re.search(r"http://127\.0\.0\.1:\d+/v1", ready)
        assert match, ready
        yield config, match[0]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
        reader.join(timeout=30)
        assert proc.stdout is not None
        assert proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()


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
