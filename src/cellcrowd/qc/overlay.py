"""Overlay images of the QC report: pure array functions, no files.

* :func:`outline_overlay`: the raw image stretched to 8 bits, each cell's outline in
  its palette colour;
* :func:`fill_overlay`: each cell filled in its colour;
* :func:`annotation_panel`: the downloaded annotation, each painted id filled in the
  colour of the cleaned cell it mostly became, pixels cleaning removed in white;
* :func:`overlay_panels`: the two side by side;
* :func:`thumbnail`: a small copy for the page's unit table.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray
from skimage.segmentation import find_boundaries

from ..labelcheck import check_label_image
from ..match import best_partners, overlap

__all__ = [
    "PALETTE",
    "PANEL_GAP",
    "REMOVED_COLOUR",
    "annotation_panel",
    "cells_per_frame",
    "fill_overlay",
    "match_ids",
    "outline_overlay",
    "overlay_panels",
    "stretch_to_uint8",
    "thumbnail",
    "to_grey",
]

#: Colours of label outlines/fills, by ``(id - 1) % len(PALETTE)``: bright on grey.
PALETTE: NDArray[np.uint8] = np.array(
    [[255, 64, 64], [64, 200, 255], [80, 255, 80], [255, 220, 0], [255, 100, 255],
     [0, 255, 200], [255, 150, 40], [160, 130, 255], [190, 255, 110], [255, 130, 170],
     [40, 150, 255], [230, 230, 230]],
    dtype=np.uint8,
)
#: Colour of annotation pixels that cleaning removed (right panel of an overlay).
REMOVED_COLOUR = (255, 255, 255)
#: White columns between the two panels of an overlay.
PANEL_GAP = 8
#: Rows shown per table of CSV rows (the counts are always complete).
_DIM = 0.8
#: Weight of a cell's colour over the grey image in filled overlays.
_ALPHA = 0.6


def cells_per_frame(labels: NDArray[np.generic]) -> NDArray[np.int64]:
    """Distinct non-zero ids in each frame of a ``(T, H, W)`` label stack.

    Examples
    --------
    >>> stack = np.array([[[0, 3], [3, 5]], [[0, 0], [0, 0]], [[7, 7], [7, 7]]])
    >>> cells_per_frame(stack).tolist()
    [2, 0, 1]
    """
    labels = np.asarray(labels)
    if labels.ndim != 3 or labels.dtype == np.bool_ or labels.dtype.kind not in "ui":
        raise ValueError(
            f"labels must be an integer (T, H, W) stack, got shape {labels.shape} and dtype "
            f"{labels.dtype}"
        )
    frames = labels.shape[0]
    flat = labels.reshape(frames, -1)
    mask = flat != 0
    ids = flat[mask].astype(np.int64)
    if ids.size == 0:
        return np.zeros(frames, dtype=np.int64)
    stride = int(ids.max()) + 1
    which = np.broadcast_to(np.arange(frames, dtype=np.int64)[:, None], flat.shape)[mask]
    unique = np.unique(which * stride + ids)
    return np.bincount(unique // stride, minlength=frames).astype(np.int64)


def stretch_to_uint8(
    image: NDArray[np.generic], *, percentiles: tuple[float, float] = (1.0, 99.5)
) -> NDArray[np.uint8]:
    """Contrast-stretch a grey image to 8 bits between two percentiles of its values.

    Examples
    --------
    >>> stretch_to_uint8(np.array([[0, 50], [100, 100]], np.uint16), percentiles=(0, 100))
    array([[  0, 128],
           [255, 255]], dtype=uint8)
    """
    image = np.asarray(image)
    if image.ndim != 2 or image.dtype == np.bool_ or image.dtype.kind not in "uif":
        raise ValueError(
            f"image must be a 2-D grey image, got shape {image.shape} and dtype {image.dtype}"
        )
    low_p, high_p = percentiles
    if not 0 <= low_p < high_p <= 100:
        raise ValueError(f"percentiles must rise within 0..100, got {percentiles!r}")
    if image.size == 0:
        return np.zeros(image.shape, dtype=np.uint8)
    # integers of up to 32 bits as they are (numpy interpolates them in float64 exactly as
    # it does their float64 copy; no 8-byte copy of the image)
    exact = image.dtype.kind in "ui" and image.dtype.itemsize <= 4
    values: NDArray[Any] = image if exact else image.astype(np.float64)
    low, high = (float(v) for v in np.percentile(values, [low_p, high_p]))
    if high <= low:
        high = low + 1.0
    out = np.empty(image.shape, dtype=np.uint8)
    for rows in _row_blocks(image.shape):
        scaled = np.clip((image[rows].astype(np.float64) - low) / (high - low), 0.0, 1.0)
        out[rows] = np.rint(scaled * 255).astype(np.uint8)
    return out


def _colours(labels: NDArray[np.generic], palette: NDArray[np.uint8]) -> NDArray[np.uint8]:
    index = (np.maximum(labels.astype(np.int64), 1) - 1) % palette.shape[0]
    out: NDArray[np.uint8] = palette[index]
    return out


def _check_pair(image: NDArray[np.generic], labels: NDArray[np.generic],
                palette: NDArray[np.uint8]) -> None:
    check_label_image(labels, what="labels", max_id=None)
    if image.shape != labels.shape:
        raise ValueError(
            f"image is {image.shape} but labels are {labels.shape}: they must be the same size"
        )
    if palette.ndim != 2 or palette.shape[1] != 3 or palette.shape[0] == 0:
        raise ValueError(f"palette must be (n, 3) RGB colours, got shape {palette.shape}")


def outline_overlay(
    image: NDArray[np.generic],
    labels: NDArray[np.generic],
    *,
    palette: NDArray[np.uint8] = PALETTE,
    percentiles: tuple[float, float] = (1.0, 99.5),
) -> NDArray[np.uint8]:
    """The grey image stretched to 8 bits, with each cell's outline in its palette colour.

    Outlines are the cells' own edge pixels (:func:`skimage.segmentation.find_boundaries`,
    ``mode="inner"``); cell ``i`` gets ``palette[(i - 1) % len(palette)]``.

    Returns
    -------
    ndarray of uint8, shape (H, W, 3)

    Examples
    --------
    >>> labels = np.zeros((5, 5), np.uint16)
    >>> labels[1:4, 1:4] = 1
    >>> rgb = outline_overlay(np.zeros((5, 5)), labels)
    >>> (rgb[..., 0] == PALETTE[0, 0]).astype(int).tolist()
    [[0, 0, 0, 0, 0], [0, 1, 1, 1, 0], [0, 1, 0, 1, 0], [0, 1, 1, 1, 0], [0, 0, 0, 0, 0]]
    """
    image, labels, palette = np.asarray(image), np.asarray(labels), np.asarray(palette)
    _check_pair(image, labels, palette)
    return _outlined(stretch_to_uint8(image, percentiles=percentiles), labels, palette)


def _outlined(grey: NDArray[np.uint8], labels: NDArray[np.generic],
              palette: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """:func:`outline_overlay` of an image already stretched to 8 bits."""
    rgb = np.repeat(grey[..., None], 3, axis=2)
    edges = np.asarray(
        find_boundaries(labels, mode="inner")  # type: ignore[no-untyped-call]
    ) & (labels != 0)
    rgb[edges] = _colours(labels[edges], palette)
    return rgb


def fill_overlay(
    image: NDArray[np.generic],
    labels: NDArray[np.generic],
    *,
    palette: NDArray[np.uint8] = PALETTE,
    alpha: float = _ALPHA,
    dim: float = 1.0,
    percentiles: tuple[float, float] = (1.0, 99.5),
) -> NDArray[np.uint8]:
    """The grey image stretched to 8 bits, each cell filled with its palette colour.

    ``grey`` is the stretched image times ``dim``; cell pixels are
    ``alpha * colour + (1 - alpha) * grey``, the background is ``grey``.

    Returns
    -------
    ndarray of uint8, shape (H, W, 3)

    Examples
    --------
    >>> out = fill_overlay(np.zeros((1, 2)), np.array([[0, 2]]), alpha=1.0)
    >>> out[0, 0].tolist(), out[0, 1].tolist() == PALETTE[1].tolist()
    ([0, 0, 0], True)
    """
    image, labels, palette = np.asarray(image), np.asarray(labels), np.asarray(palette)
    _check_pair(image, labels, palette)
    if not (0 <= alpha <= 1 and 0 <= dim <= 1):
        raise ValueError(f"alpha and dim must lie in 0..1, got {alpha!r} and {dim!r}")
    return _filled(stretch_to_uint8(image, percentiles=percentiles), labels, palette,
                   alpha, dim)


def _filled(stretched: NDArray[np.uint8], labels: NDArray[np.generic],
            palette: NDArray[np.uint8], alpha: float, dim: float) -> NDArray[np.uint8]:
    """:func:`fill_overlay` of an image already stretched to 8 bits."""
    out = np.empty((*labels.shape, 3), dtype=np.uint8)
    for rows in _row_blocks(labels.shape):  # float temporaries for a few rows at a time
        grey = stretched[rows].astype(np.float64) * dim
        rgb = np.repeat(grey[..., None], 3, axis=2)
        cells = labels[rows] != 0
        rgb[cells] = alpha * _colours(labels[rows][cells], palette) + (1 - alpha) * rgb[cells]
        out[rows] = np.rint(rgb).astype(np.uint8)
    return out


#: Pixels of the float temporaries of an overlay made at a time (by row blocks).
_BLOCK_PIXELS = 1 << 18


def _row_blocks(shape: tuple[int, ...]) -> list[slice]:
    step = max(1, _BLOCK_PIXELS // max(1, shape[1]))
    return [slice(r, r + step) for r in range(0, shape[0], step)]


def match_ids(annotation: NDArray[np.generic], labels: NDArray[np.generic]
              ) -> NDArray[np.integer[Any]]:
    """Each annotation pixel's id replaced by the cleaned id its annotation id overlaps most
    (in the labels' integer type).

    Annotation ids overlapping no cleaned cell become 0; ties go to the smaller cleaned id.

    Examples
    --------
    >>> match_ids(np.array([[5, 5, 6]]), np.array([[2, 0, 0]])).tolist()
    [[2, 2, 0]]
    """
    ints = [a if a.dtype.kind in "ui" else a.astype(np.int64) for a in (annotation, labels)]
    annotation, labels = ints  # (integers as they are: no whole-image int64 copies)
    table = overlap(annotation, labels)
    lookup = np.zeros(table.area_a.size, dtype=labels.dtype)
    first, best = best_partners(table)
    lookup[first] = best
    out: NDArray[np.integer[Any]] = lookup[annotation]
    return out


def annotation_panel(
    raw: NDArray[np.generic], annotation: NDArray[np.generic],
    labels: NDArray[np.generic] | None,
) -> NDArray[np.uint8]:
    """The annotation filled over the dimmed raw image; white: painted pixels cleaning removed.

    Each painted id is filled in the colour of the cleaned cell it mostly became
    (:func:`match_ids`); without ``labels`` in the annotation's own colours.
    The background is dimmed so that pure white only marks removed pixels.
    """
    raw = _checked(raw, labels, annotation)
    return _annotation_panel(stretch_to_uint8(raw), np.asarray(annotation), labels)


def _annotation_panel(grey: NDArray[np.uint8], annotation: NDArray[np.generic],
                      labels: NDArray[np.generic] | None) -> NDArray[np.uint8]:
    """:func:`annotation_panel` over a raw image already stretched to 8 bits."""
    if labels is None:
        return _filled(grey, annotation, PALETTE, _ALPHA, _DIM)
    panel = _filled(grey, match_ids(annotation, labels), PALETTE, _ALPHA, _DIM)
    panel[(annotation != 0) & (labels == 0)] = REMOVED_COLOUR
    return panel


def _checked(raw: NDArray[np.generic], *images: NDArray[np.generic] | None
             ) -> NDArray[np.generic]:
    """``raw`` as an array, once each of ``images`` (None: absent) is checked to be a
    label image of its size."""
    raw = np.asarray(raw)
    for image in images:
        if image is not None:
            _check_pair(raw, np.asarray(image), PALETTE)
    return raw


def overlay_panels(
    raw: NDArray[np.generic],
    labels: NDArray[np.generic] | None,
    annotation: NDArray[np.generic] | None,
) -> NDArray[np.uint8]:
    """The outline panel (if ``labels``) and the annotation panel (if ``annotation``),
    side by side with :data:`PANEL_GAP` white columns between them.

    Raises
    ------
    ValueError
        Neither labels nor an annotation, or images of different sizes.
    """
    if labels is None and annotation is None:
        raise ValueError("an overlay needs labels or an annotation, got neither")
    grey = stretch_to_uint8(_checked(raw, labels, annotation))  # once for both panels
    panels: list[NDArray[np.uint8]] = []
    if labels is not None:
        panels.append(_outlined(grey, np.asarray(labels), PALETTE))
    if annotation is not None:
        panels.append(_annotation_panel(grey, np.asarray(annotation), labels))
    gap = np.full((panels[0].shape[0], PANEL_GAP, 3), 255, dtype=np.uint8)
    pieces = [panels[0]]
    for panel in panels[1:]:
        pieces += [gap, panel]
    return np.concatenate(pieces, axis=1)


def thumbnail(rgb: NDArray[np.uint8], max_side: int = 160) -> NDArray[np.uint8]:
    """A copy at most ``max_side`` pixels wide and high (block means; never enlarged).

    Examples
    --------
    >>> thumbnail(np.zeros((400, 100, 3), np.uint8), 100).shape
    (100, 25, 3)
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or max_side < 1:
        raise ValueError(f"thumbnail needs an (H, W, 3) image and max_side >= 1, got shape "
                         f"{rgb.shape} and max_side {max_side!r}")
    step = max(1, -(-max(rgb.shape[:2]) // max_side))
    if step == 1:
        return rgb.copy()
    h, w = rgb.shape[0] // step * step, rgb.shape[1] // step * step
    if h == 0 or w == 0:
        return rgb[::step, ::step].copy()
    blocks = rgb[:h, :w].reshape(h // step, step, w // step, step, 3)
    # the mean of each block: its exact sum (no float copy of the image) over its size,
    # summed over the block's rows first (whole rows added at once: several times as
    # fast as numpy's reduction over both axes) and then its columns
    rows = blocks.sum(axis=1, dtype=np.uint64)
    sums = rows.sum(axis=2).astype(np.float64)
    small: NDArray[np.uint8] = np.rint(sums / (step * step)).astype(np.uint8)
    return small


def to_grey(image: NDArray[np.generic]) -> NDArray[np.generic]:
    """A grey version of an image: colour channels averaged, other channels dropped."""
    if image.ndim == 3:
        if image.shape[2] >= 3:
            grey: NDArray[np.generic] = image[..., :3].astype(np.float64).mean(axis=2)
            return grey
        return image[..., 0]
    return image
