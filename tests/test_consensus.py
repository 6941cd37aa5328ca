"""Tests of cellcrowd.consensus: several annotators' label montages -> one consensus."""

from __future__ import annotations

import itertools
import json
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from skimage.morphology import dilation, disk, erosion

from cellcrowd.consensus import (
    ConsensusReport,
    DroppedCell,
    MergeTask,
    judgment_weights,
    merge_label_files,
    merge_labels,
    merge_task,
    merge_tasks,
)
from cellcrowd.errors import AnnotationError, GeometryError, InputError
from cellcrowd.executor import LocalExecutor
from cellcrowd.files import read_image, write_image
from cellcrowd.geometry import MontageLayout
from cellcrowd.labels import clean_montage, decode_annotation
from cellcrowd.sim.synthetic import paint_annotation, synthetic_movie
from cellcrowd.sim.testing import assert_same_up_to_relabel

#: 6 frames of 64x64, three per row: 128x192 montages.
LAYOUT = MontageLayout((64, 64), length=6, row_length=3)

Labels = NDArray[np.int32]

# -- helpers ---------------------------------------------------------------------------------


def annotated_truth(seed: int) -> Labels:
    """A cleaned label montage made the way the pipeline makes one (paint, decode, clean)."""
    movie = synthetic_movie(frames=6, shape=(64, 64), cells=6, divisions=1, seed=seed)
    painted = paint_annotation(LAYOUT.make(movie.labels), layout=LAYOUT, seed=seed)
    cleaned, _ = clean_montage(decode_annotation(painted), LAYOUT)
    assert_same_up_to_relabel(LAYOUT.make(movie.labels), cleaned)
    return cleaned.astype(np.int32)


def permute(labels: Labels, seed: int) -> Labels:
    """The same cells under random, non-sequential ids (each annotator numbers its own)."""
    rng = np.random.default_rng(seed)
    ids = np.unique(labels[labels > 0])
    lut = np.zeros(int(labels.max()) + 1, dtype=np.int32)
    lut[ids] = rng.choice(np.arange(1, 1000), size=ids.size, replace=False)
    return lut[labels]


def grow(labels: Labels, cell: int) -> Labels:
    """Dilate one cell by 1 px into the background only."""
    out = labels.copy()
    ring = dilation(labels == cell, disk(1)) & (labels == 0)
    out[ring] = cell
    return out


def shrink(labels: Labels, cell: int) -> Labels:
    """Erode one cell by 1 px."""
    out = labels.copy()
    mask = labels == cell
    out[mask & ~erosion(mask, disk(1))] = 0
    return out


def without(labels: Labels, *cells: int) -> Labels:
    return np.where(np.isin(labels, cells), 0, labels).astype(np.int32)


def with_spurious(labels: Labels, value: int, size: int = 6) -> tuple[Labels, int]:
    """Add a ``size`` x ``size`` cell of id ``value`` in empty background of frame 0."""
    out = labels.copy()
    (ys, xs) = LAYOUT.frame_slices(0)
    frame = out[ys, xs]
    for y, x in itertools.product(range(3, 64 - size - 3, 2), repeat=2):
        if not frame[y - 3:y + size + 3, x - 3:x + size + 3].any():
            frame[y:y + size, x:x + size] = value
            return out, size * size
    raise AssertionError("no room for a spurious cell")


def largest_cell(labels: Labels) -> int:
    counts = np.bincount(labels.ravel())
    counts[0] = 0
    return int(counts.argmax())


@pytest.fixture(scope="module")
def truth() -> Labels:
    return annotated_truth(3)


@pytest.fixture(scope="module")
def other() -> Labels:
    """A montage of another movie: a very wrong annotation of ``truth``."""
    return annotated_truth(11)


# -- the merge -------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [2, 3, 5], ids=["two", "three", "five"])
@pytest.mark.parametrize("use_layout", [False, True], ids=["montage", "layout"])
def test_permuted_copies_give_truth(truth: Labels, count: int, use_layout: bool) -> None:
    inputs = [permute(truth, seed) for seed in range(count)]
    out, report = merge_labels(inputs, layout=LAYOUT if use_layout else None)
    assert out.dtype == np.int32
    assert_same_up_to_relabel(truth, out)
    n = np.unique(truth[truth > 0]).size
    assert sorted(np.unique(out[out > 0]).tolist()) == list(range(1, n + 1))
    assert report.consensus_cells == n
    assert report.cells_per_annotator == (n,) * count
    assert report.dropped == ()
    assert report.method == "vote"
    assert all(a.f1 == 1.0 and a.mean_iou == 1.0 for a in report.agreement)
    for inp in inputs:  # inputs are not modified
        assert_same_up_to_relabel(truth, inp)


def test_ids_follow_first_appearance(truth: Labels) -> None:
    out, _ = merge_labels([permute(truth, 1), permute(truth, 2)])
    _, first = np.unique(out.ravel(), return_index=True)
    assert np.all(np.diff(first[1:]) > 0), "ids are not numbered in raster order"
    framed, _ = merge_labels([permute(truth, 1), permute(truth, 2)], layout=LAYOUT)
    _, first = np.unique(LAYOUT.read(framed).ravel(), return_index=True)
    assert np.all(np.diff(first[1:]) > 0), "ids are not numbered in frame order"


def test_single_annotator_returned_relabelled(truth: Labels) -> None:
    labels = permute(truth, 5)
    out, report = merge_labels([labels])
    assert_same_up_to_relabel(labels, out)
    assert report.method == "single"
    assert report.single
    assert report.annotators == 1
    assert report.dropped == ()
    assert out.max() == report.consensus_cells == np.unique(truth[truth > 0]).size


@pytest.mark.parametrize(("changes", "expect_grown", "min_iou"), [
    (("grow", "none", "none"), False, 0.5),
    (("grow", "grow", "none"), True, 0.5),
    (("shrink", "none", "none"), False, 0.5),
    (("grow", "shrink", "none"), False, 0.5),
    (("shrink", "shrink", "none"), None, 0.5),
    # grown vs shrunk differ by 2 px of radius: IoU under 0.5 for this cell
    (("shrink", "shrink", "grow"), None, 0.3),
], ids=["one-grows", "two-grow", "one-shrinks", "grow-and-shrink", "two-shrink",
        "two-shrink-one-grows"])
def test_boundaries_follow_the_majority(truth: Labels, changes: tuple[str, ...],
                                        expect_grown: bool | None, min_iou: float) -> None:
    cell = largest_cell(truth)
    edit = {"grow": grow, "shrink": shrink, "none": lambda lab, c: lab}
    inputs = [permute(edit[kind](truth, cell), seed) for seed, kind in enumerate(changes)]
    out, report = merge_labels(inputs, min_iou=min_iou)
    expected = {True: grow(truth, cell), False: truth, None: shrink(truth, cell)}[expect_grown]
    assert_same_up_to_relabel(expected, out)
    assert report.dropped == ()


def test_unmatched_boundary_variant_is_a_separate_cell(truth: Labels) -> None:
    """Without a third outline to join them, a 2-px-larger outline is another cell: dropped."""
    cell = largest_cell(truth)
    grown = grow(truth, cell)
    out, report = merge_labels([shrink(truth, cell), shrink(truth, cell), grown])
    assert_same_up_to_relabel(shrink(truth, cell), out)
    assert report.dropped == (DroppedCell(2, cell, int((grown == cell).sum()),
                                          pytest.approx(1 / 3)),)


def test_spurious_cell_is_dropped_and_reported(truth: Labels) -> None:
    spurious, pixels = with_spurious(truth, value=777)
    inputs = [permute(truth, 0), spurious, permute(truth, 2)]
    out, report = merge_labels(inputs)
    assert_same_up_to_relabel(truth, out)
    assert report.dropped == (DroppedCell(1, 777, pixels, pytest.approx(1 / 3), "support"),)
    assert report.cells_per_annotator[1] == report.consensus_cells + 1
    assert report.agreement[1].precision < 1.0
    assert report.agreement[1].recall == 1.0


def test_spurious_cell_of_two_of_three_is_kept(truth: Labels) -> None:
    spurious, _ = with_spurious(truth, value=777)
    out, report = merge_labels([spurious, permute(spurious, 4), truth])
    assert_same_up_to_relabel(spurious, out)
    assert [d.annotator for d in report.dropped] == []
    assert report.agreement[2].recall < 1.0


def test_cell_missed_by_one_of_three_is_kept(truth: Labels) -> None:
    cell = largest_cell(truth)
    out, report = merge_labels([permute(truth, 0), without(truth, cell), permute(truth, 2)])
    assert_same_up_to_relabel(truth, out)
    n = report.consensus_cells
    assert report.agreement[1].recall == pytest.approx((n - 1) / n)
    assert report.agreement[1].precision == 1.0
    assert report.dropped == ()


def test_cell_missed_by_two_of_three_is_dropped(truth: Labels) -> None:
    cell = largest_cell(truth)
    labels = permute(truth, 0)
    out, report = merge_labels([labels, without(truth, cell), without(truth, cell)])
    assert_same_up_to_relabel(without(truth, cell), out)
    old = int(np.unique(labels[truth == cell])[0])
    assert report.dropped == (DroppedCell(0, old, int((truth == cell).sum()),
                                          pytest.approx(1 / 3)),)


def test_split_cell_is_matched_by_its_larger_part(truth: Labels) -> None:
    """One annotator cuts a cell in two: the larger part matches, the other is dropped."""
    cell = largest_cell(truth)
    ys, xs = np.nonzero(truth == cell)
    cut = int(np.quantile(xs, 0.35))
    split = truth.copy()
    split[ys[xs < cut], xs[xs < cut]] = 900
    out, report = merge_labels([truth, split, permute(truth, 1)])
    assert_same_up_to_relabel(truth, out)
    assert [(d.annotator, d.label) for d in report.dropped] == [(1, 900)]


def test_trust_outweighs_numbers(truth: Labels, other: Labels) -> None:
    """Two low-trust annotators agreeing on something very wrong lose to one trusted one."""
    inputs = [permute(other, 1), permute(truth, 2), permute(other, 3)]
    trusted, _ = merge_labels(inputs, weights=[0.2, 0.95, 0.2])
    assert_same_up_to_relabel(truth, trusted)
    equal, report = merge_labels(inputs)
    assert_same_up_to_relabel(other, equal)
    assert {d.annotator for d in report.dropped} == {1}


def test_low_trust_wrong_annotator_changes_nothing(truth: Labels, other: Labels) -> None:
    cell = largest_cell(truth)
    inputs = [permute(truth, 0), grow(truth, cell), permute(truth, 2), permute(other, 3)]
    out, report = merge_labels(inputs, weights=[0.9, 0.8, 0.85, 0.1])
    assert_same_up_to_relabel(truth, out)
    assert report.agreement[3].f1 < 0.5
    assert {d.annotator for d in report.dropped} == {3}


def test_weight_zero_annotator_is_ignored(truth: Labels, other: Labels) -> None:
    cell = largest_cell(truth)
    good = [permute(truth, 0), without(grow(truth, cell), cell + 1), shrink(truth, cell)]
    alone, alone_report = merge_labels(good, weights=[0.7, 0.9, 0.8])
    tainted = permute(other, 9)
    out, report = merge_labels([*good, tainted], weights=[0.7, 0.9, 0.8, 0.0])
    np.testing.assert_array_equal(out, alone)
    assert report.ignored == (3,)
    assert report.dropped == alone_report.dropped
    assert report.agreement[:3] == alone_report.agreement
    assert report.agreement[3].weight == 0.0
    assert report.agreement[3].f1 < 0.5
    assert report.cells_per_annotator[3] == np.unique(other[other > 0]).size


def test_only_one_positive_weight_is_single(truth: Labels, other: Labels) -> None:
    out, report = merge_labels([other, truth], weights=[0, 1])
    assert_same_up_to_relabel(truth, out)
    assert report.method == "single"


def test_result_independent_of_input_order_and_ids(truth: Labels, other: Labels) -> None:
    cell = largest_cell(truth)
    spurious, _ = with_spurious(truth, value=500)
    inputs = [permute(truth, 0), grow(truth, cell), without(truth, cell), spurious,
              permute(other, 4)]
    weights = [0.9, 0.9, 0.6, 0.6, 0.1]  # ties on purpose
    reference, ref_report = merge_labels(inputs, weights=weights)
    for n, order in enumerate(itertools.permutations(range(5))):
        if n % 5:  # 24 of the 120 orders
            continue
        shuffled = [permute(inputs[i], 100 + i) if n % 2 else inputs[i] for i in order]
        out, report = merge_labels(shuffled, weights=[weights[i] for i in order])
        np.testing.assert_array_equal(out, reference)
        assert report.consensus_cells == ref_report.consensus_cells
        assert len(report.dropped) == len(ref_report.dropped)
        for pos, i in enumerate(order):
            assert report.agreement[pos].f1 == ref_report.agreement[i].f1


def test_pixel_ties_do_not_depend_on_input_order() -> None:
    """Two equal-weight cells that do not match share pixels with equal votes."""
    a = np.zeros((12, 16), dtype=np.int32)
    b = np.zeros((12, 16), dtype=np.int32)
    a[2:10, 1:9] = 4
    b[2:10, 6:14] = 9  # IoU 24 / 104: not the same cell
    ab, report = merge_labels([a, b], min_support=0.0)
    ba, _ = merge_labels([b, a], min_support=0.0)
    np.testing.assert_array_equal(ab, ba)
    assert report.consensus_cells == 2
    shared = ab[2:10, 6:9]
    assert np.unique(shared).size == 1, "the contested pixels were split between cells"
    np.testing.assert_array_equal(ab > 0, (a > 0) | (b > 0))
    # A tie between the cell of a weight-1 annotator and that of two weight-0.5 ones goes
    # to the cell whose first member ranks first: the heavier annotator's.
    for order in ([0, 1, 2], [2, 1, 0]):
        inputs, weights = [b, a, b * 2], [0.5, 1.0, 0.5]
        out, _ = merge_labels([inputs[i] for i in order], weights=[weights[i] for i in order],
                              min_support=0.0)
        assert_same_up_to_relabel(a, np.where(a > 0, out, 0))
        assert np.unique(out[a > 0]).size == 1


def test_cell_that_loses_every_pixel_is_reported_overruled() -> None:
    a = np.zeros((10, 10), dtype=np.int32)
    a[1:9, 1:9] = 2
    b = np.zeros_like(a)
    b[3:6, 3:6] = 6  # inside A's cell, too small to match it
    out, report = merge_labels([a, b], weights=[1.0, 0.5], min_support=0.0)
    assert_same_up_to_relabel(a, out)
    assert report.dropped == (DroppedCell(1, 6, 9, pytest.approx(1 / 3), "overruled"),)


def test_joins_refuse_two_cells_of_one_annotator() -> None:
    """B's cell matches both halves of A's split cell through C: only one half joins."""
    a = np.zeros((10, 20), dtype=np.int32)
    a[2:8, 2:10], a[2:8, 10:18] = 1, 2
    b = np.zeros_like(a)
    b[2:8, 2:13] = 5
    c = np.zeros_like(a)
    c[2:8, 5:18] = 7
    out, report = merge_labels([a, b, c], min_iou=0.4, min_support=0.0)
    # joins: A1-B (IoU .73), A2-C (.62); B-C (.5) would put A1 and A2 together
    assert report.consensus_cells == 2
    assert_same_up_to_relabel(a, out)  # the overlap goes to the larger vote
    assert report.dropped == ()


@pytest.mark.parametrize("seed", range(4), ids=lambda s: f"seed{s}")
def test_assignment_by_parts_is_optimal(seed: int) -> None:
    """Solving each group of overlapping cells alone gives the optimum of the whole."""
    from scipy.optimize import linear_sum_assignment

    from cellcrowd.match import assign

    rng = np.random.default_rng(seed)
    dense = np.where(rng.random((30, 25)) < 0.08, rng.random((30, 25)), 0.0)
    rows, cols = np.nonzero(dense)
    r, c, got = assign(rows.astype(np.int64) + 1, cols.astype(np.int64) + 1,
                       dense[rows, cols], 0.2)
    assert np.unique(r).size == r.size
    assert np.unique(c).size == c.size
    np.testing.assert_array_equal(got, dense[r - 1, c - 1])
    assert got.min() >= 0.2
    best = np.where(dense >= 0.2, dense, 0.0)
    br, bc = linear_sum_assignment(best, maximize=True)
    assert got.sum() == pytest.approx(best[br, bc].sum())


def test_layout_ignores_buffers() -> None:
    layout = MontageLayout((8, 8), length=2, row_length=2, x_buffer=1, y_buffer=1)
    frames = np.zeros((2, 8, 8), dtype=np.int32)
    frames[0, 1:5, 1:5] = 3
    frames[1, 2:6, 2:7] = 3  # the same cell in both frames
    frames[1, 0:3, 0:2] = 8
    montage = layout.make(frames)
    painted = montage.copy()
    painted[0, :] = 3  # paint in the buffer row
    out, report = merge_labels([painted, montage * 2], layout=layout)
    np.testing.assert_array_equal(layout.read(out) > 0, frames > 0)
    assert out[0].max() == 0
    assert report.consensus_cells == 2
    # frame order: the cell of frame 0 comes first although cell 8 is further up
    assert layout.read(out)[0, 1, 1] == 1


def test_empty_montages() -> None:
    blank = np.zeros((6, 7), dtype=np.uint16)
    out, report = merge_labels([blank, blank])
    assert out.shape == (6, 7)
    assert out.dtype == np.int32
    assert not out.any()
    assert report.consensus_cells == 0
    assert [a.f1 for a in report.agreement] == [1.0, 1.0]


def test_one_empty_annotator_scores_zero(truth: Labels) -> None:
    _, report = merge_labels([truth, truth, np.zeros_like(truth)])
    assert report.agreement[2].cells == 0
    assert report.agreement[2].f1 == 0.0
    assert report.agreement[2].mean_iou == 0.0


def test_lower_min_support_keeps_cells_of_one(truth: Labels) -> None:
    spurious, _ = with_spurious(truth, value=777)
    out, report = merge_labels([truth, spurious, truth], min_support=0.3)
    assert_same_up_to_relabel(spurious, out)
    assert report.dropped == ()
    assert report.min_support == 0.3


def test_report_to_dict_is_json(truth: Labels) -> None:
    spurious, pixels = with_spurious(truth, value=777)
    _, report = merge_labels([truth, spurious, truth], weights=[1, 0.5, 0])
    data = json.loads(json.dumps(report.to_dict()))
    assert data["annotators"] == 3
    assert data["weights"] == [1.0, 0.5, 0.0]
    assert data["ignored"] == [2]
    assert data["dropped"] == [{"annotator": 1, "label": 777, "pixels": pixels,
                                "support": pytest.approx(1 / 3), "reason": "support"}]
    assert [a["annotator"] for a in data["agreement"]] == [0, 1, 2]
    assert set(data["agreement"][0]) == {"annotator", "weight", "cells", "matched",
                                         "precision", "recall", "f1", "mean_iou"}
    assert isinstance(report, ConsensusReport)


@pytest.mark.parametrize(("images", "kwargs", "error", "match"), [
    ([], {}, ValueError, "no label images"),
    ([np.zeros((4, 4), int), np.zeros((4, 5), int)], {}, ValueError, "label image 1 has shape"),
    ([np.zeros((2, 4, 4), int)], {}, ValueError, "must be a 2-D label image"),
    ([np.zeros((4, 4), float)], {}, TypeError, "integer label image"),
    ([np.zeros((4, 4), bool)], {}, TypeError, "integer label image"),
    ([np.full((4, 4), -1)], {}, ValueError, "negative ids"),
    ([np.zeros((4, 4), int)] * 2, {"weights": [1.0]}, ValueError, "1 weights for 2"),
    ([np.zeros((4, 4), int)] * 2, {"weights": [1.0, -0.5]}, ValueError, "finite and >= 0"),
    ([np.zeros((4, 4), int)] * 2, {"weights": [1.0, np.nan]}, ValueError, "finite and >= 0"),
    ([np.zeros((4, 4), int)] * 2, {"weights": [0, 0]}, ValueError, "every weight is 0"),
    ([np.zeros((4, 4), int)], {"min_iou": 0.0}, ValueError, "min_iou"),
    ([np.zeros((4, 4), int)], {"min_iou": 1.5}, ValueError, "min_iou"),
    ([np.zeros((4, 4), int)], {"min_support": 1.0}, ValueError, "min_support"),
    ([np.zeros((4, 4), int)], {"min_support": -0.1}, ValueError, "min_support"),
    ([np.zeros((4, 4), int)], {"layout": LAYOUT}, GeometryError, "layout's montages"),
], ids=["empty", "shapes", "3d", "float", "bool", "negative", "weights-length",
        "negative-weight", "nan-weight", "zero-weights", "iou-0", "iou-big", "support-1",
        "support-negative", "layout-size"])
def test_bad_arguments(images: list[NDArray[np.generic]], kwargs: dict[str, object],
                       error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        merge_labels(images, **kwargs)  # type: ignore[arg-type]


# -- weights ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("trusts", "tainted", "expected"), [
    ([0.9, 0.5], [False, False], [0.9, 0.5]),
    ([0.9, 0.5], [False, True], [0.9, 0.0]),
    ([0.8, None, 0.4], [False, False, False], [0.8, 0.6000000000000001, 0.4]),
    ([None, None], [False, False], [1.0, 1.0]),
    ([], [], []),
], ids=["trust", "tainted", "missing-trust", "no-trust", "none"])
def test_judgment_weights(trusts: list[float | None], tainted: list[bool],
                          expected: list[float]) -> None:
    assert judgment_weights(trusts, tainted) == pytest.approx(expected)


@pytest.mark.parametrize(("trusts", "tainted", "expected", "said"), [
    ([0.0, 0.0], [False, False], [1.0, 1.0], "trust 0"),
    ([0.9, 0.8], [True, True], [1.0, 1.0], "all workers tainted"),
    ([0.0, 0.8], [False, True], [1.0, 0.0], "the untainted ones"),
], ids=["zero-trust", "all-tainted", "tainted-and-zero"])
def test_judgment_weights_all_zero_falls_back(
        trusts: list[float], tainted: list[bool], expected: list[float], said: str,
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="cellcrowd.consensus"):
        assert judgment_weights(trusts, tainted) == expected
    assert said in caplog.text


@pytest.mark.parametrize(("trusts", "tainted", "match"), [
    ([0.5], [False, True], "1 trust scores but 2 tainted flags"),
    ([-0.1], [False], "finite and >= 0"),
    ([float("inf")], [False], "finite and >= 0"),
], ids=["lengths", "negative", "infinite"])
def test_judgment_weights_bad(trusts: list[float], tainted: list[bool], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        judgment_weights(trusts, tainted)


# -- files and tasks -------------------------------------------------------------------------


def write_judgments(folder: Path, images: list[Labels]) -> list[Path]:
    paths = [folder / f"exp_x_00_y_00_montage_00_unit_7_judgment_{i}.png"
             for i in range(len(images))]
    for path, image in zip(paths, images, strict=True):
        write_image(path, image.astype(np.uint16))
    return paths


def test_merge_label_files(tmp_path: Path, truth: Labels) -> None:
    spurious, _ = with_spurious(truth, value=777)
    images = [permute(truth, 0), spurious, permute(truth, 2)]
    srcs = write_judgments(tmp_path / "judgments", images)
    before = [p.read_bytes() for p in srcs]
    dst = tmp_path / "labels" / "exp_x_00_y_00_montage_00_labels.png"
    report = merge_label_files(srcs, dst, weights=[1, 1, 1])
    written = read_image(dst)
    assert written.dtype == np.uint16
    expected, expected_report = merge_labels(images)
    np.testing.assert_array_equal(written, expected)
    assert report == expected_report
    assert [p.read_bytes() for p in srcs] == before
    assert sorted(p.name for p in dst.parent.iterdir()) == [dst.name]


def test_merge_label_files_refuses_to_overwrite_a_source(tmp_path: Path, truth: Labels) -> None:
    srcs = write_judgments(tmp_path, [truth, truth])
    before = srcs[1].read_bytes()
    with pytest.raises(ValueError, match="must not overwrite one of its sources"):
        merge_label_files(srcs, tmp_path / ".." / tmp_path.name / srcs[1].name)
    assert srcs[1].read_bytes() == before


def test_merge_label_files_bad_inputs(tmp_path: Path, truth: Labels) -> None:
    good = write_judgments(tmp_path, [truth])[0]
    small = tmp_path / "small.png"
    write_image(small, truth[:64].astype(np.uint16))
    colour = tmp_path / "colour.png"
    write_image(colour, np.zeros((*truth.shape, 3), np.uint8))
    dst = tmp_path / "out.png"
    with pytest.raises(GeometryError, match="judgments of one montage must have its size"):
        merge_label_files([good, small], dst)
    with pytest.raises(AnnotationError, match="expected a cleaned label image") as info:
        merge_label_files([good, colour], dst)
    assert info.value.path == colour
    with pytest.raises(InputError, match="not found"):
        merge_label_files([good, tmp_path / "missing.png"], dst)
    assert not dst.exists()


def test_merge_task_records_errors(tmp_path: Path, truth: Labels) -> None:
    srcs = tuple(write_judgments(tmp_path, [truth, permute(truth, 1)]))
    ok_task = MergeTask("m0", srcs, tmp_path / "m0.png", weights=(0.9, 0.8), layout=LAYOUT)
    bad_task = MergeTask("m1", (srcs[0], tmp_path / "missing.png"), tmp_path / "m1.png")
    assert pickle.loads(pickle.dumps(ok_task)) == ok_task
    ok = merge_task(ok_task)
    assert ok.ok
    assert ok.report is not None
    assert ok.report.consensus_cells == np.unique(truth[truth > 0]).size
    bad = merge_task(bad_task)
    assert not bad.ok
    assert bad.report is None
    assert bad.error is not None
    assert "missing.png" in bad.error
    assert not (tmp_path / "m1.png").exists()


def test_merge_tasks_in_order_with_progress(tmp_path: Path, truth: Labels) -> None:
    srcs = tuple(write_judgments(tmp_path, [truth, permute(truth, 1)]))
    tasks = [MergeTask(f"m{i}", srcs if i != 1 else (tmp_path / "nope.png",),
                       tmp_path / f"m{i}.png") for i in range(3)]
    ticks: list[int] = []
    results = merge_tasks(tasks, executor=LocalExecutor(workers=1), progress=ticks.append)
    assert [r.montage for r in results] == ["m0", "m1", "m2"]
    assert [r.ok for r in results] == [True, False, True]
    assert ticks == [1, 1, 1]
    serial = merge_tasks(tasks)
    assert [r.report for r in serial] == [r.report for r in results]
