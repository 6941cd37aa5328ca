"""Tests of cellcrowd.labels: decoding annotations, cleaning per cell, relabelling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from scipy import ndimage

from cellcrowd.errors import AnnotationError, GeometryError, InputError
from cellcrowd.executor import LocalExecutor
from cellcrowd.files import read_image, sha256_file, write_image
from cellcrowd.geometry import MontageLayout, TileGrid
from cellcrowd.labels import (
    CleanStats,
    CleanTask,
    clean_annotation_file,
    clean_annotations,
    clean_labels,
    clean_montage,
    clean_task,
    decode_annotation,
    relabel_sequential,
)
from cellcrowd.logs import MontageLog
from cellcrowd.sim.paint import PaintReport, paint_annotation, paint_annotation_with_report
from cellcrowd.sim.synthetic import synthetic_movie
from cellcrowd.sim.testing import assert_same_up_to_relabel
from helpers import expected_after_cleaning

# -- helpers ---------------------------------------------------------------------------------


def square(frame: NDArray[np.int64], value: int, y: int, x: int, h: int, w: int) -> None:
    frame[y:y + h, x:x + w] = value


def montage_log(length: int = 5, row_length: int = 3, buffer: int = 0) -> MontageLog:
    return MontageLog(identifier="exp", montage_len=length, num_x_segments=1,
                      num_y_segments=1, row_length=row_length, x_buffer=buffer,
                      y_buffer=buffer, montages_in_pos=1)


def truth_montage(seed: int, buffer: int, tiles: bool = False,
                  shape: tuple[int, int] = (80, 80)) -> tuple[MontageLayout, NDArray[np.int32]]:
    """A ground-truth label montage of 5 frames (optionally of a tile cut from the movie)."""
    movie = synthetic_movie(frames=5, shape=shape, cells=8, divisions=1, seed=seed).labels
    if tiles:  # a tile cuts cells at its edges into slivers
        grid = TileGrid.for_frame(shape, num_x=2, num_y=2, overlap_perc=10)
        movie = np.stack([grid.cut(f)[seed % 2, (seed // 2) % 2] for f in movie])
    layout = MontageLayout(movie.shape[1:], length=5, row_length=3, x_buffer=buffer,
                           y_buffer=buffer)
    return layout, layout.make(movie).astype(np.int32)


# -- round trip: paint -> decode -> clean == the truth with each artifact's expected fate -----


def check_cleaning(truth: NDArray[np.int32], layout: MontageLayout, encoding: str, seed: int,
                   min_size: int, max_hole: int) -> PaintReport:
    """Paint across the thresholds, clean with them, compare with the expected labels."""
    image, report = paint_annotation_with_report(
        truth, encoding=encoding, layout=layout, seed=seed,  # type: ignore[arg-type]
        artifact_sizes="across", min_size=min_size, max_hole=max_hole,
    )
    out, stats = clean_montage(decode_annotation(image), layout, min_size=min_size,
                               max_hole=max_hole)
    expected = expected_after_cleaning(truth, report)
    assert out.dtype == np.uint16
    assert_same_up_to_relabel(expected, out)
    assert stats.specks_removed == report.removable
    assert stats.holes_filled == report.fillable
    assert stats.cells == np.unique(expected[expected > 0]).size
    return report


@pytest.mark.parametrize("tiles", [False, True], ids=["frames", "tiles"])
@pytest.mark.parametrize("buffer", [0, 2], ids=["buffer-0", "buffer-2"])
@pytest.mark.parametrize("encoding", ["red", "rgb"])
def test_painted_annotation_cleans_to_the_expected_labels(encoding: str, buffer: int,
                                                         tiles: bool) -> None:
    layout, truth = truth_montage(seed=3, buffer=buffer, tiles=tiles)
    report = check_cleaning(truth, layout, encoding, seed=1, min_size=6, max_hole=20)
    fates = {a.expected for a in report.artifacts}
    assert {"kept", "removed"} <= fates  # something to clean, something to keep


def test_artifacts_at_the_thresholds_get_the_cleaners_answer() -> None:
    """Sizes one below and exactly at ``min_size`` and ``max_hole``, with the defaults.

    A speck of exactly ``min_size`` px stays, one pixel less goes; a hole of exactly
    ``max_hole`` px stays open, one pixel less is filled; a small speck at the frame
    edge stays when it is its cell's largest part there, else it goes. A cleaner whose
    comparisons are off by one fails here.
    """
    layout, truth = truth_montage(seed=3, buffer=0, shape=(128, 128))
    report = check_cleaning(truth, layout, "red", seed=3, min_size=10, max_hole=64)
    seen = {(a.kind, a.size, a.expected) for a in report.artifacts}
    specks = {(size, fate) for kind, size, fate in seen if kind.endswith("speck")
              and kind != "edge_speck"}
    assert (10, "kept") in specks
    assert {(9, "removed"), (9, "filled")} & specks  # a removed inner speck's hole is filled
    assert {("hole", 64, "not filled"), ("hole", 63, "filled")} <= seen
    edge = {(size < 10, fate) for kind, size, fate in seen if kind == "edge_speck"}
    assert {(True, "kept"), (True, "removed")} <= edge


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), paint_seed=st.integers(0, 10_000),
       encoding=st.sampled_from(["red", "rgb"]), buffer=st.integers(0, 3),
       tiles=st.booleans(), min_size=st.integers(1, 12), max_hole=st.integers(1, 40))
def test_round_trip_property(seed: int, paint_seed: int, encoding: str, buffer: int,
                             tiles: bool, min_size: int, max_hole: int) -> None:
    layout, truth = truth_montage(seed, buffer, tiles)
    # The truth is clean already: cleaning it changes nothing.
    unchanged, stats = clean_montage(truth, layout)
    assert_same_up_to_relabel(truth, unchanged)
    assert (stats.specks_removed, stats.holes_filled) == (0, 0)
    # The default (small) artifacts are all removed or filled by the default cleaning.
    image = paint_annotation(truth, encoding=encoding, layout=layout,  # type: ignore[arg-type]
                             seed=paint_seed)
    out, _ = clean_montage(decode_annotation(image), layout)
    assert_same_up_to_relabel(truth, out)
    # Artifacts across any thresholds get exactly their expected fates.
    check_cleaning(truth, layout, encoding, paint_seed, min_size, max_hole)


# -- the faults of the original clean-up -----------------------------------------------------


def two_cells() -> NDArray[np.int64]:
    frame = np.zeros((30, 30), np.int64)
    square(frame, 1, 5, 5, 10, 10)
    square(frame, 2, 5, 16, 10, 10)
    return frame


def test_speck_touching_another_cell_is_removed() -> None:
    frame = two_cells()
    square(frame, 2, 15, 7, 2, 2)  # id 2 glued below cell 1, far from cell 2
    out = clean_labels(frame)
    np.testing.assert_array_equal(out, two_cells())


def test_speck_of_same_id_across_gap_is_removed_but_big_part_kept() -> None:
    frame = two_cells()
    square(frame, 1, 20, 20, 3, 3)  # 9 px of cell 1, apart from it
    square(frame, 2, 20, 2, 4, 4)  # 16 px of cell 2, apart from it: kept (>= min_size)
    out = clean_labels(frame)
    assert not (out[20:23, 20:23]).any()
    assert (out[20:24, 2:6] == 2).all()


def test_a_frame_in_any_memory_order_cleans_the_same() -> None:
    """Cleaning looks pixels up by their row-major index: a column-major or strided frame
    must get the answer its C-ordered copy gets (a speck dropped, a hole filled)."""
    frame = two_cells()
    square(frame, 1, 20, 20, 3, 3)  # a speck of cell 1
    frame[8, 8] = 0  # a one-pixel hole inside cell 1 (rows and columns 5-14)
    expected = clean_labels(frame)
    assert not expected[20:23, 20:23].any()
    assert expected[8, 8] == 1
    for variant in (np.asfortranarray(frame), np.ascontiguousarray(frame.T).T,
                    np.pad(frame, ((0, 0), (0, 1)))[:, :-1]):
        np.testing.assert_array_equal(clean_labels(variant), expected)


@pytest.mark.parametrize(("hole", "filled"), [(50, True), (63, True), (64, False), (80, False)],
                         ids=["50px", "63px", "64px", "80px"])
def test_holes_under_max_hole_are_filled_completely(hole: int, filled: bool) -> None:
    frame = np.zeros((40, 40), np.int64)
    square(frame, 4, 5, 5, 30, 30)
    rows, cols = np.unravel_index(np.arange(hole), (10, 10))
    frame[12 + rows, 12 + cols] = 0
    out = clean_labels(frame, max_hole=64)
    expected = frame.copy()
    if filled:
        expected[5:35, 5:35] = 4
    np.testing.assert_array_equal(out, expected)


def test_hole_between_two_cells_or_at_the_edge_stays() -> None:
    frame = np.zeros((20, 20), np.int64)
    square(frame, 1, 2, 2, 10, 5)
    square(frame, 2, 2, 8, 10, 5)
    square(frame, 1, 2, 7, 2, 1)  # the gap column is closed at the top by cell 1...
    square(frame, 2, 10, 7, 2, 1)  # ...and at the bottom by cell 2: bordered by two cells
    square(frame, 3, 14, 0, 6, 6)
    frame[16:18, 0:2] = 0  # a notch at the frame edge, surrounded by cell 3 otherwise
    np.testing.assert_array_equal(clean_labels(frame), frame)


def _fill_region_by_region(labels: NDArray[np.int64], max_hole: int) -> NDArray[np.int64]:
    """The hole rule written plainly, one background region at a time (the oracle)."""
    out = labels.copy()
    regions, count = ndimage.label(labels == 0)
    for region in range(1, count + 1):
        mask = regions == region
        on_edge = mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any()
        if mask.sum() >= max_hole or on_edge:
            continue
        cells = set(np.unique(labels[ndimage.binary_dilation(mask) & ~mask]).tolist())
        if len(cells) == 1:
            out[mask] = cells.pop()
    return out


@pytest.mark.parametrize("seed", range(12))
def test_holes_are_filled_as_the_rule_says_on_random_frames(seed: int) -> None:
    rng = np.random.default_rng(seed)
    frame = np.zeros((40, 52), np.int64)
    for _ in range(rng.integers(3, 12)):  # overlapping blocks of a few cells
        y, x = rng.integers(0, 36), rng.integers(0, 48)
        square(frame, int(rng.integers(1, 6)), y, x, *rng.integers(3, 20, 2))
    frame[rng.random(frame.shape) < rng.uniform(0.02, 0.2)] = 0  # holes of every size
    for _ in range(rng.integers(0, 4)):
        y, x = rng.integers(0, 36), rng.integers(0, 48)
        square(frame, 0, y, x, *rng.integers(1, 9, 2))
    for max_hole in (1, 2, 5, 17, 64):
        out = clean_labels(frame, min_size=0, max_hole=max_hole)
        np.testing.assert_array_equal(out, _fill_region_by_region(frame, max_hole))


def test_ids_above_255_survive() -> None:
    frame = np.zeros((100, 120), np.uint16)
    ids = np.arange(1, 301, dtype=np.uint16) * 7 + 1000  # 300 cells, ids up to 3100
    for k, cell in enumerate(ids):
        y, x = divmod(k, 20)
        square(frame, int(cell), 5 * y + 1, 6 * x + 1, 4, 5)  # type: ignore[arg-type]
    out = clean_labels(frame)
    np.testing.assert_array_equal(out, frame)
    assert out.dtype == np.int32
    relabelled = relabel_sequential(frame)
    assert np.unique(relabelled).size == 301
    assert_same_up_to_relabel(frame, relabelled)
    layout = MontageLayout(frame.shape, length=1, row_length=1)
    montage, stats = clean_montage(frame, layout)
    assert montage.dtype == np.uint16
    assert int(montage.max()) == stats.cells == 300
    assert_same_up_to_relabel(frame, montage)


def test_boundaries_are_not_shifted() -> None:
    rng = np.random.default_rng(0)
    frame = np.zeros((40, 40), np.int64)
    square(frame, 1, 0, 0, 40, 20)
    square(frame, 2, 0, 20, 40, 20)
    # A jagged boundary between two cells and jagged outer edges (each bump >= 1 px).
    bumps = rng.integers(-3, 4, 40)
    for row, bump in enumerate(bumps):
        frame[row, 20 + min(bump, 0):20] = 2
        frame[row, 20:20 + max(bump, 0)] = 1
    frame[10:30, 36:] = 0
    frame[12, 36] = 2  # one-pixel bump on the outline
    out = clean_labels(frame)
    np.testing.assert_array_equal(out, frame)


def test_input_is_not_modified() -> None:
    frame = two_cells()
    square(frame, 1, 20, 20, 2, 2)
    frame[8, 8] = 0
    before = frame.copy()
    clean_labels(frame)
    clean_montage(frame, MontageLayout((30, 30), 1, 1))
    relabel_sequential(frame)
    np.testing.assert_array_equal(frame, before)


@pytest.mark.parametrize(
    ("where", "kept"),
    [((0, 10, 2, 3), True), ((10, 27, 3, 3), True), ((10, 12, 2, 2), False)],
    ids=["top-edge", "right-edge", "interior"],
)
def test_small_sliver_at_the_frame_edge_is_kept(where: tuple[int, int, int, int],
                                                 kept: bool) -> None:
    frame = two_cells()
    frame[5:15, 5:26] = 0  # remove both cells: the sliver is cell 5's only part
    square(frame, 5, *where)
    out = clean_labels(frame)
    np.testing.assert_array_equal(out, frame if kept else np.zeros_like(frame))


def test_edge_sliver_of_a_cell_with_a_bigger_part_is_dropped() -> None:
    frame = two_cells()
    square(frame, 1, 0, 24, 2, 2)  # 4 px of cell 1 at the edge; cell 1's big part elsewhere
    np.testing.assert_array_equal(clean_labels(frame), two_cells())


@pytest.mark.parametrize(("size", "kept"), [(9, False), (10, True)], ids=["9px", "10px"])
def test_min_size_is_inclusive(size: int, kept: bool) -> None:
    frame = np.zeros((12, 12), np.int64)
    rows, cols = np.unravel_index(np.arange(size), (3, 4))
    frame[4 + rows, 4 + cols] = 6
    out = clean_labels(frame, min_size=10)
    assert out.any() == kept


def test_parts_touching_at_a_corner_are_one_part() -> None:
    frame = np.zeros((12, 12), np.int64)
    square(frame, 3, 2, 2, 2, 3)  # 6 px
    square(frame, 3, 4, 5, 2, 2)  # 4 px, touching the first only diagonally
    np.testing.assert_array_equal(clean_labels(frame), frame)  # 10 px together: kept


def test_montage_ids_stay_consistent_across_frames() -> None:
    layout = MontageLayout((20, 20), length=4, row_length=2)
    frames = np.zeros((4, 20, 20), np.int64)
    for k in range(4):
        square(frames[k], 40, 2 + k, 2, 6, 6)  # the same cell drifting
        square(frames[k], 9, 12, 12 - k, 5, 5)  # another one
    square(frames[3], 77, 12, 2, 4, 4)  # a newcomer in the last frame
    square(frames[1], 9, 3, 14, 2, 2)  # a speck of cell 9 in frame 1
    montage, stats = clean_montage(layout.make(frames), layout)
    out = layout.read(montage)
    assert stats.specks_removed == 1
    # Sorted order of the old ids: 9 -> 1, 40 -> 2, 77 -> 3, the same in every frame.
    expected = np.zeros_like(frames)
    for old, new in ((9, 1), (40, 2), (77, 3)):
        expected[frames == old] = new
    expected[1, 3:5, 14:16] = 0
    np.testing.assert_array_equal(out, expected)


def test_frames_are_cleaned_separately() -> None:
    layout = MontageLayout((10, 10), length=2, row_length=2)
    frames = np.zeros((2, 10, 10), np.int64)
    square(frames[0], 1, 2, 4, 6, 6)
    square(frames[1], 1, 2, 0, 6, 6)
    # Notches at the shared frame edge: in the montage they form one enclosed hole.
    frames[0, 4:6, 9] = 0
    frames[1, 4:6, 0] = 0
    frames[0, 4:6, 6] = 0  # a real hole inside frame 0's cell
    montage = layout.make(frames)
    out, stats = clean_montage(montage, layout)
    assert stats.holes_filled == 1
    expected = frames.copy()
    expected[0, 4:6, 6] = 1
    np.testing.assert_array_equal(layout.read(out), expected)
    # The montage as a whole would have filled the notches (what must not happen).
    assert (clean_labels(montage)[4:6, 9:11] == 1).all()


def test_paint_in_buffers_is_dropped_and_counted() -> None:
    layout = MontageLayout((8, 8), length=2, row_length=2, x_buffer=2, y_buffer=2)
    montage = np.zeros(layout.montage_shape, np.int64)
    montage[layout.frame_slices(0)] = 3
    montage[0, :5] = 3  # 5 px painted over the top buffer
    out, stats = clean_montage(montage, layout)
    assert not out[0].any()
    assert stats.pixels_removed == 5
    assert stats.cells == 1


def test_too_many_cells_for_uint16() -> None:
    frame = np.arange(1, 256 * 256 + 1, dtype=np.int32).reshape(256, 256)
    layout = MontageLayout((256, 256), length=1, row_length=1)
    with pytest.raises(AnnotationError, match="65536 cells remain in one montage"):
        clean_montage(frame, layout, min_size=0, max_hole=0)


def test_clean_stats_add() -> None:
    a = CleanStats(1, 2, 3, 4, 5)
    assert a + CleanStats(10, 20, 30, 40, 50) == CleanStats(11, 22, 33, 44, 55)
    with pytest.raises(TypeError, match="unsupported operand"):
        a + 1  # type: ignore[operator]


@pytest.mark.parametrize(
    ("labels", "kwargs", "error", "match"),
    [
        (np.zeros((2, 3, 3), int), {}, ValueError, "must be a 2-D label image"),
        (np.zeros((3, 3), float), {}, TypeError, "integer label image"),
        (np.zeros((3, 3), bool), {}, TypeError, "integer label image"),
        (np.full((3, 3), -2), {}, ValueError, r"ids in 0\.\.2147483647, got -2\.\.-2"),
        (np.full((3, 3), 2**40), {}, ValueError, "ids in 0..2147483647"),
        (np.zeros((3, 3), int), {"min_size": -1}, ValueError, "min_size must be"),
        (np.zeros((3, 3), int), {"max_hole": 1.5}, ValueError, "max_hole must be"),
    ],
    ids=["3d", "float", "bool", "negative", "huge", "min-size", "max-hole"],
)
def test_clean_labels_refuses_bad_input(labels: NDArray[np.generic], kwargs: dict[str, object],
                                        error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        clean_labels(labels, **kwargs)  # type: ignore[arg-type]


def test_clean_montage_refuses_wrong_size() -> None:
    with pytest.raises(GeometryError, match="montage is 5x5 pixels, expected 4x4"):
        clean_montage(np.zeros((5, 5), int), MontageLayout((2, 2), 4, 2))


# -- relabel -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.int64])
def test_relabel_sequential_sorted_order(dtype: type) -> None:
    labels = np.array([[5, 5, 0], [2, 9, 9]], dtype=dtype)
    out = relabel_sequential(labels)
    assert out.dtype == labels.dtype
    np.testing.assert_array_equal(out, [[2, 2, 0], [1, 3, 3]])
    np.testing.assert_array_equal(labels, [[5, 5, 0], [2, 9, 9]])


def test_relabel_without_background_and_empty() -> None:
    np.testing.assert_array_equal(relabel_sequential(np.array([7, 3, 7])), [2, 1, 2])
    assert relabel_sequential(np.zeros((0, 3), int)).shape == (0, 3)


@pytest.mark.parametrize(
    ("labels", "error", "match"),
    [(np.zeros(3, float), TypeError, "labels must be an integer label image"),
     (np.array([-1, 2]), ValueError, r"labels must hold no negative ids, got -1\.\.2")],
    ids=["float", "negative"],
)
def test_relabel_refuses_bad_input(labels: NDArray[np.generic], error: type[Exception],
                                   match: str) -> None:
    with pytest.raises(error, match=match):
        relabel_sequential(labels)


# -- decoding --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.uint32])
def test_decode_grey_ids(dtype: type) -> None:
    grey = np.array([[0, 3], [200, 3]], dtype=dtype)
    out = decode_annotation(grey)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, grey)


def test_decode_grey_with_alpha() -> None:
    image = np.zeros((2, 2, 2), np.uint8)
    image[..., 0] = [[4, 4], [5, 0]]
    image[..., 1] = [[255, 0], [255, 255]]
    np.testing.assert_array_equal(decode_annotation(image), [[4, 0], [5, 0]])


@pytest.mark.parametrize("alpha", ["none", "opaque", "cut-out"])
def test_decode_red(alpha: str) -> None:
    ids = np.array([[0, 1, 1], [255, 0, 2]], np.uint8)
    channels = [ids, np.zeros_like(ids), np.zeros_like(ids)]
    if alpha == "opaque":
        channels.append(np.full_like(ids, 255))
    elif alpha == "cut-out":
        channels.append(np.where(ids > 0, 255, 0).astype(np.uint8))
    image = np.stack(channels, axis=2)
    for encoding in ("auto", "red"):
        np.testing.assert_array_equal(decode_annotation(image, encoding=encoding), ids)  # type: ignore[arg-type]


def test_decode_red_ignores_transparent_pixels() -> None:
    image = np.zeros((1, 3, 4), np.uint8)
    image[0, :, 0] = 7
    image[0, :, 3] = [255, 0, 255]
    np.testing.assert_array_equal(decode_annotation(image), [[7, 0, 7]])


def test_decode_rgb_distinct_colours_distinct_ids() -> None:
    colours = np.array([[0, 0, 0], [10, 20, 30], [10, 20, 31], [200, 0, 0]], np.uint8)
    index = np.array([[0, 1, 1, 2], [3, 0, 1, 3]])
    image = colours[index]
    out = decode_annotation(image)
    assert_same_up_to_relabel(index, out)
    # A colour's two separate places are the same cell; red-only colours are cells too.
    assert out[0, 1] == out[1, 2]
    assert out[1, 0] == out[1, 3] != 0


def test_decode_rgb_forced_on_a_red_image_and_red_forced_on_rgb() -> None:
    image = np.zeros((1, 3, 3), np.uint8)
    image[0, :, 0] = [0, 40, 90]
    np.testing.assert_array_equal(decode_annotation(image, encoding="rgb"), [[0, 1, 2]])
    image[0, 2, 1] = 5
    np.testing.assert_array_equal(decode_annotation(image, encoding="red"), [[0, 40, 90]])
    np.testing.assert_array_equal(decode_annotation(image), [[0, 1, 2]])


def test_decode_sixteen_bit_colour() -> None:
    image = np.zeros((1, 3, 3), np.uint16)
    image[0, 1] = [1, 2, 3]
    image[0, 2] = [1, 2, 3 + 256]
    np.testing.assert_array_equal(decode_annotation(image), [[0, 1, 2]])


@pytest.mark.parametrize(
    ("image", "kwargs", "match"),
    [
        (np.zeros((2, 2), float), {}, "integer label image .*got dtype float64: save"),
        (np.zeros((2, 2), bool), {}, "integer label image .*got dtype bool"),
        (np.full((2, 2), -1), {}, r"ids in 0\.\.2147483647, got -1\.\.-1"),
        (np.zeros((2, 2, 5), np.uint8), {}, r"got shape \(2, 2, 5\)"),
        (np.zeros((1, 2, 2, 3), np.uint8), {}, r"got shape \(1, 2, 2, 3\)"),
        (np.zeros((2, 2, 3), np.float32), {}, "8- or 16-bit .* got dtype float32"),
        (np.zeros((2, 2, 4), np.uint8), {"encoding": "cmyk"}, "encoding must be"),
    ],
    ids=["float", "bool", "negative", "5-channels", "4d", "float-colour", "encoding"],
)
def test_decode_refuses_bad_images(image: NDArray[np.generic], kwargs: dict[str, object],
                                   match: str) -> None:
    with pytest.raises(AnnotationError, match=match):
        decode_annotation(image, **kwargs)  # type: ignore[arg-type]


# -- files and tasks -------------------------------------------------------------------------


@pytest.fixture
def painted_file(tmp_path: Path) -> tuple[Path, NDArray[np.int32]]:
    layout, truth = truth_montage(seed=5, buffer=0)
    src = tmp_path / "exp_annotations" / "exp_x_00_y_00_montage_00_annotation.png"
    write_image(src, paint_annotation(truth, encoding="rgb", layout=layout, seed=2))
    return src, truth


def test_clean_annotation_file(tmp_path: Path, painted_file: tuple[Path, NDArray[np.int32]]
                               ) -> None:
    src, truth = painted_file
    digest = sha256_file(src)
    dst = tmp_path / "labels" / "exp_x_00_y_00_montage_00_labels.png"
    stats = clean_annotation_file(src, dst, montage_log=montage_log())
    written = read_image(dst)
    assert written.dtype == np.uint16
    assert_same_up_to_relabel(truth, written)
    assert stats.cells == int(written.max())
    assert sha256_file(src) == digest
    assert [p.name for p in dst.parent.iterdir()] == [dst.name]  # no temporary left


def test_clean_annotation_file_never_overwrites_the_download(
        painted_file: tuple[Path, NDArray[np.int32]]) -> None:
    src, _ = painted_file
    same = src.parent / "." / src.name
    with pytest.raises(ValueError, match="cleaned labels must not overwrite the download"):
        clean_annotation_file(src, same, montage_log=montage_log())


def test_clean_annotation_file_names_the_file(tmp_path: Path) -> None:
    bad_size = tmp_path / "bad_size.png"
    write_image(bad_size, np.zeros((10, 10, 4), np.uint8))
    with pytest.raises(GeometryError, match=r"bad_size\.png is 10x10 pixels"):
        clean_annotation_file(bad_size, tmp_path / "out.png", montage_log=montage_log())
    bad_dtype = tmp_path / "bad_dtype.tif"
    write_image(bad_dtype, np.zeros((4, 4), np.float32))
    with pytest.raises(AnnotationError, match=r"bad_dtype\.tif: a grey annotation must be an"):
        clean_annotation_file(bad_dtype, tmp_path / "out.png", montage_log=montage_log())
    with pytest.raises(InputError, match=r"missing\.png: image not found"):
        clean_annotation_file(tmp_path / "missing.png", tmp_path / "out.png",
                              montage_log=montage_log())
    assert not (tmp_path / "out.png").exists()


def test_clean_task_records_failures(tmp_path: Path,
                                     painted_file: tuple[Path, NDArray[np.int32]]) -> None:
    src, _ = painted_file
    good = CleanTask(src, tmp_path / "a.png", montage_log(), montage="m0")
    bad = CleanTask(tmp_path / "missing.png", tmp_path / "b.png", montage_log())
    progress: list[int] = []
    results = clean_annotations([good, bad], progress=progress.append)
    assert progress == [1, 1]
    assert results[0].ok
    assert results[0].montage == "m0"
    assert results[0].stats is not None
    assert results[1].montage == "missing"
    assert not results[1].ok
    assert results[1].stats is None
    assert "image not found" in (results[1].error or "")
    assert clean_task(bad) == results[1]


def test_clean_annotations_on_a_process_pool(
        tmp_path: Path, painted_file: tuple[Path, NDArray[np.int32]]) -> None:
    src, _ = painted_file
    tasks = [CleanTask(src, tmp_path / f"out{k}.png", montage_log()) for k in range(2)]
    executor = LocalExecutor(workers=2)
    try:
        pooled = clean_annotations(tasks, executor=executor)
    finally:
        executor.close()
    assert [r.dst for r in pooled] == [t.dst for t in tasks]
    assert all(r.ok for r in pooled)
    np.testing.assert_array_equal(read_image(tasks[0].dst), read_image(tasks[1].dst))
