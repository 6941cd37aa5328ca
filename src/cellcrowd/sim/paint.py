"""Crowd-like annotations of ground-truth labels, with the artifacts the cleaner must handle.

:func:`paint_annotation` / :func:`paint_annotation_with_report`
    A ground-truth label image (usually a label *montage*) painted the way the
    crowd paints it (ids in the red channel, or one colour per cell), with
    typical crowd artifacts: specks of other ids, holes, stray colours.

Artifact sizes
--------------
``artifact_sizes="small"`` (the default, used by the demo and the crowd simulator)
paints specks under 10 px and holes under 64 px: all of them are what
:func:`cellcrowd.labels.clean_labels` removes or fills with its defaults.

``artifact_sizes="across"`` draws every speck's size around ``min_size`` and every
hole's size around ``max_hole`` (two below, at, and one above the threshold, as a
row-major part of a small box) and adds specks touching the frame edge (the
cleaner's edge-piece rule), so that a test of the cleaner measures its thresholds
instead of assuming them. Each artifact's expected fate is computed from the
thresholds passed in and recorded in :attr:`PaintReport.artifacts`
(:class:`Artifact`: kind, pixels, size, id and ``expected``). The placement keeps
each fate a matter of the artifact alone: speck ids are distinct per frame and are
ids absent from the frame or ids whose every part has at least ``min_size`` px; a
hole or inner speck leaves its cell's part at least ``min_size`` px; background
specks are painted before holes, so never inside one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from ..geometry import MontageLayout
from .artifacts import (
    Artifact,
    FrameCell,
    PaintReport,
    paint_frame_across,
    pick_corners,
    window_extremes,
)

__all__ = [
    "Artifact",
    "PaintReport",
    "paint_annotation",
    "paint_annotation_with_report",
]

def _speck_size(rng: np.random.Generator) -> tuple[int, int]:
    """A small rectangle of 1 to 9 pixels."""
    h = int(rng.integers(1, 4))
    return h, int(rng.integers(1, 4))


# -- the default ("small") artifacts ----------------------------------------------------------


def _paint_frame(rng: np.random.Generator, frame: NDArray[np.int64], ids: NDArray[np.int64],
                 stray: int | None, where: FrameCell, counts: dict[str, int],
                 found: list[Artifact]) -> None:
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
        if _place_inside(rng, frame, first, kind, choose_id, counts, where, found):
            continue
        if first != smallest:
            _place_inside(rng, frame, smallest, kind, choose_id, counts, where, found)

    # (1) specks in the background: one touching a cell, one free; (4) one stray.
    for kind in ("touching", "free", "stray"):
        if kind == "stray" and stray is None:
            continue
        size = _speck_size(rng)
        margin = 0 if kind == "touching" else 1
        _lo, hi = window_extremes(frame, (size[0] + 2 * margin, size[1] + 2 * margin))
        for y, x in pick_corners(rng, hi == 0, frame.shape, size, margin):
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
            where.record(found, f"{kind}_speck", (y, x), size, size[0] * size[1], value, 0)
            break


def _place_inside(rng: np.random.Generator, frame: NDArray[np.int64], size: tuple[int, int],
                  kind: str, choose_id: Callable[[set[int]], int | None],
                  counts: dict[str, int], where: FrameCell, found: list[Artifact]) -> bool:
    """Paint a hole (``kind="holes"``) or another id's speck strictly inside one cell."""
    lo, hi = window_extremes(frame, (size[0] + 2, size[1] + 2))
    for y, x in pick_corners(rng, (lo == hi) & (lo > 0), frame.shape, size, 1):
        cell = int(frame[y, x])
        value = 0 if kind == "holes" else choose_id({cell})
        if value is None:
            continue
        frame[y:y + size[0], x:x + size[1]] = value
        counts[kind] += 1
        where.record(found, "hole" if kind == "holes" else "interior_speck", (y, x), size,
                     size[0] * size[1], value, cell)
        return True
    return False


# -- painting -----------------------------------------------------------------------------------


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


def _check_paint_args(labels: NDArray[np.generic], encoding: str,
                      layout: MontageLayout | None, artifact_sizes: str) -> None:
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels must be a 2-D integer image, got shape {labels.shape} and dtype "
            f"{labels.dtype}"
        )
    if labels.size and labels.min() < 0:
        raise ValueError(f"labels must not be negative, got {int(labels.min())}")
    if encoding not in ("red", "rgb"):
        raise ValueError(f"encoding must be 'red' or 'rgb', got {encoding!r}")
    if artifact_sizes not in ("small", "across"):
        raise ValueError(f"artifact_sizes must be 'small' or 'across', got {artifact_sizes!r}")
    if layout is not None and tuple(labels.shape) != layout.montage_shape:
        raise ValueError(
            f"labels are {labels.shape[0]}x{labels.shape[1]} but the layout's montages are "
            f"{layout.montage_shape[0]}x{layout.montage_shape[1]}"
        )


def _encode(rng: np.random.Generator, work: NDArray[np.int64], encoding: str
            ) -> NDArray[np.uint8]:
    """The RGBA image of an id image: ids in red, or one random colour per id."""
    out = np.zeros((*work.shape, 4), dtype=np.uint8)
    if encoding == "red":
        out[..., 0] = work.astype(np.uint8)
    else:
        values, inverse = np.unique(work, return_inverse=True)
        palette = np.zeros((values.size, 3), dtype=np.uint8)
        nonzero = values > 0
        palette[nonzero] = _colours(rng, int(nonzero.sum()))
        out[..., :3] = palette[inverse.reshape(work.shape)]
    out[..., 3] = np.where(work > 0, 255, 0).astype(np.uint8)
    return out


def paint_annotation_with_report(
    labels: NDArray[np.integer],
    *,
    encoding: Literal["red", "rgb"] = "red",
    layout: MontageLayout | None = None,
    artifacts: bool = True,
    seed: int = 0,
    artifact_sizes: Literal["small", "across"] = "small",
    min_size: int = 10,
    max_hole: int = 64,
) -> tuple[NDArray[np.uint8], PaintReport]:
    """:func:`paint_annotation`, also returning the artifacts added and their expected fates.

    ``min_size`` and ``max_hole`` are the cleaner's thresholds the fates are computed for
    (and, with ``artifact_sizes="across"``, the sizes are drawn around).
    """
    labels = np.asarray(labels)
    _check_paint_args(labels, encoding, layout, artifact_sizes)
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
    found: list[Artifact] = []
    if artifacts:
        if encoding == "red":
            unused = np.setdiff1d(np.arange(1, 256), ids)
            stray = int(rng.choice(unused)) if unused.size else None
        else:
            stray = top + 1
        cells = (list(layout.iter_slices()) if layout is not None
                 else [(slice(0, labels.shape[0]), slice(0, labels.shape[1]))])
        paint = _paint_frame if artifact_sizes == "small" else paint_frame_across
        for index, sl in enumerate(cells):
            where = FrameCell(index, (sl[0].start or 0, sl[1].start or 0), min_size, max_hole)
            paint(rng, work[sl], ids, stray, where, counts, found)
    return _encode(rng, work, encoding), PaintReport(**counts, artifacts=tuple(found))


def paint_annotation(
    labels: NDArray[np.integer],
    *,
    encoding: Literal["red", "rgb"] = "red",
    layout: MontageLayout | None = None,
    artifacts: bool = True,
    seed: int = 0,
    artifact_sizes: Literal["small", "across"] = "small",
    min_size: int = 10,
    max_hole: int = 64,
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

    With ``artifact_sizes="across"`` the sizes straddle ``min_size`` and
    ``max_hole`` instead, and a speck touching the frame edge is added (see
    the module docstring); :func:`paint_annotation_with_report` tells each
    artifact's fate. Those fates assume the whole frame is image data (no
    ``window`` for the cleaner).

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
    artifact_sizes : {"small", "across"}
        Artifacts the default cleaning removes, or sizes across the thresholds.
    min_size, max_hole : int
        The cleaner's thresholds (:func:`cellcrowd.labels.clean_labels`).

    Returns
    -------
    ndarray of uint8, shape (H, W, 4)

    Raises
    ------
    ValueError
        For a non 2-D or non-integer image, negative ids, ids above 255 with
        ``"red"``, an unknown encoding or artifact sizes, or a layout of another size.

    Examples
    --------
    >>> labels = np.array([[0, 3, 3], [0, 3, 0]])
    >>> image = paint_annotation(labels, artifacts=False)
    >>> image[..., 0].tolist(), image[..., 3].tolist()
    ([[0, 3, 3], [0, 3, 0]], [[0, 255, 255], [0, 255, 0]])
    """
    image, _ = paint_annotation_with_report(
        labels, encoding=encoding, layout=layout, artifacts=artifacts, seed=seed,
        artifact_sizes=artifact_sizes, min_size=min_size, max_hole=max_hole,
    )
    return image
