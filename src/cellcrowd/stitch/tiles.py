"""Across tiles: the independently labelled tiles of one part -> full-size label frames.

The annotated tiles of one part were painted independently, so the same cell
has unrelated ids in different tiles; inside one tile its id is the same in
every frame of the part (one montage). Cells cut by a tile border appear in two
(or four) tiles. For every pair of neighbouring tiles the labels of both are
compared on the pixels the two tiles share, summed over all frames of the part
(:func:`cellcrowd.match.overlap`); pairs with an IoU of at least ``min_iou`` are
matched 1:1 (Hungarian assignment, :func:`cellcrowd.match.assign`). Matches are
merged into physical cells by union-find in order of decreasing IoU
(:class:`cellcrowd.match.OwnerUnionFind`, the tiles being the owners); a match
that would put two different ids *of the same tile* into one cell is refused and
reported as a :class:`StitchConflict` (the cells stay separate). Each frame pixel
then takes the cell of the tile whose core owns it (:meth:`TileGrid.core_window`).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import fastremap
import numpy as np
from numpy.typing import NDArray

from ..geometry import Position, TileGrid
from ..match import OwnerUnionFind, assign, compact_ids, overlap
from .common import check_labels

__all__ = [
    "StitchConflict", "StitchReport", "TileStitch", "match_tiles", "stitch_tile_movies",
    "stitch_tiles",
]

logger = logging.getLogger(__name__)


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


def _check_tiles(tiles: NDArray[Any], grid: TileGrid) -> NDArray[Any]:
    tiles = check_labels(tiles, 5, "tiles")
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
    for pos in missing:
        if not (0 <= pos.x < grid.num_x and 0 <= pos.y < grid.num_y):
            raise ValueError(f"missing tile x={pos.x}, y={pos.y} is outside the "
                             f"{grid.num_x}x{grid.num_y} grid")
    absent = set(missing)
    return stitch_tile_movies(((pos, tiles[:, pos.y, pos.x]) for pos in grid.positions
                               if pos not in absent), grid, tiles.shape[0], min_iou=min_iou)


def stitch_tile_movies(
    movies: Iterable[tuple[Position, NDArray[Any]]],
    grid: TileGrid,
    frames: int,
    *,
    min_iou: float = 0.3,
) -> tuple[NDArray[np.int32], StitchReport]:
    """:func:`stitch_tiles` for tiles given one at a time, as ``(position, movie)``.

    Each movie is one tile's ``(frames, th, tw)`` labels (non-negative integers;
    checked by the caller), in :attr:`TileGrid.positions` order; positions not given
    are missing. :func:`match_tiles` does the work; this stacks its frames.
    """
    stitched = match_tiles(movies, grid, frames, min_iou=min_iou)
    labels = np.empty((frames, *grid.frame_shape), dtype=np.int32)  # ids < cells
    for t, frame in enumerate(stitched.frames()):
        labels[t] = frame
    return labels, stitched.report


def match_tiles(
    movies: Iterable[tuple[Position, NDArray[Any]]],
    grid: TileGrid,
    frames: int,
    *,
    min_iou: float = 0.3,
) -> TileStitch:
    """The cells of the tiles of one part matched into physical cells; frames on demand.

    Takes the tiles as :func:`stitch_tile_movies` does. Only each tile's compact
    labels are kept (the smallest unsigned integer per pixel that holds them), not
    the tiles themselves; :meth:`TileStitch.frames` makes the stitched frames one at
    a time.
    """
    if not 0 < min_iou <= 1:
        raise ValueError(f"min_iou must be in (0, 1], got {min_iou!r}")
    nodes = _Nodes(movies)
    absent = set(grid.positions) - set(nodes.present)
    edges, seen_shared, matched = _tile_matches(grid, nodes, min_iou)
    cells = OwnerUnionFind(nodes.tile_of)
    conflicts = []
    for e, clash in cells.join_all(*_edge_arrays(edges)):
        iou, a, b = edges[e]
        (pa, la), (pb, lb) = nodes.describe(a), nodes.describe(b)
        (pc, lc), (_, ld) = nodes.describe(clash[0]), nodes.describe(clash[1])
        conflicts.append(StitchConflict(pa, la, pb, lb, iou, pc, (lc, ld)))
        logger.warning("stitching: %s", conflicts[-1])
    luts, present = _tile_luts(grid, nodes, cells.groups() + 1)
    report = StitchReport(
        cells=present,
        matches=len(edges) - len(conflicts),
        unmatched=len(seen_shared - matched),
        conflicts=tuple(conflicts),
        missing=tuple(pos for pos in grid.positions if pos in absent),
    )
    return TileStitch(grid, frames, nodes, luts, report)


def _tile_luts(grid: TileGrid, nodes: _Nodes, groups: NDArray[np.int64]
               ) -> tuple[dict[Position, NDArray[np.int64]], int]:
    """Per tile, its compact labels -> physical cell (``group + 1``, 0 for the background),
    and how many physical cells own pixels in the stitched frames."""
    luts: dict[Position, NDArray[np.int64]] = {}
    appear = np.zeros(int(groups.max(initial=0)) + 1, dtype=bool)
    for pos in nodes.present:
        lut = groups[nodes.offset[pos]:nodes.offset[pos] + nodes.labels[pos].size]
        lut[0] = 0  # background stays background
        luts[pos] = lut
        _, (ty, tx) = grid.core_window(pos)
        core = nodes.index[pos][:, ty, tx]
        appear[lut[np.bincount(core.ravel(), minlength=lut.size) > 0]] = True
    appear[0] = False
    return luts, int(np.count_nonzero(appear))


class TileStitch:
    """The tiles of one part matched (:func:`match_tiles`): its report and its frames.

    Every pixel takes the physical cell of the tile whose core owns it
    (:meth:`TileGrid.core_window`); cells are numbered ``1..report.cells`` in the order
    of their first pixel in the part (frame by frame, row by row), as
    ``fastremap.renumber`` numbers the whole part.
    """

    def __init__(self, grid: TileGrid, frames: int, nodes: _Nodes,
                 luts: dict[Position, NDArray[np.int64]], report: StitchReport) -> None:
        self.grid, self.length, self.report = grid, frames, report
        self._nodes, self._luts = nodes, luts
        self._cores = {pos: grid.core_window(pos) for pos in luts}  # frame, tile windows
        self._groups = max((int(lut.max(initial=0)) for lut in luts.values()), default=0) + 1
        #: The frames' dtype: uint16 when the ids fit, else int32.
        self.dtype = np.dtype(np.uint16 if report.cells <= np.iinfo(np.uint16).max
                              else np.int32)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(frames, height, width)`` of the stitched part."""
        return (self.length, *self.grid.frame_shape)

    def frames(self) -> Iterator[NDArray[Any]]:
        """The stitched frames (:attr:`dtype`), one at a time, numbered ``1..report.cells``."""
        numbers = np.zeros(self._groups, dtype=np.int64)  # group -> cell id; 0 = not seen
        seen = 0
        kind = np.int32 if self._groups <= np.iinfo(np.int32).max else np.int64
        luts = {pos: lut.astype(kind) for pos, lut in self._luts.items()}
        for t in range(self.length):
            groups = np.zeros(self.grid.frame_shape, dtype=kind)  # 4 bytes a pixel
            for pos, lut in luts.items():
                (fy, fx), (ty, tx) = self._cores[pos]
                groups[fy, fx] = lut[self._nodes.index[pos][t, ty, tx]]
            local, remap = fastremap.renumber(groups, preserve_zero=True, in_place=True)
            order = np.zeros(int(max(remap.values(), default=0)) + 1, dtype=np.int64)
            order[np.fromiter(remap.values(), np.int64, len(remap))] = np.fromiter(
                remap.keys(), np.int64, len(remap))  # local id (first pixel order) -> group
            new = np.flatnonzero(numbers[order[1:]] == 0) + 1
            numbers[order[new]] = np.arange(seen + 1, seen + 1 + new.size)
            seen += new.size
            yield numbers[order].astype(self.dtype)[local]


def _edge_arrays(edges: list[tuple[float, int, int]]
                 ) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64]]:
    """The nodes and the IoU of every edge as arrays (for :meth:`OwnerUnionFind.join_all`)."""
    return (np.array([e[1] for e in edges], dtype=np.int64),
            np.array([e[2] for e in edges], dtype=np.int64),
            np.array([e[0] for e in edges], dtype=np.float64))


class _Nodes:
    """Every (tile, label) of a part as one node number; node ``offset[pos]`` is background."""

    def __init__(self, movies: Iterable[tuple[Position, NDArray[Any]]]) -> None:
        self.present: list[Position] = []
        self.labels: dict[Position, NDArray[np.int64]] = {}
        self.index: dict[Position, NDArray[np.integer[Any]]] = {}
        self.offset: dict[Position, int] = {}
        self.count = 0
        for pos, movie in movies:
            self.present.append(pos)
            self.labels[pos], index = compact_ids(movie)
            small = np.min_scalar_type(self.labels[pos].size - 1)  # uint16 below 65536 labels
            self.index[pos] = index.astype(small, copy=False)
            self.offset[pos] = self.count
            self.count += self.labels[pos].size
        self.tile_of = np.zeros(self.count, dtype=np.intp)
        for i, pos in enumerate(self.present):
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
            ov = overlap(nodes.index[pa][:, sya, sxa], nodes.index[pb][:, syb, sxb],
                         nodes.labels[pa].size, nodes.labels[pb].size)
            seen.update((np.flatnonzero(ov.area_a[1:]) + 1 + oa).tolist())
            seen.update((np.flatnonzero(ov.area_b[1:]) + 1 + ob).tolist())
            rows, cols, scores = assign(ov.a, ov.b, ov.iou, min_iou, split=False)
            for a, b, score in zip(rows.tolist(), cols.tolist(), scores.tolist(), strict=True):
                edges.append((score, a + oa, b + ob))
                matched.update((a + oa, b + ob))
    return edges, seen, matched
