"""Crowd artifacts: where they go, and what cleaning does with each of them.

:class:`Artifact` is one painted artifact with its expected fate under
:func:`cellcrowd.labels.clean_labels` (``kept``, ``removed``, ``filled``, ``not filled``),
computed by :meth:`FrameCell.fate` from the thresholds passed to the painter;
:class:`PaintReport` counts them and lists them. :func:`paint_frame_across` paints one
frame's artifacts with sizes across the thresholds (``artifact_sizes="across"`` of
:func:`cellcrowd.sim.paint.paint_annotation`): see :mod:`cellcrowd.sim.paint` for the
rules that keep each fate a matter of the artifact alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage
from skimage.measure import label as _component_label

__all__ = [
    "Artifact",
    "Fate",
    "FrameCell",
    "PaintReport",
    "paint_frame_across",
    "pick_corners",
    "window_extremes",
]

#: What cleaning does to an artifact's pixels: ``kept`` (they keep the artifact's id),
#: ``removed`` (background), ``filled`` (the cell around them), ``not filled`` (a hole
#: left as background).
Fate = Literal["kept", "removed", "filled", "not filled"]

@dataclass(frozen=True)
class Artifact:
    """One painted artifact and what a correct cleaning does with it.

    Attributes
    ----------
    kind : str
        ``hole``, ``interior_speck`` (another id inside a cell), ``touching_speck``
        (4-adjacent to a cell), ``free_speck``, ``stray_speck`` (an id no cell uses)
        or ``edge_speck`` (touching the frame edge).
    frame : int
        The frame cell of the layout (0 without a layout).
    top, left, width : int
        The box of the artifact in image coordinates (``width`` columns).
    size : int
        Pixels: the first ``size`` pixels of the box in row-major order.
    value : int
        The id painted (0 for a hole).
    host : int
        The cell painted over (0 for specks in the background).
    expected : {"kept", "removed", "filled", "not filled"}
        What cleaning with the thresholds passed to the painter does with it.
    """

    kind: str
    frame: int
    top: int
    left: int
    width: int
    size: int
    value: int
    host: int
    expected: Fate

    def pixels(self) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
        """Row and column indices of the artifact's pixels (for fancy indexing).

        >>> Artifact("hole", 0, 4, 5, 3, 4, 0, 7, "filled").pixels()
        (array([4, 4, 4, 5]), array([5, 6, 7, 5]))
        """
        k = np.arange(self.size)
        return self.top + k // self.width, self.left + k % self.width

    @property
    def expected_value(self) -> int:
        """The id its pixels hold after cleaning (before any relabelling)."""
        return {"kept": self.value, "filled": self.host}.get(self.expected, 0)


@dataclass(frozen=True)
class PaintReport:
    """How many artifacts :func:`paint_annotation_with_report` added, and each of them.

    Attributes
    ----------
    background_specks : int
        Specks of another cell's id lying in the background (edge specks included).
    touching_specks : int
        How many of ``background_specks`` touch (4-adjacent) a different cell.
    interior_specks : int
        Specks of another cell's id painted inside a cell (a hole once removed).
    holes : int
        Background holes strictly inside a cell.
    strays : int
        Specks of a colour/id no cell uses.
    artifacts : tuple of Artifact
        Every artifact with its expected fate.
    """

    background_specks: int = 0
    touching_specks: int = 0
    interior_specks: int = 0
    holes: int = 0
    strays: int = 0
    artifacts: tuple[Artifact, ...] = ()

    @property
    def removable(self) -> int:
        """Components a correct cleaning drops."""
        if not self.artifacts:
            return self.background_specks + self.interior_specks + self.strays
        return sum(a.kind != "hole" and a.expected != "kept" for a in self.artifacts)

    @property
    def fillable(self) -> int:
        """Holes a correct cleaning fills (painted holes and the holes left by interior specks)."""
        if not self.artifacts:
            return self.holes + self.interior_specks
        return sum(a.expected == "filled" for a in self.artifacts)


@dataclass(frozen=True)
class FrameCell:
    """A frame cell being painted: its index, its top-left corner in the image, and the
    cleaner's thresholds the artifacts' fates are computed for."""

    index: int
    origin: tuple[int, int]
    min_size: int
    max_hole: int

    def fate(self, kind: str, size: int, *, edge_piece: bool = False) -> Fate:
        """What :func:`cellcrowd.labels.clean_labels` does with a painted artifact."""
        if kind == "hole":
            return "filled" if size < self.max_hole else "not filled"
        if size >= self.min_size or edge_piece:
            return "kept"
        if kind == "interior_speck":  # removed: it leaves a hole inside its cell
            return "filled" if size < self.max_hole else "removed"
        return "removed"

    def record(self, found: list[Artifact], kind: str, corner: tuple[int, int],
               box: tuple[int, int], size: int, value: int, host: int,
               *, edge_piece: bool = False) -> None:
        found.append(Artifact(kind, self.index, self.origin[0] + corner[0],
                              self.origin[1] + corner[1], box[1], size, value, host,
                              self.fate(kind, size, edge_piece=edge_piece)))


def window_extremes(image: NDArray[np.int64], size: tuple[int, int]
                    ) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Min and max of ``image`` over every ``size`` window, indexed by the window's top-left."""
    if image.shape[0] < size[0] or image.shape[1] < size[1]:
        empty = np.zeros((0, 0), dtype=np.int64)
        return empty, empty
    out = []
    for reduce in (ndimage.minimum_filter1d, ndimage.maximum_filter1d):
        result = image
        for axis, k in enumerate(size):  # origin -(k // 2): the window starts at the index
            result = reduce(result, k, axis=axis, origin=-(k // 2))
        out.append(result[: image.shape[0] - size[0] + 1, : image.shape[1] - size[1] + 1])
    return out[0], out[1]


def pick_corners(rng: np.random.Generator, candidates: NDArray[np.bool_],
                 frame_shape: tuple[int, int], size: tuple[int, int], margin: int
                 ) -> Iterator[tuple[int, int]]:
    """Random top-left corners of windows whose core stays >= 2 px from the frame edges.

    ``candidates`` is indexed by the top-left of a window of ``size`` + ``2 * margin``.
    """
    h, w = frame_shape
    ys, xs = np.nonzero(candidates)
    core_y, core_x = ys + margin, xs + margin
    ok = ((core_y >= 2) & (core_x >= 2)
          & (core_y + size[0] <= h - 2) & (core_x + size[1] <= w - 2))
    ys, xs = core_y[ok], core_x[ok]
    for k in rng.permutation(ys.size)[:64]:
        yield int(ys[k]), int(xs[k])


# -- artifacts sized across the cleaner's thresholds ------------------------------------------


def _box(size: int) -> tuple[int, int]:
    """Rows and columns of the near-square box whose first ``size`` pixels make an artifact."""
    width = max(1, int(np.ceil(np.sqrt(size))))
    return -(-size // width), width


def _mask(size: int) -> NDArray[np.bool_]:
    rows, width = _box(size)
    return np.arange(rows * width).reshape(rows, width) < size


def _across(rng: np.random.Generator, threshold: int) -> int:
    """A size two below, one below, at or one above ``threshold`` (at least 1)."""
    return max(1, threshold + int(rng.integers(-2, 2)))


@dataclass
class _Ids:
    """Speck ids of one frame: absent ones, or present ones whose every part is >= min_size."""

    parts: dict[int, tuple[int, int]]  # present id -> (smallest part, largest part)
    allowed: list[int]
    used: set[int]

    @classmethod
    def of(cls, frame: NDArray[np.int64], ids: NDArray[np.int64], min_size: int) -> _Ids:
        comps: NDArray[np.intp] = np.asarray(
            _component_label(frame, background=0, connectivity=2)  # type: ignore[no-untyped-call]
        )
        sizes = np.bincount(comps.ravel())
        owner = np.zeros(sizes.size, dtype=np.int64)
        owner[comps.ravel()] = frame.ravel()
        parts: dict[int, tuple[int, int]] = {}
        for comp in range(1, sizes.size):
            low, high = parts.get(int(owner[comp]), (int(sizes[comp]), int(sizes[comp])))
            parts[int(owner[comp])] = (min(low, int(sizes[comp])), max(high, int(sizes[comp])))
        allowed = [int(i) for i in ids if int(i) not in parts or parts[int(i)][0] >= min_size]
        return cls(parts, allowed, set())

    def choose(self, rng: np.random.Generator, exclude: set[int], size: int
               ) -> tuple[int, bool] | None:
        """An unused id and whether a speck of ``size`` px would be that cell's largest part."""
        # A tie with the cell's largest part would be settled by raster order: avoided.
        pool = [i for i in self.allowed if i not in exclude and i not in self.used
                and self.parts.get(i, (0, 0))[1] != size]
        if not pool:
            return None
        value = int(pool[int(rng.integers(len(pool)))])
        self.used.add(value)
        return value, size > self.parts.get(value, (0, 0))[1]


def _part_size(frame: NDArray[np.int64], y: int, x: int) -> int:
    """Pixels of the 8-connected part of the cell at ``(y, x)``."""
    comps, _ = ndimage.label(frame == frame[y, x], structure=np.ones((3, 3)))
    return int((comps == comps[y, x]).sum())


def _edge_corners(rng: np.random.Generator, frame: NDArray[np.int64],
                  box: tuple[int, int]) -> Iterator[tuple[int, int]]:
    """Corners of a box touching one frame edge whose surroundings are all background."""
    (h, w), (rows, cols) = frame.shape, box
    corners = ([(0, x) for x in range(1, w - cols)] + [(h - rows, x) for x in range(1, w - cols)]
               + [(y, 0) for y in range(1, h - rows)] + [(y, w - cols) for y in range(1, h - rows)])
    for k in rng.permutation(len(corners))[:256]:
        y, x = corners[int(k)]
        if not frame[max(y - 1, 0):y + rows + 1, max(x - 1, 0):x + cols + 1].any():
            yield y, x


def _background_corners(rng: np.random.Generator, frame: NDArray[np.int64], kind: str,
                        box: tuple[int, int], mask: NDArray[np.bool_]
                        ) -> Iterator[tuple[int, int]]:
    """Where a background speck of ``kind`` may go (``touching`` ones 4-touch a cell)."""
    if kind == "edge_speck":
        yield from _edge_corners(rng, frame, box)
        return
    margin = 0 if kind == "touching_speck" else 1
    _lo, hi = window_extremes(frame, (box[0] + 2 * margin, box[1] + 2 * margin))
    cross = ndimage.binary_dilation(np.pad(mask, 1))  # the speck and its 4-neighbours
    for y, x in pick_corners(rng, hi == 0, frame.shape, box, margin):
        ring = frame[y - 1:y + box[0] + 1, x - 1:x + box[1] + 1]
        if kind != "touching_speck" or np.any(ring[cross] > 0):
            yield y, x


def _paint_background_across(rng: np.random.Generator, frame: NDArray[np.int64], ids: _Ids,
                             stray: int | None, where: FrameCell, counts: dict[str, int],
                             found: list[Artifact]) -> None:
    """Touching, free, edge and stray specks sized around ``min_size``."""
    for kind in ("touching_speck", "free_speck", "edge_speck", "stray_speck"):
        if kind == "stray_speck" and stray is None:
            continue
        size = _across(rng, where.min_size)
        box, mask = _box(size), _mask(size)
        for y, x in _background_corners(rng, frame, kind, box, mask):
            ring = frame[max(y - 1, 0):y + box[0] + 1, max(x - 1, 0):x + box[1] + 1]
            chosen = ((stray, False) if stray is not None and kind == "stray_speck" else
                      ids.choose(rng, set(np.unique(ring).tolist()), size))
            if chosen is None:
                continue
            value, largest = chosen
            frame[y:y + box[0], x:x + box[1]][mask] = value
            counts["strays" if kind == "stray_speck" else "background_specks"] += 1
            counts["touching_specks"] += kind == "touching_speck"
            where.record(found, kind, (y, x), box, size, value, 0,
                         edge_piece=kind == "edge_speck" and largest)
            break


def _paint_inside_across(rng: np.random.Generator, frame: NDArray[np.int64], ids: _Ids,
                         where: FrameCell, counts: dict[str, int], found: list[Artifact]) -> None:
    """A hole sized around ``max_hole`` and an inner speck around ``min_size``."""
    for kind in ("hole", "interior_speck"):
        size = _across(rng, where.max_hole if kind == "hole" else where.min_size)
        box, mask = _box(size), _mask(size)
        lo, hi = window_extremes(frame, (box[0] + 2, box[1] + 2))
        for y, x in pick_corners(rng, (lo == hi) & (lo > 0), frame.shape, box, 1):
            cell = int(frame[y, x])
            # Not a speck's id (its parts' sizes decided that speck's fate), and the
            # cell's part must not become a speck itself.
            if cell in ids.used or _part_size(frame, y, x) - size < where.min_size:
                continue
            chosen = (0, False) if kind == "hole" else ids.choose(rng, {cell}, size)
            if chosen is None:
                continue
            frame[y:y + box[0], x:x + box[1]][mask] = chosen[0]
            counts["holes" if kind == "hole" else "interior_specks"] += 1
            where.record(found, kind, (y, x), box, size, chosen[0], cell)
            break


def paint_frame_across(rng: np.random.Generator, frame: NDArray[np.int64],
                        ids: NDArray[np.int64], stray: int | None, where: FrameCell,
                        counts: dict[str, int], found: list[Artifact]) -> None:
    """Artifacts sized across the thresholds (see the module docstring)."""
    choices = _Ids.of(frame, ids, where.min_size)
    _paint_background_across(rng, frame, choices, stray, where, counts, found)
    _paint_inside_across(rng, frame, choices, where, counts, found)
