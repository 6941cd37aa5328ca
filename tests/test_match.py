"""The matching primitives against brute force on small random label images."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cellcrowd.match import (
    OwnerUnionFind,
    assign,
    best_partners,
    compact_ids,
    first_appearance,
    overlap,
)

seeds = st.integers(0, 2**32 - 1)


def random_labels(rng: np.random.Generator, shape: tuple[int, ...], most: int) -> np.ndarray:
    """Blocky labels 0..most (some ids missing) so that cells overlap in many ways."""
    ids = rng.choice(np.arange(most + 1) * 3, size=most + 1, replace=False)
    coarse = rng.integers(0, most + 1, size=tuple(max(s // 2, 1) for s in shape))
    big = ids[coarse].repeat(2, axis=0)
    if len(shape) > 1:
        big = big.repeat(2, axis=1)
    return np.asarray(big[tuple(slice(0, s) for s in shape)])


# -- compaction -------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(seed=seeds)
def test_compact_ids_index_the_sorted_ids_with_background_first(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = random_labels(rng, (7, 9), int(rng.integers(0, 6)))
    ids, index = compact_ids(labels)
    assert ids[0] == 0
    np.testing.assert_array_equal(ids[index], labels)
    assert list(ids[1:]) == sorted(set(labels[labels > 0].tolist()))


@settings(max_examples=60, deadline=None)
@given(seed=seeds)
def test_first_appearance_numbers_ids_in_order_of_their_first_pixel(seed: int) -> None:
    rng = np.random.default_rng(seed)
    flat = random_labels(rng, (8, 6), int(rng.integers(0, 6))).ravel()
    compact, ids, areas = first_appearance(flat)
    seen: list[int] = []
    for v in flat.tolist():
        if v and v not in seen:
            seen.append(v)
    assert ids.tolist() == seen
    assert areas.tolist() == [int((flat == v).sum()) for v in seen]
    expected = np.array([seen.index(v) + 1 if v else 0 for v in flat.tolist()])
    np.testing.assert_array_equal(compact, expected)


# -- overlap tables ---------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(seed=seeds)
def test_overlap_counts_equal_a_dense_bincount(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = random_labels(rng, (2, 9, 7), int(rng.integers(0, 5)))
    b = random_labels(rng, (2, 9, 7), int(rng.integers(0, 5)))
    na, nb = int(a.max()) + 1, int(b.max()) + 1
    dense = np.bincount((a * nb + b).ravel(), minlength=na * nb).reshape(na, nb)
    dense[0, :] = dense[:, 0] = 0
    ov = overlap(a, b)
    got = np.zeros_like(dense)
    got[ov.a, ov.b] = ov.inter
    np.testing.assert_array_equal(got, dense)
    assert (ov.inter > 0).all()
    assert list(zip(ov.a.tolist(), ov.b.tolist(), strict=True)) == sorted(
        zip(ov.a.tolist(), ov.b.tolist(), strict=True))
    np.testing.assert_array_equal(ov.area_a, np.bincount(a.ravel(), minlength=na))
    np.testing.assert_array_equal(ov.area_b, np.bincount(b.ravel(), minlength=nb))
    for i, j, inter, iou, cover in zip(ov.a, ov.b, ov.inter, ov.iou, ov.cover, strict=True):
        ma, mb = a == i, b == j
        assert iou == pytest.approx(inter / (ma | mb).sum())
        assert cover == pytest.approx(inter / min(ma.sum(), mb.sum()))


def test_overlap_refuses_arrays_of_different_sizes() -> None:
    with pytest.raises(ValueError, match="same size"):
        overlap(np.zeros(4, int), np.zeros(5, int))


@settings(max_examples=60, deadline=None)
@given(seed=seeds)
def test_best_partners_pick_the_largest_overlap_then_the_smaller_label(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = random_labels(rng, (6, 6), 4)
    b = random_labels(rng, (6, 6), 4)
    first, best = best_partners(overlap(a, b))
    expected = {}
    for i in sorted(set(a[a > 0].tolist())):
        counts = {j: int(((a == i) & (b == j)).sum()) for j in set(b[b > 0].tolist())}
        counts = {j: c for j, c in counts.items() if c}
        if counts:
            expected[i] = min(counts, key=lambda j: (-counts[j], j))
    assert dict(zip(first.tolist(), best.tolist(), strict=True)) == expected


# -- assignment -------------------------------------------------------------------------


def brute_force_best(dense: np.ndarray, min_score: float) -> float:
    """The largest total of pairs >= min_score with each row and column at most once."""
    rows, cols = dense.shape
    best = 0.0
    for perm in itertools.permutations(range(max(rows, cols)), rows):
        total = sum(dense[r, c] for r, c in enumerate(perm)
                    if c < cols and dense[r, c] >= min_score)
        best = max(best, total)
    return best


@settings(max_examples=80, deadline=None)
@given(seed=seeds, split=st.booleans())
def test_assignment_reaches_the_brute_force_optimum(seed: int, split: bool) -> None:
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 5)), int(rng.integers(1, 5)))
    dense = np.where(rng.random(shape) < 0.6, np.round(rng.random(shape), 1), 0.0)
    rows, cols = np.nonzero(dense)
    min_score = 0.3
    r, c, s = assign(rows + 10, cols + 20, dense[rows, cols], min_score, split=split)
    assert np.unique(r).size == r.size
    assert np.unique(c).size == c.size
    np.testing.assert_array_equal(s, dense[r - 10, c - 20])
    assert (s >= min_score).all()
    assert s.sum() == pytest.approx(brute_force_best(dense, min_score))
    if not split:
        assert list(r) == sorted(r)


def test_assignment_needs_a_positive_threshold() -> None:
    one = np.array([1])
    with pytest.raises(ValueError, match="above 0"):
        assign(one, one, np.array([0.5]), 0.0)


def test_assignment_without_candidates_is_empty() -> None:
    r, c, s = assign(np.array([1, 2]), np.array([1, 1]), np.array([0.1, 0.2]), 0.5)
    assert r.size == c.size == s.size == 0


# -- constrained union-find -------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(seed=seeds)
def test_union_find_never_joins_two_cells_of_one_owner(seed: int) -> None:
    rng = np.random.default_rng(seed)
    nodes = int(rng.integers(1, 25))
    owner = rng.integers(0, 4, size=nodes)
    edges = int(rng.integers(0, 40))
    a, b = rng.integers(0, nodes, size=(2, edges))
    score = np.round(rng.random(edges), 1)
    uf = OwnerUnionFind(owner)
    refused = uf.join_all(a, b, score)
    groups = uf.groups()
    for g in np.unique(groups):
        members = owner[groups == g]
        assert np.unique(members).size == members.size  # one cell per owner at most
    # A pair is in one group exactly when it was joined (here or through others).
    refused_edges = {e for e, _ in refused}
    for e in range(edges):
        if e not in refused_edges:
            assert groups[a[e]] == groups[b[e]]
    for e, (x, y) in refused:
        assert owner[x] == owner[y]
        assert x != y
        assert {groups[x], groups[y]} == {groups[a[e]], groups[b[e]]}
        assert groups[a[e]] != groups[b[e]]


@settings(max_examples=60, deadline=None)
@given(seed=seeds)
def test_groups_equal_a_brute_force_greedy_merge(seed: int) -> None:
    """Best score first (ties by a, b), join unless two cells of one owner meet."""
    rng = np.random.default_rng(seed)
    nodes = int(rng.integers(1, 15))
    owner = rng.integers(0, 3, size=nodes)
    edges = int(rng.integers(0, 25))
    a, b = rng.integers(0, nodes, size=(2, edges))
    score = np.round(rng.random(edges), 1)
    uf = OwnerUnionFind(owner)
    uf.join_all(a, b, score)
    sets = [{n} for n in range(nodes)]
    for e in sorted(range(edges), key=lambda e: (-score[e], a[e], b[e])):
        sa = next(s for s in sets if a[e] in s)
        sb = next(s for s in sets if b[e] in s)
        if sa is not sb and not {owner[n] for n in sa} & {owner[n] for n in sb}:
            sets.remove(sb)
            sa |= sb
    sets.sort(key=min)
    expected = np.zeros(nodes, dtype=np.int64)
    for g, s in enumerate(sets):
        expected[list(s)] = g
    np.testing.assert_array_equal(uf.groups(), expected)


def test_union_reports_the_clash() -> None:
    uf = OwnerUnionFind([0, 1, 0, 2])
    assert uf.union(0, 1) is None
    assert uf.union(2, 3) is None
    assert uf.union(1, 3) == (0, 2)  # owner 0 is in both groups
    assert uf.union(0, 1) is None  # already together
    assert uf.groups().tolist() == [0, 0, 1, 1]
    assert OwnerUnionFind([]).groups().size == 0
