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

from .match import OwnerUnionFind, assign, first_appearance, overlap

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
    """One annotator's flat labels as :class:`Cells` (:func:`cellcrowd.match.first_appearance`)."""
    return Cells(*first_appearance(flat))


def overlap_iou(a: Cells, b: Cells) -> tuple[NDArray[np.intp], NDArray[np.intp],
                                            NDArray[np.float64]]:
    """Pairs (cell of ``a``, cell of ``b``) that share pixels, and their IoU (sparse)."""
    ov = overlap(a.compact, b.compact, a.count + 1, b.count + 1)
    return ov.a, ov.b, ov.iou


def _eligible(a: Cells, b: Cells, min_iou: float, min_cover: float | None
              ) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.float64]]:
    """Matched pairs of two annotators: Hungarian on IoU over the eligible pairs."""
    ov = overlap(a.compact, b.compact, a.count + 1, b.count + 1)
    iou = ov.iou
    ok = iou >= min_iou
    if min_cover is not None:
        ok |= ov.cover >= min_cover
    # Eligible pairs score their IoU; nudged up so that every one of them passes.
    score = np.where(ok, np.maximum(iou, np.nextafter(0.0, 1.0)), 0.0)
    return assign(ov.a, ov.b, score, np.nextafter(0.0, 1.0))


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
    cells_of = OwnerUnionFind(owner)
    if found:
        a, b, iou = (np.concatenate(x) for x in zip(*found, strict=True))
        cells_of.join_all(a, b, iou)
    group = cells_of.groups()
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
