"""The whole local round trip on a synthetic movie, against its ground truth.

prepare (raw + truth) -> paint each truth montage as a crowd annotation with
artifacts sized across the cleaning thresholds -> clean into the label copies ->
montages and raw frames into movies -> one npz per part. ``X`` must be the raw tiles
exactly; ``y`` the truth tiles with each artifact's expected fate (kept specks stay,
small ones go, small holes are filled) up to one relabelling per montage; the
downloads must be untouched.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cellcrowd.export.npz import load_npz, write_parts_npz
from cellcrowd.files import read_image, sha256_file, write_image
from cellcrowd.geometry import TileGrid
from cellcrowd.labels import CleanTask, clean_annotations
from cellcrowd.layout import MontageKey, WorkingFolder, montage_of_part, part_numbers
from cellcrowd.logs import read_montage_log
from cellcrowd.movies import montages_to_movies, raw_to_movies
from cellcrowd.prepare import PrepareResult, prepare
from cellcrowd.sim.synthetic import (
    PaintReport,
    SyntheticMovie,
    paint_annotation_with_report,
    synthetic_movie,
    write_movie_frames,
)
from cellcrowd.sim.testing import assert_same_up_to_relabel
from helpers import expected_after_cleaning

FRAMES, SHAPE, LENGTH, ROW = 20, (96, 128), 8, 3  # parts of 8, 8, 4 frames; 8 % 3 != 0
MIN_SIZE, MAX_HOLE = 8, 24  # not the defaults: the thresholds must reach the cleaner


def make_movie() -> SyntheticMovie:
    return synthetic_movie(frames=FRAMES, shape=SHAPE, cells=8, divisions=1, seed=3)


def prepare_movie(tmp_path: Path, movie: SyntheticMovie) -> PrepareResult:
    write_movie_frames(movie, tmp_path / "raw")
    return prepare(tmp_path / "raw", WorkingFolder(tmp_path, "demo"), num_x=2, num_y=2,
                   overlap_perc=10, montage_len=LENGTH, row_length=ROW, truth=movie.labels)


def paint_annotations(prep: PrepareResult, encoding: str
                      ) -> tuple[dict[Path, str], dict[MontageKey, PaintReport]]:
    """Crowd-like annotation PNGs of every truth montage: their hashes and paint reports."""
    wf = prep.wf
    hashes, reports = {}, {}
    for i, key in enumerate(prep.montages):
        name = wf.montage_name(key)
        truth = read_image(wf.truth_path(name))
        image, reports[key] = paint_annotation_with_report(
            truth, encoding=encoding, layout=prep.layout, seed=i,  # type: ignore[arg-type]
            artifact_sizes="across", min_size=MIN_SIZE, max_hole=MAX_HOLE)
        path = write_image(wf.annotation_path(name), image)
        hashes[path] = sha256_file(path)
    return hashes, reports


def expected_tiles(prep: PrepareResult, reports: dict[MontageKey, PaintReport]
                   ) -> dict[tuple[int, int, int], np.ndarray]:
    """(x, y, montage) -> the expected label frames: truth with the artifacts' fates."""
    out = {}
    for key, report in reports.items():
        truth = read_image(prep.wf.truth_path(prep.wf.montage_name(key)))
        frames = prep.layout.read(expected_after_cleaning(truth, report))
        real = min(LENGTH, FRAMES - key.montage * LENGTH)
        out[(key.x, key.y, key.montage)] = frames[:real]
    return out


def check_npz(prep: PrepareResult, movie: SyntheticMovie, paths: list[Path],
              expected: dict[tuple[int, int, int], np.ndarray]) -> None:
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
            labels = expected[(pos.x, pos.y, montage_of_part(part))]
            assert_same_up_to_relabel(labels, data.y[i, ..., 0], f"part {part} {pos}")
            assert data.y[i].max() == len(np.unique(labels)) - 1  # relabelled 1..n
            assert np.mean((labels > 0) == (truth > 0)) > 0.97  # the truth, but for artifacts


@pytest.mark.parametrize("encoding", ["red", "rgb"])
def test_round_trip(tmp_path: Path, encoding: str) -> None:
    movie = make_movie()
    prep = prepare_movie(tmp_path, movie)
    wf = prep.wf
    assert len(prep.montages) == 12
    hashes, reports = paint_annotations(prep, encoding)

    log = read_montage_log(wf.montage_log)
    results = clean_annotations(
        CleanTask(src, wf.label_path(wf.montage_name(key)), log, min_size=MIN_SIZE,
                  max_hole=MAX_HOLE)
        for src, key in zip(hashes, prep.montages, strict=True)
    )
    assert all(r.ok for r in results)
    assert [r.stats.specks_removed for r in results if r.stats] == [
        reports[key].removable for key in prep.montages]
    assert [r.stats.holes_filled for r in results if r.stats] == [
        reports[key].fillable for key in prep.montages]
    fates = {(a.kind == "hole", a.expected) for r in reports.values() for a in r.artifacts}
    assert fates >= {(False, "kept"), (False, "removed"), (True, "filled"), (True, "not filled")}

    annotated = montages_to_movies(wf)
    assert not annotated.errors
    assert not annotated.missing
    assert annotated.files_written == len(prep.grid) * FRAMES
    raw = raw_to_movies(wf)
    assert not raw.errors
    assert raw.files_written == len(prep.grid) * FRAMES

    check_npz(prep, movie, write_parts_npz(wf), expected_tiles(prep, reports))
    assert {p: sha256_file(p) for p in hashes} == hashes  # downloads untouched
