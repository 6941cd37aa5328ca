"""Every cell of the stitched movie, frame by frame, with the crowd's evidence for it.

One pass over the stitched label frames (one frame in memory at a time) gives,
per cell and frame, its area and centroid, and the montages its pixels came from
(the annotated tiles of that frame's part that overlap it). The crowd's evidence
comes from each montage's consensus report ``{id}_labels/{montage}_consensus.json``
when it exists: per-cell ``support`` and ``agreement`` when the report lists its
cells (a ``cells`` list of objects with ``label``/``id``, or an object keyed by
label), else the montage's ``mean_agreement`` as the agreement; a value no report
gives is ``None``.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from ..errors import InputError
from ..executor import Executor, run_tasks
from ..files import list_images, read_image
from ..job import Job
from ..layout import MontageKey, WorkingFolder, montage_name
from ..match import overlap
from ..stitch import Lineage, read_lineage

__all__ = [
    "CellNodes", "CellTable", "cell_table", "cell_values", "narrow", "stitched_frame_paths",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CellNodes:
    """Every cell in every frame, as columns: label, frame, centroid (pixels), area (pixels).

    One row per cell and frame, frame by frame, labels ascending inside a frame. Columns,
    not objects, and the integer columns in the smallest unsigned type that holds them
    (:func:`narrow`): 22 bytes a row on a typical movie (40 with int64 columns), so a long
    movie's table stays small.
    """

    label: NDArray[np.integer[Any]]
    t: NDArray[np.integer[Any]]
    y: NDArray[np.float64]
    x: NDArray[np.float64]
    area: NDArray[np.integer[Any]]

    def __len__(self) -> int:
        return int(self.label.size)

    @classmethod
    def of(cls, rows: Sequence[tuple[int, int, float, float, int]]) -> CellNodes:
        """Columns from ``(label, t, y, x, area)`` rows."""
        label, t, y, x, area = list(zip(*rows, strict=True)) or [()] * 5
        return cls(np.asarray(label, np.int64), np.asarray(t, np.int64),
                   np.asarray(y, np.float64), np.asarray(x, np.float64),
                   np.asarray(area, np.int64))

    def take(self, rows: NDArray[np.intp]) -> CellNodes:
        """The rows at ``rows``, in that order."""
        return CellNodes(*(getattr(self, f.name)[rows] for f in fields(self)))

    @classmethod
    def concat(cls, parts: list[CellNodes]) -> CellNodes:
        """The rows of ``parts``, one after another; empties ``parts`` as it goes (a column
        at a time: the rows are held about once, not twice)."""
        if not parts:
            return cls.of([])
        columns = [[getattr(p, f.name) for p in parts] for f in fields(cls)]
        parts.clear()
        joined = []
        for column in columns:
            joined.append(np.concatenate(column))
            column.clear()
        return cls(*joined)


@dataclass
class CellTable:
    """The cells of the stitched movie: nodes (empty unless asked for), lineage and
    per-label provenance."""

    frames: int
    shape: tuple[int, int]
    nodes: CellNodes
    lineage: Lineage
    montages: dict[int, list[str]] = field(default_factory=dict)
    support: dict[int, float | None] = field(default_factory=dict)
    agreement: dict[int, float | None] = field(default_factory=dict)
    #: The frames of each part (by part number), when the logs are readable.
    part_frames: dict[int, range] = field(default_factory=dict)

    def properties(self, label: int) -> dict[str, Any]:
        """The NGFF label properties of ``label`` (a value no report gives is left out)."""
        entry = self.lineage[label]
        props: dict[str, Any] = {
            "label-value": label, "track_id": label,
            "parent": int(entry["parent"]) if entry.get("parent") else 0,
            "first_frame": int(min(entry["frames"])), "last_frame": int(max(entry["frames"])),
            "montages": self.montages.get(label, []),
        }
        for key, values in (("support", self.support), ("agreement", self.agreement)):
            if values.get(label) is not None:
                props[key] = values[label]
        return props


def stitched_frame_paths(wf: WorkingFolder, kind: str) -> list[Path]:
    """The stitched ``annotated`` or ``raw`` frames in order ([] when there are none)."""
    folder = wf.stitched_frame(kind, 0).parent
    return list_images(folder) if folder.is_dir() else []


def narrow(values: NDArray[np.integer[Any]]) -> NDArray[np.integer[Any]]:
    """Non-negative integers in the smallest unsigned type that holds the largest, up to
    uint32 (beyond: int64, which compares with other integers exactly).

    >>> [narrow(np.array(v, np.int64)).dtype.name for v in ([3, 70000], [], [2**40])]
    ['uint32', 'uint8', 'int64']
    """
    top = int(values.max()) if values.size else 0
    dtype = np.min_scalar_type(top) if top < 2**32 else np.dtype(np.int64)
    return values.astype(dtype, copy=False)


def _frame_stats(frame: NDArray[Any], t: int) -> CellNodes:
    flat = frame.ravel().astype(np.int64)
    ys, xs = np.indices(frame.shape)
    area = np.bincount(flat)
    sy = np.bincount(flat, weights=ys.ravel())
    sx = np.bincount(flat, weights=xs.ravel())
    labels = np.flatnonzero(area[1:]) + 1
    return CellNodes(narrow(labels), np.full(labels.size, t, np.min_scalar_type(t)),
                     sy[labels] / area[labels], sx[labels] / area[labels],
                     narrow(area[labels]))


def _read_report(wf: WorkingFolder, montage: str) -> dict[str, Any] | None:
    path = wf.consensus_report_path(montage)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        logger.warning("%s is unreadable (%s): its cells get no support/agreement", path, exc)
        return None
    return data if isinstance(data, dict) else None


def cell_values(report: dict[str, Any] | None, cell: int) -> tuple[float | None, float | None]:
    """Per-cell (support, agreement) of a montage's consensus report, tolerant of its form."""
    if report is None:
        return None, None
    cells = report.get("cells")
    entry: Any = None
    if isinstance(cells, dict):
        entry = cells.get(str(cell))
    elif isinstance(cells, list):
        entry = next((c for c in cells if isinstance(c, dict)
                      and c.get("label", c.get("id")) == cell), None)
    support = entry.get("support") if isinstance(entry, dict) else None
    agreement = entry.get("agreement") if isinstance(entry, dict) else None
    if agreement is None:
        agreement = report.get("mean_agreement")
    return (float(support) if isinstance(support, int | float) else None,
            float(agreement) if isinstance(agreement, int | float) else None)


@dataclass(frozen=True)
class _Tiles:
    """Where the montage tiles of each stitched frame are (sent with each frame's task)."""

    wf: WorkingFolder
    movie: Job
    starts: tuple[int, ...]

    def pairs(self, frame: NDArray[Any], t: int) -> list[tuple[int, str, int]]:
        """(stitched cell, montage, montage cell) of every overlap in frame ``t``."""
        m = int(np.searchsorted(self.starts, t, side="right")) - 1
        if m >= self.movie.count:
            return []
        grid = self.movie.grid
        out: list[tuple[int, str, int]] = []
        for pos in grid.positions:
            key = MontageKey(self.wf.identifier, pos.x, pos.y, m)
            path = self.wf.annotated_frame(key.part, pos, t - self.starts[m])
            if not path.is_file():
                continue
            (fy, fx), (ty, tx) = grid.frame_window(pos)
            tile = read_image(path)[ty, tx].astype(np.int64)
            window = frame[fy, fx]
            both = (tile > 0) & (window > 0)
            name = montage_name(key, self.wf.padding)
            found = overlap(window[both], tile[both])  # each (stitched, montage) cell pair
            out += [(lab, name, cell)
                    for lab, cell in zip(found.a.tolist(), found.b.tolist(), strict=True)]
        return out


class _Provenance:
    """Which montage cells overlap each stitched cell."""

    def __init__(self, wf: WorkingFolder, job: Job | None = None) -> None:
        from ..movies import read_movie_geometry

        try:
            self.movie: Any = read_movie_geometry(wf, job=job)
        except (InputError, OSError) as exc:
            logger.warning("no montage provenance (%s)", exc)
            self.movie = None
        self.wf = self.movie.wf if self.movie is not None else wf
        self.sources: dict[int, set[tuple[str, int]]] = defaultdict(set)
        self.reports: dict[str, dict[str, Any] | None] = {}
        starts: list[int] = [0]
        if self.movie is not None:
            for m in range(self.movie.count):
                starts.append(starts[-1] + self.movie.frames_in(m))
        self.starts = starts
        self.tiles = (_Tiles(self.wf, self.movie, tuple(starts)) if self.movie is not None
                      else None)

    def add(self, pairs: list[tuple[int, str, int]]) -> None:
        for lab, name, cell in pairs:
            self.sources[lab].add((name, cell))

    def finish(self, table: CellTable) -> None:
        if self.movie is not None:
            for m in range(self.movie.count):
                part = MontageKey(self.wf.identifier, 0, 0, m).part
                table.part_frames[part] = range(self.starts[m], self.starts[m + 1])
        for label, pairs in self.sources.items():
            table.montages[label] = sorted({name for name, _ in pairs})
            values = []
            for name, cell in pairs:
                if name not in self.reports:
                    self.reports[name] = _read_report(self.wf, name)
                values.append(cell_values(self.reports[name], cell))
            for i, target in enumerate((table.support, table.agreement)):
                got = [x for v in values if (x := v[i]) is not None]
                target[label] = round(float(np.mean(got)), 6) if got else None


class _Frame(NamedTuple):
    shape: tuple[int, ...]
    nodes: CellNodes | None
    pairs: list[tuple[int, str, int]]


def _read_frame(task: tuple[Path, int, tuple[int, int] | None, bool, _Tiles | None]
                ) -> _Frame:
    """Stitched frame ``t``: its shape, its cells (``nodes``) and the montage cells they
    overlap (a task; nothing but the shape when it is not ``expected``)."""
    path, t, expected, nodes, tiles = task
    frame = read_image(path)
    if expected is not None and frame.shape != expected:
        return _Frame(frame.shape, None, [])
    return _Frame(frame.shape, _frame_stats(frame, t) if nodes else None,
                  tiles.pairs(frame, t) if tiles is not None else [])


def cell_table(wf: WorkingFolder, *, job: Job | None = None, nodes: bool = True,
               frames: bool = True, executor: Executor | None = None) -> CellTable:
    """Read the stitched movie once, frame by frame, into a :class:`CellTable`
    (``job``: the job's geometry when the caller has it, else read from the logs;
    ``executor``: reads the frames after the first, one task each, default here).

    With ``nodes=False`` the table's :attr:`~CellTable.nodes` stay empty: measuring every
    cell in every frame takes time and about 22 bytes a cell-frame, which only the GEFF needs.
    With ``frames=False`` the lineage is read without each cell's frame list (an entry
    per cell-frame too), which only :meth:`CellTable.properties` needs.

    Raises
    ------
    InputError
        There are no stitched frames or no lineage (run the stitch stage), or a
        frame's size differs from the first.
    """
    paths = stitched_frame_paths(wf, "annotated")
    if not paths:
        raise InputError("no stitched frames: run the stitch stage first",
                         path=wf.stitched_frame("annotated", 0).parent)
    lineage = read_lineage(wf.stitched_lineage, frames=frames)
    provenance = _Provenance(wf, job)
    stats: list[CellNodes] = []
    first = _read_frame((paths[0], 0, None, nodes, provenance.tiles))
    shape = (int(first.shape[0]), int(first.shape[1]))
    rest = [(path, t, shape, nodes, provenance.tiles) for t, path in enumerate(paths) if t]
    for t, read in enumerate(itertools.chain([first], run_tasks(_read_frame, rest,
                                                                  executor=executor))):
        if t and read.shape != shape:
            raise InputError(f"frame {t} is {read.shape}, the first frame {shape}: run the "
                             "stitch stage again", path=paths[t])
        if read.nodes is not None:
            stats.append(read.nodes)
        provenance.add(read.pairs)
    table = CellTable(len(paths), shape, CellNodes.concat(stats), lineage)
    provenance.finish(table)
    return table
