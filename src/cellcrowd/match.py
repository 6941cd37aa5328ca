"""Matching cells between label images: the primitives stitching, consensus and QC share.

Id compaction
    :func:`compact_ids` (the distinct ids in sorted order, background first, and
    each pixel's index into them) and :func:`first_appearance` (ids ``1..n`` in
    order of each id's first pixel, with the original ids and the areas).
Overlap tables
    :func:`overlap` counts the pixels of every pair of labels that share pixels
    (sparse: one ``np.unique`` of packed pairs) and the area of every label;
    :class:`Overlap` gives IoU and cover per pair, :func:`best_partners` the
    label each label shares most pixels with. :class:`OverlapSum` sums the table
    of two label movies one frame at a time, in their own ids.
Assignment
    :func:`assign` is a Hungarian assignment (``scipy.optimize.linear_sum_assignment``)
    maximising the total score over sparse candidate pairs above a threshold.
Constrained union-find
    :class:`OwnerUnionFind` joins nodes (cells) that each belong to an owner (a
    tile, an annotator) and refuses a join that would put two nodes of one owner
    into one group; :meth:`OwnerUnionFind.join_all` takes scored pairs best first.

All functions take and return numpy arrays; none of them reads or writes files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .decode import rank_ids

__all__ = [
    "Overlap",
    "OverlapSum",
    "OwnerUnionFind",
    "assign",
    "best_partners",
    "compact_ids",
    "first_appearance",
    "overlap",
]


# -- id compaction ----------------------------------------------------------------------


def compact_ids(labels: NDArray[Any]) -> tuple[NDArray[np.int64], NDArray[np.integer[Any]]]:
    """The distinct ids of ``labels`` (sorted, ``ids[0] == 0`` always) and each pixel's index.

    ``ids[index] == labels``; index 0 is the background even when ``labels``
    holds no 0. Non-negative integer labels are numbered by a hash
    (:func:`cellcrowd.decode.rank_ids`, a ``uint32`` index: no sort over the pixels).

    >>> ids, index = compact_ids(np.array([[7, 0], [3, 7]]))
    >>> ids.tolist(), index.tolist()
    ([0, 3, 7], [[2, 0], [1, 2]])
    """
    labels = np.asarray(labels)
    if labels.dtype.kind in "ui" and labels.size and labels.min() >= 0:
        index, count = rank_ids(labels)
        ids = np.zeros(count + 1, dtype=np.int64)
        ids[index] = labels
        return ids, index
    uniq, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.reshape(labels.shape)
    if uniq.size == 0 or uniq[0] != 0:
        uniq = np.concatenate([[0], uniq])
        inverse = inverse + 1
    return uniq.astype(np.int64), inverse


def first_appearance(flat: NDArray[Any]
                     ) -> tuple[NDArray[np.int32], NDArray[np.int64], NDArray[np.int64]]:
    """Ids ``1..n`` numbered by each id's first pixel (0 stays 0), the old ids and the areas.

    Returns ``(compact, ids, areas)``: ``compact`` has the shape of ``flat``;
    ``ids[c - 1]`` is the old id and ``areas[c - 1]`` the pixels of compact id ``c``.

    >>> compact, ids, areas = first_appearance(np.array([0, 9, 4, 9, 0, 4, 4]))
    >>> compact.tolist(), ids.tolist(), areas.tolist()
    ([0, 1, 2, 1, 0, 2, 2], [9, 4], [2, 3])
    """
    fg = np.flatnonzero(flat)
    values, first, inverse, counts = np.unique(
        flat.ravel()[fg], return_index=True, return_inverse=True, return_counts=True)
    order = np.argsort(first, kind="stable")
    lut = np.empty(values.size, dtype=np.int32)
    lut[order] = np.arange(1, order.size + 1, dtype=np.int32)
    compact = np.zeros(flat.shape, dtype=np.int32)
    compact.ravel()[fg] = lut[inverse.ravel()]
    return compact, values[order].astype(np.int64), counts[order].astype(np.int64)


# -- overlap tables ---------------------------------------------------------------------


@dataclass(frozen=True)
class Overlap:
    """Pixel counts of two label arrays over the same pixels (a sparse overlap table).

    Attributes
    ----------
    a, b : ndarray of intp
        The labels of every pair sharing pixels (both non-zero), sorted by ``(a, b)``.
    inter : ndarray of int64
        The pixels each pair shares.
    area_a, area_b : ndarray of int64
        The pixels of every label (index = label; index 0 is the background).
    """

    a: NDArray[np.intp]
    b: NDArray[np.intp]
    inter: NDArray[np.int64]
    area_a: NDArray[np.int64]
    area_b: NDArray[np.int64]

    @property
    def iou(self) -> NDArray[np.float64]:
        """Intersection over union of every pair."""
        union = self.area_a[self.a] + self.area_b[self.b] - self.inter
        iou: NDArray[np.float64] = self.inter / np.maximum(union, 1)
        return iou

    @property
    def cover(self) -> NDArray[np.float64]:
        """The share of the smaller label of every pair that the pair's pixels cover."""
        cover: NDArray[np.float64] = self.inter / np.minimum(self.area_a[self.a],
                                                             self.area_b[self.b])
        return cover


def overlap(a: NDArray[Any], b: NDArray[Any], na: int | None = None,
            nb: int | None = None) -> Overlap:
    """The overlap table of two label arrays of one shape (non-negative ints, 0 background).

    ``na`` and ``nb`` are the sizes of the area tables (at least the largest
    label + 1; default exactly that). Labels are best compact
    (:func:`compact_ids`, :func:`first_appearance`): the tables are that long.

    >>> ov = overlap(np.array([1, 1, 2, 0]), np.array([3, 0, 3, 3]))
    >>> ov.a.tolist(), ov.b.tolist(), ov.inter.tolist(), ov.iou.round(2).tolist()
    ([1, 2], [3, 3], [1, 1], [0.25, 0.33])
    """
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    if a.shape != b.shape:
        raise ValueError(f"label arrays of {a.size} and {b.size} pixels: they must be the "
                         "same size")
    na = int(a.max(initial=0)) + 1 if na is None else na
    nb = int(b.max(initial=0)) + 1 if nb is None else nb
    both = (a > 0) & (b > 0)
    keys, counts = np.unique(a[both].astype(np.int64) * nb + b[both], return_counts=True)
    return Overlap(
        a=(keys // nb).astype(np.intp),
        b=(keys % nb).astype(np.intp),
        inter=counts.astype(np.int64),
        area_a=np.bincount(a, minlength=na).astype(np.int64),
        area_b=np.bincount(b, minlength=nb).astype(np.int64),
    )


class OverlapSum:
    """The overlap table of two label movies, summed one pair of frames at a time.

    Frames keep their own ids (any non-negative integers) while they are added;
    :meth:`table` then gives the :class:`Overlap` of the whole movies in the
    compact ids of :func:`compact_ids`: what :func:`overlap` gives for the two
    movies' compact indices, without either movie in memory.

    >>> acc = OverlapSum()
    >>> acc.add(np.array([7, 7, 0]), np.array([2, 0, 2]))
    >>> acc.add(np.array([7, 9, 9]), np.array([2, 2, 2]))
    >>> ov = acc.table(np.array([0, 7, 9]), np.array([0, 2]))
    >>> ov.a.tolist(), ov.b.tolist(), ov.inter.tolist(), ov.area_a.tolist()
    ([1, 2], [1, 1], [2, 2], [1, 3, 2])
    """

    def __init__(self) -> None:
        self._pairs: list[tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]] = []
        self._areas: tuple[list[tuple[NDArray[np.int64], NDArray[np.int64]]], ...] = ([], [])

    def add(self, a: NDArray[Any], b: NDArray[Any]) -> None:
        """Add one pair of frames (label arrays of one shape)."""
        (ids_a, ia), (ids_b, ib) = compact_ids(a), compact_ids(b)
        ov = overlap(ia, ib, ids_a.size, ids_b.size)
        self._pairs.append((ids_a[ov.a], ids_b[ov.b], ov.inter))
        for ids, area, areas in ((ids_a, ov.area_a, self._areas[0]),
                                 (ids_b, ov.area_b, self._areas[1])):
            held = np.flatnonzero(area)
            areas.append((ids[held], area[held]))

    def table(self, ids_a: NDArray[Any], ids_b: NDArray[Any]) -> Overlap:
        """The summed table in the indices of ``ids_a`` and ``ids_b``: the sorted distinct
        ids of each movie, ``ids[0] == 0`` (as :func:`compact_ids` returns them).

        Raises
        ------
        ValueError
            A frame added held an id its list lacks.
        """
        nb = ids_b.size
        keys = np.zeros(0, dtype=np.int64)
        inter = np.zeros(0, dtype=np.int64)
        if self._pairs:
            a, b, counts = (np.concatenate(c) for c in zip(*self._pairs, strict=True))
            keys, inverse = np.unique(_index_of(ids_a, a) * nb + _index_of(ids_b, b),
                                      return_inverse=True)
            inter = np.zeros(keys.size, dtype=np.int64)
            np.add.at(inter, inverse.ravel(), counts)
        return Overlap(a=(keys // nb).astype(np.intp), b=(keys % nb).astype(np.intp),
                       inter=inter, area_a=_summed(ids_a, self._areas[0]),
                       area_b=_summed(ids_b, self._areas[1]))


def _index_of(ids: NDArray[Any], values: NDArray[Any]) -> NDArray[np.int64]:
    """Where each value sits in the sorted ``ids``; ValueError when one is not there."""
    index = np.searchsorted(ids, values)
    if np.any(index >= ids.size) or np.any(ids[np.minimum(index, ids.size - 1)] != values):
        raise ValueError("the frames hold ids the id list lacks")
    return index.astype(np.int64)


def _summed(ids: NDArray[Any], areas: list[tuple[NDArray[np.int64], NDArray[np.int64]]]
            ) -> NDArray[np.int64]:
    total = np.zeros(ids.size, dtype=np.int64)
    if areas:
        values, counts = (np.concatenate(c) for c in zip(*areas, strict=True))
        np.add.at(total, _index_of(ids, values), counts)
    return total


def best_partners(ov: Overlap) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Every first label that shares pixels, and the second label it shares most with.

    Ties go to the smaller second label; the first labels come sorted.

    >>> best_partners(overlap(np.array([5, 5, 5, 6]), np.array([2, 1, 1, 2])))
    (array([5, 6]), array([1, 2]))
    """
    order = np.lexsort((ov.b, -ov.inter, ov.a))
    first = np.ones(order.size, dtype=bool)
    first[1:] = ov.a[order[1:]] != ov.a[order[:-1]]
    return ov.a[order[first]], ov.b[order[first]]


# -- assignment -------------------------------------------------------------------------


def _solve(rows: NDArray[Any], cols: NDArray[Any], scores: NDArray[np.float64],
           min_score: float) -> tuple[NDArray[Any], NDArray[Any], NDArray[np.float64]]:
    """One Hungarian assignment over a dense matrix of the pairs (0 where no pair)."""
    urows, ri = np.unique(rows, return_inverse=True)
    ucols, ci = np.unique(cols, return_inverse=True)
    matrix = np.zeros((urows.size, ucols.size))
    matrix[ri.ravel(), ci.ravel()] = scores
    r, c = linear_sum_assignment(matrix, maximize=True)
    keep = matrix[r, c] >= min_score
    return urows[r[keep]], ucols[c[keep]], matrix[r[keep], c[keep]]


def assign(rows: NDArray[Any], cols: NDArray[Any], scores: NDArray[np.float64],
           min_score: float, *, split: bool = True
           ) -> tuple[NDArray[Any], NDArray[Any], NDArray[np.float64]]:
    """Hungarian assignment maximising the total score over pairs scoring >= ``min_score``.

    Parameters
    ----------
    rows, cols : ndarray of int
        The candidate pairs (each pair at most once; any non-negative ids).
    scores : ndarray of float
        The score of every pair.
    min_score : float
        Pairs scoring less are no candidates; must be above 0.
    split : bool
        Solve each connected group of pairs on its own (a cell that overlaps
        nothing else is a group of one pair): much faster on large sparse tables.
        The total is the same optimum either way; when several assignments reach
        it (exact ties) the two ways may pick different ones.

    Returns
    -------
    rows, cols, scores : ndarray
        The assigned pairs (each row and each column at most once). With
        ``split=False`` they come sorted by row; with ``split=True`` the lone
        pairs come first (in input order), then each group's pairs sorted by row.

    >>> assign(np.array([1, 1, 2]), np.array([7, 8, 7]), np.array([0.9, 0.5, 0.6]), 0.1)
    (array([1, 2]), array([8, 7]), array([0.5, 0.6]))
    """
    if not min_score > 0:
        raise ValueError(f"min_score must be above 0, got {min_score!r}")
    ok = scores >= min_score
    rows, cols, scores = rows[ok], cols[ok], scores[ok]
    if not rows.size:
        return rows, cols, scores
    if not split:
        return _solve(rows, cols, scores, min_score)
    urows, ri = np.unique(rows, return_inverse=True)
    ucols, ci = np.unique(cols, return_inverse=True)
    ri, ci = ri.ravel(), ci.ravel()
    size = urows.size + ucols.size
    graph = coo_matrix((np.ones(ri.size), (ri, urows.size + ci)), shape=(size, size))
    _, component = connected_components(graph, directed=False)
    pair_component = component[ri]
    pairs_in = np.bincount(pair_component, minlength=size)
    single = pairs_in[pair_component] == 1
    out_r, out_c, out_s = [urows[ri[single]]], [ucols[ci[single]]], [scores[single]]
    for comp in np.flatnonzero(pairs_in > 1).tolist():
        sel = np.flatnonzero(pair_component == comp)
        r, c, s = _solve(rows[sel], cols[sel], scores[sel], min_score)
        out_r.append(r)
        out_c.append(c)
        out_s.append(s)
    return np.concatenate(out_r), np.concatenate(out_c), np.concatenate(out_s)


# -- constrained union-find -------------------------------------------------------------


class OwnerUnionFind:
    """Union-find over nodes of owners that never puts two nodes of one owner together.

    Node ``n`` belongs to owner ``owner[n]`` (the tile or annotator whose cell it
    is). A group holds at most one node per owner: a join that would break this
    is refused and reported.

    >>> uf = OwnerUnionFind([0, 0, 1])
    >>> uf.union(0, 2), uf.union(1, 2)
    (None, (1, 0))
    >>> uf.groups().tolist()
    [0, 1, 0]
    """

    def __init__(self, owner: Sequence[int] | NDArray[np.integer[Any]]) -> None:
        self.parent = list(range(len(owner)))
        self.members: dict[int, dict[int, int]] = {
            n: {int(o): n} for n, o in enumerate(owner)
        }

    @property
    def count(self) -> int:
        """Number of nodes."""
        return len(self.parent)

    def find(self, node: int) -> int:
        """The root of ``node``'s group."""
        parent = self.parent
        root = node
        while parent[root] != root:
            root = parent[root]
        while parent[node] != root:  # path compression
            parent[node], node = root, parent[node]
        return root

    def union(self, a: int, b: int) -> tuple[int, int] | None:
        """Join the groups of ``a`` and ``b``; on a clash, return two nodes of one owner.

        Returns None when the groups are joined (or already one); otherwise
        ``(node of a's group, node of b's group)`` of an owner both groups hold,
        and the groups stay apart.
        """
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return None
        ma, mb = self.members[ra], self.members[rb]
        for owner in ma.keys() & mb.keys():
            return ma[owner], mb[owner]
        if len(ma) < len(mb):
            ra, rb, ma, mb = rb, ra, mb, ma
        self.parent[rb] = ra
        ma.update(mb)
        del self.members[rb]
        return None

    def join_all(self, a: NDArray[Any], b: NDArray[Any], score: NDArray[Any]
                 ) -> list[tuple[int, tuple[int, int]]]:
        """Join the pairs ``(a[e], b[e])`` by decreasing score (ties: by ``a``, then ``b``).

        Returns the refused pairs as ``(e, clash)`` in the order they were tried,
        ``clash`` as :meth:`union` returns it.
        """
        refused = []
        for e in np.lexsort((b, a, -np.asarray(score))).tolist():
            clash = self.union(int(a[e]), int(b[e]))
            if clash is not None:
                refused.append((e, clash))
        return refused

    def groups(self) -> NDArray[np.int64]:
        """The group of every node, groups numbered ``0..k-1`` by their smallest node."""
        if not self.parent:
            return np.zeros(0, dtype=np.int64)
        roots = np.array([self.find(n) for n in range(self.count)], dtype=np.int64)
        _, first, inverse = np.unique(roots, return_index=True, return_inverse=True)
        rank = np.empty(first.size, dtype=np.int64)
        rank[np.argsort(first, kind="stable")] = np.arange(first.size)
        out: NDArray[np.int64] = rank[inverse.ravel()]
        return out
