"""Montages back into movies (seed notebook step 4), and raw frames cut to match.

:func:`montages_to_movies` chops every cleaned label montage
(``{id}_labels/{montage}_labels.png``) into its frames and writes them as::

    movies/part{N}/x_XX_y_YY/annotated/{id}_x_XX_y_YY_frame_FFF.png   (uint16)

where montage ``m`` becomes part ``N = m`` (from 0, as in the original notebook) and
frame numbers restart at 0 in each part. :func:`raw_to_movies` cuts the full-size raw
frames with the same tile grid, so each annotated frame has its raw tile beside it::

    movies/part{N}/x_XX_y_YY/raw/{id}_raw_x_XX_y_YY_frame_FFF.tif     (raw dtype)

Both take the job's geometry from a :class:`cellcrowd.job.Job` (given, or loaded
from the two JSON logs): the frame size of the tile grid comes from the chopper
log (``original_y/original_x``) or, for old logs, from the first raw frame; the
number of real frames (the last part may be partial) from the chopper log's
``num_images``, else from the raw folder, else every montage is taken as full.

Work is one task per montage (or per raw frame); one bad montage is recorded
in the result and skipped, never fatal.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from .errors import GeometryError, InputError
from .executor import Executor, run_tasks
from .files import image_header, raise_if_resource_error, read_image, write_image
from .geometry import Position, TileGrid
from .job import Job
from .labelcheck import check_label_image
from .layout import (
    MontageKey,
    WorkingFolder,
    old_part_folders,
    parse_montage_name,
    part_of_montage,
)
from .logs import MontageLog

#: ``only`` of :func:`montages_to_movies` and :func:`raw_to_movies`: ``only(name, source,
#: targets)`` False means the item's target files are already written from ``source``.
Only = Callable[[str, Path, tuple[Path, ...]], bool]

__all__ = [
    "ItemResult",
    "MissingMontage",
    "MovieGeometry",
    "MoviesResult",
    "check_raw_frames",
    "montages_to_movies",
    "raw_and_montages_to_movies",
    "raw_to_movies",
    "read_label_montage",
    "read_movie_geometry",
    "refuse_old_parts",
]

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class ItemResult:
    """One montage (or raw frame) processed: the files written, or why it failed."""

    name: str
    files: tuple[Path, ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class MissingMontage:
    """A montage the logs promise whose frames were not written, and why."""

    montage: str
    part: int
    position: Position
    reason: str


@dataclass(frozen=True)
class MoviesResult:
    """What :func:`montages_to_movies` or :func:`raw_to_movies` did.

    Attributes
    ----------
    wf : WorkingFolder
        The working folder with padding widened for the logged counts.
    kind : "annotated" or "raw"
        Which movies were written.
    items : tuple of ItemResult
        One per montage (annotated) or raw frame (raw), in task order.
    missing : tuple of MissingMontage
        Expected montages (every position x montage number in the logs) that were
        missing, skipped or failed (annotated only).
    """

    wf: WorkingFolder
    kind: Literal["annotated", "raw"]
    items: tuple[ItemResult, ...]
    missing: tuple[MissingMontage, ...] = ()

    @property
    def files_written(self) -> int:
        return sum(len(item.files) for item in self.items)

    @property
    def errors(self) -> list[str]:
        return [f"{item.name}: {item.error}" for item in self.items if item.error is not None]

    def missing_by_part(self) -> dict[int, list[MissingMontage]]:
        """Missing montages grouped by part."""
        out: dict[int, list[MissingMontage]] = defaultdict(list)
        for miss in self.missing:
            out[miss.part].append(miss)
        return dict(out)


# -- geometry from the logs -------------------------------------------------------------

#: The job's geometry, as :func:`read_movie_geometry` returns it (the name of
#: :class:`cellcrowd.job.Job` before there was one object for the whole job).
MovieGeometry = Job


def refuse_old_parts(wf: WorkingFolder, montages: int) -> None:
    """Refuse a ``movies/`` folder whose parts are numbered from 1 (cellcrowd 0.1.0).

    Raises
    ------
    InputError
        ``movies/`` holds a part the montage log cannot have (``part{montages}``
        or higher): the old numbering, where montage ``m`` went to ``part{m + 1}``.
    """
    old = old_part_folders(wf, montages)
    if old:
        names = ", ".join(p.name for p in old)
        raise InputError(
            f"its parts ({names}) are numbered from 1, as cellcrowd 0.1.0 wrote them; parts "
            "now count from 0 like the original notebook (movies/part0 is montage 0): redo "
            "the movies with `cellcrowd run CONFIG --force movies`, or delete this folder "
            "(and the npz folder) and make the movies again",
            path=wf.movies,
        )


def read_movie_geometry(wf: WorkingFolder, *, job: Job | None = None) -> Job:
    """The job of a working folder, with its tile grid known (see :class:`cellcrowd.job.Job`).

    Old logs without the frame size or frame count are completed from the raw
    frames; the returned job's working folder has its padding widened to fit.
    ``job``: one already loaded for ``wf`` (the logs are then not read again).

    Raises
    ------
    LogError
        A log is missing or invalid, the logs disagree, or the tile grid cannot be
        told (old logs and no raw frames).
    """
    job = Job.of(wf, job)
    _ = job.grid  # raises when the tile grid cannot be told
    return job


# -- annotated montages -> frames -------------------------------------------------------


def read_label_montage(
    path: str | Path, montage_log: MontageLog, tile_shape: tuple[int, int]
) -> NDArray[np.uint16]:
    """Read a cleaned label montage and cut it into its ``(L, h, w)`` uint16 frames.

    Raises
    ------
    AnnotationError
        The image is not a 2-D integer label image fitting 16 bits.
    GeometryError
        Its size does not fit the montage log, or the frames it holds are not
        ``tile_shape`` (the tile size of the chopper log).
    """
    path = Path(path)
    image = read_image(path)
    check_label_image(image, what="label montage", path=path,
                      hint="; clean the annotation first")
    layout = montage_log.layout_for_montage(image.shape, source=str(path))
    if layout.frame_shape != tuple(tile_shape):
        raise GeometryError(
            f"this montage holds {layout.frame_shape[0]}x{layout.frame_shape[1]} frames but "
            f"the chopper log's tiles are {tile_shape[0]}x{tile_shape[1]}: the montage and "
            "the logs come from different runs",
            path=path,
        )
    return layout.read(image, source=str(path)).astype(np.uint16)


@dataclass(frozen=True)
class _AnnotatedTask:
    name: str
    source: Path
    log: MontageLog
    tile_shape: tuple[int, int]
    targets: tuple[Path, ...]


def _montage_to_frames(task: _AnnotatedTask) -> ItemResult:
    """Write the real frames of one label montage; failures are returned, not raised."""
    try:
        frames = read_label_montage(task.source, task.log, task.tile_shape)
        for frame, target in zip(frames, task.targets, strict=False):
            write_image(target, frame)
    except (OSError, ValueError) as exc:  # InputError subclasses ValueError
        raise_if_resource_error(exc)
        return ItemResult(task.name, (), str(exc))
    return ItemResult(task.name, task.targets)


def _found_labels(wf: WorkingFolder) -> dict[tuple[int, int, int], Path]:
    found: dict[tuple[int, int, int], Path] = {}
    if not wf.labels.is_dir():
        return found
    for path in sorted(wf.labels.glob("*_labels.png")):
        try:
            key = parse_montage_name(path.name)
        except InputError:
            logger.warning("%s: not a montage name; ignored", path)
            continue
        if key.identifier != wf.identifier:
            logger.warning("%s: identifier %r is not %r; used by position and number",
                           path, key.identifier, wf.identifier)
        triple = (key.x, key.y, key.montage)
        if triple in found:
            logger.warning("%s and %s are the same montage; using the first",
                           found[triple].name, path.name)
            continue
        found[triple] = path
    return found


def _skip_keys(skip: Collection[str]) -> set[tuple[int, int, int]]:
    keys = set()
    for name in skip:
        key = parse_montage_name(name)
        keys.add((key.x, key.y, key.montage))
    return keys


def montages_to_movies(
    wf: WorkingFolder,
    *,
    skip: Collection[str] = (),
    executor: Executor | None = None,
    progress: Callable[[int], None] | None = None,
    job: Job | None = None,
    only: Only | None = None,
) -> MoviesResult:
    """Chop every cleaned label montage into frames under ``movies/part{N}/…/annotated``.

    Parameters
    ----------
    wf : WorkingFolder
        Holds the logs and the cleaned labels (``wf.labels``).
    skip : collection of str
        Montage names (or file names / URLs) not to use, e.g. broken links.
    executor : Executor, optional
        Runs one task per montage (default: serially).
    progress : callable, optional
        Called with 1 after each montage.
    job : Job, optional
        The job, when already loaded for ``wf`` (else its logs are read).
    only : callable, optional
        ``only(montage name, label file, frame files)``: False skips a montage whose
        frame files are already written from that label file (its result names them
        as if written). Default: every montage is written.

    Returns
    -------
    MoviesResult
        Files written per montage, failures, and every expected montage that is
        missing, skipped or failed (``missing_by_part()``).

    Raises
    ------
    LogError
        A log is missing or invalid, or the logs disagree.
    InputError
        A name in ``skip`` is not a montage name, or ``movies/`` holds parts numbered
        from 1 (see :func:`refuse_old_parts`).
    """
    plan = _plan_montages(wf, skip, job)
    return plan.finish(_run_only(plan.tasks, [only] * len(plan.tasks), executor, progress))


@dataclass(frozen=True)
class _Plan:
    """A movies function's tasks, and what makes its result from theirs (in task order)."""

    tasks: Sequence[_AnnotatedTask | _RawTask]
    finish: Callable[[list[ItemResult]], MoviesResult]


def _plan_montages(wf: WorkingFolder, skip: Collection[str], job: Job | None) -> _Plan:
    """:func:`montages_to_movies`'s tasks and result."""
    movie = read_movie_geometry(wf, job=job)
    wf = movie.wf
    refuse_old_parts(wf, movie.count)
    skipped = _skip_keys(skip)
    found = _found_labels(wf)
    expected = [MontageKey(wf.identifier, pos.x, pos.y, m)
                for pos in movie.grid.positions for m in range(movie.count)]
    missing: list[MissingMontage] = []
    tasks: list[_AnnotatedTask] = []
    task_keys: list[MontageKey] = []
    for key in expected:
        triple = (key.x, key.y, key.montage)
        name = wf.montage_name(key)
        if triple in skipped:
            missing.append(MissingMontage(name, key.part, key.position, "skipped"))
        elif triple not in found:
            missing.append(MissingMontage(name, key.part, key.position,
                                          f"no cleaned labels at {wf.label_path(name)}"))
        else:
            targets = tuple(wf.annotated_frame(key.part, key.position, f)
                            for f in range(movie.frames_in(key.montage)))
            tasks.append(_AnnotatedTask(name, found.pop(triple), movie.montage,
                                        movie.grid.tile_shape, targets))
            task_keys.append(key)
    items: list[ItemResult] = []
    for triple, path in sorted(found.items()):
        if triple not in skipped:
            items.append(ItemResult(path.name, (), (
                f"x={triple[0]}, y={triple[1]}, montage {triple[2]} is outside the logged "
                f"{movie.grid.num_x}x{movie.grid.num_y} grid of {movie.count} montages")))

    def finish(results: list[ItemResult]) -> MoviesResult:
        for key, item in zip(task_keys, results, strict=True):
            items.append(item)
            if item.error is not None:
                logger.error("montage %s failed: %s", item.name, item.error)
                missing.append(MissingMontage(item.name, key.part, key.position,
                                              f"failed: {item.error}"))
        result = MoviesResult(wf, "annotated", tuple(items), tuple(missing))
        for part, misses in sorted(result.missing_by_part().items()):
            logger.warning("part %d: %d of %d montages have no annotated frames (%s)", part,
                           len(misses), len(movie.grid), ", ".join(m.montage for m in misses))
        logger.info("wrote %d annotated frames from %d montages", result.files_written,
                    len(tasks))
        return result

    return _Plan(tasks, finish)


def _run_only(tasks: Sequence[_AnnotatedTask | _RawTask], onlys: Sequence[Only | None],
              executor: Executor | None, progress: Callable[[int], None] | None
              ) -> list[ItemResult]:
    """:func:`_movie_task` over the tasks their ``only`` (one per task) keeps; the others'
    targets as written."""
    kept = [o is None or o(_name(t), t.source, _targets(t))
            for t, o in zip(tasks, onlys, strict=True)]
    done = iter(run_tasks(_movie_task, [t for t, k in zip(tasks, kept, strict=True) if k],
                          executor=executor, progress=progress))
    return [next(done) if k else ItemResult(_name(t), _targets(t))
            for t, k in zip(tasks, kept, strict=True)]


def _movie_task(task: _AnnotatedTask | _RawTask) -> ItemResult:
    """One montage cut into frames, or one raw frame into tiles."""
    if isinstance(task, _AnnotatedTask):
        return _montage_to_frames(task)
    return _raw_frame_to_tiles(task)


def _name(task: _AnnotatedTask | _RawTask) -> str:
    return task.name if isinstance(task, _AnnotatedTask) else task.source.name


def _targets(task: _AnnotatedTask | _RawTask) -> tuple[Path, ...]:
    if isinstance(task, _AnnotatedTask):
        return task.targets
    return tuple(t for _, t in task.targets)


# -- raw frames -> tiles ----------------------------------------------------------------


@dataclass(frozen=True)
class _RawTask:
    source: Path
    grid: TileGrid
    targets: tuple[tuple[Position, Path], ...]


def _raw_frame_to_tiles(task: _RawTask) -> ItemResult:
    """Cut one raw frame into its tiles (dtype kept); failures are returned, not raised."""
    try:
        frame = read_image(task.source)
        for pos, target in task.targets:
            write_image(target, task.grid.tile(frame, pos))
    except (OSError, ValueError) as exc:
        raise_if_resource_error(exc)
        return ItemResult(task.source.name, (), str(exc))
    return ItemResult(task.source.name, tuple(t for _, t in task.targets))


def check_raw_frames(paths: Sequence[Path], frame_shape: tuple[int, int], *,
                     source: Path | None = None) -> None:
    """Check every raw frame from its header, before any is used: one size, dtype, channels.

    Parameters
    ----------
    paths : sequence of Path
        The frames, in movie order.
    frame_shape : (int, int)
        The frame size the logs give (rows, cols).
    source : Path, optional
        The log that gives it, for the message.

    Raises
    ------
    InputError
        Names the first frame that cannot be read, or whose size differs from the logs',
        or whose channels or dtype differ from the first frame's: what it is and what
        was expected.
    """
    if not paths:
        return
    first_shape, first_dtype = image_header(paths[0])
    said = f" ({source.name} says so)" if source is not None else ""
    for t, path in enumerate(paths):
        shape, dtype = image_header(path) if t else (first_shape, first_dtype)
        problem = None
        if tuple(shape[:2]) != tuple(frame_shape):
            problem = (f"{shape[0]}x{shape[1]} pixels, but the frames of this movie are "
                       f"{frame_shape[0]}x{frame_shape[1]}{said}")
        elif shape[2:] != first_shape[2:]:
            problem = (f"{_channels(shape)}, but the first frame ({paths[0].name}) has "
                       f"{_channels(first_shape)}")
        elif dtype != first_dtype:
            problem = (f"{dtype}, but the first frame ({paths[0].name}) is {first_dtype}: "
                       "frames of mixed dtypes would be at different scales")
        if problem is not None:
            raise InputError(f"raw frame {t} is {problem}: every frame of a movie must match; "
                             "replace or convert this file", path=path)


def _channels(shape: tuple[int, ...]) -> str:
    return f"{shape[2]} channels" if len(shape) > 2 else "one channel (grey)"


def raw_to_movies(
    wf: WorkingFolder,
    *,
    executor: Executor | None = None,
    progress: Callable[[int], None] | None = None,
    job: Job | None = None,
    only: Only | None = None,
) -> MoviesResult:
    """Cut the raw frames (``wf.raw``) into the tiles matching the annotated movies.

    Frame ``t`` of the movie (counted from the chopper log's ``frame_offset`` in
    the raw folder) goes to part ``t // L`` as frame ``t % L``; each tile is
    exactly ``TileGrid.tile(frame, position)``, with the raw dtype and channels.
    ``job``: the job, when already loaded for ``wf`` (else its logs are read).
    ``only(frame file name, frame file, tile files)``: False skips a frame whose tiles
    are already written (as :func:`montages_to_movies`).

    Raises
    ------
    LogError
        A log is missing or invalid, or the logs disagree.
    InputError
        The raw folder is missing, empty, or holds fewer frames than the logs say, or
        ``movies/`` holds parts numbered from 1 (see :func:`refuse_old_parts`).
    """
    plan = _plan_raw(wf, job)
    return plan.finish(_run_only(plan.tasks, [only] * len(plan.tasks), executor, progress))


def _plan_raw(wf: WorkingFolder, job: Job | None) -> _Plan:
    """:func:`raw_to_movies`'s tasks and result."""
    movie = read_movie_geometry(wf, job=job)
    wf = movie.wf
    refuse_old_parts(wf, movie.count)
    if not movie.raw_paths:
        raise InputError("no raw frames found: set the raw folder of this movie", path=wf.raw)
    offset, length, wanted = movie.frame_offset, movie.montage_len, movie.movie_frames
    available = len(movie.raw_paths) - offset
    if available < wanted:
        raise InputError(
            f"the logs describe {wanted} frames from frame {offset}, but the folder has "
            f"{len(movie.raw_paths)} frames: point to the full raw movie",
            path=wf.raw,
        )
    if available > wanted:
        logger.info("using raw frames %d to %d of %d (as in the logs)",
                    offset, offset + wanted - 1, len(movie.raw_paths))
    check_raw_frames(movie.movie_raw_paths(), movie.grid.frame_shape, source=wf.chopper_log)
    tasks = []
    for t, source in enumerate(movie.movie_raw_paths()):
        part, f = part_of_montage(t // length), t % length
        tasks.append(_RawTask(source, movie.grid, tuple(
            (pos, wf.raw_tile_frame(part, pos, f)) for pos in movie.grid.positions)))

    def finish(items: list[ItemResult]) -> MoviesResult:
        result = MoviesResult(wf, "raw", tuple(items))
        for error in result.errors:
            logger.error("raw frame failed: %s", error)
        logger.info("wrote %d raw tiles from %d frames", result.files_written, len(tasks))
        return result

    return _Plan(tasks, finish)


def raw_and_montages_to_movies(
    wf: WorkingFolder,
    *,
    executor: Executor | None = None,
    progress: Callable[[int], None] | None = None,
    job: Job | None = None,
    only_raw: Only | None = None,
    only_labels: Only | None = None,
) -> tuple[MoviesResult, MoviesResult]:
    """:func:`raw_to_movies` and :func:`montages_to_movies` (no montage skipped) as one
    map of tasks: no worker waits between the two. Returns ``(raw, annotated)``, as each
    function returns them; ``only_raw`` and ``only_labels`` are their ``only``.
    """
    raw, labels = _plan_raw(wf, job), _plan_montages(wf, (), job)
    tasks = [*raw.tasks, *labels.tasks]  # the longer raw tasks first: a short tail
    onlys = [only_raw] * len(raw.tasks) + [only_labels] * len(labels.tasks)
    items = _run_only(tasks, onlys, executor, progress)
    return raw.finish(items[:len(raw.tasks)]), labels.finish(items[len(raw.tasks):])
