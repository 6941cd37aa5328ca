"""The whole local round trip on a synthetic movie, against its ground truth.

prepare (raw + truth) -> paint each truth montage as a crowd annotation with
artifacts -> clean into the label copies -> montages and raw frames into movies
-> one npz per part. ``X`` must be the raw tiles exactly; ``y`` the truth tiles
up to one relabelling per montage; the downloads must be untouched.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cellcrowd.export.npz import load_npz, write_parts_npz
from cellcrowd.files import read_image, sha256_file, write_image
from cellcrowd.geometry import TileGrid
from cellcrowd.labels import CleanTask, clean_annotations
from cellcrowd.layout import WorkingFolder, montage_of_part, part_numbers
from cellcrowd.logs import read_montage_log
from cellcrowd.movies import montages_to_movies, raw_to_movies
from cellcrowd.prepare import PrepareResult, prepare
from cellcrowd.sim.synthetic import (
    SyntheticMovie,
    paint_annotation,
    synthetic_movie,
    write_movie_frames,
)
from cellcrowd.sim.testing import assert_same_up_to_relabel

FRAMES, SHAPE, LENGTH, ROW = 20, (96, 128), 8, 3  # parts of 8, 8, 4 frames; 8 % 3 != 0


def make_movie() -> SyntheticMovie:
    return synthetic_movie(frames=FRAMES, shape=SHAPE, cells=8, divisions=1, seed=3)


def prepare_movie(tmp_path: Path, movie: SyntheticMovie) -> PrepareResult:
    write_movie_frames(movie, tmp_path / "raw")
    return prepare(tmp_path / "raw", WorkingFolder(tmp_path, "demo"), num_x=2, num_y=2,
                   overlap_perc=10, montage_len=LENGTH, row_length=ROW, truth=movie.labels)


def paint_annotations(prep: PrepareResult, encoding: str) -> dict[Path, str]:
    """Crowd-like annotation PNGs of every truth montage; returns their hashes."""
    wf = prep.wf
    hashes = {}
    for i, key in enumerate(prep.montages):
        name = wf.montage_name(key)
        truth = read_image(wf.truth_path(name))
        image = paint_annotation(truth, encoding=encoding,  # type: ignore[arg-type]
                                 layout=prep.layout, seed=i)
        path = write_image(wf.annotation_path(name), image)
        hashes[path] = sha256_file(path)
    return hashes


def check_npz(prep: PrepareResult, movie: SyntheticMovie, paths: list[Path]) -> None:
    grid: TileGrid = prep.grid
    wf = prep.wf
    assert paths == [wf.npz_part(p) for p in part_numbers(3)]
    for part, path in zip(part_numbers(3), paths, strict=True):
        data = load_npz(path)
        start = montage_of_part(part) * LENGTH
        frames = range(start, min(start + LENGTH, FRAMES))
        assert data.X.shape == (len(grid), len(frames), *grid.tile_shape, 1)
        assert data.y.shape == data.X.shape
        assert data.frame_offset == frames.start
        assert data.positions == [f"x_{p.x:02d}_y_{p.y:02d}" for p in grid.positions]
        for i, pos in enumerate(grid.positions):
            raw = np.stack([grid.tile(movie.raw[t], pos) for t in frames])
            truth = np.stack([grid.tile(movie.labels[t], pos) for t in frames])
            np.testing.assert_array_equal(data.X[i, ..., 0], raw)
            assert_same_up_to_relabel(truth, data.y[i, ..., 0], f"part {part} {pos}")
            assert data.y[i].max() == len(np.unique(truth)) - 1  # relabelled 1..n


@pytest.mark.parametrize("encoding", ["red", "rgb"])
def test_round_trip(tmp_path: Path, encoding: str) -> None:
    movie = make_movie()
    prep = prepare_movie(tmp_path, movie)
    wf = prep.wf
    assert len(prep.montages) == 12
    hashes = paint_annotations(prep, encoding)

    log = read_montage_log(wf.montage_log)
    results = clean_annotations(
        CleanTask(src, wf.label_path(wf.montage_name(key)), log)
        for src, key in zip(hashes, prep.montages, strict=True)
    )
    assert all(r.ok for r in results)
    assert sum(r.stats.specks_removed for r in results if r.stats) > 0  # artifacts were there

    annotated = montages_to_movies(wf)
    assert not annotated.errors
    assert not annotated.missing
    assert annotated.files_written == len(prep.grid) * FRAMES
    raw = raw_to_movies(wf)
    assert not raw.errors
    assert raw.files_written == len(prep.grid) * FRAMES

    check_npz(prep, movie, write_parts_npz(wf))
    assert {p: sha256_file(p) for p in hashes} == hashes  # downloads untouched
