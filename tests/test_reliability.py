"""Matching on cover, smooth fusion, the two-annotator rule, the odds and the reliability EM."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from cellcrowd.cellmatch import compact, overlap_iou
from cellcrowd.consensus import merge_labels
from cellcrowd.errors import InputError
from cellcrowd.geometry import TileGrid
from cellcrowd.labels import tile_window
from cellcrowd.reliability import estimate_reliability, unit_evidence, vote_weight
from cellcrowd.sim.annotators import CAREFUL, CARELESS, draw_labels
from cellcrowd.sim.crowd import CrowdConfig


def disk(shape: tuple[int, int], cy: float, cx: float, r: float) -> NDArray[np.bool_]:
    y, x = np.mgrid[:shape[0], :shape[1]]
    out: NDArray[np.bool_] = (y - cy) ** 2 + (x - cx) ** 2 <= r * r
    return out


@pytest.mark.parametrize("seed", range(5))
def test_small_cells_matched_on_cover_below_min_iou(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = np.zeros((20, 20), dtype=np.int32)
    b = np.zeros((20, 20), dtype=np.int32)
    cy, cx, r = rng.uniform(8, 12), rng.uniform(8, 12), rng.uniform(1.5, 2.5)
    a[disk(a.shape, cy, cx, r)] = 1
    b[disk(b.shape, cy + rng.uniform(0.5, 1.5), cx, r + rng.uniform(1.0, 2.0))] = 7
    _, _, iou = overlap_iou(compact(a.ravel()), compact(b.ravel()))
    cover = (a.astype(bool) & b.astype(bool)).sum() / min(a.astype(bool).sum(),
                                                          b.astype(bool).sum())
    strict, _ = merge_labels([a, b])
    loose, report = merge_labels([a, b], min_cover=0.5)
    assert strict.max() == (1 if iou.max() >= 0.5 else 0)
    assert loose.max() == (1 if iou.max() >= 0.5 or cover >= 0.5 else 0)
    if loose.max():
        assert report.cells[0].annotators == 2


@pytest.mark.parametrize("grow", [1, 2, 3])
def test_smooth_fusion_of_two_equal_annotators_meets_halfway(grow: int) -> None:
    small = disk((40, 40), 20, 20, 8).astype(np.int32)
    large = disk((40, 40), 20, 20, 8 + grow).astype(np.int32) * 3
    plain, _ = merge_labels([small, large])
    smooth, _ = merge_labels([small, large], smooth=True)
    inter, union = small > 0, large > 0
    assert ((plain > 0) == inter).all()  # a strict majority of two keeps what both drew
    assert (smooth[inter] > 0).all()  # unanimous pixels stay
    assert not (smooth[~union] > 0).any()
    assert inter.sum() < (smooth > 0).sum() < union.sum()


def _two_annotators() -> tuple[NDArray[np.int32], NDArray[np.int32]]:
    a = np.zeros((30, 30), dtype=np.int32)
    b = np.zeros((30, 30), dtype=np.int32)
    a[2:8, 2:8] = b[2:8, 2:8] = 1  # both
    a[12:18, 12:18] = 2  # only the first
    b[22:27, 3:8] = 5  # only the second
    return a, b


def test_two_annotators_keep_the_lone_cells_of_the_reliable_one_as_low_support() -> None:
    a, b = _two_annotators()
    plain, _ = merge_labels([a, b])
    assert plain.max() == 1
    labels, report = merge_labels([a, b], reliable=[True, False])
    assert (labels[12:18, 12:18] > 0).all()
    assert not (labels[22:27, 3:8] > 0).any()
    assert [c.low_support for c in report.cells] == [False, True]
    assert [c.annotators for c in report.cells] == [2, 1]
    with pytest.raises(ValueError, match="got 1 reliable flags for 2 label images"):
        merge_labels([a, b], reliable=[True])


def test_odds_keep_a_cell_when_the_drawers_outweigh_the_others() -> None:
    a, b = _two_annotators()
    c = a.copy()
    c[12:18, 12:18] = 0  # the third misses the first's lone cell
    odds = [(2.0, -0.5), (0.3, -0.2), (0.3, -0.2)]
    labels, _ = merge_labels([a, b, c], odds=odds)
    score = 2.0 - 0.2 - 0.2  # the first drew it, the others did not
    assert bool((labels[12:18, 12:18] > 0).all()) == (score >= 0)
    assert not (labels[22:27, 3:8] > 0).any()  # 0.3 - 0.5 - 0.2 < 0
    with pytest.raises(ValueError, match="got 2 odds for 3 label images"):
        merge_labels([a, b, c], odds=odds[:2])
    with pytest.raises(ValueError, match="min_cover must be above 0 and at most 1"):
        merge_labels([a, b, c], min_cover=0.0)


def test_careless_workers_get_the_lowest_reliability() -> None:
    rng = np.random.default_rng(1)
    evidence = []
    styles = {"a": CAREFUL, "b": CAREFUL, "c": CARELESS, "d": CARELESS}
    for unit in range(12):
        truth = np.zeros((60, 60), dtype=np.int64)
        for k in range(6):
            cy, cx = rng.uniform(8, 52, size=2)
            truth[disk(truth.shape, cy, cx, rng.uniform(4, 7)) & (truth == 0)] = k + 1
        workers = list(rng.choice(sorted(styles), size=3, replace=False))
        drawn = [draw_labels(truth, styles[w], seed=100 * unit + i)
                 for i, w in enumerate(workers)]
        evidence.append(unit_evidence(f"m{unit}", drawn, workers))
    trust = dict(zip(sorted(styles), rng.uniform(0.6, 0.99, size=4), strict=True))
    rel = estimate_reliability(evidence, trust)
    scores = {w: r.reliability for w, r in rel.workers.items()}
    assert max(scores["c"], scores["d"]) < min(scores["a"], scores["b"])
    assert rel.converged
    assert all(r.units == sum(w in e.workers for e in evidence) for w, r in
               rel.workers.items() for _ in [w])
    with pytest.raises(ValueError, match="got 1 workers for 3 label images"):
        unit_evidence("m0", drawn, ["a"])


def test_vote_weight_grows_with_shape_agreement() -> None:
    w = vote_weight(np.array([0.2, 0.5, 0.7, 0.9, 0.99]))
    assert (np.diff(w) >= 0).all()
    assert w.min() > 0


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="3 styles for a pool of 2 workers"):
        CrowdConfig(workers_per_unit=(1, 2), pool_size=2, styles=(CAREFUL,) * 3)
    grid = TileGrid.for_frame((10, 10), num_x=2, num_y=2, overlap_perc=20)
    with pytest.raises(InputError, match="is not a montage name"):
        tile_window(grid, "not-a-montage")
