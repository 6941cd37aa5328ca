"""DeepCell training data: one ``.npz`` per part (seed notebook step 5).

Each file (``npz/{id}_part{N}.npz``, written by :func:`write_part_npz`) holds
the movies of one part, one entry per tile position:

``X`` : float32, ``(positions, frames, rows, cols, channels)``
    The raw tiles (``movies/part{N}/x_XX_y_YY/raw``), values unchanged.
``y`` : int32, ``(positions, frames, rows, cols, 1)``
    The label tiles (``movies/part{N}/x_XX_y_YY/annotated``); 0 is background.
``positions`` : str, ``(positions,)``
    The position folder of each entry along the first axis, e.g. ``"x_00_y_01"``.
``missing_positions`` : str
    Positions left out because they had no annotated frames.
``part`` : int
    The part number (from 0, as in the original notebook: part N holds montage N);
    -1 in the whole-movie files.
``identifier`` : str
    The movie's identifier (empty when unknown).
``frame_offset`` : int
    The movie frame of the part's first frame, ``part * montage_len``;
    -1 when the job's logs cannot be read to tell.

Two whole-movie files hold the same keys (``part`` is -1 and ``frame_offset`` 0,
the movie's first frame) plus a few more:

``npz/{id}_full_movie.npz`` (:func:`write_full_movie_npz`)
    Every part of each tile position one after another: ``X`` and ``y`` are
    ``(positions, all frames, rows, cols, …)``. Only positions annotated in every
    part are kept (the others are listed in ``missing_positions``). The label ids
    of the parts are joined with :func:`cellcrowd.stitch.link_parts`, so **one
    cell keeps one id for the whole movie** of its position: a cell of a part's
    last frame and a cell of the next part's first frame that overlap (IoU at
    least ``min_iou``, unambiguously) get the same id; a cell dividing across a
    part boundary ends there and its daughters get new ids, as does every cell
    that could not be linked. Ids are renumbered ``1..n`` per position. Extra
    keys: ``linked`` (bool: ids joined across parts, False when asked not to) and
    ``part_starts`` (int, ``(parts,)``: the first frame of every part).
``npz/{id}_stitched_movie.npz`` (:func:`write_stitched_movie_npz`)
    The stitched movie (``stitched/``, tiles joined into full frames and parts
    linked by :func:`cellcrowd.stitch.stitch_movies`): ``X`` ``(1, frames, H, W,
    channels)`` from the stitched raw frames, ``y`` ``(1, frames, H, W, 1)`` from
    the stitched labels, ``positions`` ``["stitched"]``. Extra keys: ``linked``
    (True) and ``lineage`` (the DeepCell lineage of ``y`` as JSON text,
    ``stitched/lineage.json``).

The per-part files are written here; the arrays are read and saved by
:mod:`cellcrowd.export.npz_arrays` and the whole-movie files by
:mod:`cellcrowd.export.npz_movie`; every public name of both is importable from here.
Functions that need the job's geometry (the parts, a part's first frame) take an
optional ``job`` (:class:`cellcrowd.job.Job`) so a caller that has one does not
read the logs again.

Files are compressed (deflate, like ``np.savez_compressed``, what the DeepCell
maintainers recommend, at the fast level 1 by default: see
:class:`cellcrowd.files.WriteSettings`) unless asked otherwise, and written
atomically. Read them with
``np.load(path)`` (no pickle needed) or :func:`load_npz`.
"""


from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import InputError, LogError
from ..executor import Executor, run_tasks
from ..geometry import Position
from ..job import Job
from ..layout import WorkingFolder
from .npz_arrays import (
    NpzData,
    TrainingArrays,
    build_training_arrays,
    load_npz,
    part_folder_numbers,
    position_dirs,
    save_npz,
    stream_training_arrays,
)
from .npz_movie import write_full_movie_npz, write_stitched_movie_npz

__all__ = [
    "NpzData",
    "PartResult",
    "TrainingArrays",
    "build_training_arrays",
    "iter_parts_npz",
    "load_npz",
    "load_part",
    "position_dirs",
    "save_npz",
    "stream_training_arrays",
    "write_full_movie_npz",
    "write_part_npz",
    "write_parts_npz",
    "write_parts_npz_each",
    "write_stitched_movie_npz",
]

logger = logging.getLogger(__name__)


def _frame_offsets(wf: WorkingFolder, parts: Iterable[int], job: Job | None) -> dict[int, int]:
    """The first movie frame of each part, from the job (-1 each when its logs are bad)."""
    try:
        loaded = Job.of(wf, job)
    except LogError as exc:
        for part in parts:
            logger.warning("frame_offset of part %d unknown (-1): %s", part, exc)
        return dict.fromkeys(parts, -1)
    return {part: loaded.part_frame_offset(part) for part in parts}


def write_part_npz(
    wf: WorkingFolder,
    part: int,
    *,
    samples_to_drop: Collection[str] = (),
    channels: Sequence[int] | None = None,
    compressed: bool = True,
    positions: Iterable[str | Position] | None = None,
    job: Job | None = None,
) -> Path:
    """Write ``npz/{id}_part{N}.npz`` from ``movies/part{N}``.

    Keys (see the module docstring): ``X`` float32 ``(positions, frames, rows, cols,
    channels)``, ``y`` int32 ``(positions, frames, rows, cols, 1)``, ``positions``
    (``"x_00_y_01"``, …), ``missing_positions``, ``part``, ``identifier``,
    ``frame_offset`` (first movie frame of the part; -1 if unknown).

    Parameters
    ----------
    wf : WorkingFolder
        The working folder.
    part : int
        Part number (from 0: part N holds montage N).
    samples_to_drop : collection of str
        Position names (``"x_00_y_01"``) to leave out.
    channels : sequence of int, optional
        Raw channel indices to keep (multi-channel raw); default all.
    compressed : bool
        Deflate-compressed (default) or stored members (see :func:`save_npz`).
    positions : iterable, optional
        Only these positions (default every position folder).
    job : Job, optional
        The job, when already loaded for ``wf`` (else its logs are read for
        ``frame_offset``).

    Raises
    ------
    InputError
        See :func:`build_training_arrays`.
    """
    return _write_part(wf, part, _frame_offsets(wf, [part], job)[part],
                       samples_to_drop=samples_to_drop, channels=channels,
                       compressed=compressed, positions=positions)


def _write_part(
    wf: WorkingFolder,
    part: int,
    frame_offset: int,
    *,
    samples_to_drop: Collection[str] = (),
    channels: Sequence[int] | None = None,
    compressed: bool = True,
    positions: Iterable[str | Position] | None = None,
) -> Path:
    arrays = stream_training_arrays(wf.part_dir(part), positions=positions,
                                    samples_to_drop=samples_to_drop, channels=channels)
    return save_npz(wf.npz_part(part), arrays, part=part, identifier=wf.identifier,
                    frame_offset=frame_offset, compressed=compressed)


@dataclass(frozen=True)
class PartResult:
    """What :func:`write_parts_npz_each` did with one part: the file, or why not."""

    part: int
    path: Path | None
    error: str | None = None


@dataclass(frozen=True)
class _PartTask:
    wf: WorkingFolder
    part: int
    frame_offset: int
    options: Mapping[str, Any]


def _write_part_task(task: _PartTask) -> PartResult:
    try:
        return PartResult(task.part, _write_part(task.wf, task.part, task.frame_offset,
                                                 **task.options))
    except InputError as exc:
        return PartResult(task.part, None, str(exc))


def write_parts_npz_each(
    wf: WorkingFolder,
    parts: Iterable[int] | None = None,
    *,
    executor: Executor | None = None,
    progress: Callable[[int], None] | None = None,
    job: Job | None = None,
    **kw: Any,
) -> list[PartResult]:
    """:func:`write_part_npz` for several parts, one task per part, errors recorded.

    ``parts`` defaults to every ``movies/part{N}`` folder; ``kw`` goes to
    :func:`write_part_npz`; ``job`` is read once (from the logs unless given). A part
    that cannot be written is reported in its :class:`PartResult`, never fatal for
    the others. Results are in part order (:func:`iter_parts_npz`: each as it comes).
    """
    return list(iter_parts_npz(wf, parts, executor=executor, progress=progress, job=job,
                               **kw))


def iter_parts_npz(
    wf: WorkingFolder,
    parts: Iterable[int] | None = None,
    *,
    executor: Executor | None = None,
    progress: Callable[[int], None] | None = None,
    job: Job | None = None,
    **kw: Any,
) -> Iterator[PartResult]:
    """:func:`write_parts_npz_each`, each part's result as soon as it and the parts before
    it are written (the caller can work while the later parts are)."""
    chosen = sorted(parts) if parts is not None else part_folder_numbers(wf)
    offsets = _frame_offsets(wf, chosen, job)
    tasks = [_PartTask(wf, part, offsets[part], kw) for part in chosen]
    return run_tasks(_write_part_task, tasks, executor=executor, progress=progress)


def write_parts_npz(
    wf: WorkingFolder,
    parts: Iterable[int] | None = None,
    *,
    executor: Executor | None = None,
    job: Job | None = None,
    **kw: Any,
) -> list[Path]:
    """:func:`write_part_npz` for several parts (default: every ``movies/part{N}`` folder).

    Raises
    ------
    InputError
        ``parts`` is None and there are no part folders, or a part cannot be
        written (after every other part was); see :func:`write_parts_npz_each`
        to collect such errors instead.
    """
    results = write_parts_npz_each(wf, parts, executor=executor, job=job, **kw)
    for result in results:
        if result.error is not None:
            raise InputError(result.error)
    return [r.path for r in results if r.path is not None]


def load_part(
    wf: WorkingFolder, part: int
) -> tuple[NDArray[np.float32], NDArray[np.int32], list[str]]:
    """``(X, y, positions)`` of ``npz/{id}_part{N}.npz``."""
    data = load_npz(wf.npz_part(part))
    return data.X, data.y, data.positions
