"""The whole-movie training files: every part of each position, and the stitched movie.

``npz/{id}_full_movie.npz`` (:func:`write_full_movie_npz`) and
``npz/{id}_stitched_movie.npz`` (:func:`write_stitched_movie_npz`); their keys are
described in :mod:`cellcrowd.export.npz`, which re-exports both functions.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from ..errors import InputError, LogError
from ..files import natural_key
from ..job import Job
from ..layout import WorkingFolder
from .frames import StitchedFrames
from .npz_arrays import (
    PositionMovie,
    check_same_movie,
    part_folder_numbers,
    part_movies,
    save_npz,
    select_channels,
)
from .npzstream import NpyStream, StreamedArrays

__all__ = ["write_full_movie_npz", "write_stitched_movie_npz"]

logger = logging.getLogger(__name__)


def _all_parts(wf: WorkingFolder, job: Job | None) -> list[int]:
    """Every part number: from the job's montage log, else the ``movies/part{N}`` folders."""
    try:
        return list(Job.of(wf, job).parts)
    except LogError as exc:
        logger.warning("parts taken from the movies folder (%s)", exc)
    return part_folder_numbers(wf)


def write_full_movie_npz(
    wf: WorkingFolder,
    *,
    samples_to_drop: Collection[str] = (),
    channels: Sequence[int] | None = None,
    link: bool = True,
    compressed: bool = True,
    min_iou: float = 0.3,
    job: Job | None = None,
) -> Path:
    """Write ``npz/{id}_full_movie.npz``: all parts of each position, one cell one id.

    Each position's parts (``movies/part{N}/x_XX_y_YY``, every part the montage
    log promises) are put one after another. With ``link`` (the default) the
    label ids are joined across part boundaries with
    :func:`cellcrowd.stitch.link_parts`: a cell keeps its id for the whole
    movie of its position; a cell dividing across a boundary ends there and its
    daughters (like any cell that could not be linked) get new ids. Ids are
    renumbered ``1..n`` per position. Keys as in the module docstring, plus
    ``linked`` and ``part_starts``.

    ``X`` and ``y`` are written one position's part at a time
    (:class:`~cellcrowd.export.npzstream.NpyStream`); between parts only the
    last linked frame is kept, so memory follows the size of a part, not the
    length of the movie.

    Parameters
    ----------
    wf : WorkingFolder
        The working folder.
    samples_to_drop : collection of str
        Position names (``"x_00_y_01"``) to leave out.
    channels : sequence of int, optional
        Raw channel indices to keep; default all.
    link : bool
        Join the cells' ids across parts (False: each part keeps its own ids, as
        they are in ``movies/``).
    compressed : bool
        Deflate-compressed (default) or stored members (see :func:`save_npz`).
    min_iou : float
        ``min_iou`` of :func:`cellcrowd.stitch.link_parts`.
    job : Job, optional
        The job, when already loaded for ``wf`` (else its logs are read for the parts).

    Returns
    -------
    Path
        ``wf.npz_full_movie``.

    Raises
    ------
    InputError
        A part folder is missing or unreadable (see :func:`build_training_arrays`),
        no position is annotated in every part, or the parts' frames differ in
        size or channels.
    """
    from ..stitch.common import check_fraction

    if link:
        check_fraction("min_iou", min_iou)
    plan = _plan_full_movie(wf, _all_parts(wf, job), samples_to_drop, channels)
    frames = sum(plan.frames)
    count = len(plan.common)
    starts = np.cumsum([0, *plan.frames[:-1]]).astype(np.int64)
    arrays = StreamedArrays(
        NpyStream((count, frames, *plan.frame_shape), np.float32, _raw_blocks(plan, channels)),
        NpyStream((count, frames, *plan.frame_shape[:2], 1), np.int32,
                  _label_blocks(plan, link, min_iou)),
        plan.common, plan.missing)
    return save_npz(wf.npz_full_movie, arrays, part=-1, identifier=wf.identifier,
                    frame_offset=0, compressed=compressed,
                    extra={"linked": np.bool_(link), "part_starts": starts})


@dataclass(frozen=True)
class _FullMovie:
    """What the full-movie file holds, decided before a frame is written."""

    movies: list[dict[str, PositionMovie]]  # per part: annotated position -> its files
    common: list[str]  # positions annotated in every part, in the file's order
    missing: list[str]
    frames: list[int]  # per part
    frame_shape: tuple[int, int, int]  # rows, cols, channels


def _plan_full_movie(wf: WorkingFolder, parts: list[int], samples_to_drop: Collection[str],
                     channels: Sequence[int] | None) -> _FullMovie:
    """Positions, frame counts and frame size of the full movie, from each movie's first frame.

    Raises
    ------
    InputError
        As :func:`build_training_arrays` for each part; no position is annotated
        in every part; the parts' frames differ in size or channels.
    """
    per_part = []
    missing_in: list[str] = []
    for part in parts:
        movies, missing = part_movies(wf.part_dir(part), samples_to_drop=samples_to_drop)
        per_part.append(movies)
        missing_in += missing
    common = [p for p in per_part[0] if all(p in movies for movies in per_part)]
    missing = sorted(({p for movies in per_part for p in movies} | set(missing_in))
                     - set(common), key=natural_key)
    if not common:
        raise InputError("no position is annotated in every part: a full movie needs them "
                         "all; set outputs.npz_full_movie = false, or annotate the missing "
                         "montages", path=wf.movies)
    shapes = [_part_shape(movies, channels) for movies in per_part]
    for part, shape in zip(parts, shapes, strict=True):
        if shape[1:] != shapes[0][1:]:
            raise InputError(f"the movies of part {part} are {shape[1]}x{shape[2]} with "
                             f"{shape[3]} channels but those of part {parts[0]} are "
                             f"{shapes[0][1]}x{shapes[0][2]} with {shapes[0][3]}: remake the "
                             "movies from one raw movie", path=wf.part_dir(part))
    rows, cols, chans = shapes[0][1:]
    return _FullMovie(per_part, common, missing, [s[0] for s in shapes], (rows, cols, chans))


def _part_shape(movies: dict[str, PositionMovie],
                channels: Sequence[int] | None) -> tuple[int, int, int, int]:
    """``(frames, rows, cols, channels)`` of every annotated position of a part (checked)."""
    first: tuple[int, ...] = ()
    for movie in movies.values():
        labels = movie.read_labels(0, 1)
        x = movie.read_raw(channels, 0, 1)
        movie.check_sizes(x.shape, labels.shape)
        shape = (movie.frames, *x.shape[1:])
        if first:
            check_same_movie(shape, first, next(iter(movies)), movie)
        first = first or shape
    frames, rows, cols, chans = first
    return frames, rows, cols, chans


def _raw_blocks(plan: _FullMovie, channels: Sequence[int] | None) -> Iterator[NDArray[np.float32]]:
    """``X`` of the full movie: each position's parts one after another."""
    for name in plan.common:
        for movies in plan.movies:
            yield movies[name].read_raw(channels)


def _label_blocks(plan: _FullMovie, link: bool, min_iou: float) -> Iterator[NDArray[np.int32]]:
    """``y`` of the full movie, ids linked across parts (only the last frame kept between)."""
    from ..stitch import PartLinker
    from ..stitch.common import check_labels

    for name in plan.common:
        linker = PartLinker(min_iou=min_iou, min_inside=0.5, min_share=0.2)
        top = 0
        for k, movies in enumerate(plan.movies):
            labels = movies[name].read_labels()[..., 0]
            if link:
                labels = linker.add(check_labels(labels, 3, f"part {k + 1}"))
                top = max(top, int(labels.max(initial=0)))
            yield labels[..., None]
        if link:
            logger.info("%s: %d cells over %d parts (%s carried over each boundary)", name,
                        top, len(plan.movies), list(linker.report().links))


def write_stitched_movie_npz(
    wf: WorkingFolder,
    *,
    channels: Sequence[int] | None = None,
    compressed: bool = True,
) -> Path:
    """Write ``npz/{id}_stitched_movie.npz`` from the stitched movie (``stitched/``).

    ``X`` ``(1, frames, H, W, channels)`` float32 holds the stitched raw frames,
    ``y`` ``(1, frames, H, W, 1)`` int32 the stitched labels (one id per cell for
    the whole movie, as :func:`cellcrowd.stitch.stitch_movies` linked them);
    ``lineage`` is their DeepCell lineage as JSON text and ``linked`` is True.
    The frames are read and written one at a time
    (:class:`~cellcrowd.export.frames.StitchedFrames`).

    Parameters
    ----------
    wf : WorkingFolder
        The working folder (the stitch stage has run).
    channels : sequence of int, optional
        Raw channel indices to keep; default all.
    compressed : bool
        Deflate-compressed (default) or stored members (see :func:`save_npz`).

    Returns
    -------
    Path
        ``wf.npz_stitched_movie``.

    Raises
    ------
    InputError
        The stitched frames or lineage are missing or unreadable, there are no
        stitched raw frames, raw and label frames differ in number or size, or
        ``channels`` selects nothing that exists.
    """
    movie = StitchedFrames(wf)
    raw, raw_dir = movie.raw, wf.stitched_frame("raw", 0).parent
    if raw is None:
        raise InputError("no stitched raw frames for the stitched labels: put the raw movie "
                         "in the raw folder and run the stitch stage again", path=raw_dir)
    rows, cols = movie.labels.shape
    chans = select_channels(np.empty((0, raw.shape[2] if len(raw.shape) == 3 else 1)),
                            channels, raw_dir).shape[-1]

    def raw_blocks() -> Iterator[NDArray[np.float32]]:
        for frame in raw:
            x = frame[..., None] if frame.ndim == 2 else frame
            yield select_channels(x, channels, raw_dir).astype(np.float32)

    arrays = StreamedArrays(
        NpyStream((1, len(movie), rows, cols, chans), np.float32, raw_blocks()),
        NpyStream((1, len(movie), rows, cols, 1), np.int32,
                  (frame[..., None] for frame in movie.labels)),
        ["stitched"], [])
    text = json.dumps({str(k): v for k, v in sorted(movie.lineage.items())}, sort_keys=True)
    return save_npz(wf.npz_stitched_movie, arrays, part=-1, identifier=wf.identifier,
                    frame_offset=0, compressed=compressed,
                    extra={"linked": np.bool_(True), "lineage": np.str_(text)})
