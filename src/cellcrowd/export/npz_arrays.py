"""The arrays of a training ``.npz``: read a part's movies, write and read the file.

The keys and their meaning are described in :mod:`cellcrowd.export.npz`, which
re-exports every public name of this module; :mod:`cellcrowd.export.npz_movie`
builds the whole-movie files from the same pieces.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import InputError
from ..files import image_header, list_images, read_image, write_npz
from ..geometry import Position
from ..layout import WorkingFolder, parse_position_name
from .npzstream import NpyStream, StreamedArrays

__all__ = [
    "NpzData",
    "PositionMovie",
    "TrainingArrays",
    "build_training_arrays",
    "check_same_movie",
    "load_npz",
    "part_folder_numbers",
    "part_movies",
    "position_dirs",
    "position_movie",
    "save_npz",
    "select_channels",
    "stream_training_arrays",
]

logger = logging.getLogger(__name__)


def part_folder_numbers(wf: WorkingFolder) -> list[int]:
    """Part numbers of the ``movies/part{N}`` folders (:meth:`WorkingFolder.part_folders`).

    Raises
    ------
    InputError
        There are none.
    """
    found = list(wf.part_folders())
    if not found:
        raise InputError("no part folders: make the movies first", path=wf.movies)
    return sorted(found)


def position_dirs(part_dir: str | Path) -> dict[Position, Path]:
    """Position folders (``x_XX_y_YY``) of a part folder, x-major as the original notebook."""
    part_dir = Path(part_dir)
    if not part_dir.is_dir():
        raise InputError(
            "part folder not found: make the movies first (montages_to_movies, raw_to_movies)",
            path=part_dir,
        )
    found = {}
    for child in part_dir.iterdir():
        pos = parse_position_name(child.name)
        if pos is not None and child.is_dir():
            found[pos] = child
    return dict(sorted(found.items()))


def _resolve_positions(
    available: dict[Position, Path], names: Iterable[str | Position], part_dir: Path
) -> dict[Position, Path]:
    chosen = {}
    for name in names:
        pos = name if isinstance(name, Position) else parse_position_name(str(name))
        if pos is None:
            raise InputError(f"{name!r} is not a position name like 'x_00_y_01'", path=part_dir)
        if pos not in available:
            raise InputError(f"position folder {name!r} not found", path=part_dir)
        chosen[pos] = available[pos]
    return chosen


@dataclass(frozen=True)
class TrainingArrays:
    """``X``, ``y`` and the positions they hold (see the module docstring)."""

    X: NDArray[np.float32]
    y: NDArray[np.int32]
    positions: list[str]
    missing_positions: list[str]


def _frames(folder: Path, name_filter: str = "") -> list[Path]:
    return [p for p in list_images(folder) if name_filter in p.name]


def _stack(paths: Sequence[Path], folder: Path) -> NDArray[np.generic]:
    first = read_image(paths[0])
    out = np.empty((len(paths), *first.shape), dtype=first.dtype)
    out[0] = first
    for i, path in enumerate(paths[1:], start=1):
        image = read_image(path)
        if image.shape != first.shape:
            raise InputError(
                f"frame {path.name} is {image.shape} but {paths[0].name} is {first.shape}: "
                "every frame of a position must have the same size; remake the movies",
                path=folder,
            )
        out[i] = image
    return out


@dataclass(frozen=True)
class PositionMovie:
    """The frame files of one annotated position of a part, read whole or in part.

    :func:`position_movie` lists them (and checks the frame counts);
    :meth:`read_labels` and :meth:`read_raw` read frames ``start:stop``.
    """

    ann_dir: Path
    labels: list[Path]
    raw_dir: Path
    raw: list[list[Path]]  # one list per channel filter

    @property
    def frames(self) -> int:
        """How many frames the position has."""
        return len(self.labels)

    def read_labels(self, start: int = 0, stop: int | None = None) -> NDArray[np.int32]:
        """Annotated frames ``start:stop``, ``(frames, rows, cols, 1)`` int32."""
        labels = _stack(self.labels[start:stop], self.ann_dir)
        if labels.ndim != 3 or labels.dtype.kind not in "ui":
            raise InputError(f"annotated frames must be 2-D integer labels, got "
                             f"{labels.shape[1:]} {labels.dtype}", path=self.ann_dir)
        return labels.astype(np.int32)[..., None]

    def read_raw(self, channels: Sequence[int] | None, start: int = 0,
                 stop: int | None = None) -> NDArray[np.float32]:
        """Raw frames ``start:stop``, ``(frames, rows, cols, C)`` float32, ``channels`` kept."""
        raw_channels = []
        for paths in self.raw:
            raw = _stack(paths[start:stop], self.raw_dir)
            raw_channels.append(raw[..., None] if raw.ndim == 3 else raw)
        x = raw_channels[0] if len(raw_channels) == 1 else np.concatenate(raw_channels, -1)
        return select_channels(x, channels, self.raw_dir).astype(np.float32)

    def check_sizes(self, x: tuple[int, ...], labels: tuple[int, ...]) -> None:
        """Raise InputError unless raw frames of shape ``x`` and label frames of shape
        ``labels`` (both ``(frames, rows, cols, …)``) have one size (rows, cols)."""
        if x[1:3] != labels[1:3]:
            raise InputError(
                f"raw frames are {x[1]}x{x[2]} but annotated frames in "
                f"{self.ann_dir} are {labels[1]}x{labels[2]}: remake the movies "
                "from the same logs", path=self.raw_dir,
            )


def position_movie(
    pos_dir: Path,
    *,
    raw_dirname: str = "raw",
    annotation_dirname: str = "annotated",
    channel_filters: Sequence[str] = ("",),
    num_frames: int | None = None,
) -> PositionMovie | None:
    """The frame files of a position folder; None if it has no annotated frames.

    Raises
    ------
    InputError
        The raw folder is missing or holds another number of frames than the
        annotated one (per channel filter).
    """
    ann_dir = pos_dir / annotation_dirname
    ann_paths = _frames(ann_dir) if ann_dir.is_dir() else []
    if not ann_paths:
        return None
    raw_dir = pos_dir / raw_dirname
    if not raw_dir.is_dir():
        raise InputError(
            "no raw frames for this annotated position: run raw_to_movies (raw_movie_maker) "
            "first", path=raw_dir,
        )
    if num_frames is not None:
        ann_paths = ann_paths[:num_frames]
    raw = []
    for name_filter in channel_filters:
        raw_paths = _frames(raw_dir, name_filter)
        if num_frames is not None:
            raw_paths = raw_paths[:num_frames]
        if len(raw_paths) != len(ann_paths):
            raise InputError(
                f"{len(raw_paths)} raw frames{_filter_note(name_filter)} but "
                f"{len(ann_paths)} annotated frames in {ann_dir}: remake the movies of this "
                "position so both have the same frames", path=raw_dir,
            )
        raw.append(raw_paths)
    return PositionMovie(ann_dir, ann_paths, raw_dir, raw)


def select_channels(
    x: NDArray[np.generic], channels: Sequence[int] | None, where: Path
) -> NDArray[np.generic]:
    """``x[..., channels]`` (channels last), or an InputError naming ``where``."""
    if channels is None:
        return x
    bad = [c for c in channels if not -x.shape[-1] <= c < x.shape[-1]]
    if bad or not channels:
        raise InputError(f"channels {list(channels)} do not select from the "
                         f"{x.shape[-1]} raw channels (0 to {x.shape[-1] - 1})",
                         path=where)
    return x[..., list(channels)]


def _filter_note(name_filter: str) -> str:
    return f" matching {name_filter!r}" if name_filter else ""


def build_training_arrays(
    part_dir: str | Path,
    *,
    positions: Iterable[str | Position] | None = None,
    samples_to_drop: Collection[str] = (),
    raw_dirname: str = "raw",
    annotation_dirname: str = "annotated",
    channel_filters: Sequence[str] = ("",),
    channels: Sequence[int] | None = None,
    num_frames: int | None = None,
) -> TrainingArrays:
    """Stack the raw and annotated frames of a part's positions into ``X`` and ``y``.

    Parameters
    ----------
    part_dir : Path
        ``movies/part{N}``.
    positions : iterable, optional
        Position folder names (``"x_00_y_01"``, any zero padding) or positions to
        use; default every ``x_*_y_*`` folder, x-major.
    samples_to_drop : collection of str
        Position names to leave out.
    raw_dirname, annotation_dirname : str
        Sub-folder names of a position.
    channel_filters : sequence of str
        One channel per entry: raw files whose name contains it (``""`` = all).
    channels : sequence of int, optional
        Channel indices to keep (after the filters), for multi-channel raw tiles.
    num_frames : int, optional
        Use at most this many frames of each position.

    Raises
    ------
    InputError
        A folder is missing, no position is annotated, frame counts or sizes of
        raw and annotated frames disagree (the message names the folder), or
        ``channels`` selects nothing that exists.
    """
    streams = stream_training_arrays(
        part_dir, positions=positions, samples_to_drop=samples_to_drop,
        raw_dirname=raw_dirname, annotation_dirname=annotation_dirname,
        channel_filters=channel_filters, channels=channels, num_frames=num_frames)
    return TrainingArrays(streams.X.array(), streams.y.array(), streams.positions,
                          streams.missing_positions)


def stream_training_arrays(
    part_dir: str | Path,
    *,
    positions: Iterable[str | Position] | None = None,
    samples_to_drop: Collection[str] = (),
    raw_dirname: str = "raw",
    annotation_dirname: str = "annotated",
    channel_filters: Sequence[str] = ("",),
    channels: Sequence[int] | None = None,
    num_frames: int | None = None,
) -> StreamedArrays:
    """:func:`build_training_arrays` as streams: one position's frames in memory at a time.

    Same parameters, positions and arrays; :func:`save_npz` writes the same bytes
    as for the stacked arrays. Only the first position's first raw frame is read
    here (for ``X``'s shape); the frames are read, and checked as
    :func:`build_training_arrays` checks them, while the file is written, so an
    InputError then leaves no file (:func:`save_npz` writes atomically).

    Raises
    ------
    InputError
        As :func:`build_training_arrays` (here, or when the streams are written).
    """
    movies, missing = part_movies(part_dir, positions=positions,
                                  samples_to_drop=samples_to_drop, raw_dirname=raw_dirname,
                                  annotation_dirname=annotation_dirname,
                                  channel_filters=channel_filters, num_frames=num_frames)
    first_name, first = next(iter(movies.items()))
    frame = first.read_raw(channels, 0, 1).shape[1:]
    shape = (first.frames, *frame)  # each position's X: (frames, rows, cols, channels)

    def raw_blocks() -> Iterator[NDArray[np.float32]]:
        for movie in movies.values():
            x = movie.read_raw(channels)
            label_frame = image_header(movie.labels[0])[0][:2]  # as build_training_arrays:
            movie.check_sizes(x.shape, (movie.frames, *label_frame))  # this check first
            check_same_movie(x.shape, shape, first_name, movie)
            yield x

    def label_blocks() -> Iterator[NDArray[np.int32]]:
        for movie in movies.values():
            labels = movie.read_labels()
            movie.check_sizes(shape, labels.shape)
            yield labels

    n = len(movies)
    return StreamedArrays(NpyStream((n, *shape), np.float32, raw_blocks()),
                          NpyStream((n, *shape[:3], 1), np.int32, label_blocks()),
                          list(movies), missing)


def check_same_movie(shape: tuple[int, ...], first: tuple[int, ...], first_name: str,
                     movie: PositionMovie) -> None:
    """Raise InputError unless a position's ``X`` shape is the part's first position's."""
    if shape != first:
        raise InputError(
            f"this position's movie is {shape[:-1]} (frames, rows, cols) with "
            f"{shape[-1]} channels but {first_name} is {first[:-1]} with "
            f"{first[-1]}: all positions of a part must match", path=movie.ann_dir.parent,
        )


def part_movies(
    part_dir: str | Path,
    *,
    positions: Iterable[str | Position] | None = None,
    samples_to_drop: Collection[str] = (),
    raw_dirname: str = "raw",
    annotation_dirname: str = "annotated",
    channel_filters: Sequence[str] = ("",),
    num_frames: int | None = None,
) -> tuple[dict[str, PositionMovie], list[str]]:
    """The annotated positions of a part (name -> frame files) and the unannotated ones.

    Chosen as :func:`build_training_arrays` chooses them (same parameters),
    without reading a frame.

    Raises
    ------
    InputError
        A folder is missing, frame counts of raw and annotated frames disagree,
        or no position is annotated.
    """
    part_dir = Path(part_dir)
    available = position_dirs(part_dir)
    chosen = (available if positions is None
              else _resolve_positions(available, positions, part_dir))
    drop = {parse_position_name(str(name)) or str(name) for name in samples_to_drop}
    unknown = sorted(str(d) for d in drop if d not in available)
    if unknown:
        logger.warning("%s: samples_to_drop %s match no position folder", part_dir, unknown)
    movies: dict[str, PositionMovie] = {}
    missing: list[str] = []
    for pos, pos_dir in chosen.items():
        if pos in drop:
            continue
        movie = position_movie(pos_dir, raw_dirname=raw_dirname,
                               annotation_dirname=annotation_dirname,
                               channel_filters=channel_filters, num_frames=num_frames)
        if movie is None:
            logger.warning("%s: no annotated frames; position left out", pos_dir)
            missing.append(pos_dir.name)
        else:
            movies[pos_dir.name] = movie
    if not movies:
        raise InputError(
            "no position of this part has annotated frames: run montages_to_movies "
            "(all_montages_chopper) first, or check samples_to_drop", path=part_dir,
        )
    return movies, missing


def save_npz(
    path: str | Path,
    arrays: TrainingArrays | StreamedArrays,
    *,
    part: int,
    identifier: str,
    frame_offset: int,
    compressed: bool = True,
    extra: Mapping[str, Any] | None = None,
    level: int | None = None,
) -> Path:
    """Write ``arrays`` and the metadata keys of the module docstring atomically.

    ``extra`` keys (plain arrays or scalars, no objects) are written too; they
    must not repeat a standard key. Compressed files use the deflate ``level``
    (default :attr:`cellcrowd.files.WriteSettings.npz_level`, fast) with
    :func:`cellcrowd.files.write_npz`, which streams each array into the file;
    :class:`~cellcrowd.export.npzstream.StreamedArrays` are written block by block
    as their streams make them (a whole movie never in memory).

    Raises
    ------
    ValueError
        An ``extra`` key is one of the standard keys.
    """
    path = Path(path)
    extra = dict(extra or {})
    clash = sorted(set(extra) & {"X", "y", "positions", "missing_positions", "part",
                                 "identifier", "frame_offset"})
    if clash:
        raise ValueError(f"extra keys {clash} would replace standard keys: rename them")
    write_npz(path, {
        "X": arrays.X,
        "y": arrays.y,
        "positions": np.array(arrays.positions, dtype=str),
        "missing_positions": np.array(arrays.missing_positions, dtype=str),
        "part": np.int64(part),
        "identifier": np.str_(identifier),
        "frame_offset": np.int64(frame_offset),
        **extra,
    }, compressed=compressed, level=level)
    logger.info("wrote %s: X %s, y %s", path, arrays.X.shape, arrays.y.shape)
    return path


@dataclass(frozen=True)
class NpzData:
    """The arrays and metadata of one training ``.npz``."""

    X: NDArray[np.float32]
    y: NDArray[np.int32]
    positions: list[str]
    missing_positions: list[str]
    part: int
    identifier: str
    frame_offset: int
    #: Label ids joined across parts (the whole-movie files; False for a part).
    linked: bool = False


def load_npz(path: str | Path) -> NpzData:
    """Read a file written by :func:`write_part_npz` (no pickle).

    Raises
    ------
    InputError
        The file lacks ``X`` or ``y``.
    """
    with np.load(Path(path), allow_pickle=False) as data:
        if "X" not in data or "y" not in data:
            raise InputError(f"not a training file: keys are {sorted(data.files)}, "
                             "expected X and y", path=path)

        def meta(key: str, default: Any) -> Any:
            return data[key].item() if key in data else default

        return NpzData(
            X=data["X"],
            y=data["y"],
            positions=[str(p) for p in data["positions"]] if "positions" in data else [],
            missing_positions=([str(p) for p in data["missing_positions"]]
                               if "missing_positions" in data else []),
            part=int(meta("part", -1)),
            identifier=str(meta("identifier", "")),
            frame_offset=int(meta("frame_offset", -1)),
            linked=bool(meta("linked", False)),
        )
