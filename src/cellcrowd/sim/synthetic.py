"""Synthetic microscopy movies with ground truth (and, re-exported, crowd-like annotations).

:func:`synthetic_movie`
    A movie of elliptical cells that drift, grow and divide, with its label
    movie, lineage (``parents``) and division frames. Used by the demo, the
    emulator's simulated crowd and the tests of every stage.
:func:`write_movie_frames`
    One image file per frame, named so that natural sort is frame order.
:func:`paint_annotation` / :func:`paint_annotation_with_report`
    Crowd-like annotation images of ground-truth labels, from
    :mod:`cellcrowd.sim.paint` (importable from here too).

Everything is deterministic given ``seed`` (:func:`numpy.random.default_rng`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage
from skimage.measure import label as _component_label

from ..files import write_image
from .paint import Artifact, PaintReport, paint_annotation, paint_annotation_with_report

__all__ = [
    "Artifact",
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


#: Pixels rendered at a time by :func:`_render_raw` (whole frames).
_RENDER_PIXELS = 1 << 24


def _render_raw(rng: np.random.Generator, labels: NDArray[np.int32],
                brightness: NDArray[np.float64]) -> NDArray[np.uint16]:
    """The raw movie of ``labels``, a few frames at a time: its float temporaries take
    about 40 bytes per pixel, too much for a long movie at once. The random draws are
    the ones made for the whole movie (the same numbers in the same order)."""
    frames, height, width = labels.shape
    yy, xx = np.mgrid[0:height, 0:width]
    background = 110.0 + 50.0 * (yy / height) * 0.6 + 50.0 * (xx / width) * 0.4
    texture = ndimage.gaussian_filter(rng.normal(0, 1, (height, width)), 2.0)
    texture = 1.0 + 0.15 * texture / max(float(np.abs(texture).max()), 1e-9)
    flicker = rng.normal(1.0, 0.02, (frames, 1, 1))
    step = max(1, _RENDER_PIXELS // (height * width))  # frames at a time
    chunks = [slice(t, t + step) for t in range(0, frames, step)]
    counts = np.empty(labels.shape, dtype=np.int32)  # photon counts: thousands at most
    for part in chunks:  # every Poisson draw first, then every Gaussian one, as before
        signal = brightness[labels[part]] * texture[None]
        signal = ndimage.gaussian_filter(signal.astype(np.float32), sigma=(0, 1.0, 1.0))
        expected = (background[None] + signal) * flicker[part]
        counts[part] = rng.poisson(np.clip(expected, 0, None))
    raw = np.empty(labels.shape, dtype=np.uint16)
    for part in chunks:
        noisy = counts[part] + rng.normal(0, 4.0, counts[part].shape)
        raw[part] = np.clip(np.rint(noisy), 0, 65535).astype(np.uint16)
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
