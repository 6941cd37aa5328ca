"""Stitched parts kept between runs: a part's stitched tiles depend only on its own files.

Stitching the tiles of a part (:func:`~cellcrowd.stitch.tiles.stitch_tiles`) reads only
that part's ``movies/part{N}/x_XX_y_YY/annotated`` frames; linking the parts and
writing the frames is sequential. :func:`cellcrowd.stitch.stitch_movies` therefore
asks a :class:`PartStore` (when given one) which parts are unchanged since they were
last stitched, loads those, stitches only the others and hands them to the store.

:class:`StitchedPart` is one stitched part: its labels before linking (ids local to
the part), its :class:`~cellcrowd.stitch.tiles.StitchReport` and the tiles left out.
:func:`save_part` / :func:`load_part` keep one in a compressed ``.npz`` (the labels,
and the report as JSON text; no pickles; fixed timestamps), exactly: a loaded part
links and writes into the same bytes as a freshly stitched one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from ..errors import InputError
from ..files import write_npz
from ..geometry import Position
from .tiles import StitchConflict, StitchReport

__all__ = ["PartStore", "StitchedPart", "load_part", "save_part"]


@dataclass(frozen=True)
class StitchedPart:
    """One part's stitched tiles: labels (frames, height, width), report, tiles left out."""

    part: int
    labels: NDArray[np.int32] | NDArray[np.uint16]  # uint16 when the ids fit
    report: StitchReport
    missing: tuple[tuple[Position, str], ...]


class PartStore(Protocol):
    """Where :func:`~cellcrowd.stitch.stitch_movies` finds and keeps stitched parts.

    ``inputs`` are the files the part's stitching reads (some may not exist: those
    tiles are left out).
    """

    def fresh(self, part: int, inputs: Sequence[Path]) -> bool:
        """True when the part was kept from exactly these inputs."""

    def load(self, part: int) -> StitchedPart:
        """The part kept earlier (only asked for after :meth:`fresh` said True)."""

    def save(self, stitched: StitchedPart, inputs: Sequence[Path]) -> None:
        """Keep a part just stitched from ``inputs``."""


def _pos(data: Sequence[int]) -> Position:
    return Position(int(data[0]), int(data[1]))


def _xy(pos: Position) -> list[int]:
    return [int(pos.x), int(pos.y)]


def _report_json(stitched: StitchedPart) -> str:
    r = stitched.report
    return json.dumps({
        "part": int(stitched.part), "cells": int(r.cells), "matches": int(r.matches),
        "unmatched": int(r.unmatched),
        "conflicts": [[_xy(c.tile_a), int(c.label_a), _xy(c.tile_b), int(c.label_b),
                       float(c.iou), _xy(c.clash_tile), [int(v) for v in c.clash]]
                      for c in r.conflicts],
        "report_missing": [_xy(p) for p in r.missing],
        "missing": [[_xy(p), reason] for p, reason in stitched.missing]})


def _from_json(text: str, labels: NDArray[np.int32]) -> StitchedPart:
    d: dict[str, Any] = json.loads(text)
    conflicts = tuple(StitchConflict(_pos(a), int(la), _pos(b), int(lb), float(iou),
                                     _pos(ct), (int(clash[0]), int(clash[1])))
                      for a, la, b, lb, iou, ct, clash in d["conflicts"])
    report = StitchReport(int(d["cells"]), int(d["matches"]), int(d["unmatched"]), conflicts,
                          tuple(_pos(p) for p in d["report_missing"]))
    return StitchedPart(int(d["part"]), labels, report,
                        tuple((_pos(p), str(reason)) for p, reason in d["missing"]))


def save_part(stitched: StitchedPart, path: Path) -> Path:
    """Write ``stitched`` to ``path`` (a compressed ``.npz``, atomically; equal parts give
    equal bytes)."""
    return write_npz(path, {"labels": stitched.labels.astype(np.int32, copy=False),
                            "report": np.array(_report_json(stitched))})


def load_part(path: Path) -> StitchedPart:
    """Read a part :func:`save_part` wrote.

    Raises
    ------
    InputError
        The file is missing or not a stitched part.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            return _from_json(str(data["report"]), np.asarray(data["labels"], np.int32))
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise InputError(f"not a stitched part ({exc}): run the stitch stage again "
                         "(--force stitch)", path=path) from exc
