"""Synthetic microscopy movies with ground truth, and crowd-like annotations of them.

:func:`synthetic_movie`
    A movie of elliptical cells that drift, grow and divide, with its label
    movie, lineage (``parents``) and division frames. Used by the demo, the
    emulator's simulated crowd and the tests of every stage.
:func:`write_movie_frames`
    One image file per frame, named so that natural sort is frame order.
:func:`paint_annotation` / :func:`paint_annotation_with_report`
    A ground-truth label image (usually a label *montage*) painted the way the
    crowd paints it (ids in the red channel, or one colour per cell), with the
    typical crowd artifacts that :func:`cellcrowd.labels.clean_labels` removes.

Everything is deterministic given ``seed`` (:func:`numpy.random.default_rng`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage
from skimage.measure import label as _component_label

from .files import write_image
from .geometry import MontageLayout

__all__ = [
    "PaintReport",
    "SyntheticMovie",
    "paint_annotation",
    "paint_annotation_with_report",
    "synthetic_movie",
    "write_movie_frames",
]

logger = logging.getLogger(__name__)

_GAP = 3.0  # minimum distance (px) kept between the bounding circles of two cells
_MAX_SPEED = 1.0  # px per frame of a cell's own drift
_MAX_PUSH = 0.75  # px per frame two crowded cells may be pushed apart
_GROWTH = 1.004  # per-frame growth factor of the semi-axes, up to _MAX_GROWTH
_MAX_GROWTH = 1.2


@dataclass(frozen=True)
class SyntheticMovie:
    """A synthetic movie and its ground truth.

    Attributes
    ----------
    raw : ndarray of uint16, shape (T, H, W)
        Realistic intensities: background about 100–200 counts, cells
        800–2000 counts with texture, blurred edges, Poisson and Gaussian noise.
    labels : ndarray of int32, shape (T, H, W)
        0 is background; a cell keeps one id for its whole life (present in
        every frame of it, as one 8-connected part of at least 10 px), daughters
        get new ids. Cells never overlap and never touch the image edge; apart
        from sisters in the few frames after their division, cells do not touch.
    parents : dict of int to int
        Daughter id -> parent id, one entry per daughter.
    division_frames : dict of int to int
        Parent id -> first frame in which its daughters exist (the parent's
        last frame is the one before).
    """

    raw: NDArray[np.uint16]
    labels: NDArray[np.int32]
    parents: dict[int, int]
    division_frames: dict[int, int]

    @property
    def num_frames(self) -> int:
        """Number of frames ``T``."""
        return int(self.raw.shape[0])

    def daughters(self, parent: int) -> list[int]:
        """The daughter ids of ``parent`` (empty if it does not divide), sorted."""
        return sorted(d for d, p in self.parents.items() if p == parent)


# -- the simulation ------------------------------------------------------------------------


@dataclass
class _Cells:
    """Mutable state of every cell ever born (index = id - 1)."""

    y: NDArray[np.float64]
    x: NDArray[np.float64]
    vy: NDArray[np.float64]
    vx: NDArray[np.float64]
    a: NDArray[np.float64]  # semi-axis along theta
    b: NDArray[np.float64]  # semi-axis across theta
    theta: NDArray[np.float64]
    a_max: NDArray[np.float64]
    b_max: NDArray[np.float64]
    alive: NDArray[np.bool_]
    count: int = 0

    @classmethod
    def empty(cls, capacity: int) -> _Cells:
        def z() -> NDArray[np.float64]:
            return np.zeros(capacity, dtype=np.float64)

        return cls(z(), z(), z(), z(), z(), z(), z(), z(), z(), np.zeros(capacity, bool))

    def add(self, y: float, x: float, vy: float, vx: float, a: float, b: float,
            theta: float, a_max: float, b_max: float) -> int:
        i = self.count
        self.y[i], self.x[i], self.vy[i], self.vx[i] = y, x, vy, vx
        self.a[i], self.b[i], self.theta[i] = a, b, theta
        self.a_max[i], self.b_max[i] = a_max, b_max
        self.alive[i] = True
        self.count += 1
        return i + 1  # the id

    def radius(self) -> NDArray[np.float64]:
        return np.maximum(self.a, self.b)


def _check_args(frames: int, shape: tuple[int, int], cells: int, divisions: int) -> None:
    for name, value, low in (("frames", frames, 1), ("cells", cells, 1),
                             ("divisions", divisions, 0)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be a whole number >= {low}, got {value!r}")
    if len(shape) != 2 or min(shape) < 24:
        raise ValueError(f"shape must be (rows, cols) of at least 24x24 pixels, got {shape!r}")
    if divisions > cells:
        raise ValueError(
            f"divisions ({divisions}) cannot exceed cells ({cells}): only the cells present "
            "in the first frame divide, each at most once"
        )
    if divisions and frames < 2:
        raise ValueError(
            f"divisions need at least 2 frames (parent before, daughters after), got {frames}"
        )


def _place_initial(rng: np.random.Generator, state: _Cells, cells: int,
                   shape: tuple[int, int], r_mean: float) -> None:
    height, width = shape
    for _ in range(cells):
        for _attempt in range(2000):
            a = r_mean * rng.uniform(0.75, 1.0)
            b = a * rng.uniform(0.65, 1.0)
            radius = a * _MAX_GROWTH
            y = rng.uniform(radius + 2, height - radius - 3)
            x = rng.uniform(radius + 2, width - radius - 3)
            n = state.count
            if n:
                dist = np.hypot(state.y[:n] - y, state.x[:n] - x)
                if np.any(dist < state.a_max[:n] + radius + _GAP + 1):
                    continue
            speed = rng.uniform(0.2, _MAX_SPEED)
            angle = rng.uniform(0, 2 * np.pi)
            state.add(y, x, speed * np.sin(angle), speed * np.cos(angle), a, b,
                      rng.uniform(0, np.pi), a * _MAX_GROWTH, b * _MAX_GROWTH)
            break
        else:
            raise ValueError(
                f"cannot fit {cells} cells of radius about {r_mean:.0f} px apart in a "
                f"{height}x{width} image: use fewer cells or a larger shape"
            )


def _divide(rng: np.random.Generator, state: _Cells, parent: int) -> tuple[int, int]:
    """Replace cell ``parent`` (an id) by two daughters splitting it across its long axis."""
    p = parent - 1
    state.alive[p] = False
    a, b, theta = state.a[p], state.b[p], state.theta[p]
    if b > a:  # split across the long axis
        a, b, theta = b, a, theta + np.pi / 2
    uy, ux = np.sin(theta), np.cos(theta)
    ids = []
    for sign in (-1.0, 1.0):
        target = math.sqrt(a * b / 2) * rng.uniform(1.0, 1.1)
        ids.append(state.add(
            state.y[p] + sign * uy * a / 2, state.x[p] + sign * ux * a / 2,
            state.vy[p] + sign * uy * 0.3, state.vx[p] + sign * ux * 0.3,
            a / 2, b * 0.95, theta, target, target * rng.uniform(0.75, 0.95),
        ))
    return ids[0], ids[1]


def _step(rng: np.random.Generator, state: _Cells, shape: tuple[int, int]) -> None:
    """Drift, grow, push crowded cells apart (a little per frame) and bounce off the edges."""
    idx = np.flatnonzero(state.alive[: state.count])
    vy = 0.8 * state.vy[idx] + rng.normal(0, 0.25, idx.size)
    vx = 0.8 * state.vx[idx] + rng.normal(0, 0.25, idx.size)
    speed = np.hypot(vy, vx)
    scale = np.minimum(1.0, _MAX_SPEED / np.maximum(speed, 1e-9))
    state.vy[idx], state.vx[idx] = vy * scale, vx * scale
    # Shapes grow slowly (or relax, for daughters) towards their target size.
    for axis, top in ((state.a, state.a_max), (state.b, state.b_max)):
        cur, goal = axis[idx], top[idx]
        grown = np.minimum(goal, np.maximum(cur * _GROWTH, cur + 0.05 * (goal - cur)))
        axis[idx] = np.where(cur < goal, grown, np.maximum(cur * 0.98, goal))
    state.theta[idx] += rng.normal(0, 0.03, idx.size)
    y = state.y[idx] + state.vy[idx]
    x = state.x[idx] + state.vx[idx]
    # Push overlapping bounding circles apart, capped so shapes stay similar frame to frame.
    radius = state.radius()[idx]
    dy = y[:, None] - y[None, :]
    dx = x[:, None] - x[None, :]
    dist = np.hypot(dy, dx)
    np.fill_diagonal(dist, np.inf)
    overlap = np.clip(radius[:, None] + radius[None, :] + _GAP - dist, 0, None)
    safe = np.where(np.isfinite(dist) & (dist > 1e-9), dist, 1.0)
    py = (overlap / 2 * dy / safe).sum(axis=1)
    px = (overlap / 2 * dx / safe).sum(axis=1)
    push = np.hypot(py, px)
    cap = np.minimum(1.0, _MAX_PUSH / np.maximum(push, 1e-9))
    y, x = y + py * cap, x + px * cap
    # Bounce off the image edges.
    height, width = shape
    for pos, vel, size in ((y, state.vy, height), (x, state.vx, width)):
        low, high = radius + 2, size - radius - 3
        out = (pos < low) | (pos > high)
        vel[idx[out]] *= -1
        np.clip(pos, low, np.maximum(low, high), out=pos)
    state.y[idx], state.x[idx] = y, x


def _draw(state: _Cells, shape: tuple[int, int]) -> NDArray[np.int32]:
    """Label image of the live cells; where shapes would overlap the lower id keeps the pixel."""
    out = np.zeros(shape, dtype=np.int32)
    height, width = shape
    for i in np.flatnonzero(state.alive[: state.count]):
        a, b, theta = state.a[i], state.b[i], state.theta[i]
        ext = math.ceil(max(a, b)) + 1
        y0, y1 = max(int(state.y[i]) - ext, 0), min(int(state.y[i]) + ext + 2, height)
        x0, x1 = max(int(state.x[i]) - ext, 0), min(int(state.x[i]) + ext + 2, width)
        yy, xx = np.ogrid[y0:y1, x0:x1]
        dy, dx = yy - state.y[i], xx - state.x[i]
        u = (dy * np.sin(theta) + dx * np.cos(theta)) / a
        v = (dy * np.cos(theta) - dx * np.sin(theta)) / b
        region = out[y0:y1, x0:x1]
        region[(u * u + v * v <= 1.0) & (region == 0)] = i + 1
    return _largest_parts(out)


def _largest_parts(labels: NDArray[np.int32]) -> NDArray[np.int32]:
    """Keep only the largest 8-connected part of each id (guards against cells cut in two)."""
    comps: NDArray[np.intp] = np.asarray(
        _component_label(labels, background=0, connectivity=2)  # type: ignore[no-untyped-call]
    )
    if comps.max() == 0:
        return labels
    flat = comps.ravel()
    ids = np.zeros(int(flat.max()) + 1, dtype=np.int64)
    ids[flat] = labels.ravel()
    sizes = np.bincount(flat)
    order = np.lexsort((-sizes[1:], ids[1:])) + 1  # by id, then larger first
    first = np.ones(order.size, dtype=bool)
    first[1:] = ids[order][1:] != ids[order][:-1]
    keep = np.zeros(ids.size, dtype=bool)
    keep[order[first]] = True
    return np.where(keep[comps], labels, 0).astype(np.int32)


def _render_raw(rng: np.random.Generator, labels: NDArray[np.int32],
                brightness: NDArray[np.float64]) -> NDArray[np.uint16]:
    frames, height, width = labels.shape
    yy, xx = np.mgrid[0:height, 0:width]
    background = 110.0 + 50.0 * (yy / height) * 0.6 + 50.0 * (xx / width) * 0.4
    texture = ndimage.gaussian_filter(rng.normal(0, 1, (height, width)), 2.0)
    texture = 1.0 + 0.15 * texture / max(float(np.abs(texture).max()), 1e-9)
    signal = brightness[labels] * texture[None]
    signal = ndimage.gaussian_filter(signal.astype(np.float32), sigma=(0, 1.0, 1.0))
    flicker = rng.normal(1.0, 0.02, (frames, 1, 1))
    expected = (background[None] + signal) * flicker
    noisy = rng.poisson(np.clip(expected, 0, None)) + rng.normal(0, 4.0, expected.shape)
    raw: NDArray[np.uint16] = np.clip(np.rint(noisy), 0, 65535).astype(np.uint16)
    return raw


def synthetic_movie(
    *,
    frames: int = 30,
    shape: tuple[int, int] = (128, 128),
    cells: int = 12,
    divisions: int = 2,
    seed: int = 0,
) -> SyntheticMovie:
    """A movie of drifting, growing, dividing cells with its ground truth.

    Cells are ellipses (semi-axes about ``min(shape) / 14`` px, between 5 and 12)
    that drift at most about 2 px per frame (so a cell overlaps itself by far
    more than half from one frame to the next), grow slowly and bounce off the
    image edges; crowded cells are pushed apart (newly divided sisters touch for a
    few frames, others keep a gap). A dividing
    cell's last frame is ``f - 1``; in frame ``f`` two daughters with new ids
    take its place, split across its long axis, each about half its size.

    Parameters
    ----------
    frames : int
        Number of frames ``T``.
    shape : tuple of int
        ``(H, W)``, at least 24x24.
    cells : int
        Cells in the first frame.
    divisions : int
        How many of the first-frame cells divide (each once, at distinct random frames).
    seed : int
        Seed of :func:`numpy.random.default_rng`; equal seeds give equal movies.

    Returns
    -------
    SyntheticMovie

    Raises
    ------
    ValueError
        If an argument is out of range, or the cells do not fit in the image.

    Examples
    --------
    >>> movie = synthetic_movie(frames=4, shape=(48, 48), cells=3, divisions=1, seed=1)
    >>> movie.raw.shape, movie.raw.dtype.name, movie.labels.dtype.name
    ((4, 48, 48), 'uint16', 'int32')
    >>> len(movie.parents), len(movie.division_frames)
    (2, 1)
    """
    _check_args(frames, shape, cells, divisions)
    shape = (int(shape[0]), int(shape[1]))
    rng = np.random.default_rng(seed)
    r_mean = float(np.clip(min(shape) / 14, 5, 12))
    state = _Cells.empty(cells + 2 * divisions)
    _place_initial(rng, state, cells, shape, r_mean)

    # Division schedule: distinct frames in the middle of the movie where possible.
    dividers = rng.choice(np.arange(1, cells + 1), size=divisions, replace=False)
    low, high = max(1, frames // 5), max(2, frames - frames // 5)
    candidates = np.arange(low, high)
    when = rng.choice(candidates, size=divisions, replace=candidates.size < divisions)
    schedule: dict[int, list[int]] = {}
    for parent, frame in zip(dividers.tolist(), when.tolist(), strict=True):
        schedule.setdefault(int(frame), []).append(int(parent))

    labels = np.zeros((frames, *shape), dtype=np.int32)
    parents: dict[int, int] = {}
    division_frames: dict[int, int] = {}
    for t in range(frames):
        if t:
            _step(rng, state, shape)
        for parent in sorted(schedule.get(t, [])):
            for daughter in _divide(rng, state, parent):
                parents[daughter] = parent
            division_frames[parent] = t
        labels[t] = _draw(state, shape)

    brightness = np.zeros(state.count + 1)
    brightness[1:] = rng.uniform(800, 2000, state.count) - 110.0
    raw = _render_raw(rng, labels, brightness)
    logger.debug("synthetic movie: %d frames %s, %d cells, %d divisions",
                 frames, shape, state.count, len(division_frames))
    return SyntheticMovie(raw=raw, labels=labels, parents=parents,
                          division_frames=division_frames)


def write_movie_frames(
    movie_or_array: SyntheticMovie | NDArray[np.generic],
    folder: str | Path,
    *,
    prefix: str = "frame",
    suffix: str = ".tif",
) -> list[Path]:
    """Write one image per frame (``{prefix}{t:03d}{suffix}``), atomically.

    A :class:`SyntheticMovie` writes its ``raw`` frames; an array is taken as
    ``(T, H, W[, C])``. Frame numbers are zero-padded (at least 3 digits, more
    for long movies) so natural and plain sort both give frame order.

    Returns
    -------
    list of Path
        The files written, in frame order.
    """
    array = movie_or_array.raw if isinstance(movie_or_array, SyntheticMovie) else (
        np.asarray(movie_or_array))
    if array.ndim not in (3, 4):
        raise ValueError(
            f"expected frames shaped (T, H, W) or (T, H, W, C), got shape {array.shape}"
        )
    folder = Path(folder)
    width = max(3, len(str(array.shape[0] - 1)))
    return [write_image(folder / f"{prefix}{t:0{width}d}{suffix}", frame)
            for t, frame in enumerate(array)]


# -- crowd-like annotations ------------------------------------------------------------------


@dataclass(frozen=True)
class PaintReport:
    """How many artifacts :func:`paint_annotation_with_report` added.

    Attributes
    ----------
    background_specks : int
        Specks (< 10 px) of another cell's id lying in the background.
    touching_specks : int
        How many of ``background_specks`` touch (4-adjacent) a different cell.
    interior_specks : int
        Specks (< 10 px) of another cell's id painted inside a cell (they leave a hole
        once removed).
    holes : int
        Background holes (< 64 px) strictly inside a cell.
    strays : int
        Specks (< 10 px) of a colour/id no cell uses.
    """

    background_specks: int = 0
    touching_specks: int = 0
    interior_specks: int = 0
    holes: int = 0
    strays: int = 0

    @property
    def removable(self) -> int:
        """Components a correct cleaning drops."""
        return self.background_specks + self.interior_specks + self.strays

    @property
    def fillable(self) -> int:
        """Holes a correct cleaning fills (painted holes and the holes left by interior specks)."""
        return self.holes + self.interior_specks


def _windows(image: NDArray[np.int64], size: tuple[int, int]) -> tuple[
        NDArray[np.int64], NDArray[np.int64]]:
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


def _pick(rng: np.random.Generator, candidates: NDArray[np.bool_], frame_shape: tuple[int, int],
          size: tuple[int, int], margin: int) -> Iterator[tuple[int, int]]:
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


def _speck_size(rng: np.random.Generator) -> tuple[int, int]:
    """A small rectangle of 1 to 9 pixels."""
    h = int(rng.integers(1, 4))
    return h, int(rng.integers(1, 4))


def _paint_frame(rng: np.random.Generator, frame: NDArray[np.int64], ids: NDArray[np.int64],
                 stray: int | None, counts: dict[str, int]) -> None:
    """Add artifacts to one frame (in place, in id space). See :func:`paint_annotation`."""
    present, areas = np.unique(frame[frame > 0], return_counts=True)
    big = set(present[areas >= 10].tolist())
    # Ids safe for specks: absent from this frame, or with >= 10 px here (so a speck is never
    # the largest part of a cell whose only real part is a sliver at the frame edge).
    absent = set(ids.tolist()) - set(present.tolist())
    speck_ids = np.array(sorted(big | absent), dtype=np.int64)

    def choose_id(exclude: set[int]) -> int | None:
        allowed = speck_ids[~np.isin(speck_ids, list(exclude))] if exclude else speck_ids
        return int(rng.choice(allowed)) if allowed.size else None

    # (3) holes strictly inside a cell, (2) specks of another id inside a cell.
    for kind in ("holes", "interior_specks"):
        first = ((int(rng.integers(2, 8)), int(rng.integers(2, 8))) if kind == "holes"
                 else _speck_size(rng))
        smallest = (2, 2) if kind == "holes" else (1, 1)
        if _place_inside(rng, frame, first, kind, choose_id, counts):
            continue
        if first != smallest:
            _place_inside(rng, frame, smallest, kind, choose_id, counts)

    # (1) specks in the background: one touching a cell, one free; (4) one stray.
    for kind in ("touching", "free", "stray"):
        if kind == "stray" and stray is None:
            continue
        size = _speck_size(rng)
        margin = 0 if kind == "touching" else 1
        _lo, hi = _windows(frame, (size[0] + 2 * margin, size[1] + 2 * margin))
        for y, x in _pick(rng, hi == 0, frame.shape, size, margin):
            ring = frame[y - 1:y + size[0] + 1, x - 1:x + size[1] + 1]
            cross = np.concatenate([ring[0, 1:-1], ring[-1, 1:-1], ring[1:-1, 0], ring[1:-1, -1]])
            if kind == "touching" and not np.any(cross > 0):
                continue
            value = stray if kind == "stray" else choose_id(set(np.unique(ring).tolist()))
            if value is None:
                continue
            frame[y:y + size[0], x:x + size[1]] = value
            counts["strays" if kind == "stray" else "background_specks"] += 1
            counts["touching_specks"] += kind == "touching"
            break


def _place_inside(rng: np.random.Generator, frame: NDArray[np.int64], size: tuple[int, int],
                  kind: str, choose_id: Callable[[set[int]], int | None],
                  counts: dict[str, int]) -> bool:
    """Paint a hole (``kind="holes"``) or another id's speck strictly inside one cell."""
    lo, hi = _windows(frame, (size[0] + 2, size[1] + 2))
    for y, x in _pick(rng, (lo == hi) & (lo > 0), frame.shape, size, 1):
        cell = int(frame[y, x])
        value = 0 if kind == "holes" else choose_id({cell})
        if value is None:
            continue
        frame[y:y + size[0], x:x + size[1]] = value
        counts[kind] += 1
        return True
    return False


def _colours(rng: np.random.Generator, count: int) -> NDArray[np.uint8]:
    """``count`` distinct colours, none black and none pure red (so 'auto' sees RGB)."""
    colours = np.zeros((0, 3), dtype=np.uint8)
    while colours.shape[0] < count:
        extra = rng.integers(0, 256, size=(count - colours.shape[0], 3), dtype=np.uint8)
        extra = extra[(extra[:, 1] > 0) | (extra[:, 2] > 0)]
        merged = np.concatenate([colours, extra])
        _, first = np.unique(merged, axis=0, return_index=True)
        colours = merged[np.sort(first)]
    return colours


def paint_annotation_with_report(
    labels: NDArray[np.integer],
    *,
    encoding: Literal["red", "rgb"] = "red",
    layout: MontageLayout | None = None,
    artifacts: bool = True,
    seed: int = 0,
) -> tuple[NDArray[np.uint8], PaintReport]:
    """:func:`paint_annotation`, also returning how many artifacts were added."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels must be a 2-D integer image, got shape {labels.shape} and dtype "
            f"{labels.dtype}"
        )
    if labels.size and labels.min() < 0:
        raise ValueError(f"labels must not be negative, got {int(labels.min())}")
    if encoding not in ("red", "rgb"):
        raise ValueError(f"encoding must be 'red' or 'rgb', got {encoding!r}")
    if layout is not None and tuple(labels.shape) != layout.montage_shape:
        raise ValueError(
            f"labels are {labels.shape[0]}x{labels.shape[1]} but the layout's montages are "
            f"{layout.montage_shape[0]}x{layout.montage_shape[1]}"
        )
    ids = np.unique(labels[labels > 0]).astype(np.int64)
    top = int(ids.max()) if ids.size else 0
    if encoding == "red" and top > 255:
        raise ValueError(
            f"the red encoding holds at most 255 cell ids, but the labels go up to {top}: "
            "relabel them (1..n) or use encoding='rgb'"
        )
    rng = np.random.default_rng(seed)
    work = labels.astype(np.int64)
    counts = dict.fromkeys(
        ("background_specks", "touching_specks", "interior_specks", "holes", "strays"), 0)
    if artifacts:
        if encoding == "red":
            unused = np.setdiff1d(np.arange(1, 256), ids)
            stray = int(rng.choice(unused)) if unused.size else None
        else:
            stray = top + 1
        cells = (list(layout.iter_slices()) if layout is not None
                 else [(slice(0, labels.shape[0]), slice(0, labels.shape[1]))])
        for sl in cells:
            _paint_frame(rng, work[sl], ids, stray, counts)
    report = PaintReport(**counts)

    out = np.zeros((*labels.shape, 4), dtype=np.uint8)
    painted = work > 0
    if encoding == "red":
        out[..., 0] = work.astype(np.uint8)
    else:
        values, inverse = np.unique(work, return_inverse=True)
        palette = np.zeros((values.size, 3), dtype=np.uint8)
        nonzero = values > 0
        palette[nonzero] = _colours(rng, int(nonzero.sum()))
        out[..., :3] = palette[inverse.reshape(work.shape)]
    out[..., 3] = np.where(painted, 255, 0).astype(np.uint8)
    return out, report


def paint_annotation(
    labels: NDArray[np.integer],
    *,
    encoding: Literal["red", "rgb"] = "red",
    layout: MontageLayout | None = None,
    artifacts: bool = True,
    seed: int = 0,
) -> NDArray[np.uint8]:
    """Paint a ground-truth label image as a crowd annotation PNG (RGBA uint8).

    Encodings
    ---------
    ``"red"``
        The cell id in the red channel (the original tool; ids 1–255), green and
        blue 0.
    ``"rgb"``
        Each id a distinct random colour (never black, never pure red), the same
        colour wherever the id appears.

    In both, alpha is 255 on painted pixels and 0 on the background (decoders
    must also accept images with alpha 255 everywhere).

    Artifacts
    ---------
    With ``artifacts=True``, each frame cell of ``layout`` (or the whole image
    when ``layout`` is None) gets, where there is room, at most one each of:

    1. two background specks (1–9 px rectangles) of another cell's id: one
       4-adjacent to a different cell, one free; neither 8-adjacent to a pixel
       of its own id;
    2. one speck (1–9 px) of another cell's id inside a cell's interior (its
       3x3 neighbourhood is all that cell), overwriting it;
    3. one background hole (2x2 to 7x7 px) strictly inside a cell;
    4. one speck (1–9 px) of a stray id/colour no cell uses (skipped in
       ``"red"`` when all 255 ids are used).

    Every artifact pixel lies at least 2 px inside its frame cell, so artifacts
    never touch a frame edge or cross into another frame. Speck ids are ids that
    are absent from the frame or have at least 10 px in it. A correct cleaning
    (:func:`cellcrowd.labels.clean_labels` with ``min_size=10, max_hole=64``,
    per frame) gives back ``labels`` exactly, up to relabelling, provided
    ``labels`` itself is clean (no part under 10 px away from frame edges, no
    hole under 64 px inside one cell).

    Parameters
    ----------
    labels : ndarray of int, shape (H, W)
        Ground-truth labels (typically a label montage), 0 background.
    encoding : {"red", "rgb"}
        How ids become colours.
    layout : MontageLayout, optional
        The montage layout of ``labels``: artifacts stay inside frame cells.
    artifacts : bool
        Add crowd artifacts (see above).
    seed : int
        Seed for artifact placement and colours.

    Returns
    -------
    ndarray of uint8, shape (H, W, 4)

    Raises
    ------
    ValueError
        For a non 2-D or non-integer image, negative ids, ids above 255 with
        ``"red"``, an unknown encoding, or a layout of another size.

    Examples
    --------
    >>> labels = np.array([[0, 3, 3], [0, 3, 0]])
    >>> image = paint_annotation(labels, artifacts=False)
    >>> image[..., 0].tolist(), image[..., 3].tolist()
    ([[0, 3, 3], [0, 3, 0]], [[0, 255, 255], [0, 255, 0]])
    """
    image, _ = paint_annotation_with_report(
        labels, encoding=encoding, layout=layout, artifacts=artifacts, seed=seed
    )
    return image
