"""The "prepare" half of the round trip: raw movie → tiles → montages, logs and upload CSV.

:func:`prepare` reads a folder of raw frames, cuts every frame into overlapping
tiles (:class:`~cellcrowd.geometry.TileGrid`), lays ``montage_len`` consecutive
frames of each tile out as a montage (:class:`~cellcrowd.geometry.MontageLayout`;
the last montage of a tile may be partial, its extra cells stay blank) and writes::

    montages/{id}_x_XX_y_YY_montage_MM.png       16-bit PNG, one per tile and montage
    truth/{montage}_truth.png                    ground-truth label montages (optional)
    json_logs/{id}_overlapping_chopper_log.json  the full key set
    json_logs/{id}_montage_maker_log.json
    CSV/{id}_upload.csv                          identifier,image_url (one row per montage)

Intensities: ``uint16`` frames are written as they are, ``uint8`` frames are
widened (values unchanged); any other dtype (float, signed or wider integers) is
rescaled linearly from the movie's minimum and maximum to ``0 … 65535`` with a
logged warning.

Memory: :func:`prepare` never loads the whole movie. Frame shapes and dtypes are
checked from the file headers; a movie that needs rescaling is first read one
frame at a time for its range; then one task per montage number ``m`` reads
frames ``m*L … m*L+L-1`` from disk and writes montage ``m`` of every tile, so a
task holds ``L`` frames (tasks carry file paths, not pixels).

Multi-channel frames ``(H, W, C)`` (channels last): only channel ``channel``
(default the first) is montaged for upload, because annotators see one grey
image; the raw tiles written by :func:`cellcrowd.movies.raw_to_movies` keep
every channel, so training data can still use all of them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import tifffile
from numpy.typing import NDArray
from PIL import Image

from .errors import InputError
from .executor import Executor, run_tasks
from .files import (
    list_images,
    raise_if_resource_error,
    read_image,
    write_image,
)
from .geometry import MontageLayout, TileGrid, montage_frame_range, num_montages
from .labelcheck import UINT16_MAX, check_label_image
from .layout import MontageKey, WorkingFolder
from .logs import ChopperLog, MontageLog, write_log
from .uploadcsv import write_upload_csv

__all__ = [
    "MontageTaskResult",
    "PrepareResult",
    "make_montages",
    "planned_montages",
    "prepare",
    "read_raw_movie",
    "to_uint16",
]

logger = logging.getLogger(__name__)



def _first_frame(raw_dir: str | Path) -> tuple[list[Path], NDArray[np.generic]]:
    """The raw frames' paths (natural order) and the first frame, checked."""
    paths = list_images(raw_dir)
    if not paths:
        raise InputError(
            "no raw frames (PNG or TIFF) in this folder: point raw_dir at the folder of frames",
            path=raw_dir,
        )
    first = read_image(paths[0])
    _check_frame_ndim(first, paths[0])
    return paths, first


def read_raw_movie(raw_dir: str | Path) -> NDArray[np.generic]:
    """Read a folder of frames (TIFF/PNG, natural sort) into one ``(T, H, W[, C])`` array.

    Every frame must have the same shape and dtype; frames are 2-D or
    ``(H, W, C)`` with channels last.

    Raises
    ------
    InputError
        The folder has no images, a frame is not 2-D or 3-D, or a frame's shape
        or dtype differs from the first frame's (the message names the file).
    """
    paths, first = _first_frame(raw_dir)
    movie = np.empty((len(paths), *first.shape), dtype=first.dtype)
    movie[0] = first
    for t, path in enumerate(paths[1:], start=1):
        frame = read_image(path)
        _check_same_as_first(frame.shape, frame.dtype, path, first.shape, first.dtype, paths[0])
        movie[t] = frame
    return movie


def _check_same_as_first(
    shape: tuple[int, ...], dtype: np.dtype[np.generic], path: Path,
    first_shape: tuple[int, ...], first_dtype: np.dtype[np.generic], first_path: Path,
) -> None:
    if shape != first_shape or dtype != first_dtype:
        raise InputError(
            f"this frame is {shape} {dtype} but the first frame "
            f"({first_path.name}) is {first_shape} {first_dtype}: every frame of a movie "
            "must have the same shape and dtype; remove or convert this file",
            path=path,
        )


def _check_frame_ndim(frame: NDArray[np.generic], path: Path) -> None:
    if frame.ndim not in (2, 3):
        raise InputError(
            f"a raw frame must be 2-D (H, W) or channels-last (H, W, C), got shape "
            f"{frame.shape}: save one frame per file",
            path=path,
        )


def to_uint16(movie: NDArray[np.generic]) -> NDArray[np.uint16]:
    """Intensities as ``uint16``: kept (uint16), widened (uint8) or rescaled (anything else).

    Rescaling maps the array's minimum to 0 and maximum to 65535 (a constant
    array becomes zeros) and logs a warning, since it changes the values.

    >>> to_uint16(np.array([[0, 255]], dtype=np.uint8))
    array([[  0, 255]], dtype=uint16)
    >>> to_uint16(np.array([[0.0, 0.5, 1.0]]))
    array([[    0, 32768, 65535]], dtype=uint16)
    """
    if not _needs_rescale(movie.dtype):
        return _convert(movie, None)
    low, high = _finite_range(movie)
    _warn_rescale(movie.dtype, low, high)
    return _convert(movie, (low, high))


def _needs_rescale(dtype: np.dtype[np.generic]) -> bool:
    """False for uint16/uint8 (kept or widened); raises TypeError for non-numbers."""
    if dtype in (np.uint16, np.uint8):
        return False
    if dtype.kind not in "biuf":
        raise TypeError(f"cannot turn {dtype} intensities into a 16-bit image")
    return True


def _finite_range(data: NDArray[np.generic]) -> tuple[float, float]:
    """``(min, max)`` of ``data`` as float64, ``(0, 0)`` when empty; NaN/inf raise ValueError."""
    values = data.astype(np.float64)
    if not np.isfinite(values).all():
        raise ValueError("the movie holds NaN or infinite values: fix or mask them first")
    return (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)


def _warn_rescale(dtype: np.dtype[np.generic], low: float, high: float) -> None:
    logger.warning(
        "raw frames are %s: rescaling intensities %g…%g to the 16-bit range 0…65535 for "
        "the montages", dtype, low, high,
    )


def _convert(
    data: NDArray[np.generic], value_range: tuple[float, float] | None
) -> NDArray[np.uint16]:
    """``data`` as uint16: kept/widened (``value_range`` None) or rescaled from the range.

    Element-wise, so converting frame by frame with the movie's range gives the
    same values as converting the whole movie.
    """
    if value_range is None:
        if data.dtype == np.uint16:
            return data.astype(np.uint16, copy=False)
        return data.astype(np.uint16)
    low, high = value_range
    if high == low:
        return np.zeros(data.shape, dtype=np.uint16)
    values = data.astype(np.float64)
    return np.rint((values - low) * (UINT16_MAX / (high - low))).astype(np.uint16)


def _tile_stacks(
    movie: NDArray[np.generic], grid: TileGrid, length: int
) -> Iterator[tuple[MontageKey, NDArray[np.generic]]]:
    """``(key, frames)`` for every position and montage; identifier left empty."""
    frames_last = np.moveaxis(movie, 0, -1)  # (H, W, T): TileGrid.tile keeps trailing axes
    count = num_montages(movie.shape[0], length)
    for pos in grid.positions:
        tiles = np.moveaxis(grid.tile(frames_last, pos), -1, 0)  # (T, th, tw)
        for m in range(count):
            rng = montage_frame_range(m, length, movie.shape[0])
            yield MontageKey("", pos.x, pos.y, m), tiles[rng.start:rng.stop]


def make_montages(
    movie: NDArray[np.generic], grid: TileGrid, layout: MontageLayout, *, identifier: str = ""
) -> dict[MontageKey, NDArray[np.generic]]:
    """Every montage of a ``(T, H, W)`` movie, keyed by identifier, position and number.

    Montage ``m`` of a tile holds frames ``m*L … m*L+L-1`` (``L = layout.length``);
    the last montage may be partial (blank cells). The input is not modified.

    Examples
    --------
    >>> movie = np.arange(3 * 4 * 4).reshape(3, 4, 4)
    >>> grid = TileGrid.for_frame((4, 4), num_x=2, num_y=1, overlap_perc=0)
    >>> layout = MontageLayout(grid.tile_shape, length=2, row_length=2)
    >>> montages = make_montages(movie, grid, layout, identifier="e")
    >>> sorted((k.x, k.montage) for k in montages)
    [(0, 0), (0, 1), (1, 0), (1, 1)]
    >>> int(montages[MontageKey("e", 1, 0, 1)][:, 2:].max())  # blank cell of a partial montage
    0
    """
    if movie.ndim != 3:
        raise ValueError(f"movie must be (frames, rows, cols), got shape {movie.shape}")
    if layout.frame_shape != grid.tile_shape:
        raise ValueError(
            f"the montage layout is for {layout.frame_shape} frames but the tiles are "
            f"{grid.tile_shape}"
        )
    return {
        replace(key, identifier=identifier): layout.make(frames)
        for key, frames in _tile_stacks(movie, grid, layout.length)
    }


@dataclass(frozen=True)
class _MontageNumberTask:
    """Montage number ``m`` of every position: the frame files to read, not their pixels."""

    number: int
    frame_paths: tuple[Path, ...]
    first_path: Path
    frame_shape: tuple[int, ...]
    frame_dtype: str
    channel: int | None
    value_range: tuple[float, float] | None
    grid: TileGrid
    layout: MontageLayout
    keys: tuple[MontageKey, ...]
    paths: tuple[Path, ...]
    truth: NDArray[np.generic] | None
    truth_paths: tuple[Path, ...] | None


@dataclass(frozen=True)
class MontageTaskResult:
    """What one montage task did: the files written, or why it failed."""

    key: MontageKey
    path: Path | None
    truth_path: Path | None = None
    error: str | None = None


def _read_upload_frames(task: _MontageNumberTask) -> NDArray[np.uint16]:
    """This montage number's frames, upload channel only, as ``(n, H, W)`` uint16.

    One raw frame is held at a time besides the converted stack.
    """
    stack = np.empty((len(task.frame_paths), *task.frame_shape[:2]), dtype=np.uint16)
    for k, path in enumerate(task.frame_paths):
        frame = read_image(path)
        _check_frame_ndim(frame, path)
        _check_same_as_first(frame.shape, frame.dtype, path, task.frame_shape,
                             np.dtype(task.frame_dtype), task.first_path)
        stack[k] = _convert(frame[..., task.channel] if task.channel is not None else frame,
                            task.value_range)
    return stack


def _write_montage_number(task: _MontageNumberTask) -> list[MontageTaskResult]:
    """Read frames ``m*L … m*L+L-1`` and write montage ``m`` of every position (and truth).

    Never raises for one bad item: a frame that cannot be read fails (and is
    recorded for) every montage of this number; a montage that cannot be
    written is recorded alone.
    """
    try:
        frames_last = np.moveaxis(_read_upload_frames(task), 0, -1)  # (H, W, n)
    except (OSError, ValueError) as exc:
        raise_if_resource_error(exc)
        return [MontageTaskResult(key, None, None, f"{path.name}: {exc}")
                for key, path in zip(task.keys, task.paths, strict=True)]
    truth_last = np.moveaxis(task.truth, 0, -1) if task.truth is not None else None
    results = []
    for i, (pos, key, path) in enumerate(zip(task.grid.positions, task.keys, task.paths,
                                             strict=True)):
        truth_path = task.truth_paths[i] if task.truth_paths is not None else None
        try:
            write_image(path, task.layout.make(np.moveaxis(task.grid.tile(frames_last, pos),
                                                           -1, 0)))
            if truth_last is not None and truth_path is not None:
                truth_stack = np.moveaxis(task.grid.tile(truth_last, pos), -1, 0)
                write_image(truth_path, task.layout.make(truth_stack).astype(np.uint16))
        except (OSError, ValueError) as exc:
            raise_if_resource_error(exc)
            results.append(MontageTaskResult(key, None, None, f"{path.name}: {exc}"))
        else:
            results.append(MontageTaskResult(key, path, truth_path))
    return results


def _frame_header(path: Path) -> tuple[object, ...] | None:
    """A cheap signature of what :func:`read_image` would return (``None``: unknown).

    Read from the file header only; frames with equal signatures read to arrays of
    equal shape and dtype.
    """
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                return ("tiff", tuple(series.shape), series.dtype.str)
        with Image.open(path) as img:
            return ("png", img.mode, img.size, "transparency" in img.info)
    except Exception:  # any failure just means: read the whole frame instead
        return None


def _check_frames(paths: list[Path], first: NDArray[np.generic]) -> None:
    """Every frame has the first frame's shape and dtype, checked from headers.

    A frame whose header differs from the first frame's (or cannot be parsed) is
    read whole, so the verdict is the same as :func:`read_raw_movie`'s.
    """
    first_header = _frame_header(paths[0])
    for path in paths[1:]:
        if first_header is not None and _frame_header(path) == first_header:
            continue
        frame = read_image(path)
        _check_same_as_first(frame.shape, frame.dtype, path, first.shape, first.dtype, paths[0])


def _movie_range(paths: list[Path], channel: int | None) -> tuple[float, float]:
    """The upload channel's min and max over the whole movie, read one frame at a time."""
    low, high = np.inf, -np.inf
    for path in paths:
        frame = read_image(path)
        upload = frame[..., channel] if channel is not None else frame
        lo, hi = _finite_range(upload)
        if upload.size:
            low, high = min(low, lo), max(high, hi)
    return (float(low), float(high)) if low <= high else (0.0, 0.0)


@dataclass(frozen=True)
class PrepareResult:
    """What :func:`prepare` wrote.

    Attributes
    ----------
    wf : WorkingFolder
        The working folder with padding widened for these counts and ``raw``
        pointing at the raw folder that was read: use it for the later stages.
    grid, layout : TileGrid, MontageLayout
        The geometry used.
    num_frames : int
        Frames in the raw movie.
    montages : list of MontageKey
        Montages written, in upload order.
    errors : list of str
        Montages that could not be written (left out of the upload CSV).
    """

    wf: WorkingFolder
    grid: TileGrid
    layout: MontageLayout
    num_frames: int
    montages: list[MontageKey]
    errors: list[str]

    @property
    def montage_paths(self) -> list[Path]:
        return [self.wf.montage_path(k) for k in self.montages]


def planned_montages(raw_dir: str | Path, *, num_x: int, num_y: int,
                     montage_len: int) -> int | None:
    """How many montages :func:`prepare` will write (None when the raw folder is unreadable
    or empty), from the frame count alone, e.g. for a progress bar."""
    try:
        frames = len(list_images(raw_dir))
    except InputError:
        return None
    return num_x * num_y * num_montages(frames, montage_len) if frames else None


def prepare(
    raw_dir: str | Path,
    wf: WorkingFolder,
    *,
    num_x: int,
    num_y: int,
    overlap_perc: float,
    montage_len: int,
    row_length: int,
    x_buffer: int = 0,
    y_buffer: int = 0,
    url_prefix: str = "",
    truth: NDArray[np.generic] | None = None,
    channel: int = 0,
    executor: Executor | None = None,
    progress: Callable[[int], None] | None = None,
) -> PrepareResult:
    """Cut a raw movie into tiles and montages; write montages, both logs and the upload CSV.

    Parameters
    ----------
    raw_dir : Path
        Folder of raw frames (natural sort gives frame order).
    wf : WorkingFolder
        Where to write (its padding is widened to fit the counts).
    num_x, num_y : int
        Tiles along columns and rows.
    overlap_perc : float
        Overlap between neighbouring tiles, percent of a tile core.
    montage_len, row_length : int
        Frames per montage, and frames per montage row.
    x_buffer, y_buffer : int
        Blank pixels between and around montage cells.
    url_prefix : str
        Prepended to each montage file name in the upload CSV (empty, or ending in ``/``).
    truth : ndarray, optional
        ``(T, H, W)`` integer labels of the same movie (synthetic data): written as
        uint16 label montages at ``wf.truth_path``, cut and laid out identically.
    channel : int
        For ``(H, W, C)`` frames, the channel montaged for upload.
    executor : Executor, optional
        Runs the per-montage writes (default: serially in this process).
    progress : callable, optional
        Called with the number of montages just written.

    Raises
    ------
    InputError
        Bad raw folder, ``url_prefix``, ``channel`` or ``truth`` shape/values.
    GeometryError
        The tile or montage geometry is impossible for these frames.
    """
    if url_prefix and not url_prefix.endswith("/"):
        raise InputError(
            f"url_prefix {url_prefix!r} must be empty or end with '/' (the montage file "
            "name is appended to it)"
        )
    raw_dir = Path(raw_dir)
    paths, first = _first_frame(raw_dir)
    _check_frames(paths, first)
    upload_channel = _upload_channel_index(first, channel, raw_dir)
    frames = len(paths)
    upload_shape = (frames, *first.shape[:2])
    if truth is not None:
        truth = _check_truth(truth, upload_shape)
    grid = TileGrid.for_frame(upload_shape[1:3], num_x=num_x, num_y=num_y,
                              overlap_perc=overlap_perc)
    layout = MontageLayout(grid.tile_shape, montage_len, row_length, x_buffer, y_buffer)
    count = num_montages(frames, montage_len)
    wf = replace(wf.with_counts(num_x=num_x, num_y=num_y, frames=frames, montages=count),
                 raw=raw_dir)
    value_range: tuple[float, float] | None = None
    if _needs_rescale(first.dtype):
        value_range = _movie_range(paths, upload_channel)
        _warn_rescale(first.dtype, *value_range)
    first_kind = (first.shape, first.dtype.str)
    del first  # from here on, frames are read by the tasks, L at a time

    tasks = _montage_tasks(wf, paths, first_kind, upload_channel, value_range, grid, layout,
                           truth)
    results = run_tasks(_write_montage_number, tasks, executor=executor)
    written, errors = _in_upload_order(results, wf.identifier, grid, count, progress)

    write_log(ChopperLog.from_grid(grid, identifier=wf.identifier, num_images=frames),
              wf.chopper_log)
    write_log(MontageLog(identifier=wf.identifier, montage_len=montage_len,
                         num_x_segments=num_x, num_y_segments=num_y, row_length=row_length,
                         x_buffer=x_buffer, y_buffer=y_buffer, montages_in_pos=count),
              wf.montage_log)
    write_upload_csv(wf.upload_csv, ((wf.identifier, url_prefix + wf.montage_path(k).name)
                                     for k in written))
    logger.info("prepared %d montages of %d frames (%d tiles of %dx%d) in %s",
                len(written), frames, len(grid), *grid.tile_shape, wf.montages)
    return PrepareResult(wf, grid, layout, frames, written, errors)


def _montage_tasks(
    wf: WorkingFolder, paths: list[Path], first: tuple[tuple[int, ...], str],
    upload_channel: int | None, value_range: tuple[float, float] | None, grid: TileGrid,
    layout: MontageLayout, truth: NDArray[np.generic] | None,
) -> list[_MontageNumberTask]:
    """One task per montage number (all positions), reading its frames (L at a time)."""
    tasks = []
    for m in range(num_montages(len(paths), layout.length)):
        rng = montage_frame_range(m, layout.length, len(paths))
        keys = tuple(MontageKey(wf.identifier, pos.x, pos.y, m) for pos in grid.positions)
        tasks.append(_MontageNumberTask(
            m, tuple(paths[rng.start:rng.stop]), paths[0], *first,
            upload_channel, value_range, grid, layout, keys,
            tuple(wf.montage_path(k) for k in keys),
            truth[rng.start:rng.stop] if truth is not None else None,
            tuple(wf.truth_path(wf.montage_name(k)) for k in keys) if truth is not None
            else None,
        ))
    return tasks


def _in_upload_order(
    results: Iterable[list[MontageTaskResult]], identifier: str, grid: TileGrid, count: int,
    progress: Callable[[int], None] | None,
) -> tuple[list[MontageKey], list[str]]:
    """The montages written, in upload order (position by position, montages in order),
    and the errors of those that were not."""
    by_key: dict[MontageKey, MontageTaskResult] = {}
    for batch in results:
        by_key.update((r.key, r) for r in batch)
        if progress is not None:
            progress(len(batch))
    written: list[MontageKey] = []
    errors: list[str] = []
    for pos in grid.positions:
        for m in range(count):
            result = by_key[MontageKey(identifier, pos.x, pos.y, m)]
            if result.error is not None:
                logger.error("montage not written: %s", result.error)
                errors.append(result.error)
            else:
                written.append(result.key)
    return written, errors


def _upload_channel_index(
    first: NDArray[np.generic], channel: int, raw_dir: Path
) -> int | None:
    """The channel montaged for upload (``None`` for 2-D frames), checked on the first frame."""
    if first.ndim == 2:
        return None
    channels = first.shape[-1]
    if not 0 <= channel < channels:
        raise InputError(
            f"channel {channel} does not exist: the raw frames have {channels} channels "
            f"(0 to {channels - 1})",
            path=raw_dir,
        )
    logger.info("raw frames have %d channels: montaging channel %d for upload",
                channels, channel)
    return channel


def _check_truth(truth: NDArray[np.generic], shape: tuple[int, ...]) -> NDArray[np.generic]:
    if truth.shape != shape:
        raise InputError(
            f"truth labels have shape {truth.shape} but the raw movie is {shape}: give one "
            "label frame per raw frame"
        )
    return check_label_image(truth, ndim=None, what="truth labels", allow_bool=True,
                             hint=": label montages are 16-bit PNGs, one id per cell")
