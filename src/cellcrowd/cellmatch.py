"""Matching cells across annotators of one montage (the first step of a consensus).

Ids are montage-wide (one id per cell across a montage's frames), so cells are
compared as whole-montage masks. Two cells of different annotators may be the
same cell when

* their IoU is at least ``min_iou``, or (with ``min_cover``)
* the overlap covers at least ``min_cover`` of the smaller cell: small and
  edge cells drawn with a pixel of difference have a low IoU but lie almost
  wholly in each other.

Every pair of annotators is matched by Hungarian assignment (maximum total IoU)
over their eligible pairs, and the matched pairs are joined into groups (one
group per consensus candidate), highest IoU first, never putting two cells of
one annotator together.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

__all__ = ["Cells", "assign", "compact", "match_cells", "overlap_iou", "pair_ious"]


@dataclass(frozen=True)
class Cells:
    """One annotator's labels as compact ids ``1..n`` numbered by first appearance."""

    compact: NDArray[np.int32]  # flat, 0 background
    ids: NDArray[np.int64]  # original id of compact id c at [c - 1]
    areas: NDArray[np.int64]  # pixels of compact id c at [c - 1]

    @property
    def count(self) -> int:
        return int(self.ids.size)

    def key(self) -> bytes:
        """Hash of the labels, the same whatever ids the annotator used."""
        return hashlib.blake2b(self.compact.astype("<i4").tobytes(), digest_size=16).digest()


def compact(flat: NDArray[np.generic]) -> Cells:
    fg = np.flatnonzero(flat)
    values, first, inverse, counts = np.unique(
        flat[fg], return_index=True, return_inverse=True, return_counts=True)
    order = np.argsort(first, kind="stable")
    lut = np.empty(values.size, dtype=np.int32)
    lut[order] = np.arange(1, order.size + 1, dtype=np.int32)
    compact = np.zeros(flat.shape, dtype=np.int32)
    compact[fg] = lut[inverse.ravel()]
    return Cells(compact, values[order].astype(np.int64), counts[order].astype(np.int64))


def overlap_iou(a: Cells, b: Cells) -> tuple[NDArray[np.int64], NDArray[np.int64],
                                            NDArray[np.float64]]:
    """Pairs (cell of ``a``, cell of ``b``) that share pixels, and their IoU (sparse)."""
    rows, cols, iou, _ = _overlaps(a, b)
    return rows, cols, iou


def _overlaps(a: Cells, b: Cells) -> tuple[NDArray[np.int64], NDArray[np.int64],
                                          NDArray[np.float64], NDArray[np.float64]]:
    """As :func:`overlap_iou`, with the share of the smaller cell the overlap covers."""
    both = (a.compact > 0) & (b.compact > 0)
    stride = np.int64(b.count + 1)
    packed = a.compact[both].astype(np.int64) * stride + b.compact[both]
    pairs, inter = np.unique(packed, return_counts=True)
    rows, cols = pairs // stride, pairs % stride
    area_a, area_b = a.areas[rows - 1], b.areas[cols - 1]
    return (rows, cols, inter / (area_a + area_b - inter),
            inter / np.minimum(area_a, area_b))


def assign(rows: NDArray[np.int64], cols: NDArray[np.int64], scores: NDArray[np.float64],
            min_score: float) -> tuple[NDArray[np.int64], NDArray[np.int64],
                                       NDArray[np.float64]]:
    """Hungarian assignment maximising the total score over pairs scoring >= ``min_score``.

    The pairs fall apart into independent groups (cells that overlap nothing else
    form a group of one pair); each group of several pairs is solved on its own.
    """
    ok = scores >= min_score
    rows, cols, scores = rows[ok], cols[ok], scores[ok]
    if not rows.size:
        return rows, cols, scores
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
        sub_r, r_idx = np.unique(ri[sel], return_inverse=True)
        sub_c, c_idx = np.unique(ci[sel], return_inverse=True)
        matrix = np.zeros((sub_r.size, sub_c.size))
        matrix[r_idx.ravel(), c_idx.ravel()] = scores[sel]
        r, c = linear_sum_assignment(matrix, maximize=True)
        keep = matrix[r, c] >= min_score
        out_r.append(urows[sub_r[r[keep]]])
        out_c.append(ucols[sub_c[c[keep]]])
        out_s.append(matrix[r[keep], c[keep]])
    return np.concatenate(out_r), np.concatenate(out_c), np.concatenate(out_s)


def _eligible(a: Cells, b: Cells, min_iou: float, min_cover: float | None
              ) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64]]:
    """Matched pairs of two annotators: Hungarian on IoU over the eligible pairs."""
    rows, cols, iou, cover = _overlaps(a, b)
    ok = iou >= min_iou
    if min_cover is not None:
        ok |= cover >= min_cover
    # Eligible pairs score their IoU; nudged up so that every one of them passes.
    score = np.where(ok, np.maximum(iou, np.nextafter(0.0, 1.0)), 0.0)
    return assign(rows, cols, score, np.nextafter(0.0, 1.0))


def match_cells(cells: list[Cells], weights: list[float], min_iou: float,
                min_cover: float | None = None
                ) -> tuple[list[NDArray[np.int64]], NDArray[np.float64]]:
    """Group cells across annotators (see the module docstring).

    Returns, per annotator, the group of each compact id (index ``c``; entry 0
    unused) and each group's support (summed ``weights`` of its members).
    """
    offsets = np.cumsum([0] + [c.count for c in cells])
    owner = np.repeat(np.arange(len(cells)), [c.count for c in cells])
    found: list[tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64]]] = []
    for j, k in itertools.combinations(range(len(cells)), 2):
        r, c, iou = _eligible(cells[j], cells[k], min_iou, min_cover)
        found.append((offsets[j] + r - 1, offsets[k] + c - 1, iou))
    parent = list(range(int(offsets[-1])))
    seen = [1 << int(k) for k in owner]  # annotators in each root's group (bit mask)

    def root(node: int) -> int:
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    if found:
        a, b, iou = (np.concatenate(x) for x in zip(*found, strict=True))
        for e in np.lexsort((b, a, -iou)).tolist():
            ra, rb = root(int(a[e])), root(int(b[e]))
            if ra != rb and not seen[ra] & seen[rb]:
                low, high = min(ra, rb), max(ra, rb)
                parent[high] = low
                seen[low] |= seen[high]
    roots = np.array([root(n) for n in range(len(parent))], dtype=np.int64)
    _, group = np.unique(roots, return_inverse=True)
    group = group.ravel().astype(np.int64)
    support = np.bincount(group, weights=np.asarray(weights)[owner])
    group_of = [np.concatenate([[-1], group[offsets[k]:offsets[k + 1]]]).astype(np.int64)
                for k in range(len(cells))]
    return group_of, support.astype(np.float64)


def pair_ious(cells: list[Cells], group_of: list[NDArray[np.int64]], groups: int
              ) -> NDArray[np.float64]:
    """IoU of every two annotators' cells in each group, shape ``(groups, A, A)``.

    Entry ``[g, j, k]`` is the IoU of the cells of annotators ``j`` and ``k`` in
    group ``g`` (0 when one of them has no cell there; 1 on the diagonal when
    annotator ``j`` has one).
    """
    count = len(cells)
    member = np.zeros((groups, count), dtype=np.int64)  # compact id, 0: none
    for k, g in enumerate(group_of):
        member[g[1:], k] = np.arange(1, g.size)
    out = np.zeros((groups, count, count))
    for k in range(count):
        out[:, k, k] = member[:, k] > 0
    for j, k in itertools.combinations(range(count), 2):
        rows, cols, iou = overlap_iou(cells[j], cells[k])
        stride = np.int64(cells[k].count + 1)
        keys = rows * stride + cols
        both = np.flatnonzero((member[:, j] > 0) & (member[:, k] > 0))
        want = member[both, j] * stride + member[both, k]
        if keys.size:
            pos = np.minimum(np.searchsorted(keys, want), keys.size - 1)
            out[both, j, k] = out[both, k, j] = np.where(keys[pos] == want, iou[pos], 0.0)
    return out
