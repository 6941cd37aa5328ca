"""Tests of cellcrowd.sim.synthetic: the synthetic movie and the crowd-like painter."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy import ndimage

from cellcrowd.files import list_images, read_image
from cellcrowd.geometry import MontageLayout
from cellcrowd.sim import synthetic
from cellcrowd.sim.synthetic import (
    PaintReport,
    SyntheticMovie,
    paint_annotation,
    paint_annotation_with_report,
    synthetic_movie,
    write_movie_frames,
)


@pytest.fixture(scope="module")
def movie() -> SyntheticMovie:
    return synthetic_movie(frames=30, shape=(128, 128), cells=12, divisions=3, seed=7)


def _frames_of(labels: NDArray[np.int32]) -> dict[int, NDArray[np.intp]]:
    present = {}
    for i in np.unique(labels):
        if i:
            present[int(i)] = np.flatnonzero((labels == i).any(axis=(1, 2)))
    return present


# -- the movie -------------------------------------------------------------------------------


def test_same_seed_same_movie() -> None:
    a = synthetic_movie(frames=8, shape=(64, 80), cells=5, divisions=1, seed=3)
    b = synthetic_movie(frames=8, shape=(64, 80), cells=5, divisions=1, seed=3)
    c = synthetic_movie(frames=8, shape=(64, 80), cells=5, divisions=1, seed=4)
    np.testing.assert_array_equal(a.raw, b.raw)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.parents == b.parents
    assert a.division_frames == b.division_frames
    assert not np.array_equal(a.labels, c.labels)


@pytest.mark.parametrize(
    ("frames", "shape", "cells", "divisions"),
    [(1, (32, 32), 1, 0), (6, (64, 96), 4, 2), (12, (128, 128), 12, 2), (3, (40, 200), 3, 3)],
    ids=["one-frame", "wide", "default-size", "all-divide"],
)
def test_shapes_dtypes_and_counts(
    frames: int, shape: tuple[int, int], cells: int, divisions: int
) -> None:
    m = synthetic_movie(frames=frames, shape=shape, cells=cells, divisions=divisions, seed=1)
    assert m.raw.shape == m.labels.shape == (frames, *shape)
    assert m.raw.dtype == np.uint16
    assert m.labels.dtype == np.int32
    assert m.num_frames == frames
    assert len(np.setdiff1d(np.unique(m.labels[0]), [0])) == cells
    assert len(m.division_frames) == divisions
    assert len(m.parents) == 2 * divisions


def test_intensities_look_like_microscopy(movie: SyntheticMovie) -> None:
    background = movie.raw[movie.labels == 0]
    # Far from cells (no blur), the background sits between 100 and 200 counts.
    far = ~ndimage.binary_dilation(movie.labels > 0, iterations=4)
    assert 100 <= np.median(movie.raw[far]) <= 200
    cells = movie.raw[movie.labels > 0]
    assert 700 <= np.median(cells) <= 2100
    assert cells.std() > 20  # texture and noise, not flat
    assert np.median(cells) > 4 * np.median(background)


def test_divisions_are_consistent(movie: SyntheticMovie) -> None:
    present = _frames_of(movie.labels)
    assert set(movie.parents.values()) == set(movie.division_frames)
    for parent, frame in movie.division_frames.items():
        daughters = movie.daughters(parent)
        assert len(daughters) == 2
        assert present[parent][-1] == frame - 1
        before = np.argwhere(movie.labels[frame - 1] == parent).mean(axis=0)
        for daughter in daughters:
            assert present[daughter][0] == frame
            assert movie.parents[daughter] == parent
            after = np.argwhere(movie.labels[frame] == daughter).mean(axis=0)
            assert np.hypot(*(after - before)) < 12  # born where the parent was
        sizes = [(movie.labels[frame] == d).sum() for d in daughters]
        parent_size = (movie.labels[frame - 1] == parent).sum()
        assert all(0.25 * parent_size < s < 0.75 * parent_size for s in sizes)


def test_ids_are_never_reused(movie: SyntheticMovie) -> None:
    present = _frames_of(movie.labels)
    initial = set(np.unique(movie.labels[0]).tolist()) - {0}
    for cell, frames in present.items():
        assert np.array_equal(frames, np.arange(frames[0], frames[-1] + 1)), cell
        assert cell in initial or cell in movie.parents
        if cell in movie.parents:
            assert cell > max(initial)
    for parent in movie.division_frames:
        assert parent in initial
    # Cells that do not divide live to the end.
    for cell in initial - set(movie.division_frames):
        assert present[cell][-1] == movie.num_frames - 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cells_overlap_themselves_between_frames(seed: int) -> None:
    m = synthetic_movie(frames=25, shape=(128, 128), cells=12, divisions=3, seed=seed)
    worst = 1.0
    for t in range(m.num_frames - 1):
        a, b = m.labels[t], m.labels[t + 1]
        for cell in np.intersect1d(a[a > 0], b[b > 0]):
            inter = np.count_nonzero((a == cell) & (b == cell))
            union = np.count_nonzero((a == cell) | (b == cell))
            worst = min(worst, inter / union)
    assert worst > 0.5


@pytest.mark.parametrize("seed", [0, 5])
def test_cells_are_solid_apart_and_inside(seed: int) -> None:
    m = synthetic_movie(frames=20, shape=(96, 96), cells=8, divisions=2, seed=seed)
    for frame in m.labels:
        assert not frame[[0, -1]].any()
        assert not frame[:, [0, -1]].any()
        ids, sizes = np.unique(frame[frame > 0], return_counts=True)
        assert sizes.min() >= 10
        for cell in ids:
            _, parts = ndimage.label(frame == cell, structure=np.ones((3, 3)))
            assert parts == 1
        # Only sisters may touch (just after their division).
        grown = ndimage.grey_dilation(frame, size=(3, 3))
        touch = (frame > 0) & (grown > 0) & (grown != frame)
        for a, b in {(int(x), int(y)) for x, y in zip(frame[touch], grown[touch], strict=True)}:
            assert a in m.parents
            assert m.parents.get(a) == m.parents.get(b)


def test_fast_enough() -> None:
    start = time.perf_counter()
    synthetic_movie(frames=60, shape=(192, 192), cells=20, divisions=3, seed=0)
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"frames": 0}, "frames must be a whole number >= 1"),
        ({"cells": 0}, "cells must be a whole number >= 1"),
        ({"divisions": -1}, "divisions must be a whole number >= 0"),
        ({"frames": 2.5}, "frames must be a whole number"),
        ({"shape": (16, 128)}, "at least 24x24"),
        ({"shape": (64, 64, 3)}, "shape must be"),
        ({"cells": 3, "divisions": 4}, r"divisions \(4\) cannot exceed cells \(3\)"),
        ({"frames": 1, "divisions": 1}, "divisions need at least 2 frames"),
        ({"shape": (32, 32), "cells": 40}, "cannot fit 40 cells"),
    ],
    ids=["no-frames", "no-cells", "neg-divisions", "float-frames", "tiny", "3d-shape",
         "too-many-divisions", "divide-one-frame", "crowded"],
)
def test_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        synthetic_movie(**kwargs)  # type: ignore[arg-type]


# -- writing frames --------------------------------------------------------------------------


def test_write_movie_frames_round_trip(tmp_path: Path) -> None:
    m = synthetic_movie(frames=12, shape=(32, 40), cells=2, divisions=0, seed=2)
    paths = write_movie_frames(m, tmp_path / "raw")
    assert [p.name for p in paths][:2] == ["frame000.tif", "frame001.tif"]
    assert list_images(tmp_path / "raw") == paths == sorted(paths)
    for t, path in enumerate(paths):
        np.testing.assert_array_equal(read_image(path), m.raw[t])


def test_write_movie_frames_array_png_and_wide_padding(tmp_path: Path) -> None:
    frames = np.arange(1001 * 2 * 3, dtype=np.uint16).reshape(1001, 2, 3)
    paths = write_movie_frames(frames, tmp_path, prefix="t", suffix=".png")
    assert paths[0].name == "t0000.png"
    assert paths[-1].name == "t1000.png"
    assert list_images(tmp_path) == paths
    np.testing.assert_array_equal(read_image(paths[1000]), frames[1000])


def test_write_movie_frames_refuses_a_single_frame(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"expected frames shaped \(T, H, W\)"):
        write_movie_frames(np.zeros((4, 4), np.uint16), tmp_path)


# -- painting annotations --------------------------------------------------------------------


def _layout_and_truth(buffer: int = 0) -> tuple[MontageLayout, NDArray[np.int32]]:
    m = synthetic_movie(frames=5, shape=(64, 64), cells=6, divisions=1, seed=11)
    layout = MontageLayout((64, 64), length=5, row_length=3, x_buffer=buffer, y_buffer=buffer)
    return layout, layout.make(m.labels).astype(np.int32)


def test_red_without_artifacts_is_the_labels() -> None:
    _layout, truth = _layout_and_truth()
    image = paint_annotation(truth, artifacts=False)
    assert image.shape == (*truth.shape, 4)
    assert image.dtype == np.uint8
    np.testing.assert_array_equal(image[..., 0], truth)
    assert not image[..., 1:3].any()
    np.testing.assert_array_equal(image[..., 3], np.where(truth > 0, 255, 0))


def test_rgb_colours_are_distinct_consistent_and_never_black() -> None:
    _, truth = _layout_and_truth()
    image = paint_annotation(truth, encoding="rgb", artifacts=False, seed=4)
    packed = (image[..., 0].astype(np.int64) << 16) | (image[..., 1].astype(np.int64) << 8) \
        | image[..., 2]
    ids = np.unique(truth[truth > 0])
    colours = []
    for cell in ids:
        values = np.unique(packed[truth == cell])
        assert values.size == 1
        assert values[0] != 0
        colours.append(int(values[0]))
    assert len(set(colours)) == ids.size
    assert not packed[truth == 0].any()
    assert image[..., 1:3][truth > 0].any()  # not mistaken for the red encoding


@pytest.mark.parametrize("buffer", [0, 2], ids=["no-buffer", "buffer-2"])
@pytest.mark.parametrize("encoding", ["red", "rgb"])
def test_artifacts_stay_inside_frames(encoding: str, buffer: int) -> None:
    layout, truth = _layout_and_truth(buffer)
    image, report = paint_annotation_with_report(
        truth, encoding=encoding, layout=layout, seed=3  # type: ignore[arg-type]
    )
    clean = paint_annotation(truth, encoding=encoding, layout=layout,  # type: ignore[arg-type]
                             artifacts=False, seed=3)
    changed = (image != clean).any(axis=2)
    assert changed.any()
    inner = np.zeros(truth.shape, dtype=bool)
    for ys, xs in layout.iter_slices():
        inner[ys.start + 2:ys.stop - 2, xs.start + 2:xs.stop - 2] = True
    assert not (changed & ~inner).any()
    assert report.holes >= 1
    assert report.interior_specks >= 1
    assert report.strays >= 1
    assert report.touching_specks >= 1
    assert report.background_specks > report.touching_specks
    assert report.removable == report.background_specks + report.interior_specks + report.strays


def test_without_layout_artifacts_keep_off_the_image_edge() -> None:
    _, truth = _layout_and_truth()
    image, report = paint_annotation_with_report(truth[:64, :64], seed=1)
    changed = image[..., 0] != truth[:64, :64]
    assert changed.any()
    assert report.holes == 1
    assert not changed[:2].any()
    assert not changed[-2:].any()
    assert not changed[:, :2].any()
    assert not changed[:, -2:].any()


def test_same_seed_same_painting() -> None:
    layout, truth = _layout_and_truth()
    a = paint_annotation(truth, encoding="rgb", layout=layout, seed=9)
    b = paint_annotation(truth, encoding="rgb", layout=layout, seed=9)
    np.testing.assert_array_equal(a, b)


def test_no_room_means_no_artifacts() -> None:
    report = paint_annotation_with_report(np.zeros((3, 3), np.int32))[1]
    assert report == PaintReport()


def test_red_stray_skipped_when_every_id_is_used() -> None:
    labels = np.zeros((64, 64), np.int32)
    labels[:16, :16] = np.arange(256).reshape(16, 16)
    labels[0, 0] = 255  # every id 1..255 is used
    labels[20:40, 20:40] = 7
    report = paint_annotation_with_report(labels)[1]
    assert report.strays == 0


@pytest.mark.parametrize(
    ("labels", "kwargs", "match"),
    [
        (np.full((4, 4), 256), {}, "at most 255 cell ids, but the labels go up to 256"),
        (np.zeros((2, 4, 4), int), {}, "must be a 2-D integer image"),
        (np.zeros((4, 4), float), {}, "must be a 2-D integer image"),
        (np.full((4, 4), -1), {}, "must not be negative"),
        (np.zeros((4, 4), int), {"encoding": "blue"}, "encoding must be 'red' or 'rgb'"),
        (np.zeros((4, 4), int), {"layout": MontageLayout((3, 3), 4, 2)}, "layout's montages"),
        (np.zeros((4, 4), int), {"artifact_sizes": "big"}, "artifact_sizes must be 'small' or"),
    ],
    ids=["red-over-255", "3d", "float", "negative", "encoding", "layout-size", "sizes"],
)
def test_paint_refuses_bad_input(labels: NDArray[np.int64], kwargs: dict[str, object],
                                 match: str) -> None:
    with pytest.raises(ValueError, match=match):
        paint_annotation(labels, **kwargs)  # type: ignore[arg-type]


def test_the_report_lists_every_artifact_where_it_was_painted() -> None:
    layout, truth = _layout_and_truth()
    image, report = paint_annotation_with_report(truth, layout=layout, seed=3)
    kinds = [a.kind for a in report.artifacts]
    assert kinds.count("hole") == report.holes
    assert kinds.count("interior_speck") == report.interior_specks
    assert kinds.count("stray_speck") == report.strays
    assert kinds.count("touching_speck") == report.touching_specks
    changed = image[..., 0].astype(np.int64) != truth
    marked = np.zeros(truth.shape, dtype=bool)
    for a in report.artifacts:
        assert (image[..., 0][a.pixels()] == a.value).all()
        assert (a.kind in ("hole", "interior_speck")) == (a.host > 0)
        assert a.size < (64 if a.kind == "hole" else 10)  # the default sizes...
        assert a.expected == ("filled" if a.kind in ("hole", "interior_speck") else "removed")
        marked[a.pixels()] = True
    assert np.array_equal(changed, marked)  # ...and nothing else was painted


@pytest.mark.parametrize(("min_size", "max_hole"), [(10, 64), (4, 12), (1, 1)])
def test_across_sizes_straddle_the_thresholds(min_size: int, max_hole: int) -> None:
    m = synthetic_movie(frames=6, shape=(128, 128), cells=8, divisions=1, seed=5)
    layout = MontageLayout((128, 128), length=6, row_length=3)
    truth = layout.make(m.labels).astype(np.int32)
    image, report = paint_annotation_with_report(
        truth, layout=layout, seed=2, artifact_sizes="across", min_size=min_size,
        max_hole=max_hole)
    offsets = set()
    for a in report.artifacts:
        threshold = max_hole if a.kind == "hole" else min_size
        offsets.add(a.size - threshold)
        assert max(1, threshold - 2) <= a.size <= threshold + 1
        assert ((image[..., 3][a.pixels()] > 0) == (a.value > 0)).all()
        fate = (("filled" if a.size < max_hole else "not filled") if a.kind == "hole" else
                "kept" if a.size >= min_size else None)
        if fate is not None:
            assert a.expected == fate
        elif a.kind == "edge_speck":  # kept when its cell's largest part (the edge rule)
            assert a.expected in ("kept", "removed")
        else:
            assert a.expected == ("removed" if a.kind != "interior_speck" else
                                  "filled" if a.size < max_hole else "removed")
    if min_size > 2:
        assert {-2, -1, 0, 1} <= offsets
    edge = [a for a in report.artifacts if a.kind == "edge_speck"]
    assert edge
    for a in edge:
        rows, cols = a.pixels()
        k = a.frame
        ys, xs = list(layout.iter_slices())[k]
        assert (rows == ys.start).any() or (rows == ys.stop - 1).any() or (
            cols == xs.start).any() or (cols == xs.stop - 1).any()


def _render_whole(rng: np.random.Generator, labels: np.ndarray,
                  brightness: np.ndarray) -> np.ndarray:
    """The raw movie rendered in one piece (how it was done before it was chunked)."""
    frames, height, width = labels.shape
    yy, xx = np.mgrid[0:height, 0:width]
    background = 110.0 + 50.0 * (yy / height) * 0.6 + 50.0 * (xx / width) * 0.4
    texture = ndimage.gaussian_filter(rng.normal(0, 1, (height, width)), 2.0)
    texture = 1.0 + 0.15 * texture / max(float(np.abs(texture).max()), 1e-9)
    signal = brightness[labels] * texture[None]
    signal = ndimage.gaussian_filter(signal.astype(np.float32), sigma=(0, 1.0, 1.0))
    flicker = rng.normal(1.0, 0.02, (frames, 1, 1))
    expected = (background[None] + signal) * flicker
    noisy = rng.poisson(np.clip(expected, 0, None)) + rng.normal(0, 4.0, expected.shape)
    return np.clip(np.rint(noisy), 0, 65535).astype(np.uint16)


@pytest.mark.parametrize("chunk_pixels", [1, 3 * 40 * 50, 1 << 24])
def test_raw_rendered_in_chunks_is_the_movie_rendered_whole(
    monkeypatch: pytest.MonkeyPatch, chunk_pixels: int
) -> None:
    labels = synthetic_movie(frames=7, shape=(40, 50), cells=4, divisions=1, seed=2).labels
    brightness = np.random.default_rng(0).uniform(700, 1900, int(labels.max()) + 1)
    monkeypatch.setattr(synthetic, "_RENDER_PIXELS", chunk_pixels)  # 7, 3 or 1 chunk(s)
    chunked = synthetic._render_raw(np.random.default_rng(9), labels, brightness)
    np.testing.assert_array_equal(chunked, _render_whole(np.random.default_rng(9), labels,
                                                         brightness))
