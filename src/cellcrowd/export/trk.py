"""DeepCell tracking files: ``.trk`` (one movie) and ``.trks`` (several).

A ``.trk`` is a gzip-compressed tar holding three members (FORMATS.md section 5)::

    lineage.json   {"<label>": {"label", "frames", "daughters", "capped",
                                "frame_div", "parent"}}
    raw.npy        (frames, rows, cols, channels)   the raw movie, its own dtype
    tracked.npy    (frames, rows, cols, 1) int32    one label per cell for its whole life

A ``.trks`` holds ``lineages.json`` (a list, one lineage per movie) and
``raw.npy`` / ``tracked.npy`` with a leading batch axis; shorter movies are
padded with empty frames at the end. Both are read the way DeepCell's
``load_trks`` reads them (``tarfile`` + ``np.load``).

Lineages are checked before anything is written (:func:`validate_lineage`),
with DeepCell's ``is_valid_lineage`` rules plus the conventions cellcrowd
writes. **frame_div convention**: ``frame_div`` is the first frame in which
the daughters exist (the parent's last frame + 1), as DeepCell's tracker
records it; ``None`` for a cell that does not divide. ``capped`` is true for
every cell that divides. ``parent`` is ``None`` for a cell without parent.

Files are written atomically and reproducibly (fixed timestamps in the tar and
gzip headers), so identical inputs give identical bytes.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from ..codec import gzip_writer
from ..errors import InputError, LineageError
from ..files import atomic_path, write_settings
from ..layout import WorkingFolder
from ..stitch import FramePresence, Lineage, frames_per_label
from .frames import StitchedFrames
from .npzstream import NpyReader

__all__ = [
    "LINEAGE_KEYS",
    "TrkData",
    "TrksData",
    "export_trk",
    "read_trk",
    "read_trks",
    "validate_lineage",
    "write_trk",
    "write_trks",
]

logger = logging.getLogger(__name__)

LINEAGE_KEYS = ("label", "frames", "daughters", "capped", "frame_div", "parent")


class TrkData(NamedTuple):
    """One movie: ``raw`` (T, H, W, C), ``tracked`` (T, H, W, 1) and its lineage."""

    raw: NDArray[Any]
    tracked: NDArray[Any]
    lineage: Lineage


class TrksData(NamedTuple):
    """Several movies: ``raw`` (B, T, H, W, C), ``tracked`` (B, T, H, W, 1), lineages."""

    raw: NDArray[Any]
    tracked: NDArray[Any]
    lineages: list[Lineage]


# -- validation -------------------------------------------------------------------------


def _int_keys(lineage: Mapping[Any, Any]) -> Lineage:
    out: Lineage = {}
    for key, entry in lineage.items():
        try:
            label = int(key)
        except (TypeError, ValueError):
            raise LineageError(f"lineage key {key!r} is not a cell label",
                               rule="keys are labels") from None
        if not isinstance(entry, Mapping):
            raise LineageError(f"lineage entry {label} is {type(entry).__name__}, not an object",
                               label=label, rule="entry fields")
        out[label] = dict(entry)
    return out


def _fail(label: int, message: str, rule: str) -> LineageError:
    return LineageError(f"lineage entry {label}: {message}", label=label, rule=rule)


def _check_entry(label: int, entry: dict[str, Any], lineage: Lineage,
                 present: Mapping[int, list[int]], strict: bool) -> None:
    missing = [k for k in LINEAGE_KEYS if k not in entry]
    if missing:
        raise _fail(label, f"has no {', '.join(missing)}; every entry needs "
                    f"{', '.join(LINEAGE_KEYS)}", "entry fields")
    if entry["label"] != label:
        raise _fail(label, f"its 'label' field says {entry['label']!r}", "label field")
    if label not in present:
        raise _fail(label, "this label is not in the tracked movie: remove the entry",
                    "entries have labels")
    if list(entry["frames"]) != present[label]:
        raise _fail(label, f"'frames' is {list(entry['frames'])} but the label is present in "
                    f"frames {present[label]}", "frames")
    last = present[label][-1]
    for d in entry["daughters"]:
        if d not in lineage:
            raise _fail(label, f"daughter {d} has no lineage entry", "daughters exist")
        if lineage[d].get("parent") != label:
            raise _fail(label, f"daughter {d} names {lineage[d].get('parent')!r} as its parent",
                        "parent and daughters agree")
        if present.get(d, [None])[0] != last + 1:
            raise _fail(label, f"daughter {d} starts in frame {present.get(d, [None])[0]} but "
                        f"the parent ends in frame {last}: daughters start one frame after "
                        "the parent's last frame", "daughters start after the parent")
    parent = entry["parent"]
    if parent is not None:
        if parent not in lineage:
            raise _fail(label, f"parent {parent!r} has no lineage entry (use null for none)",
                        "parent exists")
        if label not in lineage[parent].get("daughters", []):
            raise _fail(label, f"parent {parent} does not list it among its daughters",
                        "parent and daughters agree")
    if strict:
        expected = last + 1 if entry["daughters"] else None
        if entry["frame_div"] != expected:
            raise _fail(label, f"'frame_div' is {entry['frame_div']!r}, expected {expected!r} "
                        "(the daughters' first frame, or null without daughters)", "frame_div")
        if entry["daughters"] and entry["capped"] is not True:
            raise _fail(label, "divides but 'capped' is not true", "capped")


def validate_lineage(tracked: NDArray[Any], lineage: Mapping[Any, Any], *,
                     strict: bool = True) -> None:
    """Check a lineage against its tracked movie; raise on the first broken rule.

    Rules (DeepCell's ``is_valid_lineage``): every label in ``tracked`` has an
    entry and every entry a label; ``frames`` lists exactly the frames where the
    label is present; daughters exist, name the cell as their parent and start
    one frame after its last frame; a parent exists and lists the cell among its
    daughters. With ``strict`` (cellcrowd's conventions): ``frame_div`` is the
    daughters' first frame (``None`` without daughters) and a dividing cell is
    ``capped``.

    Parameters
    ----------
    tracked : (T, H, W) or (T, H, W, 1) int array
    lineage : mapping
        Label (int or str) -> entry with ``label, frames, daughters, capped,
        frame_div, parent``.
    strict : bool
        Also check ``frame_div`` and ``capped``.

    Raises
    ------
    LineageError
        Names the label and the rule (``err.label``, ``err.rule``).
    TypeError, ValueError
        ``tracked`` is not an integer movie.

    Examples
    --------
    >>> tracked = np.array([[[1, 0]], [[2, 3]]])
    >>> lineage = {1: {"label": 1, "frames": [0], "daughters": [2, 3], "capped": True,
    ...                "frame_div": 1, "parent": None},
    ...            2: {"label": 2, "frames": [1], "daughters": [], "capped": False,
    ...                "frame_div": None, "parent": 1},
    ...            3: {"label": 3, "frames": [1], "daughters": [], "capped": False,
    ...                "frame_div": None, "parent": 1}}
    >>> validate_lineage(tracked, lineage)
    >>> del lineage[3]
    >>> validate_lineage(tracked, lineage)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    cellcrowd.errors.LineageError: lineage entry 1: daughter 3 has no lineage entry ...
    """
    movie = _movie(tracked, "tracked")
    _check_lineage(frames_per_label(movie), _int_keys(lineage), strict=strict)


def _check_lineage(present: Mapping[int, list[int]], lineage: Lineage, *,
                  strict: bool = True) -> None:
    """:func:`validate_lineage` from the frames of each label (``frames_per_label``).

    For a movie read one frame at a time; ``lineage`` has integer keys (``_int_keys``).
    """
    for label in sorted(lineage):
        _check_entry(label, lineage[label], lineage, present, strict)
    orphans = sorted(set(present) - set(lineage))
    if orphans:
        raise LineageError(
            f"labels {orphans[:10]}{' …' if len(orphans) > 10 else ''} are in the tracked "
            "movie but have no lineage entry", label=orphans[0], rule="labels have entries")


def _movie(tracked: NDArray[Any], what: str) -> NDArray[Any]:
    arr = np.asarray(tracked)
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise ValueError(f"{what} must be (frames, rows, cols) or (frames, rows, cols, 1), "
                         f"got shape {arr.shape}")
    if arr.dtype.kind not in "ui":
        raise TypeError(f"{what} must hold integer labels, got {arr.dtype}")
    return arr


def _raw(raw: NDArray[Any], shape: tuple[int, ...]) -> NDArray[Any]:
    arr = np.asarray(raw)
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[:3] != shape:
        raise ValueError(f"raw has shape {np.shape(raw)} but tracked is {shape}: raw must be "
                         "(frames, rows, cols[, channels]) of the same movie")
    return arr


# -- writing ----------------------------------------------------------------------------


def _by_label(lineage: Lineage) -> dict[str, Any]:
    """The lineage as the file holds it: labels as text keys, in order (entries shared)."""
    return {str(k): lineage[k] for k in sorted(lineage)}


def _plain(value: Any) -> Any:
    """A numpy value of a lineage as Python's (``json.dumps``'s ``default``)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"a lineage value of type {type(value).__name__} cannot be written")


def _json(document: Any) -> bytes:
    """A lineage file's bytes; numpy values converted as they are written, not copied
    first (the frame lists are as long as the movie)."""
    return json.dumps(document, indent=1, default=_plain).encode()


def _npy(array: NDArray[Any]) -> NpyReader:
    return NpyReader.of(array)


def _write_tar(path: Path, members: list[tuple[str, bytes | NpyReader]],
               check: Callable[[], None] | None = None) -> Path:
    """Write the gzip tar; ``check`` runs after the last member, before the file is kept."""
    settings = write_settings()
    with (
        atomic_path(path) as tmp,
        open(tmp, "wb") as fh,
        gzip_writer(fh, settings.gzip_level, settings.codec) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        while members:  # each member let go once written (the lineage's text can be MBs)
            name, data = members.pop(0)
            info = tarfile.TarInfo(name)
            reader: io.RawIOBase | io.BytesIO = (io.BytesIO(data) if isinstance(data, bytes)
                                                 else data)
            info.size = len(data) if isinstance(data, bytes) else data.size
            info.mtime, info.mode = 0, 0o644
            tar.addfile(info, reader)
        if check is not None:
            check()
    return path


def _check_suffix(path: Path, suffix: str) -> None:
    if path.suffix != suffix:
        raise ValueError(f"{path.name}: a DeepCell file of this kind must end in {suffix!r}")


def write_trk(path: str | Path, raw: NDArray[Any], tracked: NDArray[Any],
              lineage: Mapping[Any, Any]) -> Path:
    """Validate and write one movie as a DeepCell ``.trk`` (atomically).

    Parameters
    ----------
    path : path ending in ``.trk``
    raw : (T, H, W) or (T, H, W, C) array
        Stored with its own dtype; a channel axis is added when missing.
    tracked : (T, H, W) or (T, H, W, 1) int array
        Stored as int32 ``(T, H, W, 1)``.
    lineage : mapping
        Checked with :func:`validate_lineage` (strict) before anything is written.

    Raises
    ------
    ValueError
        Wrong suffix or shapes; labels beyond int32.
    LineageError
        The lineage breaks a rule.
    """
    path = Path(path)
    _check_suffix(path, ".trk")
    movie = _movie(tracked, "tracked")
    raw4 = _raw(raw, movie.shape)
    validate_lineage(movie, lineage)
    members: list[tuple[str, bytes | NpyReader]] = [
        ("lineage.json", _json(_by_label(_int_keys(lineage)))),
        ("raw.npy", _npy(raw4)),
        ("tracked.npy", _npy(_int32(movie)[..., None])),
    ]
    logger.info("writing %s: %d frames, %d cells", path, movie.shape[0], len(lineage))
    return _write_tar(path, members)


def _int32(movie: NDArray[Any]) -> NDArray[np.int32]:
    if movie.size and int(movie.max()) > np.iinfo(np.int32).max:
        raise ValueError(f"label {int(movie.max())} does not fit int32")
    return movie.astype(np.int32)


def write_trks(path: str | Path, raws: Sequence[NDArray[Any]],
               trackeds: Sequence[NDArray[Any]], lineages: Sequence[Mapping[Any, Any]]) -> Path:
    """Validate and write several movies as one DeepCell ``.trks`` (atomically).

    Movies must share their frame size; shorter movies are padded with empty
    frames at the end (raw 0, no labels), which leaves their lineages valid.

    Raises
    ------
    ValueError
        Wrong suffix, no movies, different numbers of raws/trackeds/lineages,
        frame sizes or channel counts that differ.
    LineageError
        A lineage breaks a rule (the message names the movie).
    """
    path = Path(path)
    _check_suffix(path, ".trks")
    if not (len(raws) == len(trackeds) == len(lineages)) or not raws:
        raise ValueError(f"need one raw, tracked and lineage per movie, got {len(raws)}, "
                         f"{len(trackeds)} and {len(lineages)}")
    movies = [_movie(t, f"tracked[{i}]") for i, t in enumerate(trackeds)]
    raw4 = [_raw(r, m.shape) for r, m in zip(raws, movies, strict=True)]
    for i, (m, lin) in enumerate(zip(movies, lineages, strict=True)):
        try:
            validate_lineage(m, lin)
        except LineageError as exc:
            raise LineageError(f"movie {i}: {exc}", label=exc.label) from None
    if len({m.shape[1:] for m in movies}) > 1 or len({r.shape[3] for r in raw4}) > 1:
        raise ValueError("movies in one .trks must share rows, cols and channels, got "
                         f"{[r.shape for r in raw4]}")
    frames = max(m.shape[0] for m in movies)
    raw_out = np.zeros((len(movies), frames, *raw4[0].shape[1:]),
                       dtype=np.result_type(*[r.dtype for r in raw4]))
    tracked_out = np.zeros((len(movies), frames, *movies[0].shape[1:], 1), dtype=np.int32)
    for i, (r, m) in enumerate(zip(raw4, movies, strict=True)):
        raw_out[i, :r.shape[0]] = r
        tracked_out[i, :m.shape[0], ..., 0] = _int32(m)
    members: list[tuple[str, bytes | NpyReader]] = [
        ("lineages.json", _json([_by_label(_int_keys(lin)) for lin in lineages])),
        ("raw.npy", _npy(raw_out)),
        ("tracked.npy", _npy(tracked_out)),
    ]
    return _write_tar(path, members)


# -- reading ----------------------------------------------------------------------------


def _read_members(path: Path) -> tuple[NDArray[Any], NDArray[Any], Any]:
    try:
        with tarfile.open(path, mode="r") as tar:
            names = set(tar.getnames())
            lineage_name = next((n for n in ("lineages.json", "lineage.json") if n in names),
                                None)
            for need in ("raw.npy", "tracked.npy", lineage_name):
                if need is None or need not in names:
                    raise InputError(f"not a DeepCell track file: no {need or 'lineage.json'} "
                                     f"(members: {sorted(names)})", path=path)

            def member(name: str) -> bytes:
                fh = tar.extractfile(name)
                if fh is None:
                    raise InputError(f"{name} is not a regular file", path=path)
                return fh.read()

            raw = np.load(io.BytesIO(member("raw.npy")), allow_pickle=False)
            tracked = np.load(io.BytesIO(member("tracked.npy")), allow_pickle=False)
            lineage = json.loads(member(str(lineage_name)).decode("utf-8"))
    except FileNotFoundError:
        raise InputError("track file not found", path=path) from None
    except (tarfile.TarError, OSError, EOFError, ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"cannot read this track file ({exc}); it may be truncated",
                         path=path) from None
    return raw, tracked, lineage


def read_trk(path: str | Path) -> TrkData:
    """Read a ``.trk`` (as DeepCell's ``load_trks`` does); lineage keys become ints.

    Raises
    ------
    InputError
        The file is missing, not a gzip tar, lacks a member, or holds several movies.
    """
    path = Path(path)
    raw, tracked, lineage = _read_members(path)
    if isinstance(lineage, list):
        if len(lineage) != 1:
            raise InputError(f"holds {len(lineage)} movies: read it with read_trks", path=path)
        lineage = lineage[0]
    if not isinstance(lineage, dict):
        raise InputError("the lineage is not a JSON object", path=path)
    return TrkData(raw, tracked, _int_keys(lineage))


def read_trks(path: str | Path) -> TrksData:
    """Read a ``.trks`` (or a ``.trk`` as a batch of one); lineage keys become ints.

    Raises
    ------
    InputError
        The file is missing, not a gzip tar or lacks a member.
    """
    path = Path(path)
    raw, tracked, lineages = _read_members(path)
    if isinstance(lineages, dict):
        return TrksData(raw[None], tracked[None], [_int_keys(lineages)])
    if not isinstance(lineages, list) or not all(isinstance(x, dict) for x in lineages):
        raise InputError("lineages.json must hold a list of lineage objects", path=path)
    return TrksData(raw, tracked, [_int_keys(x) for x in lineages])


def export_trk(wf: WorkingFolder) -> Path:
    """Write ``wf.trk`` from the stitched movie (:func:`cellcrowd.stitch.stitch_movies`).

    Streams: the stitched frames are read one at a time into the ``.npy`` members
    (their sizes are known from the first frame), so memory does not grow with the
    movie. The lineage is checked against the labels once the last frame is read;
    the file is only kept when it fits. Same bytes as :func:`write_trk` on the
    whole movie.

    Raises
    ------
    InputError
        The stitched movie, its raw frames or its lineage are missing, or frames differ.
    LineageError
        The stored lineage does not fit the stitched labels.
    """
    movie = StitchedFrames(wf, raw_needed_for="a .trk")
    raw = movie.raw
    if raw is None:  # StitchedFrames raised already; for the type checker
        raise InputError("no stitched raw frames", path=wf.stitched)
    lineage = _int_keys(movie.lineage)
    present = FramePresence()

    def tracked() -> Iterator[NDArray[np.int32]]:
        for t, frame in enumerate(movie.labels):
            present.add(t, frame)
            yield frame

    frames, (rows, cols) = len(movie), movie.labels.shape
    raw_shape = (frames, rows, cols, raw.shape[2] if len(raw.shape) == 3 else 1)
    members: list[tuple[str, bytes | NpyReader]] = [
        ("lineage.json", _json(_by_label(lineage))),
        ("raw.npy", NpyReader(raw_shape, raw.dtype, iter(raw))),
        ("tracked.npy", NpyReader((frames, rows, cols, 1), np.dtype(np.int32), tracked())),
    ]
    logger.info("writing %s: %d frames, %d cells", wf.trk, frames, len(lineage))
    return _write_tar(wf.trk, members, lambda: _check_lineage(present, lineage))
