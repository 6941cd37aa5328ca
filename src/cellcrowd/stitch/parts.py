"""Stitched parts on disk: written by the task that stitches them, read frame by frame.

Stitching the tiles of a part (:func:`~cellcrowd.stitch.tiles.match_tiles`) reads only
that part's ``movies/part{N}/x_XX_y_YY/annotated`` frames, so parts are stitched in
parallel; linking them and writing the movie's frames is sequential. A part's task
writes its stitched frames to a file (:func:`write_part`: a compressed ``.npz``
streamed one frame at a time, with the report as JSON text; no pickles; fixed
timestamps) and returns only a :class:`StitchedPart` naming it, so neither the
workers nor the main process ever hold a whole part: the linking loop reads it back
a frame at a time (:meth:`StitchedPart.frames`).

:func:`cellcrowd.stitch.stitch_movies` asks a :class:`PartStore` (when given one)
where parts are kept and which are unchanged since they were last stitched; it loads
those (:func:`load_part`) and stitches only the others. Without a store the files
live in a temporary folder for the run. A loaded part links and writes into the same
bytes as a freshly stitched one.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from ..errors import InputError
from ..files import write_npz
from ..geometry import Position
from ..npzfile import read_npy_frames
from .tiles import StitchConflict, StitchReport, TileStitch

__all__ = ["PartStore", "StitchedPart", "load_part", "write_part"]

#: What reading a part file can raise besides InputError.
_READ_ERRORS = (OSError, ValueError, KeyError, TypeError, IndexError, zipfile.BadZipFile)


@dataclass(frozen=True)
class StitchedPart:
    """One part's stitched tiles: its report, the tiles left out and the file of its
    frames (ids local to the part, ``1..report.cells``)."""

    part: int
    report: StitchReport
    missing: tuple[tuple[Position, str], ...]
    path: Path

    def frames(self) -> Iterator[NDArray[Any]]:
        """The stitched frames, read one at a time.

        Raises
        ------
        InputError
            The file is unreadable or truncated, or holds no integer label frames.
        """
        try:
            for frame in read_npy_frames(self.path, "labels"):
                if frame.dtype.kind not in "ui":
                    raise ValueError(f"labels of dtype {frame.dtype}")
                yield frame
        except _READ_ERRORS as exc:
            raise _not_a_part(self.path, exc) from exc


class PartStore(Protocol):
    """Where :func:`~cellcrowd.stitch.stitch_movies` keeps stitched parts.

    ``inputs`` are the files the part's stitching reads (some may not exist: those
    tiles are left out).
    """

    def path(self, part: int) -> Path:
        """The file a part is kept in (the part's task writes it)."""

    def fresh(self, part: int, inputs: Sequence[Path]) -> bool:
        """True when the part's file was written from exactly these inputs."""

    def saved(self, part: int, inputs: Sequence[Path]) -> None:
        """The part's file was just written from ``inputs``."""


def _pos(data: Sequence[int]) -> Position:
    return Position(int(data[0]), int(data[1]))


def _xy(pos: Position) -> list[int]:
    return [int(pos.x), int(pos.y)]


def _report_json(part: int, r: StitchReport, missing: Sequence[tuple[Position, str]]) -> str:
    return json.dumps({
        "part": int(part), "cells": int(r.cells), "matches": int(r.matches),
        "unmatched": int(r.unmatched),
        "conflicts": [[_xy(c.tile_a), int(c.label_a), _xy(c.tile_b), int(c.label_b),
                       float(c.iou), _xy(c.clash_tile), [int(v) for v in c.clash]]
                      for c in r.conflicts],
        "report_missing": [_xy(p) for p in r.missing],
        "missing": [[_xy(p), reason] for p, reason in missing]})


def _from_json(text: str, path: Path) -> StitchedPart:
    d: dict[str, Any] = json.loads(text)
    conflicts = tuple(StitchConflict(_pos(a), int(la), _pos(b), int(lb), float(iou),
                                     _pos(ct), (int(clash[0]), int(clash[1])))
                      for a, la, b, lb, iou, ct, clash in d["conflicts"])
    report = StitchReport(int(d["cells"]), int(d["matches"]), int(d["unmatched"]), conflicts,
                          tuple(_pos(p) for p in d["report_missing"]))
    return StitchedPart(int(d["part"]), report,
                        tuple((_pos(p), str(reason)) for p, reason in d["missing"]), path)


def _not_a_part(path: Path, exc: BaseException) -> InputError:
    return InputError(f"not a stitched part ({exc}): run the stitch stage again "
                      "(--force stitch)", path=path)


def write_part(path: Path, part: int, stitched: TileStitch,
               missing: Sequence[tuple[Position, str]]) -> StitchedPart:
    """Write the frames of ``stitched`` to ``path`` as they are made (a compressed
    ``.npz``, atomically; equal parts give equal bytes) and return the part naming it."""
    from ..export.npzstream import NpyStream

    text = _report_json(part, stitched.report, missing)
    write_npz(path, {"labels": NpyStream(stitched.shape, stitched.dtype, stitched.frames()),
                     "report": np.array(text)})
    return _from_json(text, path)


def load_part(path: Path) -> StitchedPart:
    """The part :func:`write_part` wrote to ``path`` (its frames are read when asked for).

    Raises
    ------
    InputError
        The file is missing or not a stitched part.
    """
    try:  # the file opened here: np.load leaks its own on a broken zip
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as data:
            if "labels" not in data.files:
                raise KeyError("no labels")
            return _from_json(str(data["report"]), path)
    except _READ_ERRORS as exc:
        raise _not_a_part(path, exc) from exc
