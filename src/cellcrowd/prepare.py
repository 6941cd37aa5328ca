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

Multi-channel frames ``(H, W, C)`` (channels last): only channel ``channel``
(default the first) is montaged for upload, because annotators see one grey
image; the raw tiles written by :func:`cellcrowd.movies.raw_to_movies` keep
every channel, so training data can still use all of them.
"""

from __future__ import annotations

import csv
import io
import itertools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from .errors import InputError
from .executor import Executor, run_tasks
from .files import atomic_write_text, list_images, read_image, write_image
from .geometry import MontageLayout, TileGrid, montage_frame_range, num_montages
from .layout import MontageKey, WorkingFolder
from .logs import ChopperLog, MontageLog, write_log

__all__ = [
    "MontageTaskResult",
    "PrepareResult",
    "make_montages",
    "prepare",
    "read_raw_movie",
    "to_uint16",
]

logger = logging.getLogger(__name__)

_UINT16_MAX = int(np.iinfo(np.uint16).max)


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
    paths = list_images(raw_dir)
    if not paths:
        raise InputError(
            "no raw frames (PNG or TIFF) in this folder: point raw_dir at the folder of frames",
            path=raw_dir,
        )
    first = read_image(paths[0])
    _check_frame_ndim(first, paths[0])
    movie = np.empty((len(paths), *first.shape), dtype=first.dtype)
    movie[0] = first
    for t, path in enumerate(paths[1:], start=1):
        frame = read_image(path)
        if frame.shape != first.shape or frame.dtype != first.dtype:
            raise InputError(
                f"this frame is {frame.shape} {frame.dtype} but the first frame "
                f"({paths[0].name}) is {first.shape} {first.dtype}: every frame of a movie "
                "must have the same shape and dtype; remove or convert this file",
                path=path,
            )
        movie[t] = frame
    return movie


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
    if movie.dtype == np.uint16:
        return movie.astype(np.uint16, copy=False)
    if movie.dtype == np.uint8:
        return movie.astype(np.uint16)
    if movie.dtype.kind not in "biuf":
        raise TypeError(f"cannot turn {movie.dtype} intensities into a 16-bit image")
    data = movie.astype(np.float64)
    if not np.isfinite(data).all():
        raise ValueError("the movie holds NaN or infinite values: fix or mask them first")
    low, high = (float(data.min()), float(data.max())) if data.size else (0.0, 0.0)
    logger.warning(
        "raw frames are %s: rescaling intensities %g…%g to the 16-bit range 0…65535 for "
        "the montages", movie.dtype, low, high,
    )
    if high == low:
        return np.zeros(movie.shape, dtype=np.uint16)
    return np.rint((data - low) * (_UINT16_MAX / (high - low))).astype(np.uint16)


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
class _MontageTask:
    key: MontageKey
    frames: NDArray[np.generic]
    truth: NDArray[np.generic] | None
    layout: MontageLayout
    path: Path
    truth_path: Path | None


@dataclass(frozen=True)
class MontageTaskResult:
    """What one montage task did: the files written, or why it failed."""

    key: MontageKey
    path: Path | None
    truth_path: Path | None = None
    error: str | None = None


def _write_montage(task: _MontageTask) -> MontageTaskResult:
    """Lay out and write one montage (and its ground truth); never raises for one bad item."""
    try:
        write_image(task.path, task.layout.make(task.frames))
        if task.truth is not None and task.truth_path is not None:
            write_image(task.truth_path, task.layout.make(task.truth).astype(np.uint16))
    except (OSError, ValueError) as exc:
        return MontageTaskResult(task.key, None, None, f"{task.path.name}: {exc}")
    return MontageTaskResult(task.key, task.path, task.truth_path)


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
    movie = read_raw_movie(raw_dir)
    upload = _upload_channel(movie, channel, raw_dir)
    frames = upload.shape[0]
    if truth is not None:
        truth = _check_truth(truth, upload.shape)
    grid = TileGrid.for_frame(upload.shape[1:3], num_x=num_x, num_y=num_y,
                              overlap_perc=overlap_perc)
    layout = MontageLayout(grid.tile_shape, montage_len, row_length, x_buffer, y_buffer)
    count = num_montages(frames, montage_len)
    wf = replace(wf.with_counts(num_x=num_x, num_y=num_y, frames=frames, montages=count),
                 raw=raw_dir)

    truth_stacks: Iterator[NDArray[np.generic] | None] = (
        (stack for _, stack in _tile_stacks(truth, grid, montage_len)) if truth is not None
        else itertools.repeat(None))
    tasks = []
    for (key, stack), truth_stack in zip(_tile_stacks(to_uint16(upload), grid, montage_len),
                                         truth_stacks, strict=False):
        key = replace(key, identifier=wf.identifier)
        tasks.append(_MontageTask(
            key, stack, truth_stack, layout, wf.montage_path(key),
            wf.truth_path(wf.montage_name(key)) if truth_stack is not None else None,
        ))

    written: list[MontageKey] = []
    errors: list[str] = []
    for result in run_tasks(_write_montage, tasks, executor=executor, progress=progress):
        if result.error is not None:
            logger.error("montage not written: %s", result.error)
            errors.append(result.error)
        else:
            written.append(result.key)

    write_log(ChopperLog.from_grid(grid, identifier=wf.identifier, num_images=frames),
              wf.chopper_log)
    write_log(MontageLog(identifier=wf.identifier, montage_len=montage_len,
                         num_x_segments=num_x, num_y_segments=num_y, row_length=row_length,
                         x_buffer=x_buffer, y_buffer=y_buffer, montages_in_pos=count),
              wf.montage_log)
    _write_upload_csv(wf, written, url_prefix)
    logger.info("prepared %d montages of %d frames (%d tiles of %dx%d) in %s",
                len(written), frames, len(grid), *grid.tile_shape, wf.montages)
    return PrepareResult(wf, grid, layout, frames, written, errors)


def _upload_channel(movie: NDArray[np.generic], channel: int, raw_dir: Path) -> NDArray[np.generic]:
    if movie.ndim == 3:
        return movie
    channels = movie.shape[-1]
    if not 0 <= channel < channels:
        raise InputError(
            f"channel {channel} does not exist: the raw frames have {channels} channels "
            f"(0 to {channels - 1})",
            path=raw_dir,
        )
    logger.info("raw frames have %d channels: montaging channel %d for upload",
                channels, channel)
    return movie[..., channel]


def _check_truth(truth: NDArray[np.generic], shape: tuple[int, ...]) -> NDArray[np.generic]:
    if truth.shape != shape:
        raise InputError(
            f"truth labels have shape {truth.shape} but the raw movie is {shape}: give one "
            "label frame per raw frame"
        )
    if truth.dtype.kind not in "biu":
        raise InputError(f"truth labels must be integers, got {truth.dtype}")
    if truth.size and (int(truth.min()) < 0 or int(truth.max()) > _UINT16_MAX):
        raise InputError(
            f"truth labels run from {truth.min()} to {truth.max()}; label montages are "
            "16-bit PNGs: use ids from 0 to 65535"
        )
    return truth


def _write_upload_csv(wf: WorkingFolder, keys: list[MontageKey], url_prefix: str) -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["identifier", "image_url"])
    for key in keys:
        writer.writerow([wf.identifier, url_prefix + wf.montage_path(key).name])
    return atomic_write_text(wf.upload_csv, buf.getvalue())
