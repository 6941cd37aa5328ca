"""The numbers of the QC report, as plain frozen records (filled by :mod:`.collect`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..files import natural_key
from ..layout import WorkingFolder

__all__ = [
    "PROBLEM_WEIGHTS",
    "CsvTable",
    "ExportLink",
    "MontageQc",
    "OverlayFile",
    "PartQc",
    "Problem",
    "QcSummary",
    "StageQc",
    "StageRunQc",
    "StitchedQc",
    "WorkerQc",
]

#: How much each kind of problem needs a person's eye (units are sorted by the sum).
PROBLEM_WEIGHTS: dict[str, float] = {
    "failed": 5.0, "broken": 5.0, "unusable": 4.0, "empty": 3.0, "low agreement": 2.0,
    "cell count": 2.0, "not harvested": 1.0,
}


@dataclass(frozen=True)
class StageQc:
    """One stage: ``status`` is ``"done"``, ``"partial"`` or ``"missing"``."""

    name: str
    status: str
    detail: str


@dataclass(frozen=True)
class StageRunQc:
    """A pipeline stage as the manifest records it: state, counts, units it skipped."""

    name: str
    state: str
    counts: tuple[tuple[str, str], ...]
    skipped: int
    error: str | None = None


@dataclass(frozen=True)
class Problem:
    """Why a unit needs a look: ``kind`` (a key of :data:`PROBLEM_WEIGHTS`), what, what to do."""

    kind: str
    detail: str
    advice: str


@dataclass(frozen=True)
class MontageQc:
    """One montage (one unit of the job): its files, numbers and problems.

    Numbers are None when the file or field they come from is missing.
    ``agreement`` is the unit's agreement of annotators with the consensus (0..1),
    ``low_support_cells`` the consensus cells kept on the word of too few annotators.
    """

    name: str
    part: int
    position: str
    raw_path: Path | None = None
    annotation_path: Path | None = None
    labels_path: Path | None = None
    cells: int | None = None
    min_cells_per_frame: int | None = None
    max_cells_per_frame: int | None = None
    pixels_removed: int | None = None
    pixels_filled: int | None = None
    error: str | None = None
    montage: int = 0
    frame_counts: tuple[int, ...] = ()
    judgments: int | None = None
    agreement: float | None = None
    low_support_cells: int | None = None
    problems: tuple[Problem, ...] = ()

    @property
    def raw(self) -> bool:
        """The raw montage (for upload) exists."""
        return self.raw_path is not None

    @property
    def annotation(self) -> bool:
        """A downloaded annotation exists."""
        return self.annotation_path is not None

    @property
    def labels(self) -> bool:
        """Cleaned labels exist."""
        return self.labels_path is not None

    @property
    def attention(self) -> float:
        """How much the unit needs a person's eye (0: nothing found)."""
        score = sum(PROBLEM_WEIGHTS.get(p.kind, 1.0) for p in self.problems)
        if self.agreement is not None:
            score += 1.0 - self.agreement
        return round(score, 6)


@dataclass(frozen=True)
class WorkerQc:
    """One annotator: estimated reliability (None when no workers file), units, agreement."""

    worker_id: str
    units: int
    agreement: float | None = None
    reliability: float | None = None


@dataclass(frozen=True)
class ExportLink:
    """An output to open from the page, with an optional code snippet to load it."""

    stage: str
    name: str
    path: Path
    snippet: str | None = None


@dataclass(frozen=True)
class PartQc:
    """One part of ``movies/``: positions present and the part's ``.npz``."""

    part: int
    expected_positions: tuple[str, ...]
    annotated_positions: tuple[str, ...]
    raw_positions: tuple[str, ...]
    frames: tuple[int, ...]
    npz: Path | None = None
    x_shape: tuple[int, ...] | None = None
    y_shape: tuple[int, ...] | None = None
    npz_error: str | None = None

    @property
    def missing_positions(self) -> tuple[str, ...]:
        """Expected positions without annotated frames."""
        have = set(self.annotated_positions)
        return tuple(p for p in self.expected_positions if p not in have)


@dataclass(frozen=True)
class CsvTable:
    """Rows of a CSV the pipeline wrote (broken links, download failures)."""

    path: Path
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    error: str | None = None

    def montages(self) -> list[str]:
        """The distinct values of the ``montage`` column (the first column without one)."""
        if "montage" not in self.columns:
            return [r[0] for r in self.rows if r]
        index = self.columns.index("montage")
        return sorted({r[index] for r in self.rows if index < len(r)}, key=natural_key)


@dataclass(frozen=True)
class StitchedQc:
    """The stitched movie: cells per frame, distinct cells, divisions (if a lineage exists)."""

    cells_per_frame: tuple[int, ...]
    cells: int
    divisions: int | None = None
    error: str | None = None

    @property
    def frames(self) -> int:
        return len(self.cells_per_frame)


@dataclass(frozen=True)
class QcSummary:
    """Everything :func:`~cellcrowd.qc.collect_qc` found; :meth:`lines` gives a text version.

    ``montages`` are in job order; :meth:`by_attention` sorts them for a person.
    """

    wf: WorkingFolder
    job_id: int | None
    stages: tuple[StageQc, ...]
    montages: tuple[MontageQc, ...]
    parts: tuple[PartQc, ...]
    broken_links: CsvTable | None
    failures: CsvTable | None
    stitched: StitchedQc | None
    overlays: tuple[str, ...]
    run: tuple[tuple[str, str], ...]
    missing: tuple[str, ...]
    grid: str | None = None
    workers: tuple[WorkerQc, ...] = ()
    exports: tuple[ExportLink, ...] = field(default=())
    montage_len: int | None = None
    runs: tuple[StageRunQc, ...] = ()

    def totals(self) -> dict[str, int]:
        """Flat counts (files present, cells, failures) for printing or comparing."""
        return {
            "montages": len(self.montages),
            "raw_montages": sum(m.raw for m in self.montages),
            "annotations": sum(m.annotation for m in self.montages),
            "labels": sum(m.labels for m in self.montages),
            "cells": sum(m.cells or 0 for m in self.montages),
            "parts": len(self.parts),
            "npz_files": sum(p.npz is not None for p in self.parts),
            "broken_links": len(self.broken_links.montages()) if self.broken_links else 0,
            "download_failures": len(self.failures.rows) if self.failures else 0,
            "stitched_frames": self.stitched.frames if self.stitched else 0,
            "units_to_check": sum(bool(m.problems) for m in self.montages),
        }

    def by_attention(self) -> list[MontageQc]:
        """Montages, those that most need a person's eye first (then in job order)."""
        order = {m.name: i for i, m in enumerate(self.montages)}
        return sorted(self.montages, key=lambda m: (-m.attention, order[m.name]))

    def stage(self, name: str) -> StageQc:
        """The stage called ``name`` (KeyError if there is none)."""
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)

    def lines(self) -> list[str]:
        """A few plain-text lines (stages, then what is missing) for a terminal."""
        out = [f"{s.name}: {s.status} ({s.detail})" for s in self.stages]
        out += [f"missing: {m}" for m in self.missing]
        return out


@dataclass(frozen=True)
class OverlayFile:
    """The images of one montage as written: full overlay and thumbnail (None: not written).

    ``size`` and ``thumb_size`` are (width, height) in pixels; ``thumbnail`` is
    ``path`` itself when the overlay is small; ``notes`` say what could not be shown
    and why.
    """

    montage: str
    path: Path | None = None
    size: tuple[int, int] | None = None
    thumbnail: Path | None = None
    thumb_size: tuple[int, int] | None = None
    notes: tuple[str, ...] = ()
