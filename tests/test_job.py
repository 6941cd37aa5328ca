"""The job: built once from the logs ``prepare`` writes, and handed to every stage."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cellcrowd.download import expected_montage_shape
from cellcrowd.errors import LogError
from cellcrowd.export.npz import load_npz, write_part_npz
from cellcrowd.files import list_images, read_image, write_image
from cellcrowd.geometry import Position
from cellcrowd.job import Job, load_job
from cellcrowd.layout import MontageKey, WorkingFolder
from cellcrowd.logs import read_montage_log, write_log
from cellcrowd.movies import montages_to_movies, raw_to_movies, read_movie_geometry
from cellcrowd.prepare import PrepareResult, prepare
from cellcrowd.qc import collect_qc

FRAMES, SHAPE, LENGTH = 10, (30, 40), 4  # 3 montages per position: 4 + 4 + 2 frames


def _prepare(tmp_path: Path, frames: int = FRAMES) -> PrepareResult:
    rng = np.random.default_rng(0)
    raw = tmp_path / "raw"
    for t in range(frames):
        write_image(raw / f"img{t}.tif", (rng.random(SHAPE) * 1000).astype(np.uint16))
    truth = rng.integers(0, 50, (frames, *SHAPE)).astype(np.int32)
    return prepare(raw, WorkingFolder(tmp_path, "exp"), num_x=2, num_y=3, overlap_perc=10,
                   montage_len=LENGTH, row_length=3, x_buffer=1, y_buffer=2, truth=truth)


def test_job_from_the_logs_prepare_writes(tmp_path: Path) -> None:
    prep = _prepare(tmp_path)
    job = Job.load(WorkingFolder(tmp_path, "exp"))
    assert job.grid == prep.grid
    assert job.layout == prep.layout
    montage = read_image(prep.wf.montage_path(prep.montages[0]))
    assert job.montage_shape == montage.shape[:2] == prep.layout.montage_shape
    assert (job.frame_shape, job.tile_shape) == (SHAPE, prep.grid.tile_shape)
    assert (job.count, job.montages_per_position, job.montage_len) == (3, 3, LENGTH)
    assert job.parts == (0, 1, 2)
    assert job.positions == prep.grid.positions
    assert len(job.positions) == 6
    assert (job.num_frames, job.movie_frames, job.frame_offset) == (FRAMES, FRAMES, 0)
    assert [job.frames_in(m) for m in range(3)] == [4, 4, 2]
    assert [job.part_frame_offset(p) for p in job.parts] == [0, 4, 8]
    assert job.frame_dtype == "uint16"
    assert list(job.raw_paths) == list_images(tmp_path / "raw")
    assert list(job.movie_raw_paths()) == list_images(tmp_path / "raw")
    assert job.wf == prep.wf  # padding widened as prepare did
    assert sorted(job.montage_keys()) == sorted(prep.montages)
    assert job.montage_name(MontageKey("exp", 1, 2, 0)) == "exp_x_01_y_02_montage_00"
    assert load_job(tmp_path, "exp") == job


def test_load_job_with_another_raw_folder(tmp_path: Path) -> None:
    _prepare(tmp_path)
    moved = tmp_path / "elsewhere"
    shutil.move(tmp_path / "raw", moved)
    job = load_job(tmp_path, "exp", raw=moved)
    assert job.wf.raw == moved
    assert len(job.raw_paths) == FRAMES
    assert load_job(tmp_path, "exp").raw_paths == ()


@pytest.mark.parametrize("which", ["chopper_log", "montage_log"])
def test_a_missing_log_is_named(tmp_path: Path, which: str) -> None:
    prep = _prepare(tmp_path)
    path: Path = getattr(prep.wf, which)
    path.unlink()
    with pytest.raises(LogError, match="log not found: run `cellcrowd prepare` first") as info:
        Job.load(prep.wf)
    assert info.value.path == path


def test_a_log_that_is_not_json_is_named(tmp_path: Path) -> None:
    prep = _prepare(tmp_path)
    prep.wf.chopper_log.write_text("{not json")
    with pytest.raises(LogError, match="not valid JSON") as info:
        Job.load(prep.wf)
    assert info.value.path == prep.wf.chopper_log


def test_a_bad_value_names_the_file_and_key(tmp_path: Path) -> None:
    prep = _prepare(tmp_path)
    data = json.loads(prep.wf.montage_log.read_text())
    data["montage_len"] = 0
    prep.wf.montage_log.write_text(json.dumps(data))
    with pytest.raises(LogError, match=r"key 'montage_len'.*rewrite the log with `cellcrowd "
                                       r"prepare`") as info:
        Job.load(prep.wf)
    assert info.value.path == prep.wf.montage_log


def test_logs_of_different_runs(tmp_path: Path) -> None:
    prep = _prepare(tmp_path)
    log = read_montage_log(prep.wf.montage_log)
    write_log(log.model_copy(update={"num_x_segments": 5}), prep.wf.montage_log)
    with pytest.raises(LogError, match=r"num_x_segments is 5 here but 2 in "
                                       r"exp_overlapping_chopper_log\.json"):
        Job.load(prep.wf)
    write_log(log.model_copy(update={"montages_in_pos": 4}), prep.wf.montage_log)
    with pytest.raises(LogError, match=r"montages_in_pos is 4 but 10 frames in montages of 4 "
                                       r"make 3.*copy both logs") as info:
        Job.load(prep.wf)
    assert info.value.path == prep.wf.montage_log


def _old_chopper_log(wf: WorkingFolder) -> None:
    """The original tool's chopper log: no frame size, no frame count."""
    data = json.loads(wf.chopper_log.read_text())
    wf.chopper_log.write_text(json.dumps(
        {k: data[k] for k in ("date", "num_x_segments", "num_y_segments", "overlap_perc",
                              "identifier")}))


def test_old_logs_are_completed_from_the_raw_frames(tmp_path: Path) -> None:
    prep = _prepare(tmp_path)
    _old_chopper_log(prep.wf)
    job = Job.load(prep.wf)
    assert job.frame_shape == SHAPE
    assert job.num_frames == FRAMES  # counted in the raw folder
    assert [job.frames_in(m) for m in range(3)] == [4, 4, 2]


def test_old_logs_without_raw_frames(tmp_path: Path) -> None:
    prep = _prepare(tmp_path)
    _old_chopper_log(prep.wf)
    job = Job.load(replace(prep.wf, raw=tmp_path / "nowhere"))
    assert not job.has_grid
    assert job.known_grid is None
    assert job.parts == (0, 1, 2)  # the montage log's numbers are known
    assert job.num_frames is None
    assert job.frames_in(2) == LENGTH  # every montage taken as full
    with pytest.raises(LogError, match="has no original_y/original_x: give the raw frame "
                                       "size") as info:
        _ = job.grid
    assert info.value.path == prep.wf.chopper_log
    with pytest.raises(LogError, match="has no original_y/original_x"):
        _ = job.layout
    assert expected_montage_shape(job.wf, job=job) is None  # sizes checked loosely


def test_of_reuses_a_job_of_the_same_folder_only(tmp_path: Path) -> None:
    prep = _prepare(tmp_path)
    job = Job.load(prep.wf)
    assert Job.of(WorkingFolder(tmp_path, "exp", raw=prep.wf.raw), job) is job
    with pytest.raises(ValueError, match=r"the job was loaded for .* not for"):
        Job.of(WorkingFolder(tmp_path, "other", raw=prep.wf.raw), job)


def test_stages_given_the_job_do_not_read_the_logs(tmp_path: Path) -> None:
    prep = _prepare(tmp_path)
    for key in prep.montages:
        name = prep.wf.montage_name(key)
        write_image(prep.wf.label_path(name), read_image(prep.wf.truth_path(name)))
    job = Job.load(prep.wf)
    shutil.rmtree(prep.wf.json_logs)
    with pytest.raises(LogError, match="log not found"):
        read_movie_geometry(prep.wf)
    assert read_movie_geometry(prep.wf, job=job) is job
    assert expected_montage_shape(prep.wf) is None
    assert expected_montage_shape(prep.wf, job=job) == prep.layout.montage_shape
    assert raw_to_movies(prep.wf, job=job).files_written == 6 * FRAMES
    assert montages_to_movies(prep.wf, job=job).files_written == 6 * FRAMES
    assert load_npz(write_part_npz(prep.wf, 2, job=job)).frame_offset == 8
    assert load_npz(write_part_npz(prep.wf, 2)).frame_offset == -1  # without the logs
    qc = collect_qc(prep.wf, job=job)
    assert len(qc.montages) == 18
    assert qc.montage_len == LENGTH
    assert [p.part for p in qc.parts] == [0, 1, 2]
    assert collect_qc(prep.wf).montages == ()  # without the logs nothing is known


def test_positions_are_x_major(tmp_path: Path) -> None:
    prep = _prepare(tmp_path)
    job = Job.load(prep.wf)
    assert job.positions[0] == Position(0, 0)
    assert job.positions[-1] == Position(1, 2)
