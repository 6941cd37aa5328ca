from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cellcrowd.errors import AnnotationError, GeometryError, InputError, LogError
from cellcrowd.executor import LocalExecutor
from cellcrowd.files import list_images, read_image, write_image
from cellcrowd.geometry import MontageLayout, Position, TileGrid
from cellcrowd.layout import (
    MontageKey,
    WorkingFolder,
    montage_of_part,
    part_numbers,
    part_of_montage,
)
from cellcrowd.logs import ChopperLog, MontageLog, read_montage_log, write_log
from cellcrowd.movies import (
    montages_to_movies,
    raw_and_montages_to_movies,
    raw_to_movies,
    read_label_montage,
)
from cellcrowd.prepare import PrepareResult, prepare

FRAMES, SHAPE, LENGTH = 10, (30, 40), 4  # 3 parts: 4 + 4 + 2 frames


def _setup(tmp_path: Path, *, dtype: type = np.uint16, channels: int = 0,
           labels: bool = True) -> tuple[np.ndarray, np.ndarray, PrepareResult]:
    rng = np.random.default_rng(0)
    shape = (FRAMES, *SHAPE) + ((channels,) if channels else ())
    movie = (rng.random(shape) * 1000).astype(dtype)
    truth = rng.integers(0, 500, (FRAMES, *SHAPE)).astype(np.int32)
    raw = tmp_path / "raw"
    for t, frame in enumerate(movie):
        write_image(raw / f"img{t}.tif", frame)
    wf = WorkingFolder(tmp_path, "exp")
    result = prepare(raw, wf, num_x=2, num_y=2, overlap_perc=10, montage_len=LENGTH,
                     row_length=3, truth=truth)
    if labels:
        for key in result.montages:
            name = result.wf.montage_name(key)
            write_image(result.wf.label_path(name), read_image(result.wf.truth_path(name)))
    return movie, truth, result


def _frames(folder: Path) -> np.ndarray:
    return np.stack([read_image(p) for p in list_images(folder)])


def _expected(movie: np.ndarray, grid: TileGrid, pos: Position, part: int) -> np.ndarray:
    start = montage_of_part(part) * LENGTH
    return np.stack([grid.tile(f, pos) for f in movie[start: start + LENGTH]])


def test_montages_to_movies_gives_the_label_tiles(tmp_path: Path) -> None:
    _, truth, prep = _setup(tmp_path)
    calls: list[int] = []
    result = montages_to_movies(prep.wf, progress=calls.append)
    assert not result.errors
    assert not result.missing
    assert sum(calls) == 12
    assert result.files_written == 4 * FRAMES
    wf = result.wf
    for pos in prep.grid.positions:
        for part, count in zip(part_numbers(3), (4, 4, 2), strict=True):
            folder = wf.annotated_dir(part, pos)
            names = [p.name for p in list_images(folder)]
            assert names == [wf.annotated_frame(part, pos, f).name for f in range(count)]
            frames = _frames(folder)
            assert frames.dtype == np.uint16
            np.testing.assert_array_equal(frames, _expected(truth, prep.grid, pos, part))


def test_montages_to_movies_reports_missing_and_skipped(tmp_path: Path) -> None:
    _, _, prep = _setup(tmp_path)
    wf = prep.wf
    gone = wf.montage_name(MontageKey("exp", 1, 0, 2))
    wf.label_path(gone).unlink()
    skip = ["https://bucket/exp_x_0_y_1_montage_0.png"]  # unpadded URL form
    result = montages_to_movies(wf, skip=skip)
    by_part = result.missing_by_part()
    first, last = part_of_montage(0), part_of_montage(2)
    assert sorted(by_part) == [first, last]
    (skipped,) = by_part[first]
    assert (skipped.montage, skipped.position, skipped.reason) == (
        "exp_x_00_y_01_montage_00", Position(0, 1), "skipped")
    (missing,) = by_part[last]
    assert missing.montage == gone
    assert "no cleaned labels" in missing.reason
    assert not wf.annotated_dir(first, Position(0, 1)).exists()
    assert not wf.annotated_dir(last, Position(1, 0)).exists()
    assert result.files_written == 4 * FRAMES - 4 - 2


def test_montages_to_movies_one_bad_montage_is_not_fatal(tmp_path: Path) -> None:
    _, _, prep = _setup(tmp_path)
    wf = prep.wf
    bad = wf.montage_name(MontageKey("exp", 0, 0, 1))
    write_image(wf.label_path(bad), np.zeros((7, 7), np.uint16))
    write_image(wf.label_path("exp_x_05_y_00_montage_00"), np.zeros((7, 7), np.uint16))
    (wf.labels / "notes_labels.png").write_bytes(b"")
    result = montages_to_movies(wf)
    assert len(result.errors) == 2
    assert any("outside the logged 2x2 grid" in e for e in result.errors)
    assert any(bad in e and "does not fit" in e for e in result.errors)
    (failed,) = result.missing
    assert failed.montage == bad
    assert failed.reason.startswith("failed:")
    assert result.files_written == 4 * FRAMES - 4


def test_montages_to_movies_executor(tmp_path: Path) -> None:
    _, truth, prep = _setup(tmp_path)
    ex = LocalExecutor(workers=2)
    try:
        result = montages_to_movies(prep.wf, executor=ex)
    finally:
        ex.close()
    assert result.files_written == 4 * FRAMES
    pos = Position(1, 1)
    np.testing.assert_array_equal(_frames(result.wf.annotated_dir(part_of_montage(2), pos)),
                                  _expected(truth, prep.grid, pos, part_of_montage(2)))


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("workers", [1, 2])
def test_one_map_gives_what_the_two_functions_give(tmp_path: Path, workers: int) -> None:
    """raw_and_montages_to_movies: the same files and results as raw_to_movies then
    montages_to_movies, ``only`` asked once per item of each kind, a bad montage kept."""
    results, trees, asked = [], [], []
    for way in ("two", "one"):
        _, _, prep = _setup(tmp_path / way)
        wf = prep.wf
        write_image(wf.label_path(wf.montage_name(MontageKey("exp", 0, 0, 1))),
                    np.zeros((7, 7), np.uint16))  # does not fit: an error, not fatal
        seen: list[str] = []

        def only(name: str, source: Path, targets: tuple[Path, ...],
                 seen: list[str] = seen) -> bool:
            seen.append(name)
            return not name.endswith(("montage_02", "img3.tif"))  # as if written already

        progress: list[int] = []
        with LocalExecutor(workers) as ex:
            if way == "two":
                got = (raw_to_movies(wf, executor=ex, only=only, progress=progress.append),
                       montages_to_movies(wf, executor=ex, only=only,
                                          progress=progress.append))
            else:
                got = raw_and_montages_to_movies(wf, executor=ex, only_raw=only,
                                                 only_labels=only, progress=progress.append)
        here = str(tmp_path / way)  # named in error messages
        results.append([(r.kind, [(i.name, [f.relative_to(here) for f in i.files],
                                   (i.error or "").replace(here, "")) for i in r.items],
                         [(m.montage, m.reason.replace(here, "")) for m in r.missing])
                        for r in got])
        trees.append(_tree(wf.movies))
        asked.append((sorted(seen), sum(progress)))
    assert results[0] == results[1]
    assert trees[0] == trees[1]
    assert asked[0] == asked[1]
    assert len(asked[0][0]) == FRAMES + 12  # every raw frame and montage asked once
    assert any(error for _, items, _ in results[0] for *_, error in items)


def test_skip_names_must_be_montage_names(tmp_path: Path) -> None:
    _, _, prep = _setup(tmp_path)
    with pytest.raises(InputError, match="is not a montage name"):
        montages_to_movies(prep.wf, skip=["broken.png"])


def test_missing_logs(tmp_path: Path) -> None:
    with pytest.raises(LogError, match="log not found"):
        montages_to_movies(WorkingFolder(tmp_path, "exp"))


def test_logs_that_disagree_on_frame_count(tmp_path: Path) -> None:
    _, _, prep = _setup(tmp_path)
    log = read_montage_log(prep.wf.montage_log)
    write_log(log.model_copy(update={"montages_in_pos": 5}), prep.wf.montage_log)
    with pytest.raises(LogError, match="montages_in_pos is 5 but 10 frames"):
        montages_to_movies(prep.wf)


def _old_logs(wf: WorkingFolder, grid: TileGrid) -> None:
    """Rewrite the chopper log the way the original tool did (no sizes, no frame count)."""
    data = json.loads(wf.chopper_log.read_text())
    old = {k: data[k] for k in ("date", "num_x_segments", "num_y_segments", "overlap_perc",
                                "identifier")}
    wf.chopper_log.write_text(json.dumps(old))


def test_old_chopper_log_uses_the_raw_folder(tmp_path: Path) -> None:
    # 30x40 in 2x2 tiles divides evenly, so the legacy grid equals the new one.
    _, truth, prep = _setup(tmp_path)
    _old_logs(prep.wf, prep.grid)
    result = montages_to_movies(prep.wf)
    assert result.files_written == 4 * FRAMES  # last part: 2 real frames (raw folder count)
    pos = Position(0, 1)
    np.testing.assert_array_equal(_frames(result.wf.annotated_dir(part_of_montage(2), pos)),
                                  _expected(truth, prep.grid, pos, part_of_montage(2)))


def test_old_chopper_log_without_raw(tmp_path: Path) -> None:
    _, _, prep = _setup(tmp_path)
    _old_logs(prep.wf, prep.grid)
    no_raw = replace(prep.wf, raw=tmp_path / "nowhere")
    with pytest.raises(LogError, match="has no original_y/original_x"):
        montages_to_movies(no_raw)


def test_unknown_length_takes_every_frame(tmp_path: Path) -> None:
    _, _, prep = _setup(tmp_path)
    wf = replace(prep.wf, raw=tmp_path / "nowhere")
    data = json.loads(wf.chopper_log.read_text())
    data["num_images"] = None
    wf.chopper_log.write_text(json.dumps(data))
    result = montages_to_movies(wf)
    assert result.files_written == 4 * 3 * LENGTH  # the partial montages give blank frames
    assert len(list_images(result.wf.annotated_dir(part_of_montage(2), Position(0, 0)))) == LENGTH


# -- read_label_montage ------------------------------------------------------------------

LOG = MontageLog(identifier="e", montage_len=2, num_x_segments=1, num_y_segments=1,
                 row_length=2, x_buffer=0, y_buffer=0, montages_in_pos=1)


def test_read_label_montage(tmp_path: Path) -> None:
    frames = np.arange(2 * 3 * 4, dtype=np.uint16).reshape(2, 3, 4)
    path = write_image(tmp_path / "m.png", MontageLayout((3, 4), 2, 2).make(frames))
    np.testing.assert_array_equal(read_label_montage(path, LOG, (3, 4)), frames)
    with pytest.raises(GeometryError, match="holds 3x4 frames but the chopper log's tiles are"):
        read_label_montage(path, LOG, (3, 5))


@pytest.mark.parametrize(
    ("name", "image", "error", "match"),
    [
        ("rgb.png", np.zeros((3, 8, 3), np.uint8), AnnotationError, "must be a 2-D label"),
        ("float.tif", np.zeros((3, 8), np.float32), AnnotationError, "integer label image"),
        ("big.tif", np.full((3, 8), 70000, np.int32), AnnotationError, r"ids in 0\.\.65535"),
        ("odd.png", np.zeros((3, 9), np.uint16), GeometryError, "does not fit 2 frames"),
    ],
    ids=["rgb", "float", "too-big", "odd-size"],
)
def test_read_label_montage_errors(
    tmp_path: Path, name: str, image: np.ndarray, error: type[Exception], match: str
) -> None:
    path = write_image(tmp_path / name, image)
    with pytest.raises(error, match=match):
        read_label_montage(path, LOG, (3, 4))


# -- raw_to_movies -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "channels"),
    [(np.uint16, 0), (np.float32, 0), (np.uint8, 2)],
    ids=["uint16", "float32", "uint8-2ch"],
)
def test_raw_to_movies_gives_the_raw_tiles(tmp_path: Path, dtype: type, channels: int) -> None:
    movie, _, prep = _setup(tmp_path, dtype=dtype, channels=channels, labels=False)
    calls: list[int] = []
    result = raw_to_movies(prep.wf, progress=calls.append)
    assert not result.errors
    assert sum(calls) == FRAMES
    assert result.files_written == 4 * FRAMES
    wf = result.wf
    for pos in prep.grid.positions:
        for part, count in zip(part_numbers(3), (4, 4, 2), strict=True):
            folder = wf.raw_tile_dir(part, pos)
            assert [p.name for p in list_images(folder)] == [
                wf.raw_tile_frame(part, pos, f).name for f in range(count)]
            frames = _frames(folder)
            assert frames.dtype == dtype
            np.testing.assert_array_equal(frames, _expected(movie, prep.grid, pos, part))


def test_raw_to_movies_frame_offset_and_extra_frames(tmp_path: Path, caplog:
                                                     pytest.LogCaptureFixture) -> None:
    movie, _, prep = _setup(tmp_path, labels=False)
    wf = prep.wf
    # The log says the movie starts at the 3rd file: put two extra frames in front.
    shifted = tmp_path / "shifted"
    extra = np.zeros((2, *SHAPE), np.uint16)
    for t, frame in enumerate(np.concatenate([extra, movie, extra])):
        write_image(shifted / f"f{t}.tif", frame)
    log = ChopperLog.from_grid(prep.grid, identifier="exp", num_images=FRAMES, frame_offset=2)
    write_log(log, wf.chopper_log)
    with caplog.at_level(logging.INFO):
        result = raw_to_movies(replace(wf, raw=shifted))
    assert "using raw frames 2 to 11 of 14" in caplog.text
    pos = Position(1, 0)
    np.testing.assert_array_equal(_frames(result.wf.raw_tile_dir(part_of_montage(0), pos)),
                                  _expected(movie, prep.grid, pos, part_of_montage(0)))


def test_raw_to_movies_errors(tmp_path: Path) -> None:
    movie, _, prep = _setup(tmp_path, labels=False)
    with pytest.raises(InputError, match="no raw frames found"):
        raw_to_movies(replace(prep.wf, raw=tmp_path / "nowhere"))
    short = tmp_path / "short"
    for t, frame in enumerate(movie[:9]):
        write_image(short / f"f{t}.tif", frame)
    with pytest.raises(InputError, match="the logs describe 10 frames from frame 0, but the "
                                         "folder has 9"):
        raw_to_movies(replace(prep.wf, raw=short))


@pytest.mark.parametrize(
    ("bad", "pattern"),
    [
        (lambda shape, dtype: np.zeros((10, 10), dtype),
         r"raw frame 3 is 10x10 pixels, but the frames of this movie are {h}x{w} \(exp_overl"),
        (lambda shape, dtype: np.zeros((*shape, 3), np.uint8),
         r"raw frame 3 is 3 channels, but the first frame \(img0.tif\) has one channel"),
        (lambda shape, dtype: np.zeros(shape, np.float32),
         r"raw frame 3 is float32, but the first frame \(img0.tif\) is {dtype}: frames of "
         r"mixed dtypes"),
        (None, r"img3.tif: cannot read this image's header"),
    ],
    ids=["size", "rgb-among-grey", "dtype", "unreadable"],
)
def test_raw_frames_are_checked_before_any_is_used(
    tmp_path: Path, bad: Callable[..., np.ndarray] | None, pattern: str,
) -> None:
    _, _, prep = _setup(tmp_path, labels=False)
    first = read_image(prep.wf.raw / "img0.tif")
    target = prep.wf.raw / "img3.tif"
    if bad is None:
        target.write_bytes(target.read_bytes()[:40])
    else:
        write_image(target, bad(first.shape, first.dtype))
    expected = pattern.format(h=first.shape[0], w=first.shape[1], dtype=first.dtype)
    with pytest.raises(InputError, match=expected) as info:
        raw_to_movies(prep.wf)
    assert info.value.path == target
    assert not prep.wf.movies.exists() or not list(prep.wf.movies.rglob("*raw*.tif"))
