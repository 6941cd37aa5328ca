"""The one place for geometry: overlapping tiles and montage layouts.

Both directions of the round trip use these objects, so ``prepare`` (cut, lay
out) and the harvest (read back, put back) cannot disagree.

:class:`TileGrid`
    A frame of ``H x W`` pixels cut into ``num_y x num_x`` overlapping tiles.
    Tile cores are ``core_y x core_x``; each tile adds ``overlap_y`` rows and
    ``overlap_x`` columns on every side, taken from a zero-padded frame, so
    every tile is ``(core_y + 2*overlap_y) x (core_x + 2*overlap_x)`` and
    neighbours share ``2*overlap`` pixels (FORMATS.md section 3).
:class:`MontageLayout`
    ``length`` frames of ``h x w`` pixels laid out ``row_length`` per row with
    zero buffers between and around them.

Indices follow the original notebook: ``x`` is the column index of a tile,
``y`` its row index; arrays are indexed ``[y, x]``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .errors import GeometryError

__all__ = ["MontageLayout", "Position", "TileGrid", "montage_frame_range", "num_montages"]


@dataclass(frozen=True, order=True)
class Position:
    """A tile position: ``x`` (column index) and ``y`` (row index)."""

    x: int
    y: int


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise GeometryError(f"{name} must be a whole number >= 1, got {value!r}")


def _check_non_negative(name: str, value: int) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
        raise GeometryError(f"{name} must be a whole number >= 0, got {value!r}")


@dataclass(frozen=True)
class TileGrid:
    """Overlapping tiles of a frame.

    Build one with :meth:`for_frame` (new data: tile cores round *up*, so no
    pixel is ever lost) or :meth:`cellcrowd.logs.ChopperLog.tile_grid` (data
    cut by the original tool: cores round down, as it did).

    Parameters
    ----------
    frame_shape : tuple of int
        ``(H, W)`` of the full frame.
    num_x, num_y : int
        Number of tiles along columns and rows.
    core_y, core_x : int
        Size of a tile's core (the part no neighbour owns).
    overlap_y, overlap_x : int
        Extra rows/columns on every side of a core.

    Examples
    --------
    >>> grid = TileGrid.for_frame((4, 6), num_x=2, num_y=2, overlap_perc=50)
    >>> grid.tile_shape
    (4, 5)
    >>> frame = np.arange(24).reshape(4, 6)
    >>> tiles = grid.cut(frame)
    >>> tiles.shape
    (2, 2, 4, 5)
    >>> bool((grid.stitch(tiles) == frame).all())
    True
    """

    frame_shape: tuple[int, int]
    num_x: int
    num_y: int
    core_y: int
    core_x: int
    overlap_y: int
    overlap_x: int
    overlap_perc: float = 0.0

    def __post_init__(self) -> None:
        if len(self.frame_shape) != 2:
            raise GeometryError(f"frame_shape must be (rows, cols), got {self.frame_shape!r}")
        _check_positive("frame height", self.frame_shape[0])
        _check_positive("frame width", self.frame_shape[1])
        for name in ("num_x", "num_y", "core_y", "core_x"):
            _check_positive(name, getattr(self, name))
        for name in ("overlap_y", "overlap_x"):
            _check_non_negative(name, getattr(self, name))
        height, width = self.frame_shape
        if self.num_y > height or self.num_x > width:
            raise GeometryError(
                f"cannot cut a {height}x{width} frame into {self.num_y}x{self.num_x} tiles: "
                "use fewer tiles than pixels along each axis"
            )
        if (self.num_y - 1) * self.core_y >= height or (self.num_x - 1) * self.core_x >= width:
            raise GeometryError(
                f"tile cores {self.core_y}x{self.core_x} with {self.num_y}x{self.num_x} tiles "
                f"leave the last tile empty in a {height}x{width} frame"
            )

    @classmethod
    def for_frame(
        cls, frame_shape: tuple[int, int], *, num_x: int, num_y: int, overlap_perc: float
    ) -> TileGrid:
        """A grid for new data: cores are ``ceil(H / num_y)`` so every pixel is in a core.

        The frame is padded with zeros at the bottom and right as needed; where
        ``H`` divides evenly this is exactly the original tool's geometry.
        """
        if len(frame_shape) != 2:
            raise GeometryError(f"frame_shape must be (rows, cols), got {frame_shape!r}")
        _check_positive("num_x", num_x)
        _check_positive("num_y", num_y)
        if not 0 <= overlap_perc < 100:
            raise GeometryError(
                f"overlap_perc must be at least 0 and below 100, got {overlap_perc!r}"
            )
        height, width = int(frame_shape[0]), int(frame_shape[1])
        core_y = math.ceil(height / num_y)
        core_x = math.ceil(width / num_x)
        return cls(
            frame_shape=(height, width),
            num_x=num_x,
            num_y=num_y,
            core_y=core_y,
            core_x=core_x,
            overlap_y=int(core_y * overlap_perc / 100),
            overlap_x=int(core_x * overlap_perc / 100),
            overlap_perc=float(overlap_perc),
        )

    @classmethod
    def legacy(
        cls, frame_shape: tuple[int, int], *, num_x: int, num_y: int, overlap_perc: float
    ) -> TileGrid:
        """The original tool's grid: cores are ``H // num_y`` (rows past the grid are lost)."""
        height, width = int(frame_shape[0]), int(frame_shape[1])
        _check_positive("num_x", num_x)
        _check_positive("num_y", num_y)
        core_y, core_x = height // num_y, width // num_x
        return cls(
            frame_shape=(height, width),
            num_x=num_x,
            num_y=num_y,
            core_y=max(core_y, 1),
            core_x=max(core_x, 1),
            overlap_y=int(core_y * overlap_perc / 100),
            overlap_x=int(core_x * overlap_perc / 100),
            overlap_perc=float(overlap_perc),
        )

    # -- sizes ---------------------------------------------------------------------------

    @property
    def tile_shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of every tile."""
        return (self.core_y + 2 * self.overlap_y, self.core_x + 2 * self.overlap_x)

    @property
    def padded_shape(self) -> tuple[int, int]:
        """Shape of the zero-padded frame the tiles are taken from."""
        return (
            self.num_y * self.core_y + 2 * self.overlap_y,
            self.num_x * self.core_x + 2 * self.overlap_x,
        )

    @property
    def lost_pixels(self) -> tuple[int, int]:
        """Rows and columns at the bottom/right of the frame that no tile covers.

        Always ``(0, 0)`` for grids from :meth:`for_frame`; the original tool lost
        rows when ``H % num_y`` was larger than the overlap.
        """
        height, width = self.frame_shape
        covered_y = self.num_y * self.core_y + self.overlap_y
        covered_x = self.num_x * self.core_x + self.overlap_x
        return (max(0, height - covered_y), max(0, width - covered_x))

    @property
    def positions(self) -> list[Position]:
        """Every tile position, x-major (``x_00_y_00, x_00_y_01, …``) as the original."""
        return [Position(x, y) for x in range(self.num_x) for y in range(self.num_y)]

    def __len__(self) -> int:
        return self.num_x * self.num_y

    # -- slices --------------------------------------------------------------------------

    def _check_position(self, pos: Position) -> None:
        if not (0 <= pos.x < self.num_x and 0 <= pos.y < self.num_y):
            raise GeometryError(
                f"tile position x={pos.x}, y={pos.y} is outside the "
                f"{self.num_x}x{self.num_y} (x by y) grid"
            )

    def padded_slices(self, pos: Position) -> tuple[slice, slice]:
        """Where tile ``pos`` sits in the padded frame."""
        self._check_position(pos)
        th, tw = self.tile_shape
        y0, x0 = pos.y * self.core_y, pos.x * self.core_x
        return slice(y0, y0 + th), slice(x0, x0 + tw)

    def frame_window(self, pos: Position) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
        """The part of the frame a tile covers, and where it sits inside the tile.

        Returns ``(frame_slices, tile_slices)``: ``tile[tile_slices]`` holds
        ``frame[frame_slices]``; the rest of the tile is zero padding.
        """
        (ys, xs) = self.padded_slices(pos)
        fy = _clip(ys.start - self.overlap_y, ys.stop - self.overlap_y, self.frame_shape[0])
        fx = _clip(xs.start - self.overlap_x, xs.stop - self.overlap_x, self.frame_shape[1])
        ty = slice(fy.start - (ys.start - self.overlap_y), fy.stop - (ys.start - self.overlap_y))
        tx = slice(fx.start - (xs.start - self.overlap_x), fx.stop - (xs.start - self.overlap_x))
        return (fy, fx), (ty, tx)

    def core_window(self, pos: Position) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
        """The pixels of the frame a tile *owns*, and where they sit inside the tile.

        A pixel is owned by the tile whose core holds it; rows and columns past
        the last core (only in legacy grids) belong to the last tile as far as it
        reaches. Owned windows partition the covered frame.
        """
        self._check_position(pos)
        height, width = self.frame_shape
        fy = _owned(pos.y, self.num_y, self.core_y, self.overlap_y, height)
        fx = _owned(pos.x, self.num_x, self.core_x, self.overlap_x, width)
        ty = slice(fy.start - pos.y * self.core_y + self.overlap_y,
                   fy.stop - pos.y * self.core_y + self.overlap_y)
        tx = slice(fx.start - pos.x * self.core_x + self.overlap_x,
                   fx.stop - pos.x * self.core_x + self.overlap_x)
        return (fy, fx), (ty, tx)

    # -- cut and put back ----------------------------------------------------------------

    def _check_frame(self, frame: NDArray[np.generic], what: str = "frame") -> None:
        if frame.ndim < 2 or tuple(frame.shape[:2]) != self.frame_shape:
            raise GeometryError(
                f"{what} has shape {tuple(frame.shape)}, but this tile grid was built for "
                f"{self.frame_shape[0]}x{self.frame_shape[1]} frames: check that the raw "
                "frames and the chopper log belong to the same movie"
            )

    def tile(self, frame: NDArray[np.generic], pos: Position) -> NDArray[np.generic]:
        """Tile ``pos`` of ``frame`` (trailing channel axes are kept)."""
        self._check_frame(frame)
        out = np.zeros(self.tile_shape + frame.shape[2:], dtype=frame.dtype)
        (fy, fx), (ty, tx) = self.frame_window(pos)
        out[ty, tx] = frame[fy, fx]
        return out

    def cut(self, frame: NDArray[np.generic]) -> NDArray[np.generic]:
        """All tiles of ``frame`` as an array ``(num_y, num_x, tile_rows, tile_cols, ...)``."""
        self._check_frame(frame)
        out = np.zeros((self.num_y, self.num_x, *self.tile_shape, *frame.shape[2:]), frame.dtype)
        for pos in self.positions:
            (fy, fx), (ty, tx) = self.frame_window(pos)
            out[pos.y, pos.x][ty, tx] = frame[fy, fx]
        return out

    def stitch(self, tiles: NDArray[np.generic]) -> NDArray[np.generic]:
        """Put tiles back: each frame pixel is taken from the tile that owns it.

        ``tiles`` is shaped like the output of :meth:`cut`. Pixels no tile covers
        (legacy grids only, see :attr:`lost_pixels`) are zero.
        """
        expected = (self.num_y, self.num_x, *self.tile_shape)
        if tiles.ndim < 4 or tuple(tiles.shape[:4]) != expected:
            raise GeometryError(
                f"tiles have shape {tuple(tiles.shape)}, expected {expected} "
                "(num_y, num_x, tile rows, tile cols) for this grid"
            )
        out = np.zeros(self.frame_shape + tiles.shape[4:], dtype=tiles.dtype)
        for pos in self.positions:
            (fy, fx), (ty, tx) = self.core_window(pos)
            out[fy, fx] = tiles[pos.y, pos.x][ty, tx]
        return out


def _clip(start: int, stop: int, size: int) -> slice:
    return slice(min(max(start, 0), size), min(max(stop, 0), size))


def _owned(index: int, count: int, core: int, overlap: int, size: int) -> slice:
    start = index * core
    stop = (index + 1) * core if index < count - 1 else count * core + overlap
    return _clip(start, stop, size)


def num_montages(num_frames: int, length: int) -> int:
    """How many montages (parts) a movie of ``num_frames`` needs: the last may be partial.

    >>> num_montages(30, 10), num_montages(31, 10)
    (3, 4)
    """
    _check_positive("num_frames", num_frames)
    _check_positive("montage length", length)
    return -(-num_frames // length)


def montage_frame_range(montage: int, length: int, num_frames: int | None = None) -> range:
    """Movie frames held by montage ``montage`` (0-based): ``m*L … m*L+L-1``, clipped.

    >>> montage_frame_range(2, 10, num_frames=25)
    range(20, 25)
    """
    _check_non_negative("montage number", montage)
    _check_positive("montage length", length)
    stop = (montage + 1) * length
    if num_frames is not None:
        if montage * length >= num_frames:
            raise GeometryError(
                f"montage {montage} starts at frame {montage * length}, past the end of a "
                f"{num_frames}-frame movie"
            )
        stop = min(stop, num_frames)
    return range(montage * length, stop)


@dataclass(frozen=True)
class MontageLayout:
    """``length`` frames of ``frame_shape`` laid out ``row_length`` per row with buffers.

    Frame ``k`` sits at row ``k // row_length``, column ``k % row_length``. Only
    the first ``length`` cells are frames; a partial last row stays blank (the
    original filled it with frames of the next montage).

    Examples
    --------
    >>> layout = MontageLayout((2, 3), length=3, row_length=2, x_buffer=1, y_buffer=1)
    >>> layout.montage_shape
    (7, 9)
    >>> frames = np.arange(1, 19).reshape(3, 2, 3)
    >>> bool((layout.read(layout.make(frames)) == frames).all())
    True
    """

    frame_shape: tuple[int, int]
    length: int
    row_length: int
    x_buffer: int = 0
    y_buffer: int = 0

    def __post_init__(self) -> None:
        if len(self.frame_shape) != 2:
            raise GeometryError(f"frame_shape must be (rows, cols), got {self.frame_shape!r}")
        _check_positive("frame height", self.frame_shape[0])
        _check_positive("frame width", self.frame_shape[1])
        _check_positive("montage_len", self.length)
        _check_positive("row_length", self.row_length)
        _check_non_negative("x_buffer", self.x_buffer)
        _check_non_negative("y_buffer", self.y_buffer)

    @classmethod
    def from_montage_shape(
        cls,
        montage_shape: tuple[int, ...],
        *,
        length: int,
        row_length: int,
        x_buffer: int = 0,
        y_buffer: int = 0,
        source: str = "montage",
    ) -> MontageLayout:
        """Recover the frame size from a montage's size, refusing sizes that do not fit."""
        _check_positive("montage_len", length)
        _check_positive("row_length", row_length)
        rows = -(-length // row_length)
        height, width = int(montage_shape[0]), int(montage_shape[1])
        h_total = height - (rows + 1) * y_buffer
        w_total = width - (row_length + 1) * x_buffer
        if h_total < rows or w_total < row_length or h_total % rows or w_total % row_length:
            raise GeometryError(
                f"{source} is {height}x{width} pixels, which does not fit {length} frames laid "
                f"out {row_length} per row ({rows} rows) with buffers x={x_buffer}, "
                f"y={y_buffer}: check montage_len, row_length and the buffers in the montage "
                "log, or whether this image belongs to another job"
            )
        return cls((h_total // rows, w_total // row_length), length, row_length, x_buffer, y_buffer)

    @property
    def rows(self) -> int:
        """Number of frame rows in the montage."""
        return -(-self.length // self.row_length)

    @property
    def montage_shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of the montage image."""
        h, w = self.frame_shape
        return (
            self.rows * h + (self.rows + 1) * self.y_buffer,
            self.row_length * w + (self.row_length + 1) * self.x_buffer,
        )

    def frame_slices(self, k: int) -> tuple[slice, slice]:
        """Where frame ``k`` sits in the montage."""
        if not 0 <= k < self.length:
            raise GeometryError(f"frame {k} is outside a montage of {self.length} frames")
        h, w = self.frame_shape
        r, c = divmod(k, self.row_length)
        y0 = self.y_buffer + r * (self.y_buffer + h)
        x0 = self.x_buffer + c * (self.x_buffer + w)
        return slice(y0, y0 + h), slice(x0, x0 + w)

    def iter_slices(self) -> Iterator[tuple[slice, slice]]:
        """Slices of every frame cell, in frame order."""
        for k in range(self.length):
            yield self.frame_slices(k)

    def make(self, frames: NDArray[np.generic]) -> NDArray[np.generic]:
        """Lay ``frames`` (``(n <= length, h, w, ...)``) out in a new montage (buffers 0)."""
        if frames.ndim < 3 or tuple(frames.shape[1:3]) != self.frame_shape:
            raise GeometryError(
                f"frames have shape {tuple(frames.shape)}, expected (n, "
                f"{self.frame_shape[0]}, {self.frame_shape[1]}, ...) for this montage layout"
            )
        if not 1 <= frames.shape[0] <= self.length:
            raise GeometryError(
                f"a montage holds 1 to {self.length} frames, got {frames.shape[0]}"
            )
        out = np.zeros(self.montage_shape + frames.shape[3:], dtype=frames.dtype)
        for k in range(frames.shape[0]):
            out[self.frame_slices(k)] = frames[k]
        return out

    def read(
        self, montage: NDArray[np.generic], *, source: str = "montage"
    ) -> NDArray[np.generic]:
        """Cut a montage back into its ``(length, h, w, ...)`` frames."""
        if montage.ndim < 2 or tuple(montage.shape[:2]) != self.montage_shape:
            raise GeometryError(
                f"{source} is {'x'.join(map(str, montage.shape[:2]))} pixels, expected "
                f"{self.montage_shape[0]}x{self.montage_shape[1]} for {self.length} frames of "
                f"{self.frame_shape[0]}x{self.frame_shape[1]} laid out {self.row_length} per "
                "row: check that the image belongs to this job and montage log"
            )
        out = np.empty((self.length, *self.frame_shape, *montage.shape[2:]), montage.dtype)
        for k, sl in enumerate(self.iter_slices()):
            out[k] = montage[sl]
        return out
