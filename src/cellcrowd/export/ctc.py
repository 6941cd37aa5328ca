"""Cell Tracking Challenge folders: tracked masks, the track table and raw frames.

Layout (one sequence ``NN``, e.g. ``01``)::

    NN/tTTT.tif                      raw frames
    NN_GT/TRA/man_trackTTT.tif       uint16 masks, one label per track
    NN_GT/TRA/man_track.txt          one line per track: ``L B E P``

``L`` is the track label, ``B`` and ``E`` its first and last frame (0-based),
``P`` its parent track or 0. Frame numbers have 3 digits, more when the movie
has more than 1000 frames (``t0999`` … ``t1000``).

A CTC track is contiguous in time. A cell that disappears and reappears (same
label in the tracked movie, frames with a gap) is split into one track per
contiguous run: the first run keeps the label, each later run gets a new label
whose parent is the run before it, as in the challenge's own ground truth (a
parent with a single daughter is a gap, with two a division; readers such as
traccuracy follow the same edge across the gap). Daughters of a divided cell
name its last run as their parent, so every parent ends before its daughters
begin.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import InputError, LineageError
from ..files import atomic_write_text, read_image, remove_file, write_image
from ..labelcheck import UINT16_MAX
from ..layout import WorkingFolder
from ..stitch import FramePresence, Lineage, frames_per_label
from .frames import StitchedFrames
from .trk import _check_lineage, _int_keys, _movie, _raw

__all__ = [
    "CTCData",
    "CTCTrack",
    "ctc_tracks",
    "export_ctc",
    "read_ctc",
    "validate_ctc",
    "write_ctc",
]

logger = logging.getLogger(__name__)

_MASK_RE = re.compile(r"^man_track(\d+)\.tif$")
_RAW_RE = re.compile(r"^t(\d+)\.tif$")


@dataclass(frozen=True, order=True)
class CTCTrack:
    """One line of ``man_track.txt``: label, first frame, last frame, parent (0: none)."""

    label: int
    begin: int
    end: int
    parent: int = 0

    def line(self) -> str:
        return f"{self.label} {self.begin} {self.end} {self.parent}"


@dataclass(frozen=True)
class CTCData:
    """A CTC sequence read back: raw frames, masks (T, H, W) and tracks by label."""

    raw: NDArray[Any]
    masks: NDArray[Any]
    tracks: dict[int, CTCTrack]


def _digits(frames: int) -> int:
    return max(3, len(str(frames - 1)))


def _runs(frames: list[int]) -> list[tuple[int, int]]:
    """Contiguous runs ``(first, last)`` of a sorted frame list."""
    arr = np.asarray(frames)
    breaks = np.flatnonzero(np.diff(arr) != 1)
    firsts = np.concatenate([[arr[0]], arr[breaks + 1]])
    lasts = np.concatenate([arr[breaks], [arr[-1]]])
    return [(int(a), int(b)) for a, b in zip(firsts, lasts, strict=True)]


def ctc_tracks(tracked: NDArray[Any], lineage: Mapping[Any, Any]
               ) -> tuple[NDArray[np.uint16], list[CTCTrack]]:
    """Masks and track table in CTC form: gaps split into tracks linked to the run before.

    Parameters
    ----------
    tracked : (T, H, W) or (T, H, W, 1) int array
    lineage : mapping
        A DeepCell lineage of ``tracked`` (checked with
        :func:`cellcrowd.export.trk.validate_lineage`).

    Returns
    -------
    masks : (T, H, W) uint16 array
    tracks : list of CTCTrack, sorted by label

    Raises
    ------
    LineageError
        The lineage breaks a rule, or the tracks need labels beyond 65535.

    Examples
    --------
    >>> tracked = np.array([[[5]], [[0]], [[5]]])     # cell 5 missing in frame 1
    >>> lineage = {5: {"label": 5, "frames": [0, 2], "daughters": [], "capped": False,
    ...                "frame_div": None, "parent": None}}
    >>> masks, tracks = ctc_tracks(tracked, lineage)
    >>> masks[:, 0, 0].tolist(), [t.line() for t in tracks]
    ([5, 0, 6], ['5 0 0 0', '6 2 2 5'])
    """
    movie = _movie(tracked, "tracked")
    tracks, relabel = _tracks(frames_per_label(movie), _int_keys(lineage))
    masks = movie.astype(np.uint16)
    for t in range(movie.shape[0]):
        _relabel(masks[t], relabel.get(t, []))
    return masks, tracks


_Relabel = dict[int, list[tuple[int, int]]]  # frame -> [(label in the movie, CTC label)]


def _tracks(present: Mapping[int, list[int]], lineage: Lineage
            ) -> tuple[list[CTCTrack], _Relabel]:
    """The track table (sorted) and, per frame, the labels a later run renames."""
    _check_lineage(present, lineage, strict=False)
    next_label = max(present, default=0) + 1
    runs: dict[int, list[tuple[int, int, int]]] = {}  # label -> [(new label, first, last)]
    for label in sorted(present):
        runs[label] = []
        for k, (first, last) in enumerate(_runs(present[label])):
            new = label
            if k > 0:
                new, next_label = next_label, next_label + 1
            runs[label].append((new, first, last))
    if next_label - 1 > UINT16_MAX:
        raise LineageError(f"the CTC tracks need labels up to {next_label - 1}, beyond the "
                           "16-bit masks (65535)", label=next_label - 1, rule="16-bit labels")
    tracks: list[CTCTrack] = []
    relabel: _Relabel = {}
    for label, label_runs in runs.items():
        parent = lineage[label]["parent"]
        first_parent = runs[parent][-1][0] if parent is not None else 0
        for k, (new, first, last) in enumerate(label_runs):
            tracks.append(CTCTrack(new, first, last,
                                   first_parent if k == 0 else label_runs[k - 1][0]))
            for t in range(first, last + 1) if k > 0 else ():
                relabel.setdefault(t, []).append((label, new))
    return sorted(tracks), relabel


def _relabel(mask: NDArray[np.uint16], pairs: list[tuple[int, int]]) -> NDArray[np.uint16]:
    """Give a frame's later runs their own labels (in place; new labels are unused ones)."""
    for label, new in pairs:
        mask[mask == label] = new
    return mask


def write_ctc(folder: str | Path, raw: NDArray[Any], tracked: NDArray[Any],
              lineage: Mapping[Any, Any], *, sequence: str = "01") -> Path:
    """Write a tracked movie as a Cell Tracking Challenge sequence under ``folder``.

    Writes ``folder/NN/tTTT.tif`` (raw, channel axis dropped when single),
    ``folder/NN_GT/TRA/man_trackTTT.tif`` (uint16) and ``man_track.txt``
    (see :func:`ctc_tracks` for how gaps are split); frame files of an earlier,
    longer export of the same sequence are removed. Every file is written
    atomically. Returns ``folder``.

    Raises
    ------
    ValueError
        ``sequence`` is not digits, or raw and tracked do not match.
    LineageError
        The lineage breaks a rule, or labels do not fit 16 bits.
    """
    if not sequence.isdigit():
        raise ValueError(f"sequence must be digits such as '01', got {sequence!r}")
    movie = _movie(tracked, "tracked")
    raw4 = _raw(raw, movie.shape)
    tracks, relabel = _tracks(frames_per_label(movie), _int_keys(lineage))
    return _write_frames(Path(folder), sequence, movie.shape[0], zip(raw4, movie, strict=True),
                         tracks, relabel)


def _write_frames(folder: Path, sequence: str, frames: int,
                  pairs: Iterable[tuple[NDArray[Any], NDArray[Any]]],
                  tracks: list[CTCTrack], relabel: _Relabel) -> Path:
    """Write ``frames`` (raw, labels) pairs one at a time, the track table, drop stale frames."""
    digits = _digits(frames)
    raw_dir, tra_dir = folder / sequence, folder / f"{sequence}_GT" / "TRA"
    written: set[Path] = set()
    for t, (raw, labels) in enumerate(pairs):
        raw = raw[..., 0] if raw.ndim == 3 and raw.shape[-1] == 1 else raw
        written.add(write_image(raw_dir / f"t{t:0{digits}d}.tif", raw))
        mask = _relabel(labels.astype(np.uint16), relabel.get(t, []))
        written.add(write_image(tra_dir / f"man_track{t:0{digits}d}.tif", mask))
    atomic_write_text(tra_dir / "man_track.txt", "".join(f"{t.line()}\n" for t in tracks))
    for directory, pattern in ((raw_dir, _RAW_RE), (tra_dir, _MASK_RE)):
        for path in directory.iterdir():
            if pattern.match(path.name) and path not in written:
                remove_file(path)  # a frame of an earlier, longer export
    logger.info("wrote CTC sequence %s in %s: %d frames, %d tracks", sequence, folder,
                frames, len(tracks))
    return folder


# -- reading and checking ---------------------------------------------------------------


def _numbered(directory: Path, pattern: re.Pattern[str], what: str) -> list[Path]:
    if not directory.is_dir():
        raise LineageError(f"no {what} folder", path=directory, rule="CTC layout")
    found = sorted((int(m.group(1)), p) for p in directory.iterdir()
                   if (m := pattern.match(p.name)))
    numbers = [n for n, _ in found]
    if numbers != list(range(len(numbers))) or not numbers:
        raise LineageError(f"{what} files must be numbered 0, 1, 2, … without gaps, found "
                           f"{numbers[:10]}{' …' if len(numbers) > 10 else ''}",
                           path=directory, rule="frame files")
    return [p for _, p in found]


def _read_tracks(path: Path) -> dict[int, CTCTrack]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise LineageError("no track table", path=path, rule="CTC layout") from None
    tracks: dict[int, CTCTrack] = {}
    for row, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 4 or not all(f.isdigit() for f in fields):
            raise LineageError(f"expected four whole numbers 'L B E P', got {line!r}",
                               path=path, row=row, rule="track line")
        track = CTCTrack(*map(int, fields))
        if track.label < 1 or track.label in tracks or track.begin > track.end:
            raise LineageError(
                f"track {track.label}: labels must be positive and unique and B <= E, "
                f"got {line!r}", path=path, row=row, label=track.label, rule="track line")
        tracks[track.label] = track
    return tracks


def read_ctc(folder: str | Path, *, sequence: str = "01") -> CTCData:
    """Read a CTC sequence (raw frames, masks, track table) without checking it.

    Raises
    ------
    LineageError
        Folders or files are missing, frame files are not numbered 0..T-1, or a
        line of ``man_track.txt`` is not ``L B E P``.
    InputError
        An image cannot be read.
    """
    folder = Path(folder)
    tra_dir = folder / f"{sequence}_GT" / "TRA"
    mask_paths = _numbered(tra_dir, _MASK_RE, "man_track*.tif mask")
    masks = np.stack([read_image(p) for p in mask_paths])
    raw_paths = _numbered(folder / sequence, _RAW_RE, "t*.tif raw")
    raw = np.stack([read_image(p) for p in raw_paths])
    return CTCData(raw, masks, _read_tracks(tra_dir / "man_track.txt"))


def validate_ctc(folder: str | Path, *, sequence: str = "01") -> dict[int, CTCTrack]:
    """Check a CTC sequence; raise on the first broken rule, else return its tracks.

    Rules: frame files are numbered 0..T-1, as many raw frames as masks, masks
    are 2-D 16-bit labels; every label in the masks is a track of
    ``man_track.txt`` and every track is in the masks; a track's first and last
    frames are ``B`` and ``E`` and it is present in every frame between
    (contiguity); a parent is 0 or an existing track that ends before the
    daughter begins.

    Raises
    ------
    LineageError
        Names the rule (``err.rule``), the track (``err.label``) and the file.
    """
    folder = Path(folder)
    tra_dir = folder / f"{sequence}_GT" / "TRA"
    txt = tra_dir / "man_track.txt"
    mask_paths = _numbered(tra_dir, _MASK_RE, "man_track*.tif mask")
    raw_paths = _numbered(folder / sequence, _RAW_RE, "t*.tif raw")
    tracks = _read_tracks(txt)
    if len(raw_paths) != len(mask_paths):
        raise LineageError(f"{len(raw_paths)} raw frames but {len(mask_paths)} masks",
                           path=folder / sequence, rule="raw frames")
    present = _mask_labels(mask_paths, raw_paths)
    _check_tracks(present, tracks, txt)
    return tracks


def _mask_labels(mask_paths: list[Path], raw_paths: list[Path]) -> FramePresence:
    """Read masks and raw frames one at a time; the frames of every mask label."""
    present = FramePresence()
    first: tuple[int, ...] | None = None
    for t, (mask_path, raw_path) in enumerate(zip(mask_paths, raw_paths, strict=True)):
        mask = read_image(mask_path)
        read_image(raw_path)  # readable
        first = first or mask.shape
        if mask.ndim != 2 or mask.shape != first or mask.dtype.kind not in "ui" or (
                mask.size and int(mask.max()) > UINT16_MAX):
            raise LineageError(f"masks must be 2-D 16-bit labels of one size, got {mask.shape} "
                               f"{mask.dtype}", path=mask_path, rule="16-bit labels")
        present.add(t, mask)
    return present


def _check_tracks(present: FramePresence, tracks: dict[int, CTCTrack], txt: Path) -> None:
    """The track table against the frames of every mask label (see :func:`validate_ctc`)."""
    for label in sorted(present):
        frames = present[label]
        track = tracks.get(label)
        if track is None:
            raise LineageError(f"label {label} (frames {frames[0]}–{frames[-1]}) is in the "
                               "masks but not in man_track.txt", path=txt, label=label,
                               rule="labels in track file")
        if (frames[0], frames[-1]) != (track.begin, track.end):
            raise LineageError(
                f"track {label} is listed from frame {track.begin} to {track.end} but is in "
                f"the masks from {frames[0]} to {frames[-1]}", path=txt, label=label,
                rule="first and last frame")
        if len(frames) != frames[-1] - frames[0] + 1:
            gaps = sorted(set(range(frames[0], frames[-1] + 1)) - set(frames))
            raise LineageError(f"track {label} is absent in frames {gaps[:10]}: a track must "
                               "be contiguous (split it, parent = the part before the gap)",
                               path=txt, label=label, rule="contiguity")
    for track in sorted(tracks.values()):
        if track.label not in present:
            raise LineageError(f"track {track.label} is in man_track.txt but in no mask",
                               path=txt, label=track.label, rule="tracks in masks")
        if track.parent:
            parent = tracks.get(track.parent)
            if parent is None:
                raise LineageError(f"track {track.label} names parent {track.parent}, which "
                                   "is not a track", path=txt, label=track.label,
                                   rule="parent exists")
            if parent.end >= track.begin:
                raise LineageError(
                    f"track {track.label} begins in frame {track.begin} but its parent "
                    f"{parent.label} ends in frame {parent.end}", path=txt, label=track.label,
                    rule="parent ends before daughter begins")


def export_ctc(wf: WorkingFolder, *, sequence: str = "01") -> Path:
    """Write and check ``wf.ctc`` from the stitched movie (:func:`cellcrowd.stitch.stitch_movies`).

    Streams: the label frames are read once for the track table, then raw and label
    frames are read and written one at a time, and the check reads the written files
    one at a time, so memory does not grow with the movie. Same files as
    :func:`write_ctc` on the whole movie.

    Raises
    ------
    InputError
        The stitched movie, its raw frames or its lineage are missing.
    LineageError
        The stored lineage does not fit the stitched labels.
    """
    if not sequence.isdigit():
        raise ValueError(f"sequence must be digits such as '01', got {sequence!r}")
    movie = StitchedFrames(wf, raw_needed_for="a CTC sequence")
    if movie.raw is None:  # StitchedFrames raised already; for the type checker
        raise InputError("no stitched raw frames", path=wf.stitched)
    present = FramePresence()
    for t, frame in enumerate(movie.labels):
        present.add(t, frame)
    tracks, relabel = _tracks(present, _int_keys(movie.lineage))
    _write_frames(wf.ctc, sequence, len(movie), zip(movie.raw, movie.labels, strict=True),
                  tracks, relabel)
    validate_ctc(wf.ctc, sequence=sequence)
    return wf.ctc
