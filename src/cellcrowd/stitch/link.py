"""Across parts: consecutive stitched parts -> one movie where every cell keeps its id.

Part ``N + 1`` starts right after part ``N``. Each cell of part ``N``'s last
frame is linked to a cell of part ``N + 1``'s first frame by IoU (Hungarian
assignment, ``min_iou``, :func:`cellcrowd.match.assign`); a link is not made
when either cell reaches ``min_iou`` with another cell too (ambiguous,
reported). A cell that holds two or more cells of the next frame (each at least
``min_inside`` of its area inside it and covering at least ``min_share`` of the
cell) divides into them instead. A linked cell keeps one id for the whole movie;
ids are renumbered globally.

:func:`link_parts` links a list of parts; :class:`PartLinker` does the same one
part at a time (holding only the last frame linked so far), as
:func:`cellcrowd.stitch.stitch_movies` streams parts to disk.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..match import assign, compact_ids, overlap
from .common import check_fraction, check_labels, dividing_cells

__all__ = ["AmbiguousLink", "LinkReport", "PartLinker", "link_parts"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AmbiguousLink:
    """A cell at a part boundary left unlinked because another cell competes for it.

    ``frame`` is the first frame of the later part; ``before`` is the cell's
    (global) id in the frame before, ``after`` the ids (local to the later part)
    of the cells it reaches ``min_iou`` with, or the reverse.
    """

    frame: int
    before: tuple[int, ...]
    after: tuple[int, ...]


@dataclass(frozen=True)
class LinkReport:
    """What :func:`link_parts` did.

    Attributes
    ----------
    starts : tuple of int
        The first movie frame of every part.
    id_maps : tuple of dict
        For every part, its own labels -> the movie's labels.
    links : tuple of int
        Cells carried over each boundary (one entry per boundary).
    parents : dict
        Daughter -> parent (movie labels) for divisions at part boundaries.
    division_frames : dict
        Parent -> first frame of its daughters, for those divisions.
    ambiguous : tuple of AmbiguousLink
        Links not made because two cells competed.
    """

    starts: tuple[int, ...]
    id_maps: tuple[dict[int, int], ...]
    links: tuple[int, ...]
    parents: dict[int, int] = field(default_factory=dict)
    division_frames: dict[int, int] = field(default_factory=dict)
    ambiguous: tuple[AmbiguousLink, ...] = ()


def link_parts(
    parts: Sequence[NDArray[Any]],
    *,
    min_iou: float = 0.3,
    min_inside: float = 0.5,
    min_share: float = 0.2,
) -> tuple[NDArray[np.int32], LinkReport]:
    """Join consecutive parts into one movie where each cell keeps one id throughout.

    Parameters
    ----------
    parts : sequence of (T_i, H, W) int arrays
        Stitched label frames of consecutive parts, each with ids consistent
        across its own frames.
    min_iou : float
        Smallest IoU between a cell of a part's last frame and a cell of the next
        part's first frame for them to be one cell. A link is not made when
        either cell reaches ``min_iou`` with a second cell (ambiguous).
    min_inside, min_share : float
        A cell divides into two or more cells of the next frame that each lie at
        least ``min_inside`` inside it and cover at least ``min_share`` of it.

    Returns
    -------
    movie : (sum T_i, H, W) int32 array
        Labels numbered 1..n across the movie.
    report : LinkReport
        Per-part id maps, links per boundary, divisions at boundaries, ambiguous cells.

    Raises
    ------
    TypeError
        A part does not hold integers.
    ValueError
        No parts, a part is not 3-D or has another frame size, or a threshold is
        outside (0, 1].

    Examples
    --------
    >>> a = np.array([[[1, 1, 0, 0]]])          # one frame, one cell
    >>> b = np.array([[[0, 7, 7, 0]], [[0, 0, 7, 7]]])
    >>> movie, report = link_parts([a, b])
    >>> movie[:, 0]
    array([[1, 1, 0, 0],
           [0, 1, 1, 0],
           [0, 0, 1, 1]], dtype=int32)
    >>> report.links
    (1,)
    """
    if len(parts) == 0:
        raise ValueError("link_parts needs at least one part")
    arrays = [check_labels(p, 3, f"part {i + 1}") for i, p in enumerate(parts)]
    for i, arr in enumerate(arrays, start=1):
        if arr.shape[0] == 0:
            raise ValueError(f"part {i} has no frames")
        if arr.shape[1:] != arrays[0].shape[1:]:
            raise ValueError(f"part {i} has frames of {arr.shape[1:]}, part 1 of "
                             f"{arrays[0].shape[1:]}: parts must come from one movie")
    for name, value in (("min_iou", min_iou), ("min_inside", min_inside),
                        ("min_share", min_share)):
        check_fraction(name, value)
    total = sum(arr.shape[0] for arr in arrays)
    movie = np.zeros((total, *arrays[0].shape[1:]), dtype=np.int32)
    linker = PartLinker(min_iou=min_iou, min_inside=min_inside, min_share=min_share)
    for arr in arrays:
        start = linker.start
        movie[start:start + arr.shape[0]] = linker.add(arr)
    return movie, linker.report()


class PartLinker:
    """:func:`link_parts` one part at a time, holding only the last frame linked so far.

    ``add`` takes the next part and returns it with movie ids; ``report`` says
    what was done so far. :func:`link_parts` and
    :func:`cellcrowd.stitch.stitch_movies` (which streams parts to disk) both
    link through it. Nothing is checked here: parts must be ``(T, H, W)``
    arrays of non-negative integer labels with one frame size, and the
    thresholds in (0, 1], as :func:`link_parts` makes sure.
    """

    def __init__(self, *, min_iou: float, min_inside: float, min_share: float) -> None:
        self.min_iou, self.min_inside, self.min_share = min_iou, min_inside, min_share
        self.last: NDArray[Any] | None = None  # the last frame so far, movie ids
        self.next_id = 1
        self.start = 0
        self.starts: list[int] = []
        self.id_maps: list[dict[int, int]] = []
        self.links: list[int] = []
        self.parents: dict[int, int] = {}
        self.division_frames: dict[int, int] = {}
        self.ambiguous: list[AmbiguousLink] = []

    def add(self, arr: NDArray[Any]) -> NDArray[np.int32]:
        """The next part (T_i, H, W) relabelled with movie ids, links and divisions recorded."""
        uniq, inverse = compact_ids(arr)
        ids = self._movie_ids(uniq, arr[0])
        out: NDArray[np.int32] = ids[inverse].astype(np.int32)
        self.end_part(out[-1], arr.shape[0])
        return out

    def add_numbered(self, first: NDArray[Any], cells: int) -> NDArray[np.int64]:
        """The next part, numbered ``1..cells`` with every id present, given by its first
        frame: returns the table of its ids -> movie ids (``table[0] == 0``).

        The caller maps the part's frames through the table, one at a time, and then
        calls :meth:`end_part`. What is linked and recorded is exactly what :meth:`add`
        does for the whole part.
        """
        return self._movie_ids(np.arange(cells + 1, dtype=np.int64), first)

    def end_part(self, last: NDArray[Any], frames: int) -> None:
        """The part just added ended with frame ``last`` (movie ids) and had ``frames``."""
        self.last = np.array(last, copy=True)  # not a view keeping the part alive
        self.start += frames

    def _movie_ids(self, uniq: NDArray[np.int64], first: NDArray[Any]) -> NDArray[np.int64]:
        """Movie ids for the part's distinct ids ``uniq`` (sorted, ``uniq[0] == 0``)."""
        start = self.start
        new = np.zeros(uniq.size, dtype=np.int64)
        link = None
        if self.last is not None:
            link = _link_frames(self.last, first, start, uniq, min_iou=self.min_iou,
                                min_inside=self.min_inside, min_share=self.min_share)
            for local, glob in link.continued.items():
                new[int(np.searchsorted(uniq, local))] = glob
            self.links.append(len(link.continued))
            self.ambiguous.extend(link.ambiguous)
        fresh = np.flatnonzero(new[1:] == 0) + 1  # cells starting here: the next ids, in order
        new[fresh] = np.arange(self.next_id, self.next_id + fresh.size)
        self.next_id += fresh.size
        if link is not None:
            for parent, daughters in link.divisions.items():
                for local in daughters:
                    self.parents[int(new[int(np.searchsorted(uniq, local))])] = parent
                self.division_frames[parent] = start
        self.starts.append(start)
        self.id_maps.append({int(u): int(n) for u, n in zip(uniq[1:], new[1:], strict=True)})
        return new

    def report(self) -> LinkReport:
        """What was linked so far (the parts added, their id maps, links and divisions)."""
        report = LinkReport(tuple(self.starts), tuple(self.id_maps), tuple(self.links),
                            dict(self.parents), dict(self.division_frames),
                            tuple(self.ambiguous))
        logger.info("linked %d parts: %s cells carried over, %d divisions at boundaries, "
                    "%d ambiguous", len(self.starts), list(self.links),
                    len(self.division_frames), len(self.ambiguous))
        return report


@dataclass(frozen=True)
class _FrameLink:
    continued: dict[int, int]  # local label in the later frame -> global label
    divisions: dict[int, list[int]]  # global parent -> local daughters
    ambiguous: list[AmbiguousLink]


def _link_frames(before: NDArray[Any], after: NDArray[Any], frame: int,
                 after_labels: NDArray[np.int64], *, min_iou: float, min_inside: float,
                 min_share: float) -> _FrameLink:
    """Links and divisions from one frame (global ids) to the next (local ids)."""
    ua, ia = compact_ids(before)
    ib = np.searchsorted(after_labels, after)
    ov = overlap(ia, ib, ua.size, after_labels.size)
    divisions = dividing_cells(ov, min_inside=min_inside, min_share=min_share)
    daughters = [b for bs in divisions.values() for b in bs]
    iou = ov.iou
    cand = (iou >= min_iou) & ~np.isin(ov.a, list(divisions)) & ~np.isin(ov.b, daughters)
    rows, cols = ov.a[cand], ov.b[cand]
    row_count = np.bincount(rows, minlength=ua.size)
    col_count = np.bincount(cols, minlength=after_labels.size)
    continued: dict[int, int] = {}
    ambiguous: list[AmbiguousLink] = []
    reported: set[tuple[tuple[int, ...], tuple[int, ...]]] = set()
    linked_a, linked_b, _ = assign(rows, cols, iou[cand], min_iou, split=False)
    for a, b in zip(linked_a.tolist(), linked_b.tolist(), strict=True):
        if row_count[a] == 1 and col_count[b] == 1:
            continued[int(after_labels[b])] = int(ua[a])
            continue
        rivals_b = cols[rows == a] if row_count[a] > 1 else np.array([b])
        rivals_a = rows[cols == b] if col_count[b] > 1 else np.array([a])
        key = (tuple(int(ua[r]) for r in sorted(rivals_a)),
               tuple(int(after_labels[c]) for c in sorted(rivals_b)))
        if key not in reported:
            reported.add(key)
            ambiguous.append(AmbiguousLink(frame, *key))
    return _FrameLink(
        continued=continued,
        divisions={int(ua[a]): [int(after_labels[b]) for b in bs]
                   for a, bs in divisions.items()},
        ambiguous=ambiguous,
    )
