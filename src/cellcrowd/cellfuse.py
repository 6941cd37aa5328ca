"""Fusing the pixels of matched cells (the last step of a consensus).

Each pixel goes to the kept group (consensus cell) with the largest summed
weight of annotators who put it in their cell of that group; a group takes a
pixel only when that weight is more than ``min_support`` of the group's
support (the summed weight of its members). Ties go to the lower group index.

With ``smooth=True`` (a STAPLE-like fusion with a neighbourhood prior) a pixel
whose vote share is a near tie (within :data:`TIE_BAND` of ``min_support``) is
in when the mean of the group's vote share over its 3x3 neighbourhood within
the frame is at least ``min_support``. Two annotators of about equal weight who
drew a boundary a pixel or two apart then meet halfway, instead of keeping only
the pixels both drew (or only one annotator's).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from .cellmatch import Cells

__all__ = ["TIE_BAND", "fuse_pixels"]

#: Vote shares this close to ``min_support`` count as a tie (``smooth``).
TIE_BAND = 0.1
_OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]


def _neighbourhood_share(stacked: NDArray[np.int64], share: NDArray[np.float64],
                         fg: NDArray[np.intp], frames: tuple[int, int, int],
                         who: NDArray[np.intp], where: NDArray[np.intp]
                         ) -> NDArray[np.float64]:
    """Mean over the 3x3 neighbourhood (in the frame) of the vote share of the group
    ``stacked[who, where]`` (entries of the foreground pixels ``fg``)."""
    group = stacked[who, where]
    z, y, x = np.unravel_index(fg[where], frames)
    total = np.zeros(where.size)
    count = np.zeros(where.size)
    for dy, dx in _OFFSETS:
        ny, nx = y + dy, x + dx
        inside = (ny >= 0) & (ny < frames[1]) & (nx >= 0) & (nx < frames[2])
        count += inside
        q = np.ravel_multi_index((z, np.clip(ny, 0, frames[1] - 1),
                                  np.clip(nx, 0, frames[2] - 1)), frames)
        pos = np.minimum(np.searchsorted(fg, q), fg.size - 1)
        there = inside & (fg[pos] == q)
        same = stacked[:, pos] == group  # (annotators, entries)
        value = np.where(same, share[:, pos], 0.0).max(axis=0)
        total += np.where(there, value, 0.0)
    return total / np.maximum(count, 1)


def fuse_pixels(cells: list[Cells], weights: list[float], group_of: list[NDArray[np.int64]],
                support: NDArray[np.float64], kept: NDArray[np.bool_], min_support: float,
                tol: float, *, frames: tuple[int, int, int] | None = None,
                smooth: bool = False) -> NDArray[np.int64]:
    """The winning group per pixel (-1: background), see the module docstring.

    ``frames`` is ``(frames, rows, cols)`` of the flat labels (needed for ``smooth``).
    """
    if not support.size:
        return np.full(cells[0].compact.shape if cells else (0,), -1, dtype=np.int64)
    stacked = np.stack([np.where(kept[g], g, -1)[c.compact] if g.size > 1
                        else np.full(c.compact.shape, -1, dtype=np.int64)
                        for c, g in zip(cells, group_of, strict=True)])
    winner = np.full(stacked.shape[1], -1, dtype=np.int64)
    fg = np.flatnonzero((stacked >= 0).any(axis=0))
    stacked = stacked[:, fg]
    votes = np.zeros(stacked.shape, dtype=np.float64)
    for a in range(len(cells)):
        for b in range(len(cells)):
            votes[a] += weights[b] * (stacked[b] == stacked[a])
    group_support = support[np.maximum(stacked, 0)]
    voted = (stacked >= 0) & (votes > min_support * group_support + tol)
    if smooth and frames is not None:
        share = np.where(stacked >= 0, votes / np.maximum(group_support, tol), 0.0)
        near_tie = np.abs(share - min_support) <= TIE_BAND
        who, where = np.nonzero((stacked >= 0) & near_tie)
        near = _neighbourhood_share(stacked, share, fg, frames, who, where)
        voted[who, where] = near >= min_support - tol
    votes = np.where(voted, votes, -np.inf)
    best = votes.max(axis=0)
    chosen = np.where(votes == best, stacked, np.iinfo(np.int64).max).min(axis=0)
    winner[fg] = np.where(np.isfinite(best), chosen, -1)
    return winner
