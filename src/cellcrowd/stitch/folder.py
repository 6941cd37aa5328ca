"""The working folder: stitch every part's annotated tiles into one tracked movie.

:func:`stitch_movies` reads ``movies/part{N}/x_XX_y_YY/annotated`` for every
part, stitches and links them, and writes ``stitched/annotated`` (uint16 PNG),
``stitched/raw`` (TIFF copies of the raw frames) and ``stitched/lineage.json``.
:func:`read_stitched` reads them back. It streams: each part is linked to the last
frame of the part before (:class:`~cellcrowd.stitch.link.PartLinker`, the linking
step of :func:`~cellcrowd.stitch.link.link_parts`) and written as it arrives, and
the lineage is built frame by frame (:class:`~cellcrowd.stitch.lineage.LineageBuilder`),
so the whole label movie is never in memory.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import InputError
from ..executor import Executor, run_tasks
from ..files import atomic_write_text, list_images, read_image, write_image
from ..geometry import Position, TileGrid
from ..job import Job
from ..labelcheck import UINT16_MAX
from ..layout import WorkingFolder, part_of_montage
from .common import Lineage
from .lineage import LineageBuilder, read_lineage
from .link import LinkReport, PartLinker
from .parts import PartStore, StitchedPart, load_part, write_part
from .tiles import StitchConflict, StitchReport, TileChangedError, match_tiles

__all__ = ["MAX_CELLS", "StitchMoviesResult", "read_stitched", "stitch_movies"]

logger = logging.getLogger(__name__)

#: Most cells a stitched movie may hold: its label frames are 16-bit PNGs.
MAX_CELLS = UINT16_MAX


@dataclass(frozen=True)
class _PartTask:
    wf: WorkingFolder
    grid: TileGrid
    part: int
    frames: int
    min_iou: float
    out: Path  # where the stitched part is written


def _read_tile_frame(task: _PartTask, pos: Position, f: int) -> NDArray[Any]:
    """Frame ``f`` of one tile of the task's part, or an InputError saying why not."""
    path = task.wf.annotated_frame(task.part, pos, f)
    if not path.is_file():
        if not path.parent.is_dir():
            raise InputError("no annotated frames (folder missing)", path=path.parent)
        raise InputError(f"frame {f} of {task.frames} is missing", path=path)
    image = read_image(path)
    shape = task.grid.tile_shape
    if image.shape != tuple(shape) or image.dtype.kind not in "ui":
        raise InputError(
            f"expected a {shape[0]}x{shape[1]} label image, got shape "
            f"{image.shape} ({image.dtype}): rerun the movies stage", path=path)
    return image


def _stitch_part(task: _PartTask) -> StitchedPart:
    """Match the tiles of one part, reading them a frame at a time, and write the part's
    frames to ``task.out`` one at a time; unreadable tiles are reported as missing."""
    stitched = match_tiles(lambda pos, f: _read_tile_frame(task, pos, f), task.grid,
                           task.frames, min_iou=task.min_iou, unreadable=(InputError,))
    try:
        return write_part(task.out, task.part, stitched, stitched.left_out)
    except TileChangedError as exc:
        raise InputError(f"a tile changed while part {task.part} was stitched ({exc}): run "
                         "the stitch stage again", path=task.wf.part_dir(task.part)) from exc


def _part_inputs(task: _PartTask) -> list[Path]:
    """Every file stitching the part reads (a tile's frames may be missing)."""
    return [task.wf.annotated_frame(task.part, pos, f) for pos in task.grid.positions
            for f in range(task.frames)]


class _RunStore:
    """The :class:`PartStore` of a run given none: files in a folder of its own, never fresh."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, part: int) -> Path:
        return self.folder / f"part{part}.stitched"

    def fresh(self, part: int, inputs: Sequence[Path]) -> bool:
        return False

    def saved(self, part: int, inputs: Sequence[Path]) -> None:
        pass


def _stitched_parts(tasks: list[_PartTask], executor: Executor | None,
                    progress: Callable[[int], None] | None,
                    store: PartStore) -> Iterator[StitchedPart]:
    """Every part stitched, in order: unchanged ones from ``store``, the others anew."""
    inputs = {task.part: _part_inputs(task) for task in tasks}
    kept = {task.part for task in tasks if store.fresh(task.part, inputs[task.part])}
    new = run_tasks(_stitch_part, [t for t in tasks if t.part not in kept],
                    executor=executor, progress=progress)
    for task in tasks:
        if task.part in kept:
            if progress is not None:
                progress(1)
            yield load_part(task.out)
            continue
        stitched = next(new)
        store.saved(task.part, inputs[task.part])
        yield stitched


def _checked_frames(stitched: StitchedPart, shape: tuple[int, int]) -> Iterator[NDArray[Any]]:
    """The part's frames, each checked against the frame size and the part's cell count."""
    for f, local in enumerate(stitched.frames()):
        if local.shape != shape or int(local.max(initial=0)) > stitched.report.cells:
            raise InputError(
                f"frame {f} is {local.shape} with ids up to {local.max(initial=0)}, not "
                f"{shape} with {stitched.report.cells} cells: run the stitch stage again "
                "(--force stitch)", path=stitched.path)
        yield local


def _add_part(wf: WorkingFolder, stitched: StitchedPart, shape: tuple[int, int],
              linker: PartLinker, builder: LineageBuilder, raw_paths: Sequence[Path]) -> None:
    """Link one stitched part to the movie so far and write its frames, one at a time
    (``shape``: the frame size)."""
    frames = _checked_frames(stitched, shape)
    first = next(frames, None)
    if first is None:
        raise InputError("a stitched part without frames: run the stitch stage again "
                         "(--force stitch)", path=stitched.path)
    ids = linker.add_numbered(first, stitched.report.cells)
    if linker.next_id - 1 > MAX_CELLS:
        raise InputError(
            f"the stitched movie has {linker.next_id - 1} cells by part {stitched.part}, "
            "more than a 16-bit label frame holds (65535): stitch fewer frames at a time",
            path=wf.stitched)
    ids16, start, count = ids.astype(np.uint16), linker.start, 0
    movie = ids16[:1]  # (the part's last frame in movie ids, after the loop)
    for t, local in enumerate(itertools.chain([first], frames), start=start):
        movie = ids16[local]
        write_image(wf.stitched_frame("annotated", t), movie)
        builder.add(movie[None], linker.parents)
        if raw_paths:
            write_image(wf.stitched_frame("raw", t), read_image(raw_paths[t]))
        count += 1
    linker.end_part(movie, count)


@dataclass(frozen=True)
class StitchMoviesResult:
    """What :func:`stitch_movies` did.

    Attributes
    ----------
    wf : WorkingFolder
        The working folder, padding widened for the logged counts.
    frames : int
        Frames in the stitched movie.
    lineage : dict
        The DeepCell lineage of the stitched movie (also in ``wf.stitched_lineage``).
    parts : tuple of StitchReport
        One per part, in order.
    link : LinkReport
        How the parts were joined.
    missing : tuple of (part, Position, reason)
        Tiles that could not be read; the pixels they own are 0 in that part.
    raw_frames : int
        Raw frames copied to ``stitched/raw`` (0 when there is no raw folder).
    """

    wf: WorkingFolder
    frames: int
    lineage: Lineage
    parts: tuple[StitchReport, ...]
    link: LinkReport
    missing: tuple[tuple[int, Position, str], ...]
    raw_frames: int

    @property
    def cells(self) -> int:
        return len(self.lineage)

    @property
    def divisions(self) -> int:
        return sum(1 for entry in self.lineage.values() if entry["daughters"])

    @property
    def conflicts(self) -> list[tuple[int, StitchConflict]]:
        """Every refused tile match, with its part."""
        return [(part_of_montage(i), c) for i, rep in enumerate(self.parts)
                for c in rep.conflicts]


def stitch_movies(
    wf: WorkingFolder,
    *,
    min_iou: float = 0.3,
    link_iou: float = 0.3,
    executor: Executor | None = None,
    progress: Callable[[int], None] | None = None,
    job: Job | None = None,
    store: PartStore | None = None,
) -> StitchMoviesResult:
    """Stitch the annotated tiles of every part into one tracked full-size movie.

    Reads ``movies/part{N}/x_XX_y_YY/annotated`` (as written by
    :func:`cellcrowd.movies.montages_to_movies`), stitches each part's tiles,
    joins the parts with :func:`link_parts`, finds the
    lineage with :func:`lineage_from_labels`, and writes
    ``stitched/annotated/{id}_frame_FFF.png`` (uint16), copies of the raw frames
    as ``stitched/raw/{id}_frame_FFF.tif`` (when the raw folder exists) and
    ``stitched/lineage.json``. A tile whose frames are missing or unreadable is
    reported and left out (its pixels are 0 in that part), never fatal.

    Each part's task matches its tiles (:func:`match_tiles`) and writes the
    stitched part to a file a frame at a time (:func:`~cellcrowd.stitch.parts.write_part`;
    in ``store``, or in a temporary folder in ``wf.base`` for the run). Parts are
    then linked and written one at a time, in order, read back a frame at a time;
    only the last frame linked so far and the per-cell lineage records are kept,
    so memory does not grow with the movie or with parts an executor finishes
    ahead. The result is the same as stitching each part with
    :func:`stitch_tiles` and linking the whole movie with :func:`link_parts`
    and :func:`lineage_from_labels`.

    Parameters
    ----------
    wf : WorkingFolder
        Holds the logs and the movies.
    min_iou : float
        Passed to :func:`stitch_tiles`.
    link_iou : float
        ``min_iou`` of :func:`link_parts`.
    executor : Executor, optional
        Runs one task per part (default: serially).
    progress : callable, optional
        Called with 1 after each part.
    job : Job, optional
        The job's geometry when the caller has it (else read from the logs).
    store : PartStore, optional
        Where the stitched parts are kept: the unchanged ones are loaded instead of
        stitched again (the same bytes result), the others are stitched into it
        (:mod:`cellcrowd.stitch.parts`; the stitch stage keeps them per unit).

    Raises
    ------
    LogError
        A log is missing or invalid, or the logs disagree.
    InputError
        The movie has more than 65535 cells (they do not fit 16-bit label frames);
        the frames of the parts before the one that overflows are already written.
    """
    from ..movies import check_raw_frames, read_movie_geometry

    movie = read_movie_geometry(wf, job=job)
    wf, grid = movie.wf, movie.grid
    total = sum(movie.frames_in(m) for m in range(movie.count))
    raw_paths = movie.movie_raw_paths()
    if len(raw_paths) < total:
        logger.warning("%d raw frames found for %d stitched frames; stitched/raw not written",
                       len(raw_paths), total)
        raw_paths = []
    check_raw_frames(raw_paths, grid.frame_shape, source=wf.chopper_log)
    # Streaming: each part is linked to the last frame of the one before and written a
    # frame at a time, and fed to the lineage; only that last frame and the per-cell
    # records stay in memory (workers write the parts to files, so results the executor
    # finishes ahead of this loop hold nothing).
    linker = PartLinker(min_iou=link_iou, min_inside=0.5, min_share=0.2)
    builder = LineageBuilder(min_inside=0.5, min_share=0.2)
    reports: list[StitchReport] = []
    missing: list[tuple[int, Position, str]] = []
    with contextlib.ExitStack() as stack:
        if store is None:
            # (a failure may leave workers still writing parts into it: cleaned up as
            # far as it can be)
            store = _RunStore(Path(stack.enter_context(tempfile.TemporaryDirectory(
                prefix=".stitch-", dir=wf.base, ignore_cleanup_errors=True))))
        tasks = [_PartTask(wf, grid, part_of_montage(m), movie.frames_in(m), min_iou,
                           store.path(part_of_montage(m))) for m in range(movie.count)]
        for result in _stitched_parts(tasks, executor, progress, store):
            for pos, reason in result.missing:
                logger.warning("part %d: tile x=%d, y=%d left out: %s", result.part, pos.x,
                               pos.y, reason)
            reports.append(result.report)
            missing.extend((result.part, pos, reason) for pos, reason in result.missing)
            _add_part(wf, result, grid.frame_shape, linker, builder, raw_paths)
    link = linker.report()
    lineage = builder.finish()
    atomic_write_text(wf.stitched_lineage, json.dumps(
        {str(k): v for k, v in lineage.items()}, indent=1) + "\n")
    logger.info("stitched %d parts into %d frames: %d cells, %d divisions",
                len(reports), linker.start, len(lineage),
                sum(1 for e in lineage.values() if e["daughters"]))
    return StitchMoviesResult(
        wf=wf, frames=linker.start, lineage=lineage, parts=tuple(reports), link=link,
        missing=tuple(missing), raw_frames=len(raw_paths),
    )


def read_stitched(wf: WorkingFolder) -> tuple[NDArray[Any] | None, NDArray[np.int32], Lineage]:
    """The stitched movie: raw frames (``None`` if not written), labels and lineage.

    Raises
    ------
    InputError
        The stitched frames or the lineage are missing or unreadable, or the raw
        frames do not match the label frames in number.
    """
    label_paths = list_images(wf.stitched_frame("annotated", 0).parent)
    if not label_paths:
        raise InputError("no stitched frames: run the stitch stage first",
                         path=wf.stitched_frame("annotated", 0).parent)
    labels = np.stack([read_image(p) for p in label_paths]).astype(np.int32)
    raw_dir = wf.stitched_frame("raw", 0).parent
    raw = None
    if raw_dir.is_dir() and (raw_paths := list_images(raw_dir)):
        if len(raw_paths) != len(label_paths):
            raise InputError(f"{len(raw_paths)} raw frames but {len(label_paths)} label "
                             "frames: run the stitch stage again", path=raw_dir)
        raw = np.stack([read_image(p) for p in raw_paths])
    return raw, labels, read_lineage(wf.stitched_lineage)
