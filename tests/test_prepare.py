from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from cellcrowd.errors import InputError
from cellcrowd.executor import LocalExecutor
from cellcrowd.files import read_image, sha256_file, write_image
from cellcrowd.geometry import MontageLayout, Position, TileGrid
from cellcrowd.layout import MontageKey, WorkingFolder
from cellcrowd.logs import read_logs
from cellcrowd.prepare import (
    PrepareResult,
    make_montages,
    planned_montages,
    prepare,
    read_raw_movie,
    to_uint16,
)


def _movie(frames: int = 10, shape: tuple[int, ...] = (40, 50), seed: int = 0,
           dtype: type = np.uint16) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(1, 250, (frames, *shape)).astype(dtype)


def _write_frames(folder: Path, movie: np.ndarray, suffix: str = ".tif") -> list[Path]:
    # Unpadded numbers: natural sort must still give frame order.
    return [write_image(folder / f"frame_{t}{suffix}", frame) for t, frame in enumerate(movie)]


def _tiles(movie: np.ndarray, grid: TileGrid, pos: Position) -> np.ndarray:
    return np.stack([grid.tile(frame, pos) for frame in movie])


# -- read_raw_movie ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "suffix"),
    [((12, 9), ".tif"), ((12, 9), ".png"), ((12, 9, 3), ".tif")],
    ids=["2d-tif", "2d-png", "channels-last"],
)
def test_read_raw_movie_natural_order(tmp_path: Path, shape: tuple[int, ...], suffix: str) -> None:
    movie = _movie(12, shape, dtype=np.uint8 if suffix == ".png" else np.uint16)
    _write_frames(tmp_path, movie, suffix)
    back = read_raw_movie(tmp_path)
    assert back.dtype == movie.dtype
    np.testing.assert_array_equal(back, movie)


def test_read_raw_movie_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no raw frames"):
        read_raw_movie(tmp_path)


@pytest.mark.parametrize(
    "odd",
    [np.zeros((12, 8), np.uint16), np.zeros((12, 9), np.float32)],
    ids=["shape", "dtype"],
)
def test_read_raw_movie_names_the_odd_frame(tmp_path: Path, odd: np.ndarray) -> None:
    _write_frames(tmp_path, _movie(3, (12, 9)))
    write_image(tmp_path / "frame_7.tif", odd)
    with pytest.raises(InputError, match=r"frame_7\.tif.*first frame \(frame_0\.tif\)"):
        read_raw_movie(tmp_path)


def test_read_raw_movie_refuses_stacks(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((2, 3, 4, 5), np.uint16),
                     photometric="minisblack")
    with pytest.raises(InputError, match="one frame per file"):
        read_raw_movie(tmp_path)


# -- to_uint16 ---------------------------------------------------------------------------


def test_to_uint16_keeps_and_widens(caplog: pytest.LogCaptureFixture) -> None:
    u16 = np.array([[0, 65535]], np.uint16)
    u8 = np.array([[3, 255]], np.uint8)
    with caplog.at_level(logging.WARNING):
        np.testing.assert_array_equal(to_uint16(u16), u16)
        out8 = to_uint16(u8)
    assert out8.dtype == np.uint16
    np.testing.assert_array_equal(out8, [[3, 255]])
    assert not caplog.records


@pytest.mark.parametrize(
    "array",
    [np.array([[-1.5, 0.0, 2.5]]), np.array([[-7, 0, 70000]], np.int32)],
    ids=["float", "int32"],
)
def test_to_uint16_rescales_with_warning(
    array: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        out = to_uint16(array)
    assert out.dtype == np.uint16
    assert out.min() == 0
    assert out.max() == 65535
    assert np.all(np.diff(out.ravel().astype(int)) > 0)  # order kept
    assert "rescaling" in caplog.text
    assert array.dtype.name in caplog.text


def test_to_uint16_constant_and_bad_values() -> None:
    np.testing.assert_array_equal(to_uint16(np.full((2, 2), 3.0)), np.zeros((2, 2), np.uint16))
    with pytest.raises(ValueError, match="NaN or infinite"):
        to_uint16(np.array([1.0, np.nan]))
    with pytest.raises(TypeError, match="cannot turn complex128"):
        to_uint16(np.array([1j]))


# -- make_montages -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frames", "length", "row_length", "buffers"),
    [(8, 4, 2, (0, 0)), (10, 4, 3, (0, 0)), (7, 3, 2, (2, 1))],
    ids=["even", "partial-last-montage", "buffers"],
)
def test_make_montages_hold_the_tiles(
    frames: int, length: int, row_length: int, buffers: tuple[int, int]
) -> None:
    movie = _movie(frames, (30, 41))
    grid = TileGrid.for_frame((30, 41), num_x=3, num_y=2, overlap_perc=10)
    layout = MontageLayout(grid.tile_shape, length, row_length, *buffers)
    montages = make_montages(movie, grid, layout, identifier="exp")
    count = -(-frames // length)
    assert len(montages) == len(grid) * count
    for pos in grid.positions:
        tiles = _tiles(movie, grid, pos)
        for m in range(count):
            montage = montages[MontageKey("exp", pos.x, pos.y, m)]
            assert montage.shape == layout.montage_shape
            cells = layout.read(montage)
            real = tiles[m * length:(m + 1) * length]
            np.testing.assert_array_equal(cells[: len(real)], real)
            assert not cells[len(real):].any()  # blank cells of a partial montage
            blank = np.ones(layout.montage_shape, bool)
            for sl in layout.iter_slices():
                blank[sl] = False
            assert not montage[blank].any()  # buffers stay zero


def test_make_montages_leave_the_movie_alone() -> None:
    movie = _movie(4, (10, 10))
    before = movie.copy()
    grid = TileGrid.for_frame((10, 10), num_x=2, num_y=2, overlap_perc=20)
    make_montages(movie, grid, MontageLayout(grid.tile_shape, 2, 2))
    np.testing.assert_array_equal(movie, before)


def test_make_montages_errors() -> None:
    grid = TileGrid.for_frame((10, 10), num_x=2, num_y=2, overlap_perc=0)
    with pytest.raises(ValueError, match=r"movie must be \(frames, rows, cols\)"):
        make_montages(np.zeros((10, 10)), grid, MontageLayout(grid.tile_shape, 2, 2))
    with pytest.raises(ValueError, match="montage layout is for"):
        make_montages(np.zeros((2, 10, 10)), grid, MontageLayout((4, 4), 2, 2))


# -- prepare -----------------------------------------------------------------------------


def _prepare(
    tmp_path: Path, movie: np.ndarray, **kw: object
) -> tuple[WorkingFolder, PrepareResult]:
    raw = tmp_path / "raw_in"
    _write_frames(raw, movie)
    wf = WorkingFolder(tmp_path / "work", "exp")
    options: dict[str, object] = {"num_x": 2, "num_y": 2, "overlap_perc": 10,
                                  "montage_len": 4, "row_length": 3}
    options.update(kw)
    return wf, prepare(raw, wf, **options)  # type: ignore[arg-type]


def test_prepare_writes_montages_logs_csv_and_truth(tmp_path: Path) -> None:
    movie = _movie(10, (40, 50))
    truth = np.random.default_rng(1).integers(0, 300, movie.shape).astype(np.int32)
    calls: list[int] = []
    wf, result = _prepare(tmp_path, movie, truth=truth, url_prefix="https://bucket/x/",
                          progress=calls.append)
    grid = TileGrid.for_frame((40, 50), num_x=2, num_y=2, overlap_perc=10)
    layout = MontageLayout(grid.tile_shape, 4, 3)
    assert result.grid == grid
    assert result.num_frames == 10
    assert result.wf.raw == tmp_path / "raw_in"
    assert not result.errors
    assert sum(calls) == len(result.montages) == 4 * 3
    assert planned_montages(tmp_path / "raw_in", num_x=2, num_y=2, montage_len=4) == 4 * 3
    assert planned_montages(tmp_path / "absent", num_x=2, num_y=2, montage_len=4) is None
    for pos in grid.positions:
        tiles, truth_tiles = _tiles(movie, grid, pos), _tiles(truth, grid, pos)
        for m in range(3):
            key = MontageKey("exp", pos.x, pos.y, m)
            montage = read_image(wf.montage_path(key))
            assert montage.dtype == np.uint16
            cells = layout.read(montage)
            n = min(4, 10 - 4 * m)
            np.testing.assert_array_equal(cells[:n], tiles[4 * m:4 * m + n])
            assert not cells[n:].any()
            truth_cells = layout.read(read_image(wf.truth_path(wf.montage_name(key))))
            np.testing.assert_array_equal(truth_cells[:n], truth_tiles[4 * m:4 * m + n])
    chopper, mlog = read_logs(wf.chopper_log, wf.montage_log)
    assert chopper.num_images == 10
    assert chopper.tile_grid() == grid
    assert (mlog.montage_len, mlog.row_length, mlog.montages_in_pos) == (4, 3, 3)
    with open(wf.upload_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["identifier", "image_url"]
    assert {r["identifier"] for r in rows} == {"exp"}
    assert [r["image_url"] for r in rows] == [
        "https://bucket/x/" + p.name for p in result.montage_paths
    ]
    assert rows[0]["image_url"].endswith("exp_x_00_y_00_montage_00.png")


def test_prepare_rescales_floats_and_widens_uint8(tmp_path: Path) -> None:
    movie = np.linspace(0, 1, 2 * 8 * 8, dtype=np.float32).reshape(2, 8, 8)
    wf, result = _prepare(tmp_path / "f", movie, num_x=1, num_y=1, overlap_perc=0,
                          montage_len=2, row_length=2)
    montage = read_image(wf.montage_path(result.montages[0]))
    assert montage.max() == 65535
    assert montage.min() == 0
    movie8 = _movie(2, (8, 8), dtype=np.uint8)
    wf8, result8 = _prepare(tmp_path / "u8", movie8, num_x=1, num_y=1, overlap_perc=0,
                            montage_len=2, row_length=2)
    montage8 = read_image(wf8.montage_path(result8.montages[0]))
    assert montage8.dtype == np.uint16
    np.testing.assert_array_equal(montage8, np.concatenate(list(movie8), axis=1))


def test_prepare_multichannel_uploads_one_channel(tmp_path: Path) -> None:
    movie = _movie(3, (8, 10, 2))
    wf, result = _prepare(tmp_path, movie, num_x=1, num_y=1, overlap_perc=0, montage_len=3,
                          row_length=3, channel=1)
    montage = read_image(wf.montage_path(result.montages[0]))
    np.testing.assert_array_equal(montage, np.concatenate(list(movie[..., 1]), axis=1))
    with pytest.raises(InputError, match=r"channel 2 does not exist.*2 channels"):
        prepare(result.wf.raw, wf, num_x=1, num_y=1, overlap_perc=0, montage_len=3, row_length=3,
                channel=2)


@pytest.mark.parametrize(
    ("truth", "match"),
    [
        (np.zeros((9, 40, 50), np.int32), r"truth labels have shape \(9, 40, 50\)"),
        (np.zeros((10, 40, 50), np.float32), "truth labels must be an integer label image"),
        (np.full((10, 40, 50), 70000, np.int32),
         r"truth labels must hold ids in 0\.\.65535, got 70000\.\.70000: label montages"),
    ],
    ids=["shape", "dtype", "range"],
)
def test_prepare_truth_errors(tmp_path: Path, truth: np.ndarray, match: str) -> None:
    with pytest.raises(InputError, match=match):
        _prepare(tmp_path, _movie(10, (40, 50)), truth=truth)


def test_prepare_url_prefix_must_end_with_slash(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="must be empty or end with '/'"):
        _prepare(tmp_path, _movie(2, (8, 8)), url_prefix="https://bucket")


def test_prepare_records_unwritable_montages(tmp_path: Path) -> None:
    wf = WorkingFolder(tmp_path / "work", "exp")
    wf.base.mkdir()
    wf.montages.write_text("not a folder")  # every montage write fails
    raw = tmp_path / "raw"
    _write_frames(raw, _movie(2, (8, 8)))
    result = prepare(raw, wf, num_x=2, num_y=1, overlap_perc=0, montage_len=2, row_length=2)
    assert result.montages == []
    assert len(result.errors) == 2
    assert "exp_x_00_y_00_montage_00.png" in result.errors[0]
    assert wf.upload_csv.read_text() == "identifier,image_url\n"


def test_prepare_executor_gives_identical_files(tmp_path: Path) -> None:
    movie = _movie(6, (20, 24))
    _, r1 = _prepare(tmp_path / "serial", movie)
    ex = LocalExecutor(workers=2)
    try:
        _, r2 = _prepare(tmp_path / "pool", movie, executor=ex)
    finally:
        ex.close()
    assert r1.montages == r2.montages
    for a, b in zip(r1.montage_paths, r2.montage_paths, strict=True):
        assert sha256_file(a) == sha256_file(b)


def test_prepare_names_past_99_tiles(tmp_path: Path) -> None:
    movie = _movie(1, (2, 101))
    wf, result = _prepare(tmp_path, movie, num_x=101, num_y=1, overlap_perc=0, montage_len=1,
                          row_length=1)
    assert result.wf.padding.position == 3
    names = sorted(p.name for p in wf.montages.iterdir())
    assert len(names) == 101
    assert names[0] == "exp_x_000_y_000_montage_00.png"
    assert names[-1] == "exp_x_100_y_000_montage_00.png"
    key = MontageKey("exp", 100, 0, 0)
    np.testing.assert_array_equal(read_image(result.wf.montage_path(key)), movie[0][:, 100:])


def test_names_past_999_frames_widen() -> None:
    wf = WorkingFolder(Path("/w"), "exp")
    assert wf.with_counts(frames=1000).annotated_frame(1, Position(0, 1), 999).name == (
        "exp_x_00_y_01_frame_999.png"
    )
    wf = wf.with_counts(num_x=2, num_y=2, frames=1001, montages=101)
    assert wf.annotated_frame(1, Position(0, 1), 999).name == "exp_x_00_y_01_frame_0999.png"
    assert wf.raw_tile_frame(1, Position(0, 1), 1000).name == "exp_raw_x_00_y_01_frame_1000.tif"
    assert wf.montage_path(MontageKey("exp", 1, 0, 100)).name == "exp_x_01_y_00_montage_100.png"


def test_prepare_tasks_read_their_own_frames_from_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pickle

    import cellcrowd.prepare as prepare_mod

    def no_whole_movie(raw_dir: object) -> None:
        raise AssertionError("prepare must not read the whole movie")

    monkeypatch.setattr(prepare_mod, "read_raw_movie", no_whole_movie)
    reads: list[str] = []
    real_read = prepare_mod.read_image

    def counting_read(path: Path) -> np.ndarray:
        reads.append(Path(path).name)
        return real_read(path)

    monkeypatch.setattr(prepare_mod, "read_image", counting_read)
    movie = _movie(10, (64, 80))
    task_reads: list[list[str]] = []
    payload_sizes: list[int] = []

    class SpyExecutor:
        """Runs each task here, recording what it would ship to a worker and read there."""

        workers = 2

        def map(self, fn: Callable[[Any], Any], tasks: Iterable[Any]) -> Iterator[Any]:
            for task in tasks:
                payload_sizes.append(len(pickle.dumps(task)))
                before = len(reads)
                result = fn(task)
                task_reads.append(reads[before:])
                yield result

        def close(self) -> None:
            pass

    wf, result = _prepare(tmp_path, movie, executor=SpyExecutor())  # frames 0-3, 4-7, 8-9
    assert not result.errors
    assert len(result.montages) == 4 * 3
    # Each task reads exactly its own frames (at most L), never the rest of the movie ...
    assert task_reads == [[f"frame_{t}.tif" for t in range(4 * m, min(4 * m + 4, 10))]
                          for m in range(3)]
    # ... and its payload is paths and geometry, smaller than one raw frame.
    assert max(payload_sizes) < movie[0].nbytes
    grid = TileGrid.for_frame((64, 80), num_x=2, num_y=2, overlap_perc=10)
    cells = MontageLayout(grid.tile_shape, 4, 3).read(
        read_image(wf.montage_path(MontageKey("exp", 1, 1, 2))))
    np.testing.assert_array_equal(cells[:2], _tiles(movie, grid, Position(1, 1))[8:10])


def test_prepare_records_a_frame_that_differs_only_on_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cellcrowd.prepare as prepare_mod

    # Headers that all look alike: the odd frame is only found by the task reading it.
    monkeypatch.setattr(prepare_mod, "_frame_header", lambda path: ("same",))
    raw = tmp_path / "raw"
    _write_frames(raw, _movie(4, (8, 8)))
    write_image(raw / "frame_2.tif", np.zeros((8, 8), np.float32))
    wf = WorkingFolder(tmp_path / "work", "exp")
    result = prepare(raw, wf, num_x=2, num_y=1, overlap_perc=0, montage_len=2, row_length=2)
    assert [k.montage for k in result.montages] == [0, 0]  # montage 0 of both tiles
    assert len(result.errors) == 2  # montage 1 of both tiles
    assert all("frame_2.tif" in e and "first frame (frame_0.tif)" in e for e in result.errors)
    assert "exp_x_01_y_00_montage_01.png" in result.errors[1]
