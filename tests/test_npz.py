from __future__ import annotations

import json
import logging
import shutil
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cellcrowd.errors import InputError
from cellcrowd.executor import LocalExecutor
from cellcrowd.export.npz import (
    TrainingArrays,
    build_training_arrays,
    load_npz,
    load_part,
    save_npz,
    write_full_movie_npz,
    write_part_npz,
    write_parts_npz,
    write_parts_npz_each,
    write_stitched_movie_npz,
)
from cellcrowd.files import read_image, write_image
from cellcrowd.geometry import Position, TileGrid
from cellcrowd.layout import WorkingFolder, montage_of_part, part_of_montage
from cellcrowd.logs import ChopperLog, MontageLog, read_chopper_log, write_log
from cellcrowd.movies import montages_to_movies, raw_to_movies
from cellcrowd.pipeline import working_folder
from cellcrowd.sim.demo import ExampleSettings, make_example
from cellcrowd.sim.testing import same_up_to_relabel
from cellcrowd.stitch import read_stitched, stitch_movies

POSITIONS = [Position(x, y) for x in range(2) for y in range(2)]


def _write_part(
    wf: WorkingFolder,
    part: int,
    *,
    frames: int = 3,
    shape: tuple[int, ...] = (6, 7),
    positions: list[Position] = POSITIONS,
    seed: int = 0,
) -> dict[Position, tuple[np.ndarray, np.ndarray]]:
    """Hand-written movies/part{N}: random raw tiles and label tiles per position."""
    rng = np.random.default_rng(seed)
    out = {}
    for pos in positions:
        raw = rng.integers(0, 60000, (frames, *shape)).astype(np.uint16)
        labels = rng.integers(0, 9, (frames, *shape[:2])).astype(np.uint16)
        for f in range(frames):
            write_image(wf.raw_tile_frame(part, pos, f), raw[f])
            write_image(wf.annotated_frame(part, pos, f), labels[f])
        out[pos] = (raw, labels)
    return out


def _log(wf: WorkingFolder, montage_len: int = 3) -> None:
    """Both logs of a 2x2 grid with two full montages per position."""
    grid = TileGrid.for_frame((12, 14), num_x=2, num_y=2, overlap_perc=0)
    write_log(ChopperLog.from_grid(grid, identifier=wf.identifier, num_images=2 * montage_len),
              wf.chopper_log)
    write_log(MontageLog(identifier=wf.identifier, montage_len=montage_len, num_x_segments=2,
                         num_y_segments=2, row_length=2, x_buffer=0, y_buffer=0,
                         montages_in_pos=2), wf.montage_log)


@pytest.fixture
def wf(tmp_path: Path) -> WorkingFolder:
    return WorkingFolder(tmp_path, "exp")


def test_write_part_npz_keys_and_values(wf: WorkingFolder) -> None:
    _log(wf, montage_len=3)
    movies = _write_part(wf, 2)
    path = write_part_npz(wf, 2)
    assert path == wf.npz_part(2)
    with np.load(path, allow_pickle=False) as data:
        assert set(data.files) == {"X", "y", "positions", "missing_positions", "part",
                                   "identifier", "frame_offset"}
        x, y = data["X"], data["y"]
        assert x.dtype == np.float32
        assert y.dtype == np.int32
        assert x.shape == (4, 3, 6, 7, 1)
        assert y.shape == (4, 3, 6, 7, 1)
        assert list(data["positions"]) == ["x_00_y_00", "x_00_y_01", "x_01_y_00", "x_01_y_01"]
        assert data["part"] == 2
        assert data["identifier"] == "exp"
        assert data["frame_offset"] == montage_of_part(2) * 3
    for i, pos in enumerate(POSITIONS):
        raw, labels = movies[pos]
        np.testing.assert_array_equal(x[i, ..., 0], raw)
        np.testing.assert_array_equal(y[i, ..., 0], labels)
    assert [p.name for p in wf.npz.iterdir()] == [path.name]  # no temporary left behind


def test_compressed_or_not(wf: WorkingFolder) -> None:
    _write_part(wf, 1)
    for compressed, kind in ((True, zipfile.ZIP_DEFLATED), (False, zipfile.ZIP_STORED)):
        path = write_part_npz(wf, 1, compressed=compressed)
        with zipfile.ZipFile(path) as zf:
            assert {info.compress_type for info in zf.infolist()} == {kind}
        assert load_npz(path).X.shape == (4, 3, 6, 7, 1)


def test_frame_offset_unknown_without_log(
    wf: WorkingFolder, caplog: pytest.LogCaptureFixture
) -> None:
    _write_part(wf, 1)
    with caplog.at_level(logging.WARNING):
        data = load_npz(write_part_npz(wf, 1))
    assert data.frame_offset == -1
    assert "frame_offset of part 1 unknown" in caplog.text


def test_samples_to_drop_and_positions(wf: WorkingFolder) -> None:
    movies = _write_part(wf, 1)
    data = load_npz(write_part_npz(wf, 1, samples_to_drop=["x_0_y_1", "x_01_y_01"]))
    assert data.positions == ["x_00_y_00", "x_01_y_00"]
    np.testing.assert_array_equal(data.X[1, ..., 0], movies[Position(1, 0)][0])
    data = load_npz(write_part_npz(wf, 1, positions=["x_01_y_01", Position(0, 0)]))
    assert data.positions == ["x_01_y_01", "x_00_y_00"]


@pytest.mark.parametrize(
    ("positions", "match"),
    [(["top_left"], "'top_left' is not a position name"),
     (["x_07_y_00"], "position folder 'x_07_y_00' not found")],
    ids=["bad-name", "not-found"],
)
def test_bad_positions(wf: WorkingFolder, positions: list[str], match: str) -> None:
    _write_part(wf, 1)
    with pytest.raises(InputError, match=match):
        write_part_npz(wf, 1, positions=positions)


def test_unannotated_positions_are_left_out_and_reported(
    wf: WorkingFolder, caplog: pytest.LogCaptureFixture
) -> None:
    _write_part(wf, 1)
    for path in wf.annotated_dir(1, Position(0, 1)).iterdir():
        path.unlink()
    with caplog.at_level(logging.WARNING):
        data = load_npz(write_part_npz(wf, 1))
    assert data.positions == ["x_00_y_00", "x_01_y_00", "x_01_y_01"]
    assert data.missing_positions == ["x_00_y_01"]
    assert "no annotated frames; position left out" in caplog.text


def test_channels(wf: WorkingFolder) -> None:
    movies = _write_part(wf, 1, shape=(6, 7, 3))
    data = load_npz(write_part_npz(wf, 1, channels=[2, 0]))
    assert data.X.shape == (4, 3, 6, 7, 2)
    raw = movies[Position(0, 1)][0]
    np.testing.assert_array_equal(data.X[1], raw[..., [2, 0]])
    with pytest.raises(InputError, match=r"channels \[3\] do not select from the 3 raw"):
        write_part_npz(wf, 1, channels=[3])
    with pytest.raises(InputError, match=r"channels \[\] do not select"):
        write_part_npz(wf, 1, channels=[])


def test_channel_filters(tmp_path: Path) -> None:
    part = tmp_path / "part1"
    pos = part / "x_00_y_00"
    rng = np.random.default_rng(3)
    dapi = rng.integers(0, 99, (2, 4, 5)).astype(np.uint16)
    gfp = rng.integers(0, 99, (2, 4, 5)).astype(np.uint16)
    for f in range(2):
        write_image(pos / "raw" / f"dapi_{f}.tif", dapi[f])
        write_image(pos / "raw" / f"gfp_{f}.tif", gfp[f])
        write_image(pos / "annotated" / f"lab_{f}.png", np.ones((4, 5), np.uint16))
    arrays = build_training_arrays(part, channel_filters=["gfp", "dapi"])
    np.testing.assert_array_equal(arrays.X[0], np.stack([gfp, dapi], axis=-1))
    with pytest.raises(InputError, match=r"4 raw frames but 2 annotated"):
        build_training_arrays(part)  # "" matches both channels' files


def test_error_paths(wf: WorkingFolder) -> None:
    with pytest.raises(InputError, match="part folder not found"):
        write_part_npz(wf, 1)
    _write_part(wf, 1)
    with pytest.raises(InputError, match="no position of this part has annotated frames"):
        write_part_npz(wf, 1, samples_to_drop=[p.name for p in wf.part_dir(1).iterdir()])


def test_raw_missing(wf: WorkingFolder) -> None:
    _write_part(wf, 1)
    raw_dir = wf.raw_tile_dir(1, Position(1, 0))
    for path in raw_dir.iterdir():
        path.unlink()
    raw_dir.rmdir()
    with pytest.raises(InputError, match=r"x_01_y_00/raw: no raw frames for this annotated"):
        write_part_npz(wf, 1)


def test_frame_count_mismatch_names_the_folder(wf: WorkingFolder) -> None:
    _write_part(wf, 1)
    wf.raw_tile_frame(1, Position(0, 1), 2).unlink()
    with pytest.raises(InputError, match=r"x_00_y_01/raw: 2 raw frames but 3 annotated"):
        write_part_npz(wf, 1)


def test_frame_size_mismatches(wf: WorkingFolder) -> None:
    _write_part(wf, 1)
    write_image(wf.annotated_frame(1, Position(0, 0), 1), np.zeros((5, 7), np.uint16))
    with pytest.raises(InputError, match=r"x_00_y_00/annotated: frame .*frame_001.png is "
                                         r"\(5, 7\)"):
        write_part_npz(wf, 1)
    _write_part(wf, 1, shape=(6, 8), positions=[Position(0, 0)])
    for f in range(3):
        write_image(wf.annotated_frame(1, Position(0, 0), f), np.zeros((6, 7), np.uint16))
    with pytest.raises(InputError, match="raw frames are 6x8 but annotated frames"):
        write_part_npz(wf, 1)


def test_positions_must_match(wf: WorkingFolder) -> None:
    _write_part(wf, 1)
    _write_part(wf, 1, frames=2, positions=[Position(1, 1)])
    for f in (2,):  # leftovers of the 3-frame movie
        wf.raw_tile_frame(1, Position(1, 1), f).unlink()
        wf.annotated_frame(1, Position(1, 1), f).unlink()
    with pytest.raises(InputError, match=r"x_01_y_01: this position's movie is \(2, 6, 7\)"):
        write_part_npz(wf, 1)


def test_annotations_must_be_labels(wf: WorkingFolder) -> None:
    _write_part(wf, 1, positions=[Position(0, 0)])
    for f in range(3):
        write_image(wf.annotated_frame(1, Position(0, 0), f), np.zeros((6, 7, 3), np.uint8))
    with pytest.raises(InputError, match="annotated frames must be 2-D integer labels"):
        write_part_npz(wf, 1)


def test_write_parts_npz(wf: WorkingFolder) -> None:
    with pytest.raises(InputError, match="no part folders"):
        write_parts_npz(wf)
    _log(wf)
    first = _write_part(wf, 1, seed=1)
    _write_part(wf, 2, seed=2)
    _write_part(wf, 10, frames=1, seed=10)
    paths = write_parts_npz(wf)
    assert paths == [wf.npz_part(1), wf.npz_part(2), wf.npz_part(10)]
    assert [load_npz(p).frame_offset for p in paths] == [
        montage_of_part(p) * 3 for p in (1, 2, 10)]
    x, y, positions = load_part(wf, 1)
    assert x.shape == (4, 3, 6, 7, 1)
    np.testing.assert_array_equal(y[3, ..., 0], first[Position(1, 1)][1])
    assert positions[3] == "x_01_y_01"
    assert write_parts_npz(wf, [2], samples_to_drop=["x_00_y_00"]) == [wf.npz_part(2)]
    assert load_npz(wf.npz_part(2)).positions == ["x_00_y_01", "x_01_y_00", "x_01_y_01"]


def test_parts_on_a_process_pool_match_serial_and_a_bad_part_is_reported(
    wf: WorkingFolder,
) -> None:
    _log(wf)
    for part in (1, 2, 3):
        _write_part(wf, part, seed=part)
    serial = {p: p.read_bytes() for p in write_parts_npz(wf)}
    # Part 2 loses an annotated frame: reported, the other parts are still written.
    next(iter(sorted(wf.annotated_dir(2, Position(0, 0)).iterdir()))).unlink()
    done: list[int] = []
    pool = LocalExecutor(2)
    try:
        results = write_parts_npz_each(wf, executor=pool, progress=done.append)
    finally:
        pool.close()
    assert [r.part for r in results] == [1, 2, 3]
    assert sum(done) == 3
    assert results[1].path is None
    assert results[1].error is not None
    assert "x_00_y_00" in results[1].error
    for result in (results[0], results[2]):
        assert result.path is not None
        assert result.path.read_bytes() == serial[result.path]
    with pytest.raises(InputError, match="x_00_y_00"):
        write_parts_npz(wf)


def test_load_npz_needs_x_and_y(tmp_path: Path) -> None:
    path = tmp_path / "other.npz"
    np.savez(path, X=np.zeros(3))
    with pytest.raises(InputError, match=r"not a training file: keys are \['X'\]"):
        load_npz(path)


def test_unknown_samples_to_drop_are_reported(
    wf: WorkingFolder, caplog: pytest.LogCaptureFixture
) -> None:
    _write_part(wf, 1)
    with caplog.at_level(logging.WARNING):
        data = load_npz(write_part_npz(wf, 1, samples_to_drop=["x_09_y_00", "x_00_y_00"]))
    assert len(data.positions) == 3
    assert "match no position folder" in caplog.text
    assert "x=9" in caplog.text


# -- whole movies ---------------------------------------------------------------------------

MOVIE = ExampleSettings(frames=15, shape=(96, 96), cells=6, divisions=1, montage_len=5,
                        row_length=5)  # 2x2 tiles, 3 parts of 5 frames


@pytest.fixture(scope="module")
def movie_job(tmp_path_factory: pytest.TempPathFactory) -> tuple[WorkingFolder, Any, Any]:
    """A prepared 3-part movie whose label montages are the truth with ids shuffled per
    montage (as independent annotators number cells), cut into movies."""
    example = make_example(tmp_path_factory.mktemp("movie"), MOVIE)
    wf = working_folder(example.config)
    rng = np.random.default_rng(7)
    for path in sorted(wf.truth.glob("*_truth.png")):
        truth = read_image(path).astype(np.int64)
        ids = rng.permutation(np.arange(1, int(truth.max()) + 1)) + 100
        shuffled = np.concatenate([[0], ids])[truth]
        write_image(wf.label_path(path.name[: -len("_truth.png")]), shuffled.astype(np.uint16))
    montages_to_movies(wf)
    raw_to_movies(wf)
    grid = read_chopper_log(wf.chopper_log).tile_grid()
    return wf, example.movie, grid


def _copy_job(movie_job: tuple[WorkingFolder, Any, Any], dest: Path) -> WorkingFolder:
    wf = movie_job[0]
    shutil.copytree(wf.base, dest)
    return replace(wf, base=dest, raw=dest / "raw", annotations=dest / wf.annotations.name)


def _boundary_ids(y: np.ndarray, truth: np.ndarray, starts: list[int]
                  ) -> list[tuple[int, int, int, int]]:
    """(boundary, truth id, id before, id after) for every truth cell clearly present on
    both sides of a part boundary (mask IoU >= 0.5, 20+ px) in one position's movie."""
    out = []
    for b in starts[1:]:
        for g in np.intersect1d(np.unique(truth[b - 1]), np.unique(truth[b])):
            before, after = truth[b - 1] == g, truth[b] == g
            iou = (before & after).sum() / (before | after).sum()
            if g == 0 or iou < 0.5 or min(before.sum(), after.sum()) < 20:
                continue
            (id_before,), (id_after,) = np.unique(y[b - 1][before]), np.unique(y[b][after])
            out.append((b, int(g), int(id_before), int(id_after)))
    return out


def test_full_movie_keeps_one_id_per_cell_across_parts(
    movie_job: tuple[WorkingFolder, Any, Any]
) -> None:
    wf, movie, grid = movie_job
    path = write_full_movie_npz(wf, compressed=False)
    assert path == wf.npz_full_movie
    data = load_npz(path)
    with np.load(path) as raw:
        assert bool(raw["linked"])
        starts = [int(s) for s in raw["part_starts"]]
    assert data.linked
    assert starts == [0, 5, 10]
    assert data.X.shape == (4, 15, *grid.tile_shape, 1)
    assert data.y.shape == (4, 15, *grid.tile_shape, 1)
    assert (data.part, data.frame_offset, data.missing_positions) == (-1, 0, [])
    unlinked = load_npz(write_full_movie_npz(wf, link=False))
    np.testing.assert_array_equal(unlinked.X, data.X)
    checked = changed = 0
    for i, name in enumerate(data.positions):
        x, y = (int(v) for v in name.split("_")[1::2])
        truth = np.stack([grid.tile(f, Position(x, y)) for f in movie.labels])
        ys = data.y[i, ..., 0]
        # every part is the truth, relabelled; ids run 1..n over the whole movie
        for s, e in zip(starts, [*starts[1:], 15], strict=True):
            assert same_up_to_relabel(ys[s:e], truth[s:e]), (name, s)
        assert np.array_equal(np.unique(ys), np.arange(len(np.unique(ys))))
        for b, g, before, after in _boundary_ids(ys, truth, starts):
            assert before == after, (name, b, g)
            checked += 1
        for _b, _g, before, after in _boundary_ids(unlinked.y[i, ..., 0], truth, starts):
            changed += before != after
    assert checked >= 10
    assert changed >= checked // 2  # without linking the shuffled ids do not carry over
    np.testing.assert_array_equal(data.X[..., 0][:, 5:10], load_npz(
        write_part_npz(wf, part_of_montage(1))).X[..., 0])


def test_full_movie_needs_a_position_annotated_in_every_part(
    movie_job: tuple[WorkingFolder, Any, Any], tmp_path: Path
) -> None:
    wf = _copy_job(movie_job, tmp_path / "work")
    for montage, pos in ((0, Position(0, 0)), (1, Position(0, 1)), (2, Position(1, 0)),
                         (2, Position(1, 1))):
        shutil.rmtree(wf.annotated_dir(part_of_montage(montage), pos))
    with pytest.raises(InputError, match="no position is annotated in every part"):
        write_full_movie_npz(wf)
    wf = _copy_job(movie_job, tmp_path / "other")
    shutil.rmtree(wf.annotated_dir(part_of_montage(1), Position(0, 0)))
    data = load_npz(write_full_movie_npz(wf, samples_to_drop=["x_01_y_01"]))
    assert data.positions == ["x_00_y_01", "x_01_y_00"]
    assert data.missing_positions == ["x_00_y_00"]
    assert data.X.shape[:2] == (2, 15)


def test_full_movie_parts_without_a_log(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                        ) -> None:
    wf = WorkingFolder(tmp_path, "exp")
    with pytest.raises(InputError, match="no part folders"):
        write_full_movie_npz(wf)
    parts = [_write_part(wf, part, frames=2, seed=part) for part in (1, 2)]
    with caplog.at_level(logging.WARNING, logger="cellcrowd.export.npz"):
        data = load_npz(write_full_movie_npz(wf))
    assert "parts taken from the movies folder" in caplog.text
    assert data.X.shape == (4, 4, 6, 7, 1)
    np.testing.assert_array_equal(data.X[1, 2:, ..., 0], parts[1][POSITIONS[1]][0])


def test_stitched_movie_npz(movie_job: tuple[WorkingFolder, Any, Any], tmp_path: Path
                            ) -> None:
    wf = _copy_job(movie_job, tmp_path / "work")
    with pytest.raises(InputError, match=r"stitched.annotated: no stitched frames: run the stitch"):
        write_stitched_movie_npz(wf)
    stitch_movies(wf)
    path = write_stitched_movie_npz(wf)
    assert path == wf.npz_stitched_movie
    raw, labels, lineage = read_stitched(wf)
    data = load_npz(path)
    assert data.X.shape == (1, 15, 96, 96, 1)
    assert data.y.shape == (1, 15, 96, 96, 1)
    assert data.X.dtype == np.float32
    assert data.y.dtype == np.int32
    assert raw is not None
    np.testing.assert_array_equal(data.X[0, ..., 0], raw)
    np.testing.assert_array_equal(data.y[0, ..., 0], labels)
    assert data.positions == ["stitched"]
    assert data.linked
    with np.load(path) as saved:
        assert {int(k): v for k, v in json.loads(str(saved["lineage"])).items()} == lineage
    assert same_up_to_relabel(data.y[0, ..., 0], movie_job[1].labels)
    with pytest.raises(InputError, match=r"channels \[2\] do not select"):
        write_stitched_movie_npz(wf, channels=[2])
    for frame in sorted((wf.stitched / "raw").iterdir()):
        write_image(frame, np.zeros((8, 8), np.uint16))
    with pytest.raises(InputError, match=r"raw frames are \(8, 8\) but label frames \(96, 96\)"):
        write_stitched_movie_npz(wf)
    shutil.rmtree(wf.stitched / "raw")
    with pytest.raises(InputError, match="no stitched raw frames"):
        write_stitched_movie_npz(wf)


def test_save_npz_extra_keys_must_not_replace_standard_ones(tmp_path: Path) -> None:
    data = TrainingArrays(np.zeros((1, 1, 2, 2, 1), np.float32),
                          np.zeros((1, 1, 2, 2, 1), np.int32), ["x_00_y_00"], [])
    with pytest.raises(ValueError, match=r"extra keys \['part'\] would replace"):
        save_npz(tmp_path / "a.npz", data, part=1, identifier="e", frame_offset=0,
                 extra={"part": 3})
    path = save_npz(tmp_path / "b.npz", data, part=1, identifier="e", frame_offset=0,
                    extra={"note": np.str_("hi")})
    with np.load(path) as saved:
        assert str(saved["note"]) == "hi"
