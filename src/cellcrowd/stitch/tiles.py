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
:func:`match_tiles` reads the tiles twice, a frame at a time (once to match, once to
make the frames), so no part is ever held whole.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import fastremap
import numpy as np
from numpy.typing import NDArray

from ..geometry import Position, TileGrid
from ..match import OverlapSum, OwnerUnionFind, assign
from .common import check_labels

__all__ = [
    "StitchConflict", "StitchReport", "TileChangedError", "TileReader", "TileStitch", "match_tiles",
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
    stitched = match_tiles(lambda pos, t: tiles[t, pos.y, pos.x], grid, tiles.shape[0],
                           min_iou=min_iou, tiles=[p for p in grid.positions if p not in absent])
    labels = np.empty(stitched.shape, dtype=np.int32)  # ids < cells
    for t, frame in enumerate(stitched.frames()):
        labels[t] = frame
    return labels, stitched.report


#: Reads frame ``t`` of the tile at a position: a ``grid.tile_shape`` array of
#: non-negative integer labels (a new array, or a view of one that does not change).
TileReader = Callable[[Position, int], NDArray[Any]]


class TileChangedError(ValueError):
    """A tile frame read for the stitched frames holds labels it lacked when matched."""


def match_tiles(
    read: TileReader,
    grid: TileGrid,
    frames: int,
    *,
    min_iou: float = 0.3,
    tiles: Collection[Position] | None = None,
    unreadable: tuple[type[Exception], ...] = (),
) -> TileStitch:
    """The cells of the tiles of one part matched into physical cells; frames on demand.

    Every frame of every tile is read twice, one frame at a time: here, for the
    labels each tile holds and the overlap of neighbouring tiles on the pixels they
    share (summed over the part's frames, :class:`~cellcrowd.match.OverlapSum`), and
    again by :meth:`TileStitch.frames`. Neither pass holds more than one frame of
    each tile, so memory does not grow with the part's length.

    Parameters
    ----------
    read : callable
        ``read(position, t)``: frame ``t`` of a tile (:data:`TileReader`).
    grid, frames, min_iou
        As for :func:`stitch_tiles`; ``frames`` is the part's length.
    tiles : collection of Position, optional
        The tiles to stitch (default: every position); the others are missing.
    unreadable : tuple of exception types
        A tile whose reading raises one of these while matching is left out, as if
        missing; :attr:`TileStitch.left_out` says why.

    Raises
    ------
    ValueError
        ``min_iou`` is outside (0, 1], or a frame does not fit the grid or holds
        negative labels. TypeError: a frame does not hold integers.
    """
    if not 0 < min_iou <= 1:
        raise ValueError(f"min_iou must be in (0, 1], got {min_iou!r}")
    wanted = set(grid.positions if tiles is None else tiles)
    scan = _Scan(read, grid, frames, [p for p in grid.positions if p in wanted], unreadable)
    nodes = _Nodes(scan.labels)
    edges, seen_shared, matched = _tile_matches(scan.sums, nodes, min_iou)
    cells = OwnerUnionFind(nodes.tile_of)
    conflicts = []
    for e, clash in cells.join_all(*_edge_arrays(edges)):
        iou, a, b = edges[e]
        (pa, la), (pb, lb) = nodes.describe(a), nodes.describe(b)
        (pc, lc), (_, ld) = nodes.describe(clash[0]), nodes.describe(clash[1])
        conflicts.append(StitchConflict(pa, la, pb, lb, iou, pc, (lc, ld)))
        logger.warning("stitching: %s", conflicts[-1])
    luts, present = _tile_luts(nodes, cells.groups() + 1, scan.core_labels)
    report = StitchReport(
        cells=present,
        matches=len(edges) - len(conflicts),
        unmatched=len(seen_shared - matched),
        conflicts=tuple(conflicts),
        missing=tuple(pos for pos in grid.positions if pos not in luts),
    )
    left_out = tuple((pos, scan.left_out[pos]) for pos in grid.positions if pos in scan.left_out)
    return TileStitch(grid, frames, read, nodes, luts, report, left_out)


def _checked_frame(frame: NDArray[Any], grid: TileGrid, pos: Position, t: int
                   ) -> NDArray[Any]:
    frame = np.asarray(frame)
    where = f"frame {t} of tile x={pos.x}, y={pos.y}"
    if frame.dtype.kind not in "ui":
        raise TypeError(f"{where} must hold integer labels, got dtype {frame.dtype}")
    if frame.shape != grid.tile_shape:
        raise ValueError(f"{where} has shape {frame.shape}, expected {grid.tile_shape}")
    if frame.size and frame.dtype.kind == "i" and int(frame.min()) < 0:
        raise ValueError(f"{where} holds negative labels (min {frame.min()}); 0 is background")
    return frame


def _distinct(values: NDArray[Any]) -> NDArray[Any]:
    """The sorted distinct values of an integer array (hashed: no sort over the pixels)."""
    return np.asarray(fastremap.unique(values))


def _union(parts: list[NDArray[Any]]) -> NDArray[np.int64]:
    """The sorted distinct values of ``parts`` (each cast on its own: no float detour)."""
    if not parts:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.concatenate([part.astype(np.int64, copy=False) for part in parts]))


_Window = tuple[slice, slice]


def _neighbours(grid: TileGrid, tiles: Sequence[Position]
                ) -> dict[tuple[Position, Position], tuple[_Window, _Window]]:
    """Every pair of neighbouring tiles (in the order of ``tiles``) and the windows of
    the pixels they share inside each of the two."""
    pairs: dict[tuple[Position, Position], tuple[_Window, _Window]] = {}
    for i, pa in enumerate(tiles):
        for pb in tiles[i + 1:]:
            window = (_shared_window(grid, pa, pb)
                      if abs(pa.x - pb.x) <= 1 and abs(pa.y - pb.y) <= 1 else None)
            if window is not None:
                pairs[pa, pb] = window
    return pairs


class _Scan:
    """The pass over every frame that matching needs: each tile's labels (in all of it
    and in its core) and the overlap sums of neighbouring tiles, a frame at a time."""

    def __init__(self, read: TileReader, grid: TileGrid, frames: int,
                 tiles: Sequence[Position], unreadable: tuple[type[Exception], ...]) -> None:
        self.left_out: dict[Position, str] = {}
        self._ids: dict[Position, list[NDArray[Any]]] = {pos: [] for pos in tiles}
        self._core: dict[Position, list[NDArray[Any]]] = {pos: [] for pos in tiles}
        windows = _neighbours(grid, tiles)
        self.sums = {pair: OverlapSum() for pair in windows}
        cores = {pos: grid.core_window(pos)[1] for pos in tiles}
        for t in range(frames):
            current: dict[Position, NDArray[Any]] = {}
            for pos in [p for p in tiles if p not in self.left_out]:
                try:
                    frame = _checked_frame(read(pos, t), grid, pos, t)
                except unreadable as exc:
                    self._leave_out(pos, str(exc))
                    continue
                current[pos] = frame
                self._ids[pos].append(_distinct(frame))
                self._core[pos].append(_distinct(frame[cores[pos]]))
            for (pa, pb), (in_a, in_b) in windows.items():
                if pa in current and pb in current:
                    self.sums[pa, pb].add(current[pa][in_a], current[pb][in_b])
        #: The sorted distinct labels of every tile read (0 first, always).
        self.labels = {pos: _union([np.zeros(1, np.int64), *ids])
                       for pos, ids in self._ids.items()}
        #: The labels on pixels each tile owns (0 among them or not).
        self.core_labels = {pos: _union(ids) for pos, ids in self._core.items()}

    def _leave_out(self, pos: Position, reason: str) -> None:
        self.left_out[pos] = reason
        del self._ids[pos], self._core[pos]
        for pair in [pair for pair in self.sums if pos in pair]:
            del self.sums[pair]


def _tile_luts(nodes: _Nodes, groups: NDArray[np.int64],
               core_labels: dict[Position, NDArray[Any]]
               ) -> tuple[dict[Position, NDArray[np.int64]], int]:
    """Per tile, its compact labels -> physical cell (``group + 1``, 0 for the background),
    and how many physical cells own pixels in the stitched frames."""
    luts: dict[Position, NDArray[np.int64]] = {}
    appear = np.zeros(int(groups.max(initial=0)) + 1, dtype=bool)
    for pos in nodes.present:
        lut = groups[nodes.offset[pos]:nodes.offset[pos] + nodes.labels[pos].size]
        lut[0] = 0  # background stays background
        luts[pos] = lut
        appear[lut[np.searchsorted(nodes.labels[pos], core_labels[pos])]] = True
    appear[0] = False
    return luts, int(np.count_nonzero(appear))


class TileStitch:
    """The tiles of one part matched (:func:`match_tiles`): its report and its frames.

    Every pixel takes the physical cell of the tile whose core owns it
    (:meth:`TileGrid.core_window`); cells are numbered ``1..report.cells`` in the order
    of their first pixel in the part (frame by frame, row by row), as
    ``fastremap.renumber`` numbers the whole part.
    """

    def __init__(self, grid: TileGrid, frames: int, read: TileReader, nodes: _Nodes,
                 luts: dict[Position, NDArray[np.int64]], report: StitchReport,
                 left_out: tuple[tuple[Position, str], ...]) -> None:
        self.grid, self.length, self.report = grid, frames, report
        #: Tiles left out because reading them failed, and why.
        self.left_out = left_out
        self._read, self._nodes, self._luts = read, nodes, luts
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
        """The stitched frames (:attr:`dtype`), one at a time, numbered ``1..report.cells``.

        Reads every tile again, a frame at a time.

        Raises
        ------
        TileChangedError
            A tile frame holds labels it did not hold when the tiles were matched.
        """
        numbers = np.zeros(self._groups, dtype=np.int64)  # group -> cell id; 0 = not seen
        seen = 0
        kind = np.int32 if self._groups <= np.iinfo(np.int32).max else np.int64
        maps = {pos: _LabelMap(self._nodes.labels[pos], lut.astype(kind))
                for pos, lut in self._luts.items()}
        for t in range(self.length):
            groups = np.zeros(self.grid.frame_shape, dtype=kind)  # 4 bytes a pixel
            for pos, lut in maps.items():
                (fy, fx), (ty, tx) = self._cores[pos]
                tile = _checked_frame(self._read(pos, t), self.grid, pos, t)[ty, tx]
                groups[fy, fx] = lut(tile, f"frame {t} of tile x={pos.x}, y={pos.y}")
            local, remap = fastremap.renumber(groups, preserve_zero=True, in_place=True)
            order = np.zeros(int(max(remap.values(), default=0)) + 1, dtype=np.int64)
            order[np.fromiter(remap.values(), np.int64, len(remap))] = np.fromiter(
                remap.keys(), np.int64, len(remap))  # local id (first pixel order) -> group
            new = np.flatnonzero(numbers[order[1:]] == 0) + 1
            numbers[order[new]] = np.arange(seen + 1, seen + 1 + new.size)
            seen += new.size
            yield numbers[order].astype(self.dtype)[local]


class _LabelMap:
    """A tile's labels -> values: a table indexed by label when the labels are small,
    else a search in the sorted labels; labels outside ``labels`` raise TileChangedError."""

    #: Largest label a table is made for (4 bytes an entry: 4 MiB).
    TABLE = 1 << 20

    def __init__(self, labels: NDArray[np.int64], values: NDArray[Any]) -> None:
        self.labels, self.values = labels, values
        self.table: NDArray[Any] | None = None
        if int(labels[-1]) < self.TABLE:
            self.table = np.full(int(labels[-1]) + 1, -1, dtype=values.dtype)
            self.table[labels] = values

    def __call__(self, tile: NDArray[Any], where: str) -> NDArray[Any]:
        top = int(self.labels[-1])
        if tile.size and int(tile.max()) > top:
            raise TileChangedError(f"{where} holds label {tile.max()}, beyond the {top} it "
                                   "held when the tiles were matched")
        out: NDArray[Any]
        if self.table is not None:
            out = self.table[tile]
            changed = bool(np.any(out < 0))
        else:
            index = np.searchsorted(self.labels, tile)
            out = self.values[index]
            changed = bool(np.any(self.labels[index] != tile))
        if changed:
            raise TileChangedError(f"{where} holds labels it did not hold when the tiles "
                                   "were matched")
        return out


def _edge_arrays(edges: list[tuple[float, int, int]]
                 ) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64]]:
    """The nodes and the IoU of every edge as arrays (for :meth:`OwnerUnionFind.join_all`)."""
    return (np.array([e[1] for e in edges], dtype=np.int64),
            np.array([e[2] for e in edges], dtype=np.int64),
            np.array([e[0] for e in edges], dtype=np.float64))


class _Nodes:
    """Every (tile, label) of a part as one node number; node ``offset[pos]`` is background."""

    def __init__(self, labels: dict[Position, NDArray[np.int64]]) -> None:
        self.present = list(labels)
        self.labels = labels
        self.offset: dict[Position, int] = {}
        self.count = 0
        for pos in self.present:
            self.offset[pos] = self.count
            self.count += self.labels[pos].size
        self.tile_of = np.zeros(self.count, dtype=np.intp)
        for i, pos in enumerate(self.present):
            self.tile_of[self.offset[pos]:self.offset[pos] + self.labels[pos].size] = i

    def describe(self, node: int) -> tuple[Position, int]:
        """The tile and the label of a node."""
        pos = self.present[int(self.tile_of[node])]
        return pos, int(self.labels[pos][node - self.offset[pos]])


def _tile_matches(sums: dict[tuple[Position, Position], OverlapSum], nodes: _Nodes,
                  min_iou: float) -> tuple[list[tuple[float, int, int]], set[int], set[int]]:
    """Hungarian matches between every pair of neighbouring tiles, as node pairs.

    Also returns the nodes seen on shared pixels and the nodes matched there.
    """
    edges: list[tuple[float, int, int]] = []
    seen: set[int] = set()
    matched: set[int] = set()
    for (pa, pb), summed in sums.items():
        oa, ob = nodes.offset[pa], nodes.offset[pb]
        ov = summed.table(nodes.labels[pa], nodes.labels[pb])
        seen.update((np.flatnonzero(ov.area_a[1:]) + 1 + oa).tolist())
        seen.update((np.flatnonzero(ov.area_b[1:]) + 1 + ob).tolist())
        rows, cols, scores = assign(ov.a, ov.b, ov.iou, min_iou, split=False)
        for a, b, score in zip(rows.tolist(), cols.tolist(), scores.tolist(), strict=True):
            edges.append((score, a + oa, b + ob))
            matched.update((a + oa, b + ob))
    return edges, seen, matched
