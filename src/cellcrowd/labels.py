"""Annotation images -> cell labels: decoding colours, cleaning per cell, relabelling.

The original clean-up (FORMATS.md section 4) worked on the binary mask, so a
stray fragment touching another cell survived; it shifted label boundaries,
only partly filled larger holes and wrapped ids above 255. Here:

* :func:`decode_annotation` turns a PNG array (ids in the red channel, one
  colour per cell, or grey ids) into ``int32`` ids;
* :func:`clean_labels` cleans ONE frame *per cell*: every 8-connected part of
  a cell under ``min_size`` pixels is dropped, even where it touches another
  cell (except a cell's largest part with image data when it touches the
  frame's or the image's edge: tiles cut real cells into slivers there); then
  every 4-connected background region under ``max_hole`` pixels that does not
  touch the frame edge and is bordered by a single cell is filled with that
  cell, completely. Nothing
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

import functools
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage
from skimage.measure import label as _skimage_label

from .decode import Encoding, decode_annotation, rank_ids
from .errors import AnnotationError, CellcrowdError
from .executor import Executor, run_tasks
from .files import atomic_write_text, natural_key, read_image, write_image
from .geometry import MontageLayout, TileGrid
from .labelcheck import INT32_MAX, UINT16_MAX, check_label_image
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
    "tile_window",
    "write_clean_stats",
]

logger = logging.getLogger(__name__)



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


# -- cleaning one frame ----------------------------------------------------------------------


def _check_sizes(min_size: int, max_hole: int) -> None:
    for name, value in (("min_size", min_size), ("max_hole", max_hole)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a whole number >= 0, got {value!r}")


def _border(image: NDArray[np.intp]) -> NDArray[np.intp]:
    return np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])


#: Where real image data lies inside a frame (row and column slices); the rest is the
#: zero padding of a tile that continues past the image's edge. None: all of it.
Window = tuple[slice, slice]


class _Edges(NamedTuple):
    """Flat pixel indices (into the frame's ``ravel()``): a few thousand at most, so
    looking up the pixels there costs next to nothing against a pass over the frame."""

    padding: NDArray[np.intp]  # where the image's data does not lie
    frame_edge: NDArray[np.intp]  # the frame's border
    image_edge: NDArray[np.intp]  # the image's border inside the frame


def _edges(shape: tuple[int, int], window: Window | None) -> _Edges:
    """Where the data lies in a frame and its edges: the same for every frame of a
    tile, so made once per shape and window (read-only arrays)."""
    key = None if window is None else tuple((s.start, s.stop, s.step) for s in window)
    return _edges_of(shape, key)


@functools.lru_cache(maxsize=64)
def _edges_of(shape: tuple[int, int], window: tuple[tuple[int | None, ...], ...] | None
              ) -> _Edges:
    data = np.zeros(shape, dtype=bool)
    data[tuple(slice(*s) for s in window) if window is not None else ...] = True
    frame_edge = np.zeros(shape, dtype=bool)
    frame_edge[[0, -1], :] = frame_edge[:, [0, -1]] = True
    inner = ndimage.binary_erosion(data, border_value=1)  # data pixels next to padding
    edges = _Edges(*(np.flatnonzero(mask) for mask in (~data, frame_edge, data & ~inner)))
    for array in edges:
        array.flags.writeable = False
    return edges


#: How far (px) a sliver at the image's edge may be from its cell in the frame before or
#: after it (cells move a few pixels from frame to frame).
REACH = 3


def _seen_nearby(piece: tuple[slice, slice], cell: int,
                 neighbours: Sequence[NDArray[np.generic]]) -> bool:
    """Whether ``cell`` has pixels within :data:`REACH` of the box ``piece`` in a neighbour."""
    rows, cols = piece
    box = (slice(max(rows.start - REACH, 0), rows.stop + REACH),
           slice(max(cols.start - REACH, 0), cols.stop + REACH))
    return any(bool((n[box] == cell).any()) for n in neighbours)


def _drop_specks(
    labels: NDArray[np.int32], min_size: int, window: Window | None = None,
    neighbours: Sequence[NDArray[np.generic]] | None = None,
) -> tuple[NDArray[np.int32], int, int, int]:
    """Drop every 8-connected part of a cell under ``min_size`` px (see :func:`clean_labels`).

    Returns the labels kept (``labels`` itself when nothing is dropped), the parts and
    pixels dropped, and the cells left.
    """
    comps: NDArray[np.intp] = np.asarray(
        _skimage_label(labels, background=0, connectivity=2)  # type: ignore[no-untyped-call]
    )
    flat = comps.ravel()
    # Most of a frame is background: count and look up only the cells' pixels (a
    # bincount over every pixel adds to one counter most of the time, and is slow).
    painted = np.flatnonzero(labels.ravel() != 0)  # the same pixels as ``flat != 0``
    if painted.size == 0:
        return labels, 0, 0, 0
    part_of = np.take(flat, painted)
    count = int(part_of.max())
    sizes = np.bincount(part_of, minlength=count + 1)
    sizes[0] = flat.size - painted.size
    cell = np.zeros(count + 1, dtype=np.int64)
    cell[part_of] = np.take(labels.ravel(), painted)
    edges = _edges(labels.shape, window)
    on_frame = np.bincount(np.take(flat, edges.frame_edge), minlength=count + 1) > 0
    on_image = np.bincount(np.take(flat, edges.image_edge), minlength=count + 1) > 0
    in_data = sizes - np.bincount(np.take(flat, edges.padding), minlength=count + 1)
    # The largest part of each cell with image data (ties: the first in raster order);
    # a part lying only in the padding never is: the cell is not in this frame.
    order = np.lexsort((np.arange(1, count + 1), -sizes[1:], in_data[1:] == 0, cell[1:])) + 1
    first = np.ones(count, dtype=bool)
    first[1:] = cell[order[1:]] != cell[order[:-1]]
    largest = np.zeros(count + 1, dtype=bool)
    largest[order[first]] = True
    keep = (sizes >= min_size) | (largest & (on_frame | on_image) & (in_data > 0))
    if neighbours:  # a sliver only at the image's edge: its cell is there before or after
        slivers = np.flatnonzero(keep & (sizes < min_size) & ~on_frame).tolist()
        boxes = ndimage.find_objects(comps) if slivers else []
        for piece in slivers:
            keep[piece] = _seen_nearby(boxes[piece - 1], int(cell[piece]), neighbours)
    keep[0] = True
    dropped = ~keep
    out = labels
    if not keep.all():
        out = labels.astype(np.int32)  # a copy
        out.ravel()[painted[np.take(dropped, part_of)]] = 0
    cells = np.unique(cell[1:][keep[1:]]).size  # the ids left (parts, not pixels)
    return out, int(dropped.sum()), int(sizes[dropped].sum()), cells


def _fill_holes(
    labels: NDArray[np.int32], max_hole: int
) -> tuple[NDArray[np.int32], int, int]:
    """Fill small background regions bordered by one cell only (see :func:`clean_labels`).

    Returns the labels (``labels`` itself when nothing is filled), the holes and
    pixels filled.
    """
    regions = np.empty(labels.shape, dtype=np.intp)  # indices for np.take, uncast
    count = ndimage.label(labels == 0, output=regions)  # 4-connectivity
    if count == 0:
        return labels, 0, 0
    flat_regions = regions.ravel()
    # The candidates are small and do not touch the frame's edge: measure only the
    # pixels of regions off the edge (the large background region is on it).
    outer = np.zeros(count + 1, dtype=bool)
    outer[0] = True  # the cells' pixels
    outer[_border(regions)] = True
    inside = np.flatnonzero(~np.take(outer, flat_regions))
    inside_region = np.take(flat_regions, inside)
    sizes = np.bincount(inside_region, minlength=count + 1)
    small = (sizes < max_hole) & ~outer
    # No candidate pixel is on the frame's edge: its 4-neighbours are at -1, +1,
    # -cols and +cols in the flat frame. Every (region, cell) pair of neighbours:
    candidate = np.take(small, inside_region)
    pixels = inside[candidate]
    reg = inside_region[candidate]
    if pixels.size == 0:
        return labels, 0, 0
    flat_labels = labels.ravel()
    pairs = []
    for step in (-1, 1, -labels.shape[1], labels.shape[1]):
        lab = flat_labels[pixels + step]
        touch = lab > 0
        pairs.append(reg[touch].astype(np.int64) * (INT32_MAX + 1) + lab[touch])
    reg_of, cell_of = np.divmod(np.unique(np.concatenate(pairs)), INT32_MAX + 1)
    neighbours = np.bincount(reg_of, minlength=count + 1)
    fill_value = np.zeros(count + 1, dtype=np.int32)
    single = neighbours[reg_of] == 1
    fill_value[reg_of[single]] = cell_of[single]
    fillable = small & (neighbours == 1)  # bordered by one cell only
    if not fillable.any():
        return labels, 0, 0
    filled = fillable[reg]
    out = labels.copy()
    out.ravel()[pixels[filled]] = fill_value[reg[filled]]
    return out, int(fillable.sum()), int(sizes[fillable].sum())


def _clean_frame(
    labels: NDArray[np.generic], min_size: int, max_hole: int, window: Window | None = None,
    neighbours: Sequence[NDArray[np.generic]] | None = None,
) -> tuple[NDArray[np.int32], CleanStats]:
    # C order: both steps look pixels up by their index in the row-major ravel()
    kept, specks, removed, cells = _drop_specks(labels.astype(np.int32, order="C"), min_size,
                                                window, neighbours)
    filled, holes, pixels = _fill_holes(kept, max_hole)  # fills with kept cells only
    return filled, CleanStats(cells, specks, removed, holes, pixels)


def clean_labels(
    labels: NDArray[np.generic], *, min_size: int = 10, max_hole: int = 64,
    window: Window | None = None,
) -> NDArray[np.int32]:
    """Clean one label frame per cell: drop small parts, fill small holes, keep boundaries.

    1. Each cell's parts are its 8-connected components (pixels touching by a
       side or a corner). A part under ``min_size`` pixels is dropped, also
       where it touches another cell (the original worked on the binary mask
       and kept those). Exception: a cell's largest part (ties: the first in
       raster order) is kept, however small, when it touches an edge (the
       frame's, or the image's: the border of ``window``), because tiles cut
       real cells at their borders into small slivers. A part lying wholly in
       the zero padding outside ``window`` is never a cell's largest part: a
       speck there is dropped unless it has ``min_size`` pixels on its own.
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
    window : (slice, slice), optional
        Where the image's data lies in the frame, when the frame is a tile that
        continues past the image's edge into zero padding
        (:func:`tile_window`). Default: the whole frame is image.

    Returns
    -------
    ndarray of int32, shape (H, W)

    Raises
    ------
    LabelImageError
        If ``labels`` is not a 2-D integer image with ids in ``0..2**31-1`` (a
        ``ValueError`` and a ``TypeError``).
    ValueError
        If the sizes are negative.

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
    labels = check_label_image(labels, what="labels", max_id=INT32_MAX)
    _check_sizes(min_size, max_hole)
    return _clean_frame(labels, min_size, max_hole, window)[0]


def relabel_sequential(labels: NDArray[np.generic]) -> NDArray[np.generic]:
    """Renumber ids to ``1..n`` in sorted order of the old ids (0 stays 0); same shape and dtype.

    Raises
    ------
    LabelImageError
        If ``labels`` is not an integer array or holds negative ids (a ``ValueError`` and
        a ``TypeError``).

    Examples
    --------
    >>> relabel_sequential(np.array([[0, 7, 7], [300, 0, 3]], np.uint16)).tolist()
    [[0, 2, 2], [3, 0, 1]]
    """
    labels = check_label_image(labels, ndim=None, what="labels", max_id=None)
    if labels.size == 0:
        return labels.copy()
    out: NDArray[np.generic] = rank_ids(labels)[0].astype(labels.dtype)
    return out


# -- montages ------------------------------------------------------------------------------


def clean_montage(
    labels: NDArray[np.generic],
    layout: MontageLayout,
    *,
    min_size: int = 10,
    max_hole: int = 64,
    window: Window | None = None,
) -> tuple[NDArray[np.uint16], CleanStats]:
    """Clean every frame of a label montage on its own, then relabel the montage to ``1..n``.

    Frames are cut out with ``layout`` and cleaned with :func:`clean_labels`
    (their edges are real edges: with zero buffers neighbouring frames touch, so
    the montage is never cleaned as a whole). The same id in several frames is
    the same cell and gets the same new id; new ids follow the sorted old ids.
    Anything painted in the buffers between frames is dropped (counted in
    ``pixels_removed``). ``window`` is where image data lies in every frame
    (:func:`tile_window`; see :func:`clean_labels`). Frames are consecutive time
    points, so a small part kept only for touching the image's edge (not the
    frame's) must also have its cell within :data:`REACH` px of it in the frame
    before or after: a real sliver persists, a speck of another id does not.

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
    LabelImageError, ValueError
        As :func:`clean_labels`.
    """
    labels = check_label_image(labels, what="montage", max_id=INT32_MAX)
    _check_sizes(min_size, max_hole)
    frames = layout.read(labels)
    stats = CleanStats(pixels_removed=int(np.count_nonzero(labels))
                       - int(np.count_nonzero(frames)))
    cleaned = np.empty(frames.shape, dtype=np.int32)
    for k, frame in enumerate(frames):
        near = [frames[i] for i in (k - 1, k + 1) if 0 <= i < len(frames)]
        cleaned[k], frame_stats = _clean_frame(frame, min_size, max_hole, window, near)
        stats = stats + frame_stats
    relabelled, cells = rank_ids(cleaned)
    if cells > UINT16_MAX:
        raise AnnotationError(
            f"{cells} cells remain in one montage, more than the {UINT16_MAX} a 16-bit label "
            "image can hold: check the annotation (is it noise?) or use smaller montages"
        )
    montage = layout.make(relabelled.astype(np.uint16))
    final = CleanStats(cells, stats.specks_removed, stats.pixels_removed,
                       stats.holes_filled, stats.pixels_filled)
    return montage.astype(np.uint16), final


def tile_window(grid: TileGrid, montage: str) -> Window:
    """Where the image's data lies in each frame of ``montage`` (a tile of ``grid``).

    The position comes from the montage's name; the rest of its frames is the
    zero padding of a tile that continues past the image's edge.

    Raises
    ------
    InputError
        If ``montage`` is not a montage name.
    GeometryError
        If its position is outside the grid.

    Examples
    --------
    >>> grid = TileGrid.for_frame((10, 10), num_x=2, num_y=2, overlap_perc=20)
    >>> tile_window(grid, "exp_x_01_y_01_montage_00")
    (slice(0, 6, None), slice(0, 6, None))
    """
    from .layout import parse_montage_name

    return grid.frame_window(parse_montage_name(montage).position)[1]


def write_clean_stats(path: str | Path, stats: Mapping[str, Sequence[CleanStats]]) -> Path:
    """Write what cleaning did per montage as JSON (format: ``WorkingFolder.clean_stats_path``).

    ``stats`` maps a montage to the stats of each of its cleaned judgments; the
    counts are summed and ``judgments`` says how many there were.
    """
    montages = {}
    for name in sorted(stats, key=natural_key):
        total = sum(stats[name], CleanStats())
        montages[name] = {**asdict(total), "judgments": len(stats[name])}
    return atomic_write_text(Path(path), json.dumps(
        {"version": 1, "montages": montages}, indent=1) + "\n")


def clean_annotation_file(
    src: str | Path,
    dst: str | Path,
    *,
    montage_log: MontageLog,
    encoding: Encoding = "auto",
    min_size: int = 10,
    max_hole: int = 64,
    window: Window | None = None,
) -> CleanStats:
    """Read a downloaded annotation PNG, clean it, write the labels as a uint16 PNG.

    ``dst`` is written atomically; ``src`` (the download) is never touched.
    ``window``: where image data lies in each frame (:func:`clean_labels`).

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
        cleaned, stats = clean_montage(decoded, layout, min_size=min_size, max_hole=max_hole,
                                       window=window)
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
    window: Window | None = None

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
            min_size=task.min_size, max_hole=task.max_hole, window=task.window,
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
