from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cellcrowd.errors import GeometryError
from cellcrowd.geometry import (
    MontageLayout,
    Position,
    TileGrid,
    montage_frame_range,
    num_montages,
)


@st.composite
def grids(draw: st.DrawFn) -> TileGrid:
    num_y = draw(st.integers(1, 6))
    num_x = draw(st.integers(1, 6))
    height = draw(st.integers(num_y, 90))
    width = draw(st.integers(num_x, 90))
    overlap = draw(st.floats(0, 60, allow_nan=False))
    try:
        return TileGrid.for_frame((height, width), num_x=num_x, num_y=num_y, overlap_perc=overlap)
    except GeometryError:
        # Rounding the core up leaves the last tile empty (e.g. 9 rows in 4 tiles).
        return TileGrid.for_frame((height, width), num_x=1, num_y=1, overlap_perc=overlap)


@settings(max_examples=150, deadline=None)
@given(grid=grids(), seed=st.integers(0, 2**16))
def test_cut_then_stitch_is_exact(grid: TileGrid, seed: int) -> None:
    frame = np.random.default_rng(seed).integers(1, 60000, grid.frame_shape, dtype=np.uint16)
    tiles = grid.cut(frame)
    assert tiles.shape == (grid.num_y, grid.num_x, *grid.tile_shape)
    assert grid.lost_pixels == (0, 0)
    np.testing.assert_array_equal(grid.stitch(tiles), frame)


@settings(max_examples=150, deadline=None)
@given(grid=grids(), seed=st.integers(0, 2**16))
def test_every_tile_holds_the_frame_in_its_core_and_overlaps(grid: TileGrid, seed: int) -> None:
    frame = np.random.default_rng(seed).integers(1, 255, grid.frame_shape, dtype=np.uint8)
    tiles = grid.cut(frame)
    owned = np.zeros(grid.frame_shape, dtype=int)
    for pos in grid.positions:
        (fy, fx), (ty, tx) = grid.core_window(pos)
        np.testing.assert_array_equal(tiles[pos.y, pos.x][ty, tx], frame[fy, fx])
        (wy, wx), (sy, sx) = grid.frame_window(pos)
        np.testing.assert_array_equal(tiles[pos.y, pos.x][sy, sx], frame[wy, wx])
        np.testing.assert_array_equal(grid.tile(frame, pos), tiles[pos.y, pos.x])
        # Outside the frame window the tile is zero padding.
        pad = np.ones(grid.tile_shape, bool)
        pad[sy, sx] = False
        assert not tiles[pos.y, pos.x][pad].any()
        owned[fy, fx] += 1
    assert (owned == 1).all(), "core windows must partition the frame"


def test_original_example_1024_4x4_10_percent() -> None:
    grid = TileGrid.for_frame((1024, 1024), num_x=4, num_y=4, overlap_perc=10)
    assert grid.tile_shape == (306, 306)
    assert (grid.overlap_y, grid.overlap_x) == (25, 25)
    legacy = TileGrid.legacy((1024, 1024), num_x=4, num_y=4, overlap_perc=10)
    assert legacy == grid


def test_channels_are_carried() -> None:
    grid = TileGrid.for_frame((20, 30), num_x=3, num_y=2, overlap_perc=20)
    frame = np.random.default_rng(1).random((20, 30, 2))
    tiles = grid.cut(frame)
    assert tiles.shape == (2, 3, *grid.tile_shape, 2)
    np.testing.assert_array_equal(grid.stitch(tiles), frame)


def test_legacy_grid_reports_lost_rows() -> None:
    # 103 rows in 4 tiles: core 25, overlap 0 -> rows 100..102 are in no tile (the original's bug).
    grid = TileGrid.legacy((103, 80), num_x=2, num_y=4, overlap_perc=0)
    assert grid.lost_pixels == (3, 0)
    frame = np.arange(103 * 80).reshape(103, 80) + 1
    out = grid.stitch(grid.cut(frame))
    np.testing.assert_array_equal(out[:100], frame[:100])
    assert not out[100:].any()
    # The same frame with cellcrowd's own grid loses nothing.
    ours = TileGrid.for_frame((103, 80), num_x=2, num_y=4, overlap_perc=0)
    assert ours.lost_pixels == (0, 0)
    np.testing.assert_array_equal(ours.stitch(ours.cut(frame)), frame)


def test_more_than_99_tiles() -> None:
    grid = TileGrid.for_frame((10, 404), num_x=101, num_y=1, overlap_perc=25)
    assert len(grid) == 101
    frame = np.arange(10 * 404).reshape(10, 404)
    np.testing.assert_array_equal(grid.stitch(grid.cut(frame)), frame)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_x": 0, "num_y": 1, "overlap_perc": 0}, "num_x must be a whole number >= 1"),
        ({"num_x": 1, "num_y": 1, "overlap_perc": 100}, "overlap_perc must be"),
        ({"num_x": 1, "num_y": 1, "overlap_perc": -1}, "overlap_perc must be"),
        ({"num_x": 1, "num_y": 20, "overlap_perc": 0}, "cannot cut a 10x10 frame"),
        ({"num_x": 1, "num_y": 4, "overlap_perc": 0}, "leave the last tile empty"),
    ],
    ids=["zero-tiles", "overlap-100", "overlap-negative", "more-tiles-than-pixels", "empty-tile"],
)
def test_bad_grid_parameters(kwargs: dict[str, float], match: str) -> None:
    height = 9 if kwargs["num_y"] == 4 else 10
    with pytest.raises(GeometryError, match=match):
        TileGrid.for_frame((height, 10), **kwargs)  # type: ignore[arg-type]


def test_bad_frame_shape_is_refused() -> None:
    grid = TileGrid.for_frame((20, 20), num_x=2, num_y=2, overlap_perc=10)
    with pytest.raises(GeometryError, match=r"shape \(20, 21\).*20x20 frames"):
        grid.cut(np.zeros((20, 21)))
    with pytest.raises(GeometryError, match="expected"):
        grid.stitch(np.zeros((2, 2, 3, 3)))
    with pytest.raises(GeometryError, match="outside the 2x2"):
        grid.padded_slices(Position(2, 0))
    with pytest.raises(GeometryError, match="frame_shape must be"):
        TileGrid.for_frame((20,), num_x=1, num_y=1, overlap_perc=0)  # type: ignore[arg-type]


@st.composite
def layouts(draw: st.DrawFn) -> MontageLayout:
    return MontageLayout(
        (draw(st.integers(1, 12)), draw(st.integers(1, 12))),
        length=draw(st.integers(1, 13)),
        row_length=draw(st.integers(1, 7)),
        x_buffer=draw(st.integers(0, 4)),
        y_buffer=draw(st.integers(0, 4)),
    )


@settings(max_examples=200, deadline=None)
@given(layout=layouts(), seed=st.integers(0, 2**16))
def test_montage_make_then_read_is_exact(layout: MontageLayout, seed: int) -> None:
    frames = np.random.default_rng(seed).integers(
        1, 65535, (layout.length, *layout.frame_shape), dtype=np.uint16
    )
    montage = layout.make(frames)
    assert montage.shape == layout.montage_shape
    np.testing.assert_array_equal(layout.read(montage), frames)
    # Buffers and blank cells are zero: exactly length*h*w non-zero pixels.
    assert np.count_nonzero(montage) == frames.size
    recovered = MontageLayout.from_montage_shape(
        montage.shape,
        length=layout.length,
        row_length=layout.row_length,
        x_buffer=layout.x_buffer,
        y_buffer=layout.y_buffer,
    )
    assert recovered == layout


def test_formats_montage_formula() -> None:
    layout = MontageLayout((306, 306), length=10, row_length=4, x_buffer=5, y_buffer=3)
    assert layout.rows == 3
    assert layout.montage_shape == (3 * 306 + 4 * 3, 4 * 306 + 5 * 5)
    ys, xs = layout.frame_slices(6)  # row 1, column 2
    assert (ys.start, ys.stop) == (3 + 1 * (3 + 306), 2 * (3 + 306))
    assert (xs.start, xs.stop) == (5 + 2 * (5 + 306), 3 * (5 + 306))


def test_partial_montage_leaves_blank_cells() -> None:
    layout = MontageLayout((2, 2), length=5, row_length=2)
    frames = np.ones((3, 2, 2), np.uint8)
    out = layout.read(layout.make(frames))
    assert out[:3].all()
    assert not out[3:].any()


def test_montage_errors() -> None:
    layout = MontageLayout((4, 4), length=3, row_length=2)
    with pytest.raises(GeometryError, match="expected 8x8"):
        layout.read(np.zeros((8, 9)), source="x.png")
    with pytest.raises(GeometryError, match="a montage holds 1 to 3 frames"):
        layout.make(np.zeros((4, 4, 4)))
    with pytest.raises(GeometryError, match=r"expected \(n, 4, 4"):
        layout.make(np.zeros((2, 4, 5)))
    with pytest.raises(GeometryError, match="frame 3 is outside"):
        layout.frame_slices(3)
    with pytest.raises(GeometryError, match="does not fit 3 frames"):
        MontageLayout.from_montage_shape((9, 8), length=3, row_length=2)
    with pytest.raises(GeometryError, match="row_length must be"):
        MontageLayout((4, 4), length=3, row_length=0)
    with pytest.raises(GeometryError, match="x_buffer must be"):
        MontageLayout((4, 4), length=3, row_length=1, x_buffer=-1)
    with pytest.raises(GeometryError, match="frame_shape must be"):
        MontageLayout((4,), length=3, row_length=1)  # type: ignore[arg-type]


def test_montage_frame_ranges() -> None:
    assert num_montages(1000, 10) == 100
    assert num_montages(1001, 10) == 101
    assert list(montage_frame_range(100, 10, num_frames=1001)) == [1000]
    with pytest.raises(GeometryError, match="past the end"):
        montage_frame_range(3, 10, num_frames=30)
    with pytest.raises(GeometryError, match="montage number must be"):
        montage_frame_range(-1, 10)
