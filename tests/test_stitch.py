"""Tiles back into full frames, parts into one movie, and the lineage of its cells."""

from __future__ import annotations

import gc
import itertools
import json
import shutil
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import ndimage
from skimage.segmentation import expand_labels

from cellcrowd.errors import InputError, LineageError
from cellcrowd.files import read_image, write_image, write_npz
from cellcrowd.geometry import Position, TileGrid, num_montages
from cellcrowd.layout import WorkingFolder, part_of_montage
from cellcrowd.logs import ChopperLog, MontageLog, write_log
from cellcrowd.sim.testing import assert_same_up_to_relabel
from cellcrowd.stitch import (
    lineage_from_labels,
    link_parts,
    read_lineage,
    read_stitched,
    stitch_movies,
    stitch_tiles,
)
from cellcrowd.stitch.parts import load_part
from cellcrowd.stitch.tiles import TileChangedError, match_tiles
from helpers import file_hashes

T = TypeVar("T")
R = TypeVar("R")

# -- helpers ----------------------------------------------------------------------------


def count_cells(labels: np.ndarray) -> int:
    return len(np.unique(labels[labels > 0]))


def boxes_movie(rng: np.random.Generator, shape: tuple[int, int], frames: int,
                slot: int, smallest: int = 2) -> np.ndarray:
    """Disjoint rectangles (one per slot, some slots empty) drifting <= 1 px per frame.

    Every cell is connected in every frame and overlaps its previous position, so
    whatever tiles see it are linked through pixels they share.
    """
    base = np.zeros(shape, dtype=np.int32)
    label = 1
    for y in range(0, shape[0] - 1, slot):
        for x in range(0, shape[1] - 1, slot):
            if rng.random() < 0.2:
                continue
            h, w = rng.integers(smallest, slot + 1, size=2)
            base[y:y + h, x:x + w] = label
            label += 1
    movie = np.zeros((frames, *shape), dtype=np.int32)
    dy = dx = 0
    for t in range(frames):
        movie[t, dy:, dx:] = base[:shape[0] - dy, :shape[1] - dx]
        dy = min(dy + int(rng.integers(0, 2)), shape[0] - 1)
        dx = min(dx + int(rng.integers(0, 2)), shape[1] - 1)
    return movie


def cut_and_permute(movie: np.ndarray, grid: TileGrid, rng: np.random.Generator) -> np.ndarray:
    """Cut every frame; give each tile its own random ids (the same in all its frames)."""
    tiles = np.stack([grid.cut(frame) for frame in movie]).astype(np.int64)
    top = int(movie.max())
    for y in range(grid.num_y):
        for x in range(grid.num_x):
            new = np.concatenate([[0], rng.choice(np.arange(1, 60_000), size=top,
                                                  replace=False)])
            tiles[:, y, x] = new[tiles[:, y, x]]
    return tiles


# -- stitch_tiles -----------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(
    num_x=st.integers(1, 3),
    num_y=st.integers(1, 3),
    overlap=st.sampled_from([15, 25, 40]),
    core=st.integers(8, 24),
    extra=st.tuples(st.integers(0, 7), st.integers(0, 7)),
    frames=st.integers(1, 4),
    slot=st.integers(3, 9),
    seed=st.integers(0, 2**32 - 1),
)
def test_stitch_recovers_cut_movie_with_permuted_tile_ids(
    num_x: int, num_y: int, overlap: int, core: int, extra: tuple[int, int], frames: int,
    slot: int, seed: int,
) -> None:
    shape = (num_y * core - extra[0] % core, num_x * core - extra[1] % core)
    grid = TileGrid.for_frame(shape, num_x=num_x, num_y=num_y, overlap_perc=overlap)
    # Cells can only be matched where neighbours share pixels.
    assume((grid.overlap_x or num_x == 1) and (grid.overlap_y or num_y == 1))
    rng = np.random.default_rng(seed)
    movie = boxes_movie(rng, shape, frames, slot)
    labels, report = stitch_tiles(cut_and_permute(movie, grid, rng), grid)
    assert labels.dtype == np.int32
    assert labels.shape == movie.shape
    assert_same_up_to_relabel(movie, labels)
    n = count_cells(movie)
    assert report.cells == n == labels.max()  # numbered 1..n
    assert not report.conflicts
    assert report.unmatched == 0
    assert report.missing == ()


def test_without_overlap_every_tile_keeps_its_own_cells() -> None:
    grid = TileGrid.for_frame((6, 6), num_x=2, num_y=2, overlap_perc=0)
    frame = np.arange(36).reshape(6, 6) % 5
    labels, report = stitch_tiles(grid.cut(frame)[None], grid)
    seen: set[int] = set()
    for pos in grid.positions:
        (fy, fx), _ = grid.core_window(pos)
        assert_same_up_to_relabel(frame[fy, fx], labels[0, fy, fx])
        ids = set(np.unique(labels[0, fy, fx]).tolist()) - {0}
        assert not ids & seen  # nothing can be matched without shared pixels
        seen |= ids
    assert report.matches == 0
    assert report.unmatched == 0


def test_cell_cut_by_a_border_gets_one_id_and_core_owner_decides() -> None:
    grid = TileGrid.for_frame((10, 20), num_x=2, num_y=1, overlap_perc=40)  # 4 px overlap
    frame = np.zeros((10, 20), dtype=np.int32)
    frame[2:8, 6:14] = 1
    tiles = grid.cut(frame)[None].astype(np.int64)
    tiles[0, 0, 1][tiles[0, 0, 1] == 1] = 9
    # The right tile's annotator painted the cell one column wider on its side.
    (fy, fx), (ty, tx) = grid.frame_window(Position(1, 0))
    dy, dx = ty.start - fy.start, tx.start - fx.start
    tiles[0, 0, 1, 2 + dy:8 + dy, 14 + dx] = 9
    labels, report = stitch_tiles(tiles, grid)
    expected = frame.copy()
    expected[2:8, 14] = 1  # column 14 is in the right tile's core: its annotation wins
    np.testing.assert_array_equal(labels[0], expected)
    assert report.matches == 1
    assert report.cells == 1


def discs_movie(rng: np.random.Generator, shape: tuple[int, int], frames: int,
                cells: int) -> np.ndarray:
    """Discs (radius 5-7) at least 4 px apart, drifting by up to 1 px per frame."""
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    centres: list[tuple[float, float, float]] = []
    while len(centres) < cells:
        r = float(rng.uniform(5, 7))
        y, x = rng.uniform(r + 2, shape[0] - r - 4, size=2)
        if all(np.hypot(y - cy, x - cx) > r + cr + 4 for cy, cx, cr in centres):
            centres.append((y, x, r))
    movie = np.zeros((frames, *shape), dtype=np.int32)
    for t in range(frames):
        for label, (y, x, r) in enumerate(centres, start=1):
            movie[t][np.hypot(yy - y - t, xx - x - t / 2) <= r] = label
    return movie


def test_stitch_tolerates_tiles_that_disagree_on_cell_borders() -> None:
    """Each tile's annotator drew every cell 1 px too small, too large, or right."""
    rng = np.random.default_rng(7)
    movie = discs_movie(rng, (96, 96), 3, 14)
    grid = TileGrid.for_frame((96, 96), num_x=3, num_y=3, overlap_perc=15)  # 4 px overlap
    tiles = cut_and_permute(movie, grid, rng)
    for y in range(3):
        for x in range(3):
            for t in range(tiles.shape[0]):
                tile = tiles[t, y, x]
                if (y + x) % 3 == 0:
                    tiles[t, y, x] = expand_labels(tile, 1)
                elif (y + x) % 3 == 1:
                    keep = (ndimage.grey_erosion(tile, 3) == tile) & (
                        ndimage.grey_dilation(tile, 3) == tile)
                    tiles[t, y, x] = np.where(keep, tile, 0)
    labels, report = stitch_tiles(tiles, grid)
    assert not report.conflicts
    dominant = []
    for cell in range(1, movie.max() + 1):
        ids, counts = np.unique(labels[movie == cell], return_counts=True)
        counts[ids == 0] = 0
        dominant.append(int(ids[counts.argmax()]))
        assert (counts >= 10).sum() == 1  # not split
        assert counts.max() >= 0.5 * (movie == cell).sum()  # not lost (erosion drops a ring)
    assert len(set(dominant)) == movie.max()  # no two cells merged
    # Any other id is a sliver of a too-large drawing on background owned by its tile.
    ids, sizes = np.unique(labels[~np.isin(labels, [0, *dominant])], return_counts=True)
    assert (sizes < 10).all()


def conflict_tiles() -> tuple[TileGrid, np.ndarray]:
    """2x2 tiles: cells P and Q at the centre; tile x=0, y=1 painted them as one cell."""
    grid = TileGrid.for_frame((40, 40), num_x=2, num_y=2, overlap_perc=25)  # 5 px overlap
    frame = np.zeros((40, 40), dtype=np.int32)
    frame[16:24, 8:19] = 1  # P
    frame[16:24, 19:32] = 2  # Q
    tiles = grid.cut(frame)[None].astype(np.int64)
    merged = tiles[0, 1, 0]
    merged[merged > 0] = 5
    return grid, tiles


def test_conflicting_matches_are_reported_and_kept_apart() -> None:
    grid, tiles = conflict_tiles()
    labels, report = stitch_tiles(tiles, grid)
    assert len(report.conflicts) >= 1
    conflict = report.conflicts[0]
    assert Position(0, 1) in (conflict.tile_a, conflict.tile_b)
    assert 5 in (conflict.label_a, conflict.label_b)
    assert sorted(conflict.clash) == [1, 2]
    assert "kept apart" in str(conflict)
    # P (left, owned by x=0, y=0) and Q (right, owned by x=1, y=0) keep distinct ids.
    assert labels[0, 17, 10] != labels[0, 17, 28]
    assert labels[0, 17, 10] > 0
    assert labels[0, 17, 28] > 0


def test_missing_tile_leaves_its_pixels_empty_and_is_reported() -> None:
    grid = TileGrid.for_frame((32, 32), num_x=2, num_y=2, overlap_perc=25)
    rng = np.random.default_rng(5)
    movie = boxes_movie(rng, (32, 32), 3, 6)
    tiles = cut_and_permute(movie, grid, rng)
    tiles[:, 0, 1] = 123  # garbage where the tile is missing: must be ignored
    labels, report = stitch_tiles(tiles, grid, missing=[Position(1, 0)])
    assert report.missing == (Position(1, 0),)
    (fy, fx), _ = grid.core_window(Position(1, 0))
    assert not labels[:, fy, fx].any()
    keep = np.ones(movie.shape, dtype=bool)
    keep[:, fy, fx] = False
    assert_same_up_to_relabel(movie[keep], labels[keep])


def test_cell_missing_in_one_tile_counts_as_unmatched() -> None:
    grid = TileGrid.for_frame((10, 20), num_x=2, num_y=1, overlap_perc=40)
    frame = np.zeros((10, 20), dtype=np.int32)
    frame[2:8, 6:14] = 1
    tiles = grid.cut(frame)[None].astype(np.int64)
    tiles[0, 0, 1] = 0  # the right tile's annotator missed the cell
    labels, report = stitch_tiles(tiles, grid)
    assert report.unmatched == 1
    assert report.matches == 0
    assert labels[0, :, :10].max() == 1
    assert labels[0, :, 10:].max() == 0


@pytest.mark.parametrize(
    ("tiles", "kwargs", "error", "match"),
    [
        (np.zeros((1, 2, 2, 5, 5), np.int32), {}, ValueError, "expected"),
        (np.zeros((2, 2, 6, 6), np.int32), {}, ValueError, "5 dimensions"),
        (np.zeros((1, 2, 2, 6, 6), np.float32), {}, TypeError, "integer labels"),
        (-np.ones((1, 2, 2, 6, 6), np.int32), {}, ValueError, "negative"),
        (np.zeros((1, 2, 2, 6, 6), np.int32), {"min_iou": 0}, ValueError, "min_iou"),
        (np.zeros((1, 2, 2, 6, 6), np.int32), {"missing": [Position(2, 0)]}, ValueError,
         "outside"),
    ],
    ids=["tile-shape", "ndim", "float", "negative", "min-iou", "missing-outside"],
)
def test_stitch_tiles_rejects_bad_input(tiles: np.ndarray, kwargs: dict, error: type,
                                        match: str) -> None:
    grid = TileGrid.for_frame((8, 8), num_x=2, num_y=2, overlap_perc=25)  # tiles 6x6
    with pytest.raises(error, match=match):
        stitch_tiles(tiles, grid, **kwargs)


# -- link_parts -------------------------------------------------------------------------


def test_link_parts_keeps_ids_across_parts_and_numbers_new_cells_apart() -> None:
    movie = np.pad(boxes_movie(np.random.default_rng(1), (30, 30), 9, 7, smallest=5),
                   ((0, 0), (0, 0), (0, 4)))
    rng = np.random.default_rng(2)
    parts = []
    for start, stop in ((0, 4), (4, 7), (7, 9)):
        part = movie[start:stop].astype(np.int64)
        new = np.concatenate([[0], rng.permutation(np.arange(1, movie.max() + 1)) + 1000])
        parts.append(new[part])
    # A cell that exists only in part 1 and one only in part 3, with the same local id.
    parts[0][:, 0:2, 31:33] = 7
    parts[2][:, 20:22, 31:33] = 7
    joined, report = link_parts(parts)
    truth = movie.copy()
    truth[0:4, 0:2, 31:33] = 10_001
    truth[7:9, 20:22, 31:33] = 10_002
    assert_same_up_to_relabel(truth, joined)
    assert report.starts == (0, 4, 7)
    assert report.links[0] == count_cells(movie[3])
    assert not report.parents
    assert not report.ambiguous
    assert joined.max() == count_cells(truth)


def dividing_parts() -> list[np.ndarray]:
    """Part 1: cell 4 grows; part 2 starts with it divided into 1 and 2; cell 3 moves on."""
    a = np.zeros((2, 12, 24), dtype=np.int32)
    a[:, 2:10, 2:10] = 4
    a[:, 2:6, 14:20] = 9
    b = np.zeros((2, 12, 24), dtype=np.int32)
    b[:, 2:6, 2:10] = 1
    b[:, 6:10, 2:10] = 2
    b[:, 2:6, 15:21] = 3
    return [a, b]


def test_division_across_a_part_boundary() -> None:
    movie, report = link_parts(dividing_parts())
    parent = int(movie[1, 4, 4])
    d1, d2, other = int(movie[2, 3, 4]), int(movie[2, 8, 4]), int(movie[2, 3, 16])
    assert report.parents == {d1: parent, d2: parent}
    assert report.division_frames == {parent: 2}
    assert other == movie[1, 3, 16]  # the other cell is linked, not divided
    assert report.links == (1,)
    lineage = lineage_from_labels(movie, report.parents)
    assert lineage[parent]["daughters"] == sorted([d1, d2])
    assert lineage[parent]["frame_div"] == 2
    assert lineage[parent]["capped"]
    assert lineage[d1]["parent"] == parent
    assert lineage[d1]["frames"] == [2, 3]


def test_merged_cells_at_a_boundary_are_ambiguous_and_not_linked() -> None:
    a = np.zeros((1, 4, 20), dtype=np.int32)
    a[0, :, 0:10], a[0, :, 10:20] = 1, 2
    b = np.zeros((1, 4, 20), dtype=np.int32)
    b[0, :, 1:19] = 1
    movie, report = link_parts([a, b])
    assert report.links == (0,)
    assert len(report.ambiguous) == 1
    assert report.ambiguous[0].frame == 1
    assert report.ambiguous[0].before == (1, 2)
    assert report.ambiguous[0].after == (1,)
    assert movie[1, 0, 5] not in (movie[0, 0, 5], movie[0, 0, 15])  # a new cell
    assert not report.parents


@pytest.mark.parametrize(
    ("parts", "kwargs", "error", "match"),
    [
        ([], {}, ValueError, "at least one part"),
        ([np.zeros((2, 3), np.int32)], {}, ValueError, "3 dimensions"),
        ([np.zeros((1, 3, 3), np.int32), np.zeros((1, 3, 4), np.int32)], {}, ValueError,
         "one movie"),
        ([np.zeros((0, 3, 3), np.int32)], {}, ValueError, "no frames"),
        ([np.zeros((1, 3, 3), np.float64)], {}, TypeError, "integer"),
        ([np.zeros((1, 3, 3), np.int32)], {"min_iou": 1.5}, ValueError, "min_iou"),
        ([np.zeros((1, 3, 3), np.int32)], {"min_inside": 0}, ValueError, "min_inside"),
    ],
    ids=["empty", "2d", "shapes", "no-frames", "float", "min-iou", "min-inside"],
)
def test_link_parts_rejects_bad_input(parts: list, kwargs: dict, error: type,
                                      match: str) -> None:
    with pytest.raises(error, match=match):
        link_parts(parts, **kwargs)


# -- lineage_from_labels ----------------------------------------------------------------


def test_lineage_finds_division_inside_a_part_and_keeps_gaps() -> None:
    movie = np.zeros((5, 10, 20), dtype=np.int32)
    movie[0:2, 1:9, 1:9] = 1
    movie[2:5, 1:5, 1:9] = 2
    movie[2:5, 5:9, 2:9] = 3
    movie[[0, 1, 3, 4], 2:6, 12:16] = 4  # missing in frame 2 (a gap, same id)
    movie[2:5, 7:9, 12:14] = 5  # appears next to nothing that ended: no parent
    lineage = lineage_from_labels(movie)
    assert lineage[1] == {"label": 1, "frames": [0, 1], "daughters": [2, 3], "capped": True,
                          "frame_div": 2, "parent": None}
    assert lineage[2]["parent"] == lineage[3]["parent"] == 1
    assert lineage[4]["frames"] == [0, 1, 3, 4]
    assert lineage[4]["parent"] is None
    assert lineage[5]["parent"] is None
    assert not lineage[5]["daughters"]


def test_lineage_a_cell_that_comes_back_after_a_gap_did_not_divide() -> None:
    movie = np.zeros((4, 10, 10), dtype=np.int32)
    movie[[0, 2, 3], 1:9, 1:9] = 1  # gone in frame 1 only ...
    movie[1, 1:5, 1:9] = 2  # ... while two new cells lie where it was
    movie[1, 5:9, 1:9] = 3
    lineage = lineage_from_labels(movie)
    assert lineage[1]["frames"] == [0, 2, 3]
    assert all(not e["daughters"] and e["parent"] is None for e in lineage.values())
    movie[2:] = np.where(movie[2:] == 1, 4, 0)  # it does not come back: a division
    assert lineage_from_labels(movie)[1]["daughters"] == [2, 3]


@pytest.mark.parametrize(
    "second",
    [
        {"rows": slice(1, 9), "cols": slice(1, 9)},  # one successor with a new id
        {"rows": slice(1, 3), "cols": slice(12, 14)},  # appears elsewhere
    ],
    ids=["id-switch", "elsewhere"],
)
def test_lineage_needs_two_cells_inside_for_a_division(second: dict) -> None:
    movie = np.zeros((2, 10, 20), dtype=np.int32)
    movie[0, 1:9, 1:9] = 1
    movie[1, second["rows"], second["cols"]] = 2
    movie[1, 1:3, 16:18] = 3
    lineage = lineage_from_labels(movie)
    assert all(not e["daughters"] and e["parent"] is None for e in lineage.values())


@pytest.mark.parametrize(
    ("parents", "match"),
    [({9: 1}, "label 9 is not in the movie"), ({3: 1}, "must start in the frame after")],
    ids=["unknown-label", "not-after-parent"],
)
def test_lineage_rejects_inconsistent_parents(parents: dict, match: str) -> None:
    movie = np.zeros((3, 4, 4), dtype=np.int32)
    movie[0:2, 0:2, 0:2] = 1
    movie[1:3, 2:4, 2:4] = 3
    with pytest.raises(LineageError, match=match):
        lineage_from_labels(movie, parents)


@pytest.mark.parametrize(
    ("movie", "kwargs", "error", "match"),
    [
        (np.zeros((3, 4), np.int32), {}, ValueError, "3 dimensions"),
        (np.zeros((1, 3, 4), np.float32), {}, TypeError, "integer"),
        (np.zeros((1, 3, 4), np.int32), {"min_share": 2.0}, ValueError, "min_share"),
    ],
    ids=["2d", "float", "min-share"],
)
def test_lineage_rejects_bad_input(movie: np.ndarray, kwargs: dict, error: type,
                                   match: str) -> None:
    with pytest.raises(error, match=match):
        lineage_from_labels(movie, **kwargs)


# -- the working folder -----------------------------------------------------------------


def write_movies_folder(tmp_path: Path, movie: np.ndarray, grid: TileGrid, length: int,
                        raw: np.ndarray | None) -> WorkingFolder:
    """Logs and movies/part{N}/… as the movies stage writes them (tile ids permuted)."""
    wf = WorkingFolder(tmp_path, "exp")
    frames = movie.shape[0]
    montages = num_montages(frames, length)
    write_log(ChopperLog.from_grid(grid, identifier="exp", num_images=frames), wf.chopper_log)
    write_log(MontageLog(identifier="exp", montage_len=length, num_x_segments=grid.num_x,
                         num_y_segments=grid.num_y, row_length=3, x_buffer=0, y_buffer=0,
                         montages_in_pos=montages), wf.montage_log)
    rng = np.random.default_rng(0)
    for m in range(montages):
        part = movie[m * length:(m + 1) * length]
        tiles = cut_and_permute(part, grid, rng) % 65_000
        for pos in grid.positions:
            for f in range(part.shape[0]):
                write_image(wf.annotated_frame(part_of_montage(m), pos, f),
                            tiles[f, pos.y, pos.x].astype(np.uint16))
    if raw is not None:
        for t, frame in enumerate(raw):
            write_image(wf.raw / f"img_{t}.tif", frame)
    return wf


def test_stitch_movies_writes_stitched_frames_raw_and_lineage(tmp_path: Path) -> None:
    movie = boxes_movie(np.random.default_rng(3), (40, 36), 7, 8, smallest=5)
    raw = (np.arange(7 * 40 * 36) % 4000).reshape(7, 40, 36).astype(np.uint16)
    grid = TileGrid.for_frame((40, 36), num_x=2, num_y=3, overlap_perc=20)
    wf = write_movies_folder(tmp_path, movie, grid, 3, raw)
    calls: list[int] = []
    result = stitch_movies(wf, progress=calls.append)
    assert calls == [1, 1, 1]
    assert result.frames == 7
    assert result.raw_frames == 7
    assert not result.missing
    assert not result.conflicts
    raw_back, labels, lineage = read_stitched(wf)
    assert raw_back is not None
    np.testing.assert_array_equal(raw_back, raw)
    assert_same_up_to_relabel(movie, labels)
    assert lineage == result.lineage == read_lineage(wf.stitched_lineage)
    assert result.cells == count_cells(movie)
    assert result.divisions == 0
    assert read_image(wf.stitched_frame("annotated", 0)).dtype == np.uint16
    assert json.loads(wf.stitched_lineage.read_text())  # keys are strings in the file


def test_stitch_movies_reports_a_missing_tile(tmp_path: Path) -> None:
    movie = boxes_movie(np.random.default_rng(4), (30, 30), 4, 7, smallest=5)
    grid = TileGrid.for_frame((30, 30), num_x=2, num_y=2, overlap_perc=20)
    wf = write_movies_folder(tmp_path, movie, grid, 2, None)
    first, second = part_of_montage(0), part_of_montage(1)
    shutil.rmtree(wf.annotated_dir(second, Position(1, 1)))
    wf.annotated_frame(first, Position(0, 1), 1).unlink()
    write_image(wf.annotated_frame(second, Position(0, 0), 0), np.zeros((3, 3), np.uint16))
    result = stitch_movies(wf)
    assert [(part, pos) for part, pos, _ in result.missing] == [
        (first, Position(0, 1)), (second, Position(0, 0)), (second, Position(1, 1))]
    assert "frame 1 of 2 is missing" in result.missing[0][2]
    assert "rerun the movies stage" in result.missing[1][2]
    assert "folder missing" in result.missing[2][2]
    assert result.parts[1].missing == (Position(0, 0), Position(1, 1))
    assert result.raw_frames == 0
    _, labels, _ = read_stitched(wf)
    (fy, fx), _ = grid.core_window(Position(1, 1))
    assert not labels[2:, fy, fx].any()
    assert labels[:2, fy, fx].any() or not movie[:2, fy, fx].any()


def test_stitch_movies_streams_part_by_part(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import cellcrowd.stitch as stitch
    from cellcrowd.stitch import LineageBuilder, PartLinker

    movie = boxes_movie(np.random.default_rng(5), (30, 30), 8, 7, smallest=5)
    grid = TileGrid.for_frame((30, 30), num_x=2, num_y=2, overlap_perc=20)
    wf = write_movies_folder(tmp_path, movie, grid, 3, None)
    parts = []  # the whole-movie way: every part stitched whole, then all linked at once
    for m, frames in enumerate((3, 3, 2)):
        tiles = np.zeros((frames, grid.num_y, grid.num_x, *grid.tile_shape), np.int32)
        for pos in grid.positions:
            for f in range(frames):
                tiles[f, pos.y, pos.x] = read_image(wf.annotated_frame(part_of_montage(m),
                                                                       pos, f))
        parts.append(stitch_tiles(tiles, grid)[0])
    labels, link = stitch.link_parts(parts)
    lineage = stitch.lineage_from_labels(labels, link.parents)

    def whole_movie(*args: object, **kwargs: object) -> None:
        raise AssertionError("the whole movie was linked at once")

    written_before: list[int] = []
    held: list[int] = []
    link_add, lineage_add = PartLinker.add_numbered, LineageBuilder.add

    class SerialSpy:
        """Runs each part only when asked for its result, counting frames on disk first."""

        def map(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[R]:
            folder = wf.stitched_frame("annotated", 0).parent
            for task in tasks:
                written_before.append(len(list(folder.glob("*.png"))) if folder.is_dir()
                                      else 0)
                yield fn(task)

        def close(self) -> None:
            pass

    def spy_link(self: PartLinker, first: np.ndarray, cells: int) -> np.ndarray:
        held.append(1 if first.ndim == 2 else first.shape[0])
        return link_add(self, first, cells)

    def spy_lineage(self: LineageBuilder, frames: np.ndarray, parents: dict[int, int]) -> None:
        held.append(frames.shape[0])
        lineage_add(self, frames, parents)

    monkeypatch.setattr(stitch, "link_parts", whole_movie)
    monkeypatch.setattr(stitch, "lineage_from_labels", whole_movie)
    monkeypatch.setattr(PartLinker, "add", whole_movie)
    monkeypatch.setattr(PartLinker, "add_numbered", spy_link)
    monkeypatch.setattr(LineageBuilder, "add", spy_lineage)
    result = stitch_movies(wf, executor=SerialSpy())
    # Serially, part N is read only after parts 1..N-1 are linked and on disk.
    assert written_before == [0, 3, 6]
    assert len(held) == 3 + 8  # 3 parts linked, 8 frames fed to the lineage
    assert max(held) == 1  # one frame at a time, never a part
    assert result.lineage == lineage
    np.testing.assert_array_equal(read_stitched(wf)[1], labels)
    assert not list(wf.base.glob(".stitch-*"))  # the run's part files are gone


def test_stitch_movies_refuses_ids_beyond_16_bits(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    movie = boxes_movie(np.random.default_rng(4), (20, 20), 2, 7)
    grid = TileGrid.for_frame((20, 20), num_x=1, num_y=1, overlap_perc=0)
    wf = write_movies_folder(tmp_path, movie, grid, 2, None)
    monkeypatch.setattr("cellcrowd.stitch.folder.MAX_CELLS", 2)
    with pytest.raises(InputError, match="more than a 16-bit label frame holds"):
        stitch_movies(wf)


def test_read_stitched_and_read_lineage_name_what_is_missing(tmp_path: Path) -> None:
    wf = WorkingFolder(tmp_path, "exp")
    with pytest.raises(InputError, match="folder not found"):
        read_stitched(wf)
    wf.stitched_frame("annotated", 0).parent.mkdir(parents=True)
    with pytest.raises(InputError, match="no stitched frames"):
        read_stitched(wf)
    write_image(wf.stitched_frame("annotated", 0), np.zeros((2, 2), np.uint16))
    write_image(wf.stitched_frame("raw", 0), np.zeros((2, 2), np.uint16))
    write_image(wf.stitched_frame("raw", 1), np.zeros((2, 2), np.uint16))
    with pytest.raises(InputError, match="2 raw frames but 1 label frames"):
        read_stitched(wf)
    with pytest.raises(InputError, match="lineage not found"):
        read_lineage(wf.stitched_lineage)
    wf.stitched_lineage.write_text("[1, 2]")
    with pytest.raises(InputError, match="expected a JSON object"):
        read_lineage(wf.stitched_lineage)
    wf.stitched_lineage.write_text("{")
    with pytest.raises(InputError, match="not valid JSON"):
        read_lineage(wf.stitched_lineage)
    wf.stitched_lineage.write_text('{"a": {}}')
    with pytest.raises(InputError, match="must be cell labels"):
        read_lineage(wf.stitched_lineage)


class _FileStore:
    """A PartStore keeping parts in files (the stitch stage keys them by its unit records)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.written: list[int] = []
        self.loaded: list[int] = []

    def path(self, part: int) -> Path:
        return self.folder / f"part{part}.npz"

    def fresh(self, part: int, inputs: Sequence[Path]) -> bool:
        if self.path(part).is_file():
            self.loaded.append(part)
            return True
        return False

    def saved(self, part: int, inputs: Sequence[Path]) -> None:
        assert inputs
        assert self.path(part).is_file()
        self.written.append(part)


def test_stitch_movies_reuses_kept_parts_into_the_same_bytes(tmp_path: Path) -> None:
    movie = boxes_movie(np.random.default_rng(4), (30, 30), 6, 7, smallest=5)
    grid = TileGrid.for_frame((30, 30), num_x=2, num_y=2, overlap_perc=20)
    wf = write_movies_folder(tmp_path / "work", movie, grid, 2, None)
    shutil.rmtree(wf.annotated_dir(part_of_montage(1), Position(1, 1)))
    store = _FileStore(tmp_path / "kept")
    store.folder.mkdir()
    first = stitch_movies(wf, store=store)
    written = file_hashes(wf.stitched, skip_folders=())
    (store.folder / f"part{part_of_montage(2)}.npz").unlink()  # that part is stitched again
    calls: list[int] = []
    second = stitch_movies(wf, store=store, progress=calls.append)
    assert store.written == [*(part_of_montage(m) for m in range(3)), part_of_montage(2)]
    assert store.loaded == [part_of_montage(0), part_of_montage(1)]
    assert calls == [1, 1, 1]
    assert file_hashes(wf.stitched, skip_folders=()) == written
    assert (second.parts, second.missing, second.lineage) == (
        first.parts, first.missing, first.lineage)
    assert second.parts[1].missing == (Position(1, 1),)
    assert not list(wf.base.glob(".stitch-*"))  # the store held the parts, not a run folder
    (store.folder / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a stitched part"):
        load_part(store.folder / "bad.npz")
    kept = store.path(part_of_montage(0))
    with np.load(kept) as data:
        report, labels = data["report"], data["labels"]
    write_npz(kept, {"labels": labels + 1, "report": report})  # an id beyond its cells
    with pytest.raises(InputError, match=r"frame 0 is \(30, 30\) with ids up to \d+, not"):
        stitch_movies(wf, store=store)
    write_npz(kept, {"labels": labels[:, :20], "report": report})  # another frame size
    with pytest.raises(InputError, match=r"frame 0 is \(20, 30\)"):
        stitch_movies(wf, store=store)
    kept.write_bytes(kept.read_bytes()[:-200])  # cut short: no longer a whole zip
    with pytest.raises(InputError, match="not a stitched part"):
        stitch_movies(wf, store=store)


def _random_tiles(grid: TileGrid, frames: int, seed: int) -> np.ndarray:
    """Tiles cut from a random movie, each cell renumbered apart in some tiles."""
    rng = np.random.default_rng(seed)
    shape = (frames, *grid.frame_shape)
    movie = expand_labels(np.where(rng.random(shape) < 0.01, rng.integers(1, 500, shape), 0), 3)
    tiles = np.stack([grid.cut(frame) for frame in movie])
    tiles[tiles > 0] += rng.integers(0, 2, tiles.shape)[tiles > 0] * 1000  # unrelated ids
    return tiles


def test_match_tiles_reads_each_tile_frame_twice_and_holds_one_frame_per_tile() -> None:
    """The stitch stage's workers read a part a frame at a time: twice per tile frame
    (matching, then the frames), never more than one frame of each tile alive, and the
    result is :func:`stitch_tiles`' on all of them."""
    grid = TileGrid.for_frame((48, 60), num_x=3, num_y=2, overlap_perc=20)
    tiles = _random_tiles(grid, 4, 3)
    missing = Position(2, 1)
    reads: Counter[tuple[Position, int]] = Counter()
    alive: list[weakref.ref[np.ndarray]] = []
    most_alive = 0

    def read(pos: Position, t: int) -> np.ndarray:
        nonlocal most_alive
        gc.collect()
        alive[:] = [ref for ref in alive if ref() is not None]
        frame = tiles[t, pos.y, pos.x].copy()
        alive.append(weakref.ref(frame))
        most_alive = max(most_alive, len(alive))
        reads[pos, t] += 1
        return frame

    present = [pos for pos in grid.positions if pos != missing]
    stitched = match_tiles(read, grid, 4, tiles=present)
    labels = np.stack(list(stitched.frames()))
    expected, expected_report = stitch_tiles(tiles, grid, missing=[missing])
    np.testing.assert_array_equal(labels, expected)
    assert stitched.report == expected_report
    assert stitched.report.missing == (missing,)
    assert reads == Counter({(pos, t): 2 for pos in present for t in range(4)})
    assert most_alive <= len(present)


@pytest.mark.parametrize("fail_at", [0, 2, 3])
def test_a_tile_unreadable_while_matching_is_left_out_with_its_reason(fail_at: int) -> None:
    """A tile failing at any frame is stitched as if missing: what was summed from its
    earlier frames is dropped."""
    grid = TileGrid.for_frame((48, 60), num_x=3, num_y=2, overlap_perc=20)
    tiles = _random_tiles(grid, 4, 5)
    bad = Position(1, 0)

    def read(pos: Position, t: int) -> np.ndarray:
        if pos == bad and t == fail_at:
            raise InputError(f"frame {t} is broken", path=Path("tile"))
        return tiles[t, pos.y, pos.x]

    stitched = match_tiles(read, grid, 4, unreadable=(InputError,))
    expected, expected_report = stitch_tiles(tiles, grid, missing=[bad])
    np.testing.assert_array_equal(np.stack(list(stitched.frames())), expected)
    assert stitched.report == expected_report
    assert [(pos, "broken" in why) for pos, why in stitched.left_out] == [(bad, True)]
    with pytest.raises(ValueError, match="broken"):  # not named unreadable: raised
        match_tiles(read, grid, 4)


def test_huge_ids_stitch_as_small_ones() -> None:
    """Ids far beyond a lookup table's reach (searched, not tabled) stitch alike."""
    grid = TileGrid.for_frame((48, 60), num_x=3, num_y=2, overlap_perc=20)
    tiles = _random_tiles(grid, 3, 11)
    huge = np.where(tiles > 0, tiles.astype(np.int64) + 2**40, 0)
    labels, report = stitch_tiles(huge, grid)
    expected, expected_report = stitch_tiles(tiles, grid)
    np.testing.assert_array_equal(labels, expected)
    assert (report.cells, report.matches, report.unmatched) == (
        expected_report.cells, expected_report.matches, expected_report.unmatched)


@pytest.mark.parametrize("offset", [0, 2**40], ids=["table", "search"])
@pytest.mark.parametrize("new_label", ["beyond", "between"])
def test_a_tile_frame_that_changes_between_the_passes_is_an_error(
        offset: int, new_label: str) -> None:
    grid = TileGrid.for_frame((48, 60), num_x=3, num_y=2, overlap_perc=20)
    tiles = _random_tiles(grid, 2, 7).astype(np.int64)
    tiles[tiles > 0] += offset
    stitched = match_tiles(lambda pos, t: tiles[t, pos.y, pos.x], grid, 2)
    held = np.unique(tiles[:, 0, 0])
    absent = held[-1] + 1 if new_label == "beyond" else next(
        v for v in range(int(held[1]), int(held[-1])) if v not in held)
    tiles[1, 0, 0, 10:20, 10:20] = absent  # a label the tile did not hold
    with pytest.raises(TileChangedError, match="frame 1 of tile x=0, y=0"):
        list(stitched.frames())


def test_read_lineage_shares_each_frame_number_between_cells(tmp_path: Path) -> None:
    """Frame numbers above 256 (new objects for every parsed int in Python) are read
    once per value: a long movie's lineage is not 28 bytes more per cell and frame."""
    rng = np.random.default_rng(5)
    lineage = {str(label): {"label": label, "frames": sorted(rng.choice(900, 40, replace=False)
                                                              .tolist()),
                            "daughters": [], "capped": False, "parent": None,
                            "frame_div": None}
               for label in range(1, 30)}
    path = tmp_path / "lineage.json"
    path.write_text(json.dumps(lineage, indent=1))
    read = read_lineage(path)
    assert read == {int(k): v for k, v in lineage.items()}
    by_value: dict[int, int] = {}
    for entry in read.values():
        for t in entry["frames"]:
            assert by_value.setdefault(t, id(t)) == id(t)
    assert max(by_value) > 256
    assert len(by_value) < sum(len(e["frames"]) for e in read.values())


def test_frame_presence_gives_each_labels_frames_as_a_list_per_label_would() -> None:
    from cellcrowd.stitch import FramePresence

    rng = np.random.default_rng(11)
    movie = rng.integers(0, 9, size=(60, 3, 4))  # labels come and go: gaps of every length
    movie[rng.random(60) < 0.2] = 0  # and empty frames
    lists: dict[int, list[int]] = {}
    present = FramePresence()
    for t, frame in enumerate(movie):
        for label in sorted({int(v) for v in frame.ravel()} - {0}):
            lists.setdefault(label, []).append(t)
        present.add(t, frame)
    assert dict(present.items()) == lists
    assert list(present) == list(lists)  # first seen first
    assert len(present) == len(lists)
    for label, frames in lists.items():
        runs = present.runs(label)
        assert [t for a, b in runs for t in range(a, b + 1)] == frames
        assert all(b + 1 < a2 for (_, b), (a2, _) in itertools.pairwise(runs))
    assert 0 not in present
    assert 99 not in present
    with pytest.raises(KeyError):
        present[99]
    with pytest.raises(ValueError, match="frame 59 comes after frame 59"):
        present.add(59, movie[0])
