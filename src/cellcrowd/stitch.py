"""Tiles back into full frames, parts back into one movie, and the lineage of its cells.

Across tiles (:func:`stitch_tiles`)
    The annotated tiles of one part were painted independently, so the same
    cell has unrelated ids in different tiles; inside one tile its id is the
    same in every frame of the part (one montage). Cells cut by a tile border
    appear in two (or four) tiles. For every pair of neighbouring tiles the
    labels of both are compared on the pixels the two tiles share, summed over
    all frames of the part; pairs with an IoU of at least ``min_iou`` are
    matched 1:1 (Hungarian assignment). Matches are merged into physical cells
    by union-find in order of decreasing IoU; a match that would put two
    different ids *of the same tile* into one cell is refused and reported as a
    :class:`StitchConflict` (the cells stay separate). Each frame pixel then
    takes the cell of the tile whose core owns it (:meth:`TileGrid.core_window`).

Across parts (:func:`link_parts`)
    Part ``N + 1`` starts right after part ``N``. Each cell of part ``N``'s
    last frame is linked to a cell of part ``N + 1``'s first frame by IoU
    (Hungarian assignment, ``min_iou``); a link is not made when either cell
    reaches ``min_iou`` with another cell too (ambiguous, reported). A cell that
    holds two or more cells of the next frame (each at least ``min_inside`` of
    its area inside it and covering at least ``min_share`` of the cell) divides
    into them instead. A linked cell keeps one id for the whole movie; ids are
    renumbered globally.

Lineage (:func:`lineage_from_labels`)
    A DeepCell lineage (``label, frames, daughters, capped, frame_div,
    parent``) from label persistence, the divisions found at part boundaries
    and the divisions inside parts (a cell seen last in frame ``t`` whose last
    position holds two or more cells first seen in ``t + 1``). ``frame_div`` is
    the first frame in which the daughters exist (the parent's last frame + 1),
    as DeepCell's tracker records it; ``capped`` is true for a cell that divides.

Working folder (:func:`stitch_movies`)
    Reads ``movies/part{N}/x_XX_y_YY/annotated`` for every part, stitches and
    links them, and writes ``stitched/annotated`` (uint16 PNG),
    ``stitched/raw`` (TIFF copies of the raw frames) and
    ``stitched/lineage.json``. :func:`read_stitched` reads them back. It streams:
    each part is linked to the last frame of the part before (the same linking
    step as :func:`link_parts`) and written as it arrives, and the lineage is
    built frame by frame (the same search as :func:`lineage_from_labels`), so
    the whole label movie is never in memory.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastremap
import numpy as np
from numpy.typing import NDArray
from scipy.optimize import linear_sum_assignment

from .errors import InputError, LineageError
from .executor import Executor, run_tasks
from .files import atomic_write_text, list_images, read_image, write_image
from .geometry import Position, TileGrid
from .layout import WorkingFolder, part_of_montage

__all__ = [
    "AmbiguousLink",
    "LinkReport",
    "StitchConflict",
    "StitchMoviesResult",
    "StitchReport",
    "frames_per_label",
    "lineage_from_labels",
    "link_parts",
    "read_lineage",
    "read_stitched",
    "stitch_movies",
    "stitch_tiles",
]

logger = logging.getLogger(__name__)

Lineage = dict[int, dict[str, Any]]
_UINT16_MAX = int(np.iinfo(np.uint16).max)


# -- shared helpers ---------------------------------------------------------------------


def _check_labels(array: NDArray[Any], ndim: int, what: str) -> NDArray[Any]:
    array = np.asarray(array)
    if array.dtype.kind not in "ui":
        raise TypeError(f"{what} must hold integer labels, got dtype {array.dtype}")
    if array.ndim != ndim:
        raise ValueError(f"{what} must have {ndim} dimensions, got shape {array.shape}")
    if array.size and array.dtype.kind == "i" and int(array.min()) < 0:
        raise ValueError(f"{what} holds negative labels (min {array.min()}); 0 is background")
    return array


def _compact(labels: NDArray[Any]) -> tuple[NDArray[np.int64], NDArray[np.intp]]:
    """Unique labels (``uniq[0] == 0`` always) and each pixel's index into them."""
    uniq, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.reshape(labels.shape)
    if uniq.size == 0 or uniq[0] != 0:
        uniq = np.concatenate([[0], uniq])
        inverse = inverse + 1
    return uniq.astype(np.int64), inverse


@dataclass(frozen=True)
class _Overlap:
    """Pixel counts of two compact label arrays over the same pixels."""

    a: NDArray[np.intp]  # index of the first label of each overlapping pair
    b: NDArray[np.intp]
    inter: NDArray[np.int64]  # pixels of the pair
    area_a: NDArray[np.int64]  # pixels of every first label (index 0 = background)
    area_b: NDArray[np.int64]

    @property
    def iou(self) -> NDArray[np.float64]:
        union = self.area_a[self.a] + self.area_b[self.b] - self.inter
        iou: NDArray[np.float64] = self.inter / np.maximum(union, 1)
        return iou


def _overlap(a: NDArray[np.intp], b: NDArray[np.intp], na: int, nb: int) -> _Overlap:
    """Count pixels per pair of labels (vectorised: one ``np.unique`` of packed pairs)."""
    a, b = a.ravel(), b.ravel()
    both = (a > 0) & (b > 0)
    keys, counts = np.unique(a[both].astype(np.int64) * nb + b[both], return_counts=True)
    return _Overlap(
        a=(keys // nb).astype(np.intp),
        b=(keys % nb).astype(np.intp),
        inter=counts.astype(np.int64),
        area_a=np.bincount(a, minlength=na).astype(np.int64),
        area_b=np.bincount(b, minlength=nb).astype(np.int64),
    )


def _assign(rows: NDArray[np.intp], cols: NDArray[np.intp],
            score: NDArray[np.float64]) -> list[tuple[int, int, float]]:
    """Hungarian assignment maximising ``score`` over the given sparse candidate pairs."""
    if rows.size == 0:
        return []
    ur, ri = np.unique(rows, return_inverse=True)
    uc, ci = np.unique(cols, return_inverse=True)
    matrix = np.zeros((ur.size, uc.size))
    matrix[ri, ci] = score
    r, c = linear_sum_assignment(matrix, maximize=True)
    keep = matrix[r, c] > 0
    return [(int(ur[i]), int(uc[j]), float(matrix[i, j])) for i, j in zip(r[keep], c[keep],
                                                                           strict=True)]


# -- across tiles -----------------------------------------------------------------------


@dataclass(frozen=True)
class StitchConflict:
    """A match refused because it would give one cell two ids of the same tile.

    ``(tile_a, label_a)`` and ``(tile_b, label_b)`` matched with ``iou`` on their
    shared pixels, but their cells already hold labels ``clash`` of tile
    ``clash_tile``: one physical cell would have been matched to two different
    cells of that tile. The two cells are kept apart.
    """

    tile_a: Position
    label_a: int
    tile_b: Position
    label_b: int
    iou: float
    clash_tile: Position
    clash: tuple[int, int]

    def __str__(self) -> str:
        return (
            f"cell {self.label_a} of tile x={self.tile_a.x}, y={self.tile_a.y} matches cell "
            f"{self.label_b} of tile x={self.tile_b.x}, y={self.tile_b.y} (IoU {self.iou:.2f}) "
            f"but that would join cells {self.clash[0]} and {self.clash[1]} of tile "
            f"x={self.clash_tile.x}, y={self.clash_tile.y}; kept apart"
        )


@dataclass(frozen=True)
class StitchReport:
    """What :func:`stitch_tiles` did for one part.

    Attributes
    ----------
    cells : int
        Cells in the stitched frames.
    matches : int
        Accepted matches between cells of neighbouring tiles.
    unmatched : int
        Cells seen on pixels shared with a neighbour that matched nothing there.
    conflicts : tuple of StitchConflict
        Matches refused because they would join two cells of one tile.
    missing : tuple of Position
        Tiles that were absent; the pixels they own stay 0.
    """

    cells: int
    matches: int
    unmatched: int
    conflicts: tuple[StitchConflict, ...] = ()
    missing: tuple[Position, ...] = ()


def _shared_window(grid: TileGrid, a: Position, b: Position
                   ) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
    """Where the frame pixels both tiles cover sit inside tile ``a`` and tile ``b``."""
    (fa, ta), (fb, tb) = grid.frame_window(a), grid.frame_window(b)
    ys = slice(max(fa[0].start, fb[0].start), min(fa[0].stop, fb[0].stop))
    xs = slice(max(fa[1].start, fb[1].start), min(fa[1].stop, fb[1].stop))
    if ys.start >= ys.stop or xs.start >= xs.stop:
        return None

    def inside(f: tuple[slice, slice], t: tuple[slice, slice]) -> tuple[slice, slice]:
        dy, dx = t[0].start - f[0].start, t[1].start - f[1].start
        return slice(ys.start + dy, ys.stop + dy), slice(xs.start + dx, xs.stop + dx)

    return inside(fa, ta), inside(fb, tb)


class _Cells:
    """Union-find over (tile, label) nodes that never puts two labels of one tile together."""

    def __init__(self, tile_of: NDArray[np.intp]) -> None:
        self.parent = np.arange(tile_of.size)
        self.members: dict[int, dict[int, int]] = {
            int(n): {int(t): int(n)} for n, t in enumerate(tile_of)
        }

    def find(self, node: int) -> int:
        root = node
        while self.parent[root] != root:
            root = int(self.parent[root])
        while self.parent[node] != root:  # path compression
            self.parent[node], node = root, int(self.parent[node])
        return root

    def union(self, a: int, b: int) -> tuple[int, int] | None:
        """Join the cells of ``a`` and ``b``; on a clash return the two nodes of one tile."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return None
        ma, mb = self.members[ra], self.members[rb]
        for tile in ma.keys() & mb.keys():
            return ma[tile], mb[tile]
        if len(ma) < len(mb):
            ra, rb, ma, mb = rb, ra, mb, ma
        self.parent[rb] = ra
        ma.update(mb)
        del self.members[rb]
        return None


def _check_tiles(tiles: NDArray[Any], grid: TileGrid) -> NDArray[Any]:
    tiles = _check_labels(tiles, 5, "tiles")
    expected = (grid.num_y, grid.num_x, *grid.tile_shape)
    if tuple(tiles.shape[1:]) != expected:
        raise ValueError(
            f"tiles have shape {tiles.shape}, expected (frames, {', '.join(map(str, expected))})"
            " = (frames, num_y, num_x, tile rows, tile cols) for this tile grid"
        )
    return tiles


def stitch_tiles(
    tiles: NDArray[Any],
    grid: TileGrid,
    *,
    min_iou: float = 0.3,
    missing: Collection[Position] = (),
) -> tuple[NDArray[np.int32], StitchReport]:
    """Stitch the independently labelled tiles of one part into full-size label frames.

    Parameters
    ----------
    tiles : (T, num_y, num_x, th, tw) array of int
        The label tiles of one part. Inside a tile a cell keeps its id in every
        frame; ids of different tiles are unrelated.
    grid : TileGrid
        The grid the tiles were cut with.
    min_iou : float
        Smallest IoU (on the pixels two tiles share, over all frames) for two
        cells of neighbouring tiles to be the same cell. The shared strip often
        holds only part of a cell and annotators disagree about borders, so
        the IoU there is lower than a whole cell's: with tiles drawn 1 px too
        small next to tiles drawn 1 px too large, 0.5 splits cells that 0.3
        keeps whole (``tests/test_stitch.py``). Matches stay 1:1 (Hungarian),
        so a low threshold cannot join two cells of one tile.
    missing : collection of Position
        Tiles that do not exist (their entries in ``tiles`` are ignored); the
        pixels they own stay 0.

    Returns
    -------
    labels : (T, H, W) int32 array
        One id per physical cell, the same in every frame, numbered 1..n.
    report : StitchReport
        Matches, unmatched border cells, refused (conflicting) matches, missing tiles.

    Raises
    ------
    TypeError
        ``tiles`` does not hold integers.
    ValueError
        ``tiles`` does not fit the grid, holds negative labels, ``min_iou`` is
        outside (0, 1], or a missing position is outside the grid.

    Examples
    --------
    >>> grid = TileGrid.for_frame((2, 4), num_x=2, num_y=1, overlap_perc=50)
    >>> frame = np.array([[0, 3, 3, 0], [0, 3, 3, 4]])
    >>> tiles = grid.cut(frame)[None]            # one frame
    >>> tiles[0, 0, 1][tiles[0, 0, 1] > 0] += 10  # the right tile numbers its cells apart
    >>> labels, report = stitch_tiles(tiles, grid)
    >>> labels[0]
    array([[0, 1, 1, 0],
           [0, 1, 1, 2]], dtype=int32)
    >>> report.matches, report.cells
    (1, 2)
    """
    tiles = _check_tiles(tiles, grid)
    if not 0 < min_iou <= 1:
        raise ValueError(f"min_iou must be in (0, 1], got {min_iou!r}")
    for pos in missing:
        if not (0 <= pos.x < grid.num_x and 0 <= pos.y < grid.num_y):
            raise ValueError(f"missing tile x={pos.x}, y={pos.y} is outside the "
                             f"{grid.num_x}x{grid.num_y} grid")
    absent = set(missing)
    nodes = _Nodes(tiles, [pos for pos in grid.positions if pos not in absent])
    edges, seen_shared, matched = _tile_matches(grid, nodes, min_iou)
    cells = _Cells(nodes.tile_of)
    conflicts = []
    for iou, a, b in sorted(edges, key=lambda e: (-e[0], e[1], e[2])):
        clash = cells.union(a, b)
        if clash is not None:
            (pa, la), (pb, lb) = nodes.describe(a), nodes.describe(b)
            (pc, lc), (_, ld) = nodes.describe(clash[0]), nodes.describe(clash[1])
            conflicts.append(StitchConflict(pa, la, pb, lb, iou, pc, (lc, ld)))
            logger.warning("stitching: %s", conflicts[-1])
    roots = np.array([cells.find(n) for n in range(nodes.count)], dtype=np.int64) + 1
    out = np.zeros((tiles.shape[0], *grid.frame_shape), dtype=np.int32)  # ids < cells
    for pos in nodes.present:
        lut = roots[nodes.offset[pos]:nodes.offset[pos] + nodes.labels[pos].size]
        lut[0] = 0  # background stays background
        (fy, fx), (ty, tx) = grid.core_window(pos)
        out[:, fy, fx] = lut[nodes.index[pos][:, ty, tx]]
    labels, _ = fastremap.renumber(out, preserve_zero=True)
    labels = labels.astype(np.int32)
    report = StitchReport(
        cells=int(labels.max(initial=0)),
        matches=len(edges) - len(conflicts),
        unmatched=len(seen_shared - matched),
        conflicts=tuple(conflicts),
        missing=tuple(pos for pos in grid.positions if pos in absent),
    )
    return labels, report


class _Nodes:
    """Every (tile, label) of a part as one node number; node ``offset[pos]`` is background."""

    def __init__(self, tiles: NDArray[Any], present: list[Position]) -> None:
        self.present = present
        self.labels: dict[Position, NDArray[np.int64]] = {}
        self.index: dict[Position, NDArray[np.intp]] = {}
        self.offset: dict[Position, int] = {}
        self.count = 0
        for pos in present:
            self.labels[pos], self.index[pos] = _compact(tiles[:, pos.y, pos.x])
            self.offset[pos] = self.count
            self.count += self.labels[pos].size
        self.tile_of = np.zeros(self.count, dtype=np.intp)
        for i, pos in enumerate(present):
            self.tile_of[self.offset[pos]:self.offset[pos] + self.labels[pos].size] = i

    def describe(self, node: int) -> tuple[Position, int]:
        """The tile and the label of a node."""
        pos = self.present[int(self.tile_of[node])]
        return pos, int(self.labels[pos][node - self.offset[pos]])


def _tile_matches(grid: TileGrid, nodes: _Nodes, min_iou: float
                  ) -> tuple[list[tuple[float, int, int]], set[int], set[int]]:
    """Hungarian matches between every pair of neighbouring tiles, as node pairs.

    Also returns the nodes seen on shared pixels and the nodes matched there.
    """
    edges: list[tuple[float, int, int]] = []
    seen: set[int] = set()
    matched: set[int] = set()
    for i, pa in enumerate(nodes.present):
        for pb in nodes.present[i + 1:]:
            window = (_shared_window(grid, pa, pb)
                      if abs(pa.x - pb.x) <= 1 and abs(pa.y - pb.y) <= 1 else None)
            if window is None:
                continue
            (sya, sxa), (syb, sxb) = window
            oa, ob = nodes.offset[pa], nodes.offset[pb]
            ov = _overlap(nodes.index[pa][:, sya, sxa], nodes.index[pb][:, syb, sxb],
                          nodes.labels[pa].size, nodes.labels[pb].size)
            seen.update((np.flatnonzero(ov.area_a[1:]) + 1 + oa).tolist())
            seen.update((np.flatnonzero(ov.area_b[1:]) + 1 + ob).tolist())
            iou = ov.iou
            ok = iou >= min_iou
            for a, b, score in _assign(ov.a[ok], ov.b[ok], iou[ok]):
                edges.append((score, a + oa, b + ob))
                matched.update((a + oa, b + ob))
    return edges, seen, matched


# -- across parts -----------------------------------------------------------------------


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


def _divisions(ov: _Overlap, *, min_inside: float, min_share: float
               ) -> dict[int, list[int]]:
    """Cells of the first frame holding two or more cells of the next (compact indices)."""
    inside = ov.inter / np.maximum(ov.area_b[ov.b], 1)
    share = ov.inter / np.maximum(ov.area_a[ov.a], 1)
    ok = (inside >= min_inside) & (share >= min_share)
    children: dict[int, list[int]] = {}
    for a, b in zip(ov.a[ok], ov.b[ok], strict=True):
        children.setdefault(int(a), []).append(int(b))
    return {a: sorted(bs) for a, bs in children.items() if len(bs) >= 2}


def _check_fraction(name: str, value: float) -> None:
    if not 0 < value <= 1:
        raise ValueError(f"{name} must be in (0, 1], got {value!r}")


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
    arrays = [_check_labels(p, 3, f"part {i + 1}") for i, p in enumerate(parts)]
    for i, arr in enumerate(arrays, start=1):
        if arr.shape[0] == 0:
            raise ValueError(f"part {i} has no frames")
        if arr.shape[1:] != arrays[0].shape[1:]:
            raise ValueError(f"part {i} has frames of {arr.shape[1:]}, part 1 of "
                             f"{arrays[0].shape[1:]}: parts must come from one movie")
    for name, value in (("min_iou", min_iou), ("min_inside", min_inside),
                        ("min_share", min_share)):
        _check_fraction(name, value)
    total = sum(arr.shape[0] for arr in arrays)
    movie = np.zeros((total, *arrays[0].shape[1:]), dtype=np.int32)
    linker = _PartLinker(min_iou=min_iou, min_inside=min_inside, min_share=min_share)
    for arr in arrays:
        start = linker.start
        movie[start:start + arr.shape[0]] = linker.add(arr)
    return movie, linker.report()


class _PartLinker:
    """:func:`link_parts` one part at a time, holding only the last frame linked so far.

    ``add`` takes the next part (validated by the caller) and returns it with
    movie ids; ``report`` says what was done so far. :func:`link_parts` and
    :func:`stitch_movies` (which streams parts to disk) both link through it.
    """

    def __init__(self, *, min_iou: float, min_inside: float, min_share: float) -> None:
        self.min_iou, self.min_inside, self.min_share = min_iou, min_inside, min_share
        self.last: NDArray[np.int32] | None = None  # the last frame so far, movie ids
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
        start = self.start
        uniq, inverse = _compact(arr)
        new = np.zeros(uniq.size, dtype=np.int64)
        link = None
        if self.last is not None:
            link = _link_frames(self.last, arr[0], start, uniq, min_iou=self.min_iou,
                                min_inside=self.min_inside, min_share=self.min_share)
            for local, glob in link.continued.items():
                new[int(np.searchsorted(uniq, local))] = glob
            self.links.append(len(link.continued))
            self.ambiguous.extend(link.ambiguous)
        for k in range(1, uniq.size):
            if new[k] == 0:
                new[k] = self.next_id
                self.next_id += 1
        if link is not None:
            for parent, daughters in link.divisions.items():
                for local in daughters:
                    self.parents[int(new[int(np.searchsorted(uniq, local))])] = parent
                self.division_frames[parent] = start
        out = new[inverse].astype(np.int32)
        self.last = out[-1].copy()
        self.starts.append(start)
        self.id_maps.append({int(u): int(n) for u, n in zip(uniq[1:], new[1:], strict=True)})
        self.start += arr.shape[0]
        return out

    def report(self) -> LinkReport:
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


def _link_frames(before: NDArray[np.int32], after: NDArray[Any], frame: int,
                 after_labels: NDArray[np.int64], *, min_iou: float, min_inside: float,
                 min_share: float) -> _FrameLink:
    """Links and divisions from one frame (global ids) to the next (local ids)."""
    ua, ia = _compact(before)
    ib = np.searchsorted(after_labels, after)
    ov = _overlap(ia, ib, ua.size, after_labels.size)
    divisions = _divisions(ov, min_inside=min_inside, min_share=min_share)
    daughters = [b for bs in divisions.values() for b in bs]
    iou = ov.iou
    cand = (iou >= min_iou) & ~np.isin(ov.a, list(divisions)) & ~np.isin(ov.b, daughters)
    rows, cols = ov.a[cand], ov.b[cand]
    row_count = np.bincount(rows, minlength=ua.size)
    col_count = np.bincount(cols, minlength=after_labels.size)
    continued: dict[int, int] = {}
    ambiguous: list[AmbiguousLink] = []
    reported: set[tuple[tuple[int, ...], tuple[int, ...]]] = set()
    for a, b, _ in _assign(rows, cols, iou[cand]):
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


# -- lineage ----------------------------------------------------------------------------


def frames_per_label(movie: NDArray[Any]) -> dict[int, list[int]]:
    """Frames (sorted) in which every label of a ``(T, H, W)`` movie is present.

    >>> frames_per_label(np.array([[[0, 3]], [[0, 0]], [[3, 5]]]))
    {3: [0, 2], 5: [2]}
    """
    frames: dict[int, list[int]] = {}
    for t in range(movie.shape[0]):
        for label in np.unique(movie[t]):
            if label:
                frames.setdefault(int(label), []).append(t)
    return frames


def lineage_from_labels(
    movie: NDArray[Any],
    parents: dict[int, int] | None = None,
    *,
    min_inside: float = 0.5,
    min_share: float = 0.2,
) -> Lineage:
    """A DeepCell lineage of a tracked label movie, finding divisions inside it.

    Parameters
    ----------
    movie : (T, H, W) int array
        Tracked labels: one id per cell for as long as it lives.
    parents : dict, optional
        Known divisions, daughter -> parent (e.g. :attr:`LinkReport.parents`).
        Each daughter must first appear right after its parent's last frame.
    min_inside, min_share : float
        A cell last seen in frame ``t`` divides into the cells first seen in
        ``t + 1`` (two or more) that each lie at least ``min_inside`` inside its
        last position and cover at least ``min_share`` of it.

    Returns
    -------
    dict
        ``{label: {"label", "frames", "daughters", "capped", "frame_div", "parent"}}``;
        ``frame_div`` is the daughters' first frame (``None`` without division),
        ``capped`` is true for a cell that divides, ``parent`` is ``None`` for a root.

    Raises
    ------
    TypeError
        ``movie`` does not hold integers.
    ValueError
        ``movie`` is not 3-D or holds negative labels.
    LineageError
        A given division names a label not in the movie, or its daughter does
        not start right after its parent ends.

    Examples
    --------
    >>> movie = np.array([[[1, 1, 1, 1]], [[2, 2, 3, 3]]])
    >>> lineage = lineage_from_labels(movie)
    >>> lineage[1]["daughters"], lineage[1]["frame_div"], lineage[2]["parent"]
    ([2, 3], 1, 1)
    """
    movie = _check_labels(movie, 3, "movie")
    _check_fraction("min_inside", min_inside)
    _check_fraction("min_share", min_share)
    builder = _LineageBuilder(min_inside=min_inside, min_share=min_share)
    builder.add(movie, parents or {})
    return builder.finish()


class _LineageBuilder:
    """:func:`lineage_from_labels` fed a few frames at a time (holding one frame between).

    ``add`` takes the next frames (movie ids) and the known divisions so far
    (daughter -> parent; each daughter must be given no later than the frames
    holding its first appearance); ``finish`` checks the known divisions and
    returns the lineage. A division inside the movie is looked for between every
    frame ``t`` and ``t + 1``: the cells of ``t`` missing from ``t + 1`` (whether
    they end at ``t`` is only known at the end) against the cells first seen in
    ``t + 1`` that are not known daughters. Each candidate (parent, daughters) is
    decided per parent, so candidates found with parents that turn out to live
    on are simply dropped in ``finish``.
    """

    def __init__(self, *, min_inside: float, min_share: float) -> None:
        self.min_inside, self.min_share = min_inside, min_share
        self.frames: dict[int, list[int]] = {}
        self.known: dict[int, int] = {}
        self.candidates: list[tuple[int, int, list[int]]] = []  # (t, parent, daughters)
        self.last: NDArray[Any] | None = None
        self.last_labels: NDArray[Any] = np.zeros(0, dtype=np.int64)
        self.count = 0

    def add(self, movie: NDArray[Any], parents: dict[int, int]) -> None:
        self.known.update(parents)
        for frame in movie:
            t = self.count
            labels = np.unique(frame)
            labels = labels[labels != 0]
            starters = []
            for label in labels.tolist():
                if label not in self.frames:
                    if t > 0 and label not in self.known:
                        starters.append(label)
                    self.frames[label] = []
                self.frames[label].append(t)
            if self.last is not None and starters:
                enders = np.setdiff1d(self.last_labels, labels)
                if enders.size:
                    self._divisions(t - 1, self.last, enders, frame, starters)
            self.last, self.last_labels = frame, labels
            self.count += 1
        if self.last is not None:
            self.last = self.last.copy()  # not a view that would keep ``movie`` alive

    def _divisions(self, t: int, before_frame: NDArray[Any], enders: NDArray[Any],
                   after_frame: NDArray[Any], starters: list[int]) -> None:
        before = np.where(np.isin(before_frame, enders), before_frame, 0)
        after = np.where(np.isin(after_frame, starters), after_frame, 0)
        ua, ia = _compact(before)
        ub, ib = _compact(after)
        found = _divisions(_overlap(ia, ib, ua.size, ub.size),
                           min_inside=self.min_inside, min_share=self.min_share)
        for a, bs in found.items():
            self.candidates.append((t, int(ua[a]), [int(ub[b]) for b in bs]))

    def finish(self) -> Lineage:
        frames, known = self.frames, dict(self.known)
        for daughter, parent in known.items():
            for label in (daughter, parent):
                if label not in frames:
                    raise LineageError(
                        f"division {parent} -> {daughter}: label {label} is not in the movie",
                        label=label, rule="division labels exist")
            if frames[daughter][0] != frames[parent][-1] + 1:
                raise LineageError(
                    f"division {parent} -> {daughter}: the parent's last frame is "
                    f"{frames[parent][-1]} but the daughter's first is {frames[daughter][0]}; "
                    "a daughter must start in the frame after its parent ends",
                    label=daughter, rule="daughters start after the parent")
        has_daughters = set(known.values())
        for t, parent, daughters in self.candidates:
            if frames[parent][-1] == t and parent not in has_daughters:
                for daughter in daughters:
                    known[daughter] = parent
        return _build_lineage(frames, known)


def _build_lineage(frames: dict[int, list[int]], parents: dict[int, int]) -> Lineage:
    daughters: dict[int, list[int]] = {}
    for d, p in parents.items():
        daughters.setdefault(p, []).append(d)
    lineage: Lineage = {}
    for label in sorted(frames):
        kids = sorted(daughters.get(label, []))
        lineage[label] = {
            "label": label,
            "frames": list(frames[label]),
            "daughters": kids,
            "capped": bool(kids),
            "frame_div": frames[label][-1] + 1 if kids else None,
            "parent": parents.get(label),
        }
    return lineage


# -- the working folder -----------------------------------------------------------------


@dataclass(frozen=True)
class _PartTask:
    wf: WorkingFolder
    grid: TileGrid
    part: int
    frames: int
    min_iou: float


@dataclass(frozen=True)
class _PartResult:
    part: int
    labels: NDArray[np.int32]
    report: StitchReport
    missing: tuple[tuple[Position, str], ...]


def _read_tile_movie(wf: WorkingFolder, part: int, pos: Position, frames: int,
                     tile_shape: tuple[int, int]) -> NDArray[Any]:
    """The annotated frames of one tile of one part, or an InputError saying why not."""
    folder = wf.annotated_dir(part, pos)
    if not folder.is_dir():
        raise InputError("no annotated frames (folder missing)", path=folder)
    stack = np.zeros((frames, *tile_shape), dtype=np.int32)  # label PNGs are 16-bit
    for f in range(frames):
        path = wf.annotated_frame(part, pos, f)
        if not path.is_file():
            raise InputError(f"frame {f} of {frames} is missing", path=path)
        image = read_image(path)
        if image.shape != tuple(tile_shape) or image.dtype.kind not in "ui":
            raise InputError(
                f"expected a {tile_shape[0]}x{tile_shape[1]} label image, got shape "
                f"{image.shape} ({image.dtype}): rerun the movies stage", path=path)
        stack[f] = image
    return stack


def _stitch_part(task: _PartTask) -> _PartResult:
    """Read and stitch every tile of one part; unreadable tiles are reported as missing."""
    grid = task.grid
    tiles = np.zeros((task.frames, grid.num_y, grid.num_x, *grid.tile_shape), dtype=np.int32)
    missing: list[tuple[Position, str]] = []
    for pos in grid.positions:
        try:
            tiles[:, pos.y, pos.x] = _read_tile_movie(task.wf, task.part, pos, task.frames,
                                                      grid.tile_shape)
        except InputError as exc:
            missing.append((pos, str(exc)))
    labels, report = stitch_tiles(tiles, grid, min_iou=task.min_iou,
                                  missing=[pos for pos, _ in missing])
    return _PartResult(task.part, labels, report, tuple(missing))


@dataclass(frozen=True)
class StitchMoviesResult:
    """What :func:`stitch_movies` did.

    Attributes
    ----------
    wf : WorkingFolder
        The working folder, padding widened for the logged counts.
    frames : int
        Frames in the stitched movie.
    lineage : dict
        The DeepCell lineage of the stitched movie (also in ``wf.stitched_lineage``).
    parts : tuple of StitchReport
        One per part, in order.
    link : LinkReport
        How the parts were joined.
    missing : tuple of (part, Position, reason)
        Tiles that could not be read; the pixels they own are 0 in that part.
    raw_frames : int
        Raw frames copied to ``stitched/raw`` (0 when there is no raw folder).
    """

    wf: WorkingFolder
    frames: int
    lineage: Lineage
    parts: tuple[StitchReport, ...]
    link: LinkReport
    missing: tuple[tuple[int, Position, str], ...]
    raw_frames: int

    @property
    def cells(self) -> int:
        return len(self.lineage)

    @property
    def divisions(self) -> int:
        return sum(1 for entry in self.lineage.values() if entry["daughters"])

    @property
    def conflicts(self) -> list[tuple[int, StitchConflict]]:
        """Every refused tile match, with its part."""
        return [(part_of_montage(i), c) for i, rep in enumerate(self.parts)
                for c in rep.conflicts]


def stitch_movies(
    wf: WorkingFolder,
    *,
    min_iou: float = 0.3,
    link_iou: float = 0.3,
    executor: Executor | None = None,
    progress: Callable[[int], None] | None = None,
) -> StitchMoviesResult:
    """Stitch the annotated tiles of every part into one tracked full-size movie.

    Reads ``movies/part{N}/x_XX_y_YY/annotated`` (as written by
    :func:`cellcrowd.movies.montages_to_movies`), stitches each part with
    :func:`stitch_tiles`, joins the parts with :func:`link_parts`, finds the
    lineage with :func:`lineage_from_labels`, and writes
    ``stitched/annotated/{id}_frame_FFF.png`` (uint16), copies of the raw frames
    as ``stitched/raw/{id}_frame_FFF.tif`` (when the raw folder exists) and
    ``stitched/lineage.json``. A tile whose frames are missing or unreadable is
    reported and left out (its pixels are 0 in that part), never fatal.

    Parts are linked and written one at a time, in order, as their stitched
    labels arrive; only the last frame linked so far and the per-cell lineage
    records are kept, plus any parts an executor has finished ahead of the one
    being written (a process pool may run ahead of this loop). The result is the
    same as linking the whole movie with :func:`link_parts` and
    :func:`lineage_from_labels`.

    Parameters
    ----------
    wf : WorkingFolder
        Holds the logs and the movies.
    min_iou : float
        Passed to :func:`stitch_tiles`.
    link_iou : float
        ``min_iou`` of :func:`link_parts`.
    executor : Executor, optional
        Runs one task per part (default: serially).
    progress : callable, optional
        Called with 1 after each part.

    Raises
    ------
    LogError
        A log is missing or invalid, or the logs disagree.
    InputError
        The movie has more than 65535 cells (they do not fit 16-bit label frames);
        the frames of the parts before the one that overflows are already written.
    """
    from .movies import check_raw_frames, read_movie_geometry

    movie = read_movie_geometry(wf)
    wf, grid = movie.wf, movie.grid
    tasks = [_PartTask(wf, grid, part_of_montage(m), movie.frames_in(m), min_iou)
             for m in range(movie.count)]
    total = sum(task.frames for task in tasks)
    offset = movie.chopper.frame_offset or 0
    raw_paths = movie.raw_paths[offset:offset + total]
    if len(raw_paths) < total:
        logger.warning("%d raw frames found for %d stitched frames; stitched/raw not written",
                       len(raw_paths), total)
        raw_paths = []
    check_raw_frames(raw_paths, grid.frame_shape, source=wf.chopper_log)
    # Streaming: each part is linked to the last frame of the one before, written, and
    # fed to the lineage as it arrives; only that last frame and the per-cell records
    # stay in memory (plus results the executor has finished ahead of this loop).
    linker = _PartLinker(min_iou=link_iou, min_inside=0.5, min_share=0.2)
    builder = _LineageBuilder(min_inside=0.5, min_share=0.2)
    reports: list[StitchReport] = []
    missing: list[tuple[int, Position, str]] = []
    for result in run_tasks(_stitch_part, tasks, executor=executor, progress=progress):
        for pos, reason in result.missing:
            logger.warning("part %d: tile x=%d, y=%d left out: %s", result.part, pos.x, pos.y,
                           reason)
        reports.append(result.report)
        missing.extend((result.part, pos, reason) for pos, reason in result.missing)
        start = linker.start
        labels = linker.add(result.labels)
        if linker.next_id - 1 > _UINT16_MAX:
            raise InputError(
                f"the stitched movie has {linker.next_id - 1} cells by part {result.part}, "
                "more than a 16-bit label frame holds (65535): stitch fewer frames at a time",
                path=wf.stitched)
        builder.add(labels, linker.parents)
        for t, frame in enumerate(labels, start=start):
            write_image(wf.stitched_frame("annotated", t), frame.astype(np.uint16))
        for t, path in enumerate(raw_paths[start:start + labels.shape[0]], start=start):
            write_image(wf.stitched_frame("raw", t), read_image(path))
        del labels, result
    link = linker.report()
    lineage = builder.finish()
    atomic_write_text(wf.stitched_lineage, json.dumps(
        {str(k): v for k, v in lineage.items()}, indent=1) + "\n")
    logger.info("stitched %d parts into %d frames: %d cells, %d divisions",
                len(reports), linker.start, len(lineage),
                sum(1 for e in lineage.values() if e["daughters"]))
    return StitchMoviesResult(
        wf=wf, frames=linker.start, lineage=lineage, parts=tuple(reports), link=link,
        missing=tuple(missing), raw_frames=len(raw_paths),
    )


def read_lineage(path: str | Path) -> Lineage:
    """Read a lineage JSON file (``{"<label>": {...}}``) with integer keys."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("lineage not found: run the stitch stage first", path=path) from None
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON ({exc.msg} at line {exc.lineno})", path=path) from None
    if not isinstance(data, dict):
        raise InputError(f"expected a JSON object, got {type(data).__name__}", path=path)
    try:
        return {int(k): v for k, v in data.items()}
    except ValueError:
        raise InputError("lineage keys must be cell labels (integers)", path=path) from None


def read_stitched(wf: WorkingFolder) -> tuple[NDArray[Any] | None, NDArray[np.int32], Lineage]:
    """The stitched movie: raw frames (``None`` if not written), labels and lineage.

    Raises
    ------
    InputError
        The stitched frames or the lineage are missing or unreadable, or the raw
        frames do not match the label frames in number.
    """
    label_paths = list_images(wf.stitched_frame("annotated", 0).parent)
    if not label_paths:
        raise InputError("no stitched frames: run the stitch stage first",
                         path=wf.stitched_frame("annotated", 0).parent)
    labels = np.stack([read_image(p) for p in label_paths]).astype(np.int32)
    raw_dir = wf.stitched_frame("raw", 0).parent
    raw = None
    if raw_dir.is_dir() and (raw_paths := list_images(raw_dir)):
        if len(raw_paths) != len(label_paths):
            raise InputError(f"{len(raw_paths)} raw frames but {len(label_paths)} label "
                             "frames: run the stitch stage again", path=raw_dir)
        raw = np.stack([read_image(p) for p in raw_paths])
    return raw, labels, read_lineage(wf.stitched_lineage)
