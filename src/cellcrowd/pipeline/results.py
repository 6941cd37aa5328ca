"""What a run did and where a folder stands.

The records :func:`cellcrowd.pipeline.run` and :func:`cellcrowd.pipeline.status` return,
and the :class:`Progress` a run reports to.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from ..layout import STATE_FOLDER
from .stage import SkippedUnit

__all__ = ["Progress", "RunStatus", "RunSummary", "StageRun", "StageState", "StageStatus",
           "StatusReport"]


RunStatus = Literal["ran", "up-to-date", "disabled", "not-selected"]


@dataclass(frozen=True)
class StageRun:
    """What happened to one stage in a :func:`cellcrowd.pipeline.run`.

    ``units`` (stages that keep per-unit records, when they ran): ``{"redone": n,
    "reused": m}``, the units of work it redid and those it found fresh from the last
    run (see :mod:`cellcrowd.pipeline.units`); empty otherwise.
    """

    name: str
    status: RunStatus
    reason: str
    counts: Mapping[str, int] = field(default_factory=dict)
    outputs: tuple[Path, ...] = ()
    skipped: tuple[SkippedUnit, ...] = ()
    seconds: float = 0.0
    units: Mapping[str, int] = field(default_factory=dict)

    @property
    def location(self) -> Path | None:
        """The output file, or the deepest folder holding all outputs."""
        return _common_location(self.outputs)


@dataclass(frozen=True)
class RunSummary:
    """The outcome of :func:`cellcrowd.pipeline.run`, stage by stage."""

    base: Path
    stages: tuple[StageRun, ...]

    @property
    def ran(self) -> list[str]:
        """Names of the stages that did work."""
        return [s.name for s in self.stages if s.status == "ran"]

    @property
    def skipped_units(self) -> list[SkippedUnit]:
        """Every unit a stage left out (from this run or the recorded earlier one)."""
        return [u for s in self.stages for u in s.skipped]

    @property
    def counts(self) -> dict[str, int]:
        """All stages' counts, keyed ``stage.count``."""
        return {f"{s.name}.{k}": v for s in self.stages for k, v in s.counts.items()}

    def stage(self, name: str) -> StageRun:
        """The record of one stage."""
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)


StageState = Literal["done", "stale", "pending", "waiting", "running", "failed", "interrupted",
                     "disabled"]


@dataclass(frozen=True)
class StageStatus:
    """Where one stage stands: ``done``, ``stale`` (will be redone), ``pending`` (never
    run), ``waiting`` (an earlier stage will run first), ``failed``, ``interrupted`` or
    ``disabled``, with the reason."""

    name: str
    state: StageState
    reason: str
    counts: Mapping[str, int] = field(default_factory=dict)
    skipped: tuple[SkippedUnit, ...] = ()
    outputs: int = 0


@dataclass(frozen=True)
class StatusReport:
    """The state of every stage of a working folder (see :func:`cellcrowd.pipeline.status`)."""

    base: Path
    stages: tuple[StageStatus, ...]

    @property
    def done(self) -> list[str]:
        return [s.name for s in self.stages if s.state == "done"]

    @property
    def left(self) -> list[str]:
        """Stages a run would do (not done and not disabled)."""
        return [s.name for s in self.stages if s.state not in ("done", "disabled")]

    @property
    def skipped_units(self) -> list[SkippedUnit]:
        return [u for s in self.stages for u in s.skipped]

    def stage(self, name: str) -> StageStatus:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)


class Progress(Protocol):
    """Receives progress of a run (the CLI draws bars with it)."""

    def start(self, stage: str, total: int | None) -> None:
        """``stage`` starts working on ``total`` items (None: unknown)."""

    def advance(self, stage: str, count: int) -> None:
        """``count`` more items of ``stage`` are done."""

    def finish(self, run: StageRun) -> None:
        """``stage`` is done (ran, up to date, disabled or not selected)."""


def _common_location(paths: Sequence[Path]) -> Path | None:
    # cellcrowd's own files (kept stitched parts in .cellcrowd/) do not move the location
    paths = [p for p in paths if STATE_FOLDER not in p.parts] or list(paths)
    if not paths:
        return None
    if len(paths) == 1:
        return paths[0]
    return Path(os.path.commonpath([str(p) for p in paths]))
