"""The job: everything the JSON logs and the working folder say, read once.

A :class:`Job` is built once (:meth:`Job.load`, :func:`load_job`) from the two
JSON logs in ``json_logs/`` and the raw folder, and handed to every stage that
needs a shape: the tile grid, the montage layout, the montages per position and
the parts they become, the positions, the movie's length, frame size, dtype and
frame offset, and the working folder with its padding widened to fit the counts
(so every name it gives is right). Nothing else reads the logs.

For example, after ``cellcrowd prepare``::

    job = load_job("work", "exp")          # reads json_logs/ once
    job.grid.tile_shape                    # (36, 44): one tile, i.e. a montage's frame
    job.layout.montage_shape               # (72, 132): a montage image
    job.parts                              # (0, 1, 2): movies/part0 ... part2
    montages_to_movies(job.wf, job=job)    # stages take it instead of reading the logs

Old logs (the original tool's, without ``original_y/original_x`` or ``num_images``)
are completed from the raw frames: the frame size from the first one, the movie's
length from how many there are. When neither the log nor a raw frame tells the
frame size, the job still loads (the montage log's numbers are known) and
:attr:`Job.grid` raises a :class:`~cellcrowd.errors.LogError` that says what to do;
:attr:`Job.known_grid` is None then.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from .errors import InputError, LogError
from .files import image_header, list_images, read_image
from .geometry import MontageLayout, Position, TileGrid, montage_frame_range, num_montages
from .layout import MontageKey, WorkingFolder, montage_of_part, part_numbers
from .logs import ChopperLog, MontageLog, read_logs

__all__ = ["Job", "load_job"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """One job's geometry and names, built once from its logs and working folder.

    Build it with :meth:`load` (or :func:`load_job`); the fields are what was read,
    the properties what follows from them.

    Attributes
    ----------
    wf : WorkingFolder
        The working folder, its padding widened to fit the logged counts (positions,
        frames, montages), so its names match the files the stages write.
    chopper : ChopperLog
        The overlapping-chopper log (how frames were cut into tiles).
    montage : MontageLog
        The montage-maker log (how tiles were laid out in montages); also
        :attr:`montage_log`.
    known_grid : TileGrid or None
        The tile grid; None only for old logs without the frame size and no raw
        frame to measure (:attr:`grid_error` says why).
    grid_error : InputError or None
        Why :attr:`known_grid` is None (raised again by :attr:`grid`).
    num_frames : int or None
        Frames in the movie (the last montage may be partial): the chopper log's
        ``num_images``, else counted in the raw folder; None when neither tells.
    raw_paths : sequence of Path
        The raw folder's frames in natural order (all of them; the movie starts at
        :attr:`frame_offset`); empty without a raw folder.
    frame_dtype : str or None
        The raw frames' dtype (``"uint16"``), from the first frame's header; None
        without raw frames.
    """

    wf: WorkingFolder
    chopper: ChopperLog
    montage: MontageLog
    known_grid: TileGrid | None
    grid_error: InputError | None
    num_frames: int | None
    raw_paths: Sequence[Path]
    frame_dtype: str | None = None

    # -- building ----------------------------------------------------------------------

    @classmethod
    def load(cls, wf: WorkingFolder) -> Job:
        """Read both logs of ``wf`` (and its raw folder, for old logs) into a job.

        Raises
        ------
        LogError
            A log is missing, not JSON, lacks a key or has a bad value (the message
            names the file and key and says to run ``cellcrowd prepare`` or copy
            ``json_logs``), the two logs describe different tile grids, or the
            movie's length does not make ``montages_in_pos`` montages.
        """
        chopper, mlog = read_logs(wf.chopper_log, wf.montage_log)
        raw_paths = tuple(list_images(wf.raw)) if wf.raw.is_dir() else ()
        grid, error = _tile_grid(wf, chopper, raw_paths)
        num_frames = _movie_length(wf, chopper, mlog, raw_paths)
        count, length = mlog.montages_in_pos, mlog.montage_len
        wf = wf.with_counts(num_x=mlog.num_x_segments, num_y=mlog.num_y_segments,
                            frames=num_frames if num_frames is not None else count * length,
                            montages=count)
        return cls(wf, chopper, mlog, grid, error, num_frames, raw_paths,
                   _dtype(raw_paths))

    @classmethod
    def of(cls, wf: WorkingFolder, job: Job | None = None) -> Job:
        """``job`` when it was loaded for ``wf``'s folder, else :meth:`load` ``(wf)``.

        The way a public function taking ``wf`` and an optional ``job`` gets its job.

        Raises
        ------
        ValueError
            ``job`` belongs to another working folder, identifier or raw folder.
        LogError
            As :meth:`load`, when no ``job`` is given.
        """
        if job is None:
            return cls.load(wf)
        mine = (job.wf.base, job.wf.identifier, job.wf.raw, job.wf.annotations)
        theirs = (wf.base, wf.identifier, wf.raw, wf.annotations)
        if mine != theirs:
            raise ValueError(f"the job was loaded for {job.wf.base} ({job.wf.identifier!r}), "
                             f"not for {wf.base} ({wf.identifier!r}): load it for this folder")
        return job

    # -- the tile grid and montage layout ----------------------------------------------

    @property
    def grid(self) -> TileGrid:
        """The tile grid (frame size, tiles, overlap).

        Raises
        ------
        InputError
            Old logs without the frame size and no raw frame to measure (a
            :class:`~cellcrowd.errors.LogError` saying to give the raw folder), or the
            first raw frame cannot be read.
        """
        if self.known_grid is None:
            error = self.grid_error or LogError("the tile grid is unknown",
                                                path=self.wf.chopper_log)
            raise error.with_traceback(None)
        return self.known_grid

    @property
    def has_grid(self) -> bool:
        """The tile grid is known (see :attr:`grid`)."""
        return self.known_grid is not None

    @property
    def montage_log(self) -> MontageLog:
        """The montage-maker log (the field :attr:`montage`)."""
        return self.montage

    @property
    def frame_shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of a full raw frame (needs :attr:`grid`)."""
        return self.grid.frame_shape

    @property
    def tile_shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of a tile, i.e. of a frame in a montage (needs :attr:`grid`)."""
        return self.grid.tile_shape

    @property
    def positions(self) -> list[Position]:
        """Every tile position, x-major (needs :attr:`grid`)."""
        return self.grid.positions

    @property
    def layout(self) -> MontageLayout:
        """How a montage holds its frames (tiles of :attr:`tile_shape`)."""
        return self.montage.layout(self.grid.tile_shape)

    @property
    def montage_shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of every montage image."""
        return self.layout.montage_shape

    def layout_for_montage(self, shape: tuple[int, ...], *, source: str = "montage"
                           ) -> MontageLayout:
        """The layout of a montage image of ``shape``, checked to fit the montage log
        (works without the tile grid)."""
        return self.montage.layout_for_montage(shape, source=source)

    # -- montages, parts, frames -------------------------------------------------------

    @property
    def identifier(self) -> str:
        return self.wf.identifier

    @property
    def montage_len(self) -> int:
        """Frames per montage (``montage_len``)."""
        return self.montage.montage_len

    @property
    def count(self) -> int:
        """Montages per position (``montages_in_pos``), also the number of parts."""
        return self.montage.montages_in_pos

    @property
    def montages_per_position(self) -> int:
        """Montages per position (``montages_in_pos``); same as :attr:`count`."""
        return self.count

    @property
    def parts(self) -> tuple[int, ...]:
        """The part numbers (``movies/part{N}``) of the movie, from the montage log."""
        return tuple(part_numbers(self.count))

    @property
    def frame_offset(self) -> int:
        """Index in the raw folder of the movie's first frame (the chopper log's)."""
        return self.chopper.frame_offset or 0

    @property
    def movie_frames(self) -> int:
        """Frames of the movie: :attr:`num_frames`, or every montage taken as full."""
        return self.num_frames if self.num_frames is not None else self.count * self.montage_len

    def frames_in(self, montage: int) -> int:
        """Real frames in montage ``montage`` (all ``montage_len`` when the length is
        unknown; the last montage may be partial)."""
        if self.num_frames is None:
            return self.montage_len
        return len(montage_frame_range(montage, self.montage_len, self.num_frames))

    def part_frame_offset(self, part: int) -> int:
        """The movie frame of part ``part``'s first frame (``montage * montage_len``)."""
        return montage_of_part(part) * self.montage_len

    def movie_raw_paths(self) -> Sequence[Path]:
        """The raw frames of the movie: from :attr:`frame_offset`, at most
        :attr:`movie_frames` (fewer when the folder is short)."""
        return self.raw_paths[self.frame_offset:self.frame_offset + self.movie_frames]

    def montage_keys(self) -> list[MontageKey]:
        """Every montage the logs promise, montage by montage, positions x-major
        (needs :attr:`grid`)."""
        return [MontageKey(self.identifier, p.x, p.y, m)
                for m in range(self.count) for p in self.grid.positions]

    def montage_name(self, key: MontageKey) -> str:
        """``{id}_x_XX_y_YY_montage_MM`` padded as this job's files are."""
        return self.wf.montage_name(key)


def load_job(base: str | Path, identifier: str, *, raw: str | Path | None = None) -> Job:
    """The job of working folder ``base`` and ``identifier`` (see :meth:`Job.load`).

    ``raw`` is the raw frames' folder (default ``base/raw``).
    """
    wf = WorkingFolder(Path(base), identifier)
    return Job.load(wf if raw is None else replace(wf, raw=Path(raw)))


def _tile_grid(
    wf: WorkingFolder, chopper: ChopperLog, raw_paths: Sequence[Path]
) -> tuple[TileGrid | None, InputError | None]:
    """The chopper log's tile grid (old logs: frame size from the first raw frame), or why
    there is none."""
    shape = None
    try:
        if (chopper.original_y is None or chopper.original_x is None) and raw_paths:
            first = read_image(raw_paths[0])
            shape = (int(first.shape[0]), int(first.shape[1]))
        return chopper.tile_grid(shape, source=str(wf.chopper_log)), None
    except InputError as exc:
        return None, exc


def _movie_length(
    wf: WorkingFolder, chopper: ChopperLog, mlog: MontageLog, raw_paths: Sequence[Path]
) -> int | None:
    """Frames in the movie (the log's, else the raw folder's), checked against the
    montage count."""
    length, count = mlog.montage_len, mlog.montages_in_pos
    num_frames = chopper.num_images
    if num_frames is None and raw_paths:
        available = min(len(raw_paths) - (chopper.frame_offset or 0), count * length)
        num_frames = available if available > 0 else None
    if num_frames is not None and num_montages(num_frames, length) != count:
        raise LogError(
            f"montages_in_pos is {count} but {num_frames} frames in montages of {length} "
            f"make {num_montages(num_frames, length)}: the logs (or the raw folder "
            f"{wf.raw}) belong to different runs; copy both logs of one `cellcrowd prepare` "
            "run into json_logs",
            path=wf.montage_log,
            key="montages_in_pos",
        )
    return num_frames


def _dtype(raw_paths: Sequence[Path]) -> str | None:
    if not raw_paths:
        return None
    try:
        return image_header(raw_paths[0])[1]
    except InputError as exc:
        logger.debug("raw dtype unknown: %s", exc)
        return None
