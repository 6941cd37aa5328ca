"""Annotation images -> cell labels: decoding colours, cleaning per cell, relabelling.

The original clean-up (FORMATS.md section 4) worked on the binary mask, so a
stray fragment touching another cell survived; it shifted label boundaries,
only partly filled larger holes and wrapped ids above 255. Here:

* :func:`decode_annotation` turns a PNG array (ids in the red channel, one
  colour per cell, or grey ids) into ``int32`` ids;
* :func:`clean_labels` cleans ONE frame *per cell*: every 8-connected part of
  a cell under ``min_size`` pixels is dropped, even where it touches another
  cell (except a cell's largest part when it touches the frame edge: tiles
  cut real cells into slivers there); then every 4-connected background
  region under ``max_hole`` pixels that does not touch the frame edge and is
  bordered by a single cell is filled with that cell, completely. Nothing
  else changes: no morphology, so boundaries stay where the annotator put them;
* :func:`clean_montage` splits a montage into its frames with
  :class:`~cellcrowd.geometry.MontageLayout`, cleans each frame on its own
  (frame edges are real edges), and relabels the whole montage to ``1..n``
  keeping one id per cell across frames, as ``uint16`` (never wrapping);
* :func:`clean_annotation_file` does all of that for one downloaded PNG and
  writes the cleaned labels to a *new* file; :func:`clean_task` is the
  picklable per-montage function for executors, :func:`clean_annotations`
  runs many.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import fastremap
import numpy as np
from numpy.typing import NDArray
from scipy import ndimage
from skimage.measure import label as _skimage_label

from .errors import AnnotationError, CellcrowdError
from .executor import Executor, run_tasks
from .files import read_image, write_image
from .geometry import MontageLayout
from .logs import MontageLog

__all__ = [
    "CleanResult",
    "CleanStats",
    "CleanTask",
    "clean_annotation_file",
    "clean_annotations",
    "clean_labels",
    "clean_montage",
    "clean_task",
    "decode_annotation",
    "rank_ids",
    "relabel_sequential",
]

logger = logging.getLogger(__name__)

Encoding = Literal["auto", "red", "rgb"]
_INT32_MAX = int(np.iinfo(np.int32).max)
_UINT16_MAX = int(np.iinfo(np.uint16).max)


@dataclass(frozen=True)
class CleanStats:
    """What cleaning did. Stats add up with ``+`` (e.g. over the frames or montages of a job).

    Attributes
    ----------
    cells : int
        Cells (distinct ids) in the result; summed when stats are added.
    specks_removed : int
        Parts of cells dropped for being under ``min_size``.
    pixels_removed : int
        Pixels those parts covered (plus any painted pixel in montage buffers).
    holes_filled : int
        Background regions filled.
    pixels_filled : int
        Pixels those holes covered.

    Examples
    --------
    >>> CleanStats(cells=2, holes_filled=1) + CleanStats(cells=3, specks_removed=4)
    CleanStats(cells=5, specks_removed=4, pixels_removed=0, holes_filled=1, pixels_filled=0)
    """

    cells: int = 0
    specks_removed: int = 0
    pixels_removed: int = 0
    holes_filled: int = 0
    pixels_filled: int = 0

    def __add__(self, other: CleanStats) -> CleanStats:
        if not isinstance(other, CleanStats):
            return NotImplemented
        return CleanStats(*(getattr(self, f.name) + getattr(other, f.name)
                            for f in fields(self)))


# -- decoding --------------------------------------------------------------------------------


def _check_colour_dtype(image: NDArray[np.generic]) -> None:
    if image.dtype not in (np.uint8, np.uint16):
        raise AnnotationError(
            f"a colour annotation must be 8- or 16-bit (uint8/uint16), got dtype {image.dtype}"
        )


def _decode_grey(image: NDArray[np.generic]) -> NDArray[np.int32]:
    if image.dtype == np.bool_ or not np.issubdtype(image.dtype, np.integer):
        raise AnnotationError(
            f"a grey annotation must hold integer cell ids, got dtype {image.dtype}: "
            "save label images as uint8/uint16 PNG or integer TIFF"
        )
    if image.size and (int(image.min()) < 0 or int(image.max()) > _INT32_MAX):
        raise AnnotationError(
            f"grey annotation ids must lie in 0..{_INT32_MAX}, got "
            f"{int(image.min())}..{int(image.max())}"
        )
    return image.astype(np.int32)


def decode_annotation(
    image: NDArray[np.generic], *, encoding: Encoding = "auto"
) -> NDArray[np.int32]:
    """Turn an annotation image into cell ids (0 = background).

    Accepted images:

    * ``(H, W)`` integer: the ids themselves (``encoding`` is not used);
    * ``(H, W, 2)`` uint8/uint16: grey ids and alpha;
    * ``(H, W, 3)`` or ``(H, W, 4)`` uint8/uint16: RGB(A).

    Pixels whose alpha is 0 are background. Encodings of colour images:

    ``"red"``
        The id is the red channel (the original tool); green and blue are ignored.
    ``"rgb"``
        Every distinct non-black colour is one cell; ids ``1..n`` follow the
        sorted packed colour value ``R·2^16 + G·2^8 + B`` (deterministic).
    ``"auto"``
        ``"red"`` when green and blue are 0 on every painted pixel (alpha not 0
        and colour not black), else ``"rgb"``.

    Parameters
    ----------
    image : ndarray
        The annotation as read from its PNG.
    encoding : {"auto", "red", "rgb"}
        How colours map to ids.

    Returns
    -------
    ndarray of int32, shape (H, W)

    Raises
    ------
    AnnotationError
        For an unsupported shape, dtype, encoding or out-of-range grey ids.

    Examples
    --------
    >>> rgba = np.zeros((2, 3, 4), np.uint8)
    >>> rgba[0, :2] = [9, 200, 30, 255]
    >>> rgba[1, 2] = [50, 0, 70, 255]
    >>> decode_annotation(rgba).tolist()
    [[1, 1, 0], [0, 0, 2]]
    >>> rgba[..., 1:3] = 0
    >>> decode_annotation(rgba).tolist()
    [[9, 9, 0], [0, 0, 50]]
    """
    if encoding not in ("auto", "red", "rgb"):
        raise AnnotationError(f"encoding must be 'auto', 'red' or 'rgb', got {encoding!r}")
    image = np.asarray(image)
    if image.ndim == 2:
        return _decode_grey(image)
    if image.ndim != 3 or image.shape[2] not in (2, 3, 4):
        raise AnnotationError(
            f"an annotation must be (H, W) grey, (H, W, 2) grey+alpha, or (H, W, 3|4) "
            f"RGB(A), got shape {image.shape}"
        )
    _check_colour_dtype(image)
    alpha = image[..., -1] if image.shape[2] in (2, 4) else None
    if image.shape[2] == 2:
        ids = image[..., 0].astype(np.int32)
        return np.where(alpha != 0, ids, 0).astype(np.int32) if alpha is not None else ids
    packed, painted = _pack_colours(image, alpha)
    if encoding == "auto":
        green_blue = (image[..., 1] != 0) | (image[..., 2] != 0)
        encoding = "red" if not np.any(green_blue & painted) else "rgb"
        logger.debug("annotation colours decoded as %r", encoding)
    if encoding == "red":
        red = image[..., 0].astype(np.int32)
        return red if alpha is None else np.where(alpha != 0, red, 0).astype(np.int32)
    out = np.zeros(image.shape[:2], dtype=np.int32)
    out[painted] = rank_ids(packed[painted], keep_zero=False)[0]
    return out


def _pack_colours(
    image: NDArray[np.generic], alpha: NDArray[np.generic] | None
) -> tuple[NDArray[np.unsignedinteger], NDArray[np.bool_]]:
    """``R·2^2s + G·2^s + B`` per pixel (``s`` the channel's bits) and the painted mask."""
    shift = 8 * image.dtype.itemsize
    wide = np.uint32 if image.dtype == np.uint8 else np.uint64
    packed: NDArray[Any] = image[..., 0].astype(wide)
    packed <<= wide(2 * shift)
    green: NDArray[Any] = image[..., 1].astype(wide)
    green <<= wide(shift)
    packed |= green
    packed |= image[..., 2]
    painted = packed != 0
    if alpha is not None:
        painted &= alpha != 0
    return packed, painted


def rank_ids(
    values: NDArray[Any], *, keep_zero: bool = True
) -> tuple[NDArray[np.uint32], int]:
    """Ids ``1..n`` following the sorted distinct ``values`` (0 stays 0 with ``keep_zero``).

    Hash-based (``fastremap.renumber``) with a lookup table over the ``n``
    distinct values: no sort over the pixels. Values must not be negative.

    Returns
    -------
    ids : ndarray of uint32, the shape of ``values``
    n : int
        Distinct non-zero values (all distinct values without ``keep_zero``).

    Examples
    --------
    >>> ids, n = rank_ids(np.array([0, 7, 7, 300, 3]))
    >>> ids.tolist(), n
    ([0, 2, 2, 3, 1], 3)
    """
    values = np.ascontiguousarray(values)
    if values.size == 0:
        return np.zeros(values.shape, np.uint32), 0
    renumbered, remap = fastremap.renumber(values, preserve_zero=keep_zero, in_place=False)
    mapping: dict[Any, int] = {key: int(new) for key, new in remap.items()}
    if keep_zero:
        mapping.pop(0, None)
    order = np.fromiter((mapping[v] for v in sorted(mapping)), dtype=np.int64,
                        count=len(mapping))
    lut = np.zeros(len(mapping) + 1, dtype=np.uint32)
    lut[order] = np.arange(1, len(mapping) + 1)
    ids: NDArray[np.uint32] = lut[renumbered]
    return ids, len(mapping)


# -- cleaning one frame ----------------------------------------------------------------------


def _check_labels(labels: NDArray[np.generic], what: str = "labels") -> None:
    if labels.ndim != 2:
        raise ValueError(f"{what} must be a 2-D label image, got shape {labels.shape}")
    if labels.dtype == np.bool_ or not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"{what} must be an integer label image, got dtype {labels.dtype}")
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) > _INT32_MAX):
        raise ValueError(
            f"{what} must hold ids in 0..{_INT32_MAX}, got {int(labels.min())}..{int(labels.max())}"
        )


def _check_sizes(min_size: int, max_hole: int) -> None:
    for name, value in (("min_size", min_size), ("max_hole", max_hole)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a whole number >= 0, got {value!r}")


def _border(image: NDArray[np.intp]) -> NDArray[np.intp]:
    return np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])


def _drop_specks(
    labels: NDArray[np.int32], min_size: int
) -> tuple[NDArray[np.int32], int, int]:
    """Drop every 8-connected part of a cell under ``min_size`` px (see :func:`clean_labels`)."""
    comps: NDArray[np.intp] = np.asarray(
        _skimage_label(labels, background=0, connectivity=2)  # type: ignore[no-untyped-call]
    )
    count = int(comps.max()) if comps.size else 0
    if count == 0:
        return labels.copy(), 0, 0
    flat = comps.ravel()
    sizes = np.bincount(flat, minlength=count + 1)
    cell = np.zeros(count + 1, dtype=np.int64)
    cell[flat] = labels.ravel()
    on_edge = np.zeros(count + 1, dtype=bool)
    on_edge[_border(comps)] = True
    # The largest part of each cell (ties: the first in raster order).
    order = np.lexsort((np.arange(1, count + 1), -sizes[1:], cell[1:])) + 1
    first = np.ones(count, dtype=bool)
    first[1:] = cell[order[1:]] != cell[order[:-1]]
    largest = np.zeros(count + 1, dtype=bool)
    largest[order[first]] = True
    keep = (sizes >= min_size) | (largest & on_edge)
    keep[0] = True
    dropped = ~keep
    out = np.where(keep[comps], labels, 0).astype(np.int32)
    return out, int(dropped.sum()), int(sizes[dropped].sum())


def _fill_holes(
    labels: NDArray[np.int32], max_hole: int
) -> tuple[NDArray[np.int32], int, int]:
    """Fill small background regions bordered by one cell only (see :func:`clean_labels`)."""
    background = labels == 0
    regions, count = ndimage.label(background)  # 4-connectivity
    if count == 0:
        return labels.copy(), 0, 0
    sizes = np.bincount(regions.ravel(), minlength=count + 1)
    on_edge = np.zeros(count + 1, dtype=bool)
    on_edge[_border(regions)] = True
    # Every (region, cell) pair of 4-neighbours; a region is fillable if it has one cell.
    pairs = []
    for reg, lab in ((regions[:, :-1], labels[:, 1:]), (regions[:, 1:], labels[:, :-1]),
                     (regions[:-1], labels[1:]), (regions[1:], labels[:-1])):
        touch = (reg > 0) & (lab > 0)
        pairs.append(reg[touch].astype(np.int64) * (_INT32_MAX + 1) + lab[touch])
    unique = np.unique(np.concatenate(pairs))
    reg_of, cell_of = np.divmod(unique, _INT32_MAX + 1)
    neighbours = np.bincount(reg_of, minlength=count + 1)
    fill_value = np.zeros(count + 1, dtype=np.int32)
    single = neighbours[reg_of] == 1
    fill_value[reg_of[single]] = cell_of[single]
    fillable = (sizes < max_hole) & ~on_edge & (neighbours == 1)
    fillable[0] = False
    out = np.where(background & fillable[regions], fill_value[regions], labels).astype(np.int32)
    return out, int(fillable.sum()), int(sizes[fillable].sum())


def _clean_frame(
    labels: NDArray[np.generic], min_size: int, max_hole: int
) -> tuple[NDArray[np.int32], CleanStats]:
    kept, specks, removed = _drop_specks(labels.astype(np.int32), min_size)
    filled, holes, pixels = _fill_holes(kept, max_hole)
    cells = int(np.unique(filled).size - (1 if (filled == 0).any() else 0))
    return filled, CleanStats(cells, specks, removed, holes, pixels)


def clean_labels(
    labels: NDArray[np.generic], *, min_size: int = 10, max_hole: int = 64
) -> NDArray[np.int32]:
    """Clean one label frame per cell: drop small parts, fill small holes, keep boundaries.

    1. Each cell's parts are its 8-connected components (pixels touching by a
       side or a corner). A part under ``min_size`` pixels is dropped, also
       where it touches another cell (the original worked on the binary mask
       and kept those). Exception: a cell's largest part (ties: the first in
       raster order) is kept, however small, when it touches the frame edge,
       because tiles cut real cells at their borders into small slivers.
    2. A background region (4-connected) under ``max_hole`` pixels that does
       not touch the frame edge and whose 4-neighbours all belong to ONE cell
       is filled with that cell, completely. Regions bordered by several cells
       (gaps between cells) stay background.

    No morphological operation is used, so cell boundaries do not move. Ids are
    kept (use :func:`relabel_sequential` to renumber).

    Parameters
    ----------
    labels : ndarray of int, shape (H, W)
        One frame of ids, 0 background. Not modified.
    min_size : int
        Smallest part kept, in pixels.
    max_hole : int
        Holes of fewer pixels than this are filled.

    Returns
    -------
    ndarray of int32, shape (H, W)

    Raises
    ------
    ValueError
        If ``labels`` is not 2-D, holds ids outside ``0..2**31-1``, or the sizes are negative.
    TypeError
        If ``labels`` is not an integer image.

    Examples
    --------
    >>> frame = np.array([[0, 0, 0, 0, 0],
    ...                   [0, 2, 2, 2, 0],
    ...                   [0, 2, 0, 2, 7],
    ...                   [0, 2, 2, 2, 0],
    ...                   [0, 0, 0, 0, 0]])
    >>> clean_labels(frame, min_size=2, max_hole=4)
    array([[0, 0, 0, 0, 0],
           [0, 2, 2, 2, 0],
           [0, 2, 2, 2, 7],
           [0, 2, 2, 2, 0],
           [0, 0, 0, 0, 0]], dtype=int32)
    """
    labels = np.asarray(labels)
    _check_labels(labels)
    _check_sizes(min_size, max_hole)
    return _clean_frame(labels, min_size, max_hole)[0]


def relabel_sequential(labels: NDArray[np.generic]) -> NDArray[np.generic]:
    """Renumber ids to ``1..n`` in sorted order of the old ids (0 stays 0); same shape and dtype.

    Raises
    ------
    TypeError
        If ``labels`` is not an integer array.
    ValueError
        If ``labels`` holds negative ids.

    Examples
    --------
    >>> relabel_sequential(np.array([[0, 7, 7], [300, 0, 3]], np.uint16)).tolist()
    [[0, 2, 2], [3, 0, 1]]
    """
    labels = np.asarray(labels)
    if labels.dtype == np.bool_ or not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be an integer array, got dtype {labels.dtype}")
    if labels.size == 0:
        return labels.copy()
    if int(labels.min()) < 0:
        raise ValueError(f"labels must not be negative, got {int(labels.min())}")
    out: NDArray[np.generic] = rank_ids(labels)[0].astype(labels.dtype)
    return out


# -- montages ------------------------------------------------------------------------------


def clean_montage(
    labels: NDArray[np.generic],
    layout: MontageLayout,
    *,
    min_size: int = 10,
    max_hole: int = 64,
) -> tuple[NDArray[np.uint16], CleanStats]:
    """Clean every frame of a label montage on its own, then relabel the montage to ``1..n``.

    Frames are cut out with ``layout`` and cleaned with :func:`clean_labels`
    (their edges are real edges: with zero buffers neighbouring frames touch, so
    the montage is never cleaned as a whole). The same id in several frames is
    the same cell and gets the same new id; new ids follow the sorted old ids.
    Anything painted in the buffers between frames is dropped (counted in
    ``pixels_removed``).

    Returns
    -------
    labels : ndarray of uint16
        The cleaned montage, ids ``1..n``.
    stats : CleanStats
        Summed over frames; ``cells`` counts the montage's distinct cells.

    Raises
    ------
    AnnotationError
        If more than 65535 cells remain (a uint16 PNG cannot hold them).
    GeometryError
        If the montage does not have the layout's size.
    ValueError, TypeError
        As :func:`clean_labels`.
    """
    labels = np.asarray(labels)
    _check_labels(labels, "montage")
    _check_sizes(min_size, max_hole)
    frames = layout.read(labels)
    stats = CleanStats(pixels_removed=int(np.count_nonzero(labels))
                       - int(np.count_nonzero(frames)))
    cleaned = np.empty(frames.shape, dtype=np.int32)
    for k, frame in enumerate(frames):
        cleaned[k], frame_stats = _clean_frame(frame, min_size, max_hole)
        stats = stats + frame_stats
    relabelled, cells = rank_ids(cleaned)
    if cells > _UINT16_MAX:
        raise AnnotationError(
            f"{cells} cells remain in one montage, more than the {_UINT16_MAX} a 16-bit label "
            "image can hold: check the annotation (is it noise?) or use smaller montages"
        )
    montage = layout.make(relabelled.astype(np.uint16))
    final = CleanStats(cells, stats.specks_removed, stats.pixels_removed,
                       stats.holes_filled, stats.pixels_filled)
    return montage.astype(np.uint16), final


def clean_annotation_file(
    src: str | Path,
    dst: str | Path,
    *,
    montage_log: MontageLog,
    encoding: Encoding = "auto",
    min_size: int = 10,
    max_hole: int = 64,
) -> CleanStats:
    """Read a downloaded annotation PNG, clean it, write the labels as a uint16 PNG.

    ``dst`` is written atomically; ``src`` (the download) is never touched.

    Raises
    ------
    ValueError
        If ``dst`` is ``src``.
    InputError
        If ``src`` cannot be read (:class:`~cellcrowd.errors.AnnotationError` if it
        cannot be decoded, :class:`~cellcrowd.errors.GeometryError` if its size does
        not fit the montage log); messages name the file.
    """
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise ValueError(
            f"cleaned labels must not overwrite the download {src}: write them elsewhere "
            "(WorkingFolder.label_path)"
        )
    image = read_image(src)
    try:
        decoded = decode_annotation(image, encoding=encoding)
    except AnnotationError as exc:
        raise AnnotationError(str(exc), path=src) from None
    layout = montage_log.layout_for_montage(image.shape, source=str(src))
    try:
        cleaned, stats = clean_montage(decoded, layout, min_size=min_size, max_hole=max_hole)
    except AnnotationError as exc:
        raise AnnotationError(str(exc), path=src) from None
    write_image(dst, cleaned)
    logger.debug("%s -> %s: %s", src.name, dst.name, stats)
    return stats


@dataclass(frozen=True)
class CleanTask:
    """Arguments of :func:`clean_task` (picklable)."""

    src: Path
    dst: Path
    montage_log: MontageLog
    montage: str = ""
    encoding: Encoding = "auto"
    min_size: int = 10
    max_hole: int = 64

    @property
    def name(self) -> str:
        """The montage name (``montage``, or the file name of ``src``)."""
        return self.montage or Path(self.src).stem


@dataclass(frozen=True)
class CleanResult:
    """Outcome of one :class:`CleanTask`: stats, or the error that stopped it."""

    montage: str
    src: Path
    dst: Path
    stats: CleanStats | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def clean_task(task: CleanTask) -> CleanResult:
    """Clean one annotation file, recording (not raising) a bad input or file error."""
    try:
        stats = clean_annotation_file(
            task.src, task.dst, montage_log=task.montage_log, encoding=task.encoding,
            min_size=task.min_size, max_hole=task.max_hole,
        )
    except (CellcrowdError, ValueError, TypeError, OSError) as exc:
        logger.warning("skipping %s: %s", task.name, exc)
        return CleanResult(task.name, Path(task.src), Path(task.dst), None,
                           f"{type(exc).__name__}: {exc}")
    return CleanResult(task.name, Path(task.src), Path(task.dst), stats)


def clean_annotations(
    tasks: Iterable[CleanTask],
    *,
    executor: Executor | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[CleanResult]:
    """Run :func:`clean_task` over ``tasks`` (serially, or on ``executor``), in task order."""
    results = list(run_tasks(clean_task, tasks, executor=executor, progress=progress))
    failed = sum(not r.ok for r in results)
    if failed:
        logger.warning("%d of %d annotations could not be cleaned", failed, len(results))
    return results
