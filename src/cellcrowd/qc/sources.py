"""Reading what the stages recorded, for :mod:`.collect`: never raises on a bad file.

The manifest (``.cellcrowd/manifest.json``) says which stages ran and what they
wrote; the job (:class:`cellcrowd.job.Job`, given or loaded once from the logs)
gives the geometry; the consensus reports, the workers file
and the cleaning stats next to the labels give agreement, reliability and pixel
counts. Whatever is missing or unreadable comes back as None (or empty), with a
log line, so that the report shows "—" instead of failing.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import posixpath
import zipfile
from collections import Counter
from collections.abc import Mapping, Set
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, redact
from ..job import Job
from ..layout import WorkingFolder
from ..npzfile import read_npy_header
from ..pipeline.manifest import StageEntries
from .model import CsvTable, StageRunQc

__all__ = [
    "Manifest",
    "load_job",
    "npz_shapes",
    "number",
    "present",
    "read_csv",
    "read_json",
]

logger = logging.getLogger(__name__)


def load_job(wf: WorkingFolder, job: Job | None = None) -> tuple[Job | None, str | None]:
    """The job (``job`` when given, else loaded from the logs), and what is wrong with its
    logs: why there is no job, or why its tile grid is unknown (None when all is well)."""
    if job is None:
        if not wf.chopper_log.is_file() and not wf.montage_log.is_file():
            return None, "no JSON logs"
        try:
            job = Job.load(wf)
        except InputError as exc:
            return None, str(exc)
    else:
        job = Job.of(wf, job)
    return job, None if job.grid_error is None else str(job.grid_error)


def _read_entries(path: Path) -> StageEntries:
    """The manifest's stage entries (none when it is absent or unreadable: logged)."""
    if not path.is_file():
        return StageEntries()
    try:
        return StageEntries.parse(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        logger.warning("QC: cannot read %s (%s): its numbers are shown as —", path, exc)
        return StageEntries()


def read_json(path: Path) -> Any:
    """The JSON in ``path``, or None when it is absent or unreadable (logged)."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        logger.warning("QC: cannot read %s (%s): its numbers are shown as —", path, exc)
        return None


def number(value: object) -> float | None:
    """``value`` as a float when it is a real number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


class Manifest:
    """The stages' records in ``.cellcrowd/manifest.json`` (empty when there is none).

    Each stage's list of files is parsed when it is asked for (:class:`StageEntries`):
    the movies stage records tens of thousands of files. ``recorded``: the entries, when
    the caller holds them (the pipeline does), instead of reading the file again.
    """

    def __init__(self, wf: WorkingFolder, recorded: StageEntries | None = None) -> None:
        self.base = wf.base
        self._entries = recorded if recorded is not None else _read_entries(wf.manifest)
        # The qc stage's own entry says "running" while this report is being made.
        self.stages: dict[str, dict[str, Any]] = {
            name: head for name in sorted(self._entries.names())  # the file's order
            if name != "qc" and (head := self._entries.head(name)) is not None}
        self._outputs: dict[str, frozenset[Path] | None] = {}

    def done(self, stage: str) -> bool:
        """The stage finished (its outputs are recorded)."""
        return self.stages.get(stage, {}).get("state") == "done"

    def outputs(self, stage: str) -> frozenset[Path] | None:
        """The files a finished stage wrote: none when it failed or is running, None when
        the manifest does not know the stage (then the files themselves are looked at).
        Made once per stage."""
        if stage not in self._outputs:
            self._outputs[stage] = self._recorded(stage)
        return self._outputs[stage]

    def files_per_folder(self, stage: str) -> Counter[Path] | None:
        """How many of a stage's recorded files each folder holds (None: no record), for
        a stage of many files (no path is made per file: :meth:`outputs` does)."""
        if stage not in self.stages:
            return None
        recorded = (self._entries.field(stage, "outputs") or {}) if self.done(stage) else {}
        if not isinstance(recorded, Mapping):
            return None
        folders = Counter(posixpath.dirname(rel) for rel in recorded)
        return Counter({self._abs(folder): n for folder, n in folders.items()})

    def _recorded(self, stage: str) -> frozenset[Path] | None:
        if stage not in self.stages:
            return None
        if not self.done(stage):
            return frozenset()
        recorded = self._entries.field(stage, "outputs")
        if recorded is None:
            recorded = {}
        return (frozenset(self._abs(rel) for rel in recorded) if isinstance(recorded, Mapping)
                else None)

    def counts(self, stage: str) -> dict[str, Any]:
        """The counts a stage recorded ({} when none)."""
        counts = self.stages.get(stage, {}).get("counts", {})
        return dict(counts) if isinstance(counts, Mapping) else {}

    def skipped(self, stage: str) -> list[tuple[str, str]]:
        """(unit, reason) of every unit a stage left out."""
        rows = self.stages.get(stage, {}).get("skipped", [])
        return [(str(d.get("unit", "")), str(d.get("reason", "")))
                for d in rows if isinstance(d, Mapping)] if isinstance(rows, list) else []

    def runs(self) -> tuple[StageRunQc, ...]:
        """Every recorded stage: state, counts (as text), skipped units, error."""
        return tuple(
            StageRunQc(name, str(entry.get("state", "?")),
                       tuple((str(k), str(v)) for k, v in self.counts(name).items()),
                       len(self.skipped(name)),
                       str(entry["error"]) if entry.get("error") else None)
            for name, entry in self.stages.items())

    def _abs(self, rel: str) -> Path:
        path = Path(rel)
        return path if path.is_absolute() else self.base / path


def present(path: Path, recorded: Set[Path] | None) -> Path | None:
    """``path`` when its stage recorded it (or, without a record, when it exists)."""
    if recorded is not None:
        return path if path in recorded else None
    return path if path.is_file() else None


def read_csv(path: Path) -> CsvTable | None:
    """A CSV's header and rows (values redacted); None when there is no such file."""
    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
        rows = [tuple(redact(cell) for cell in row) for row in csv.reader(io.StringIO(text))
                if row]
    except (OSError, csv.Error) as exc:
        return CsvTable(path, (), (), f"cannot read {path.name}: {exc}")
    if not rows:
        return CsvTable(path, (), ())
    return CsvTable(path, rows[0], tuple(rows[1:]))


def npz_shapes(path: Path) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shapes of ``X`` and ``y`` in an ``.npz``, read from the array headers (no full load)."""
    with np.load(path, allow_pickle=False) as data:
        missing = [k for k in ("X", "y") if k not in data.files]
    if missing:
        raise InputError(f"no {' or '.join(missing)} array in this .npz", path=path)
    shapes = []
    with zipfile.ZipFile(path) as archive:
        for key in ("X", "y"):
            with archive.open(f"{key}.npy") as fh:
                shapes.append(read_npy_header(fh)[0])
    return shapes[0], shapes[1]
