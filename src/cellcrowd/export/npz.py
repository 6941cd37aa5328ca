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
    -1 when no montage log is available to tell.

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

Files are compressed (deflate, like ``np.savez_compressed``, what the DeepCell
maintainers recommend, at the fast level 1 by default: see
:class:`cellcrowd.files.WriteSettings`) unless asked otherwise, and written
atomically. Read them with
``np.load(path)`` (no pickle needed) or :func:`load_npz`.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import InputError, LogError
from ..executor import Executor, run_tasks
from ..files import list_images, natural_key, read_image, write_npz
from ..geometry import Position
from ..layout import WorkingFolder, montage_of_part, part_numbers
from ..logs import read_montage_log

__all__ = [
    "NpzData",
    "PartResult",
    "TrainingArrays",
    "build_training_arrays",
    "load_npz",
    "load_part",
    "position_dirs",
    "save_npz",
    "write_full_movie_npz",
    "write_part_npz",
    "write_parts_npz",
    "write_parts_npz_each",
    "write_stitched_movie_npz",
]

logger = logging.getLogger(__name__)

_POSITION_RE = re.compile(r"^x_(\d+)_y_(\d+)$")


def _parse_position(name: str) -> Position | None:
    match = _POSITION_RE.match(name)
    return Position(int(match[1]), int(match[2])) if match else None


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
        pos = _parse_position(child.name)
        if pos is not None and child.is_dir():
            found[pos] = child
    return dict(sorted(found.items()))


def _resolve_positions(
    available: dict[Position, Path], names: Iterable[str | Position], part_dir: Path
) -> dict[Position, Path]:
    chosen = {}
    for name in names:
        pos = name if isinstance(name, Position) else _parse_position(str(name))
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


def _read_position(
    pos_dir: Path,
    *,
    raw_dirname: str,
    annotation_dirname: str,
    channel_filters: Sequence[str],
    channels: Sequence[int] | None,
    num_frames: int | None,
) -> tuple[NDArray[np.float32], NDArray[np.int32]] | None:
    """``(X, y)`` of one position: ``(frames, rows, cols, C)``, ``(…, 1)``; None if unannotated."""
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
    labels = _stack(ann_paths, ann_dir)
    if labels.ndim != 3 or labels.dtype.kind not in "ui":
        raise InputError(f"annotated frames must be 2-D integer labels, got "
                         f"{labels.shape[1:]} {labels.dtype}", path=ann_dir)
    raw_channels = []
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
        raw = _stack(raw_paths, raw_dir)
        raw_channels.append(raw[..., None] if raw.ndim == 3 else raw)
    x = np.concatenate(raw_channels, axis=-1)
    if x.shape[1:3] != labels.shape[1:3]:
        raise InputError(
            f"raw frames are {x.shape[1]}x{x.shape[2]} but annotated frames in {ann_dir} are "
            f"{labels.shape[1]}x{labels.shape[2]}: remake the movies from the same logs",
            path=raw_dir,
        )
    x = _select_channels(x, channels, raw_dir)
    return x.astype(np.float32), labels.astype(np.int32)[..., None]


def _select_channels(
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
    part_dir = Path(part_dir)
    available = position_dirs(part_dir)
    chosen = (available if positions is None
              else _resolve_positions(available, positions, part_dir))
    drop = {_parse_position(str(name)) or str(name) for name in samples_to_drop}
    unknown = sorted(str(d) for d in drop if d not in available)
    if unknown:
        logger.warning("%s: samples_to_drop %s match no position folder", part_dir, unknown)
    xs: list[NDArray[np.float32]] = []
    ys: list[NDArray[np.int32]] = []
    kept: list[str] = []
    missing: list[str] = []
    for pos, pos_dir in chosen.items():
        if pos in drop:
            continue
        pair = _read_position(pos_dir, raw_dirname=raw_dirname,
                              annotation_dirname=annotation_dirname,
                              channel_filters=channel_filters, channels=channels,
                              num_frames=num_frames)
        if pair is None:
            logger.warning("%s: no annotated frames; position left out", pos_dir)
            missing.append(pos_dir.name)
            continue
        if xs and (pair[0].shape != xs[0].shape or pair[1].shape != ys[0].shape):
            raise InputError(
                f"this position's movie is {pair[0].shape[:-1]} (frames, rows, cols) with "
                f"{pair[0].shape[-1]} channels but {kept[0]} is {xs[0].shape[:-1]} with "
                f"{xs[0].shape[-1]}: all positions of a part must match", path=pos_dir,
            )
        xs.append(pair[0])
        ys.append(pair[1])
        kept.append(pos_dir.name)
    if not xs:
        raise InputError(
            "no position of this part has annotated frames: run montages_to_movies "
            "(all_montages_chopper) first, or check samples_to_drop", path=part_dir,
        )
    return TrainingArrays(np.stack(xs), np.stack(ys), kept, missing)


def save_npz(
    path: str | Path,
    arrays: TrainingArrays,
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
    :func:`cellcrowd.files.write_npz`, which streams each array into the file.

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


def _frame_offset(wf: WorkingFolder, part: int) -> int:
    try:
        return montage_of_part(part) * read_montage_log(wf.montage_log).montage_len
    except LogError as exc:
        logger.warning("frame_offset of part %d unknown (-1): %s", part, exc)
        return -1


def write_part_npz(
    wf: WorkingFolder,
    part: int,
    *,
    samples_to_drop: Collection[str] = (),
    channels: Sequence[int] | None = None,
    compressed: bool = True,
    positions: Iterable[str | Position] | None = None,
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
        Part number (1-based).
    samples_to_drop : collection of str
        Position names (``"x_00_y_01"``) to leave out.
    channels : sequence of int, optional
        Raw channel indices to keep (multi-channel raw); default all.
    compressed : bool
        Deflate-compressed (default) or stored members (see :func:`save_npz`).
    positions : iterable, optional
        Only these positions (default every position folder).

    Raises
    ------
    InputError
        See :func:`build_training_arrays`.
    """
    arrays = build_training_arrays(wf.part_dir(part), positions=positions,
                                   samples_to_drop=samples_to_drop, channels=channels)
    return save_npz(wf.npz_part(part), arrays, part=part, identifier=wf.identifier,
                    frame_offset=_frame_offset(wf, part), compressed=compressed)


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
    options: Mapping[str, Any]


def _write_part_task(task: _PartTask) -> PartResult:
    try:
        return PartResult(task.part, write_part_npz(task.wf, task.part, **task.options))
    except InputError as exc:
        return PartResult(task.part, None, str(exc))


def write_parts_npz_each(
    wf: WorkingFolder,
    parts: Iterable[int] | None = None,
    *,
    executor: Executor | None = None,
    progress: Callable[[int], None] | None = None,
    **kw: Any,
) -> list[PartResult]:
    """:func:`write_part_npz` for several parts, one task per part, errors recorded.

    ``parts`` defaults to every ``movies/part{N}`` folder; ``kw`` goes to
    :func:`write_part_npz`. A part that cannot be written is reported in its
    :class:`PartResult`, never fatal for the others. Results are in part order.
    """
    chosen = sorted(parts) if parts is not None else _part_folders(wf)
    tasks = [_PartTask(wf, part, kw) for part in chosen]
    return list(run_tasks(_write_part_task, tasks, executor=executor, progress=progress))


def write_parts_npz(
    wf: WorkingFolder,
    parts: Iterable[int] | None = None,
    *,
    executor: Executor | None = None,
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
    results = write_parts_npz_each(wf, parts, executor=executor, **kw)
    for result in results:
        if result.error is not None:
            raise InputError(result.error)
    return [r.path for r in results if r.path is not None]


def _part_folders(wf: WorkingFolder) -> list[int]:
    """Part numbers of the ``movies/part{N}`` folders."""
    found = list(wf.part_folders())
    if not found:
        raise InputError("no part folders: make the movies first", path=wf.movies)
    return sorted(found)


def _all_parts(wf: WorkingFolder) -> list[int]:
    """Every part number: from the montage log, else the ``movies/part{N}`` folders."""
    try:
        return list(part_numbers(read_montage_log(wf.montage_log).montages_in_pos))
    except LogError as exc:
        logger.warning("parts taken from the movies folder (%s)", exc)
    return _part_folders(wf)


def write_full_movie_npz(
    wf: WorkingFolder,
    *,
    samples_to_drop: Collection[str] = (),
    channels: Sequence[int] | None = None,
    link: bool = True,
    compressed: bool = True,
    min_iou: float = 0.3,
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

    Returns
    -------
    Path
        ``wf.npz_full_movie``.

    Raises
    ------
    InputError
        A part folder is missing or unreadable (see :func:`build_training_arrays`),
        or no position is annotated in every part.
    """
    from ..stitch import link_parts

    parts = _all_parts(wf)
    per_part = [build_training_arrays(wf.part_dir(part), samples_to_drop=samples_to_drop,
                                      channels=channels) for part in parts]
    common = [p for p in per_part[0].positions if all(p in a.positions for a in per_part)]
    missing = sorted({p for a in per_part for p in a.positions + a.missing_positions}
                     - set(common), key=natural_key)
    if not common:
        raise InputError("no position is annotated in every part: a full movie needs them "
                         "all; set outputs.npz_full_movie = false, or annotate the missing "
                         "montages", path=wf.movies)
    starts = np.cumsum([0] + [a.X.shape[1] for a in per_part[:-1]]).astype(np.int64)
    xs, ys = [], []
    for name in common:
        index = [a.positions.index(name) for a in per_part]
        xs.append(np.concatenate([a.X[i] for a, i in zip(per_part, index, strict=True)]))
        labels = [a.y[i, ..., 0] for a, i in zip(per_part, index, strict=True)]
        if link:
            movie, report = link_parts(labels, min_iou=min_iou)
            logger.info("%s: %d cells over %d parts (%s carried over each boundary)", name,
                        int(movie.max(initial=0)), len(parts), list(report.links))
        else:
            movie = np.concatenate(labels)
        ys.append(movie.astype(np.int32)[..., None])
    arrays = TrainingArrays(np.stack(xs), np.stack(ys), common, missing)
    return save_npz(wf.npz_full_movie, arrays, part=-1, identifier=wf.identifier,
                    frame_offset=0, compressed=compressed,
                    extra={"linked": np.bool_(link), "part_starts": starts})


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
        stitched raw frames, or ``channels`` selects nothing that exists.
    """
    from ..stitch import read_stitched

    raw, labels, lineage = read_stitched(wf)
    raw_dir = wf.stitched_frame("raw", 0).parent
    if raw is None:
        raise InputError("no stitched raw frames for the stitched labels: put the raw movie "
                         "in the raw folder and run the stitch stage again", path=raw_dir)
    x = raw[..., None] if raw.ndim == 3 else raw
    if x.shape[1:3] != labels.shape[1:]:
        raise InputError(f"stitched raw frames are {x.shape[1]}x{x.shape[2]} but the label "
                         f"frames are {labels.shape[1]}x{labels.shape[2]}: run the stitch "
                         "stage again", path=raw_dir)
    x = _select_channels(x, channels, raw_dir)
    arrays = TrainingArrays(x[None].astype(np.float32), labels.astype(np.int32)[None, ..., None],
                            ["stitched"], [])
    text = json.dumps({str(k): v for k, v in sorted(lineage.items())}, sort_keys=True)
    return save_npz(wf.npz_stitched_movie, arrays, part=-1, identifier=wf.identifier,
                    frame_offset=0, compressed=compressed,
                    extra={"linked": np.bool_(True), "lineage": np.str_(text)})


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


def load_part(
    wf: WorkingFolder, part: int
) -> tuple[NDArray[np.float32], NDArray[np.int32], list[str]]:
    """``(X, y, positions)`` of ``npz/{id}_part{N}.npz``."""
    data = load_npz(wf.npz_part(part))
    return data.X, data.y, data.positions
