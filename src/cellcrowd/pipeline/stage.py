"""What the engine knows of a stage: a record of functions, and the context it hands them.

A stage is data (:class:`Stage`): its name, the stages whose outputs it reads, the
settings and files its result depends on, and the function that does its step. The
engine (:mod:`cellcrowd.pipeline.engine`) runs a :class:`StageTable` of them; the
harvest's table is :data:`cellcrowd.stages.HARVEST`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..config import Config
from ..errors import CellcrowdError, LogError
from ..executor import Executor
from ..job import Job
from ..layout import WorkingFolder

if TYPE_CHECKING:
    from .manifest import StageEntries

__all__ = ["Context", "OpenFolder", "SkippedUnit", "Stage", "StageOutput", "StageTable", "Units"]


@dataclass(frozen=True)
class SkippedUnit:
    """A unit (montage, judgment, position) a stage left out, and why."""

    stage: str
    unit: str
    reason: str


@dataclass
class StageOutput:
    """What a stage body produced: every file it wrote, counts, skipped units.

    ``retry`` (a reason) marks a stage to be run again next time even though it
    finished, e.g. when some downloads failed and may succeed later.
    """

    outputs: list[Path]
    counts: dict[str, int] = field(default_factory=dict)
    skipped: list[SkippedUnit] = field(default_factory=list)
    retry: str | None = None


def _no_counts(name: str) -> Mapping[str, int]:
    return {}


class Units(Protocol):
    """Per-unit records of a stage (``ctx.units``; see :mod:`cellcrowd.pipeline.units`)."""

    def file_digest(self, paths: Sequence[Path]) -> str:
        """A digest of the files' names, sizes and SHA-256 (for a unit's key)."""

    def recorded(self, unit: str) -> bool:
        """True when the last run recorded ``unit`` (only then can it be fresh)."""

    def fresh(self, unit: str, key: Any, outputs: Sequence[Path] | None = None) -> bool:
        """True when the last run recorded ``unit`` with ``key`` and its outputs are intact."""

    def data(self, unit: str) -> Any:
        """The data recorded with ``unit`` (None when none)."""

    def done(self, unit: str, key: Any, outputs: Sequence[Path], data: Any = None) -> None:
        """Record ``unit`` as made from ``key`` into ``outputs`` (committed with the stage)."""


class NoUnits:
    """:class:`Units` that finds nothing fresh and records nothing (a context without a run)."""

    def file_digest(self, paths: Sequence[Path]) -> str:
        return ""

    def recorded(self, unit: str) -> bool:
        return False

    def fresh(self, unit: str, key: Any, outputs: Sequence[Path] | None = None) -> bool:
        return False

    def data(self, unit: str) -> Any:
        return None

    def done(self, unit: str, key: Any, outputs: Sequence[Path], data: Any = None) -> None:
        return None


@dataclass(frozen=True)
class OpenFolder:
    """A run's working folder and its job (the geometry from the logs), read once.

    ``job`` is None when the logs are missing or cannot be read; ``error`` then says
    why, and :meth:`require_job` raises it for the stages that need the job.
    """

    wf: WorkingFolder
    job: Job | None = None
    error: CellcrowdError | None = None

    def require_job(self) -> Job:
        """The job, or the error that kept it from loading."""
        if self.job is not None:
            return self.job
        raise (self.error or LogError("the job's logs were not read")).with_traceback(None)


@dataclass
class Context:
    """What a stage's body gets from the engine.

    Attributes
    ----------
    config : Config
        The run's configuration.
    wf : WorkingFolder
        The working folder (from :attr:`StageTable.folder`).
    get_executor : callable
        Makes (once) and returns the executor; use :attr:`executor`.
    api_key : callable
        Returns the service's API key (asked for on first call only).
    set_total : callable
        Says how many items the stage will do (None: unknown).
    item_done : callable
        Says that ``n`` more items are done.
    counts_of : callable
        The counts an earlier stage recorded in the manifest ({} if none).
    folder : OpenFolder, optional
        The folder and job the run opened (:attr:`job`).
    units : Units
        The stage's per-unit records: which units of work are still fresh from the
        last run (:mod:`cellcrowd.pipeline.units`); nothing is fresh by default.
    recorded : StageEntries, optional
        The manifest's stage entries as the run holds them (to read, not to change):
        a stage that reports on the others (qc) need not read the manifest again.
    """

    config: Config
    wf: WorkingFolder
    get_executor: Callable[[], Executor]
    api_key: Callable[[], str]
    set_total: Callable[[int | None], None]
    item_done: Callable[[int], None]
    counts_of: Callable[[str], Mapping[str, int]] = _no_counts
    folder: OpenFolder | None = None
    units: Units = field(default_factory=NoUnits)
    recorded: StageEntries | None = None

    @property
    def job(self) -> Job:
        """The job's geometry, read from the logs once per run.

        Raises
        ------
        CellcrowdError
            The logs are missing or inconsistent (the message names the file).
        """
        return (self.folder or OpenFolder(self.wf)).require_job()

    @property
    def known_job(self) -> Job | None:
        """The job when its logs could be read, else None (for stages that work without)."""
        return self.folder.job if self.folder is not None else None

    @property
    def executor(self) -> Executor:
        """The executor (made on first use, so stages without tasks never start one)."""
        return self.get_executor()


def no_settings(config: Config) -> dict[str, Any]:
    """The settings of a stage that no configuration value changes."""
    return {}


def no_files(wf: WorkingFolder, config: Config) -> list[Path]:
    """The input files of a stage that reads only earlier stages' outputs."""
    return []


def always(config: Config) -> bool:
    """The ``enabled`` of a stage that cannot be turned off."""
    return True


@dataclass(frozen=True)
class Stage:
    """One step of a run, as data.

    Attributes
    ----------
    name : str
        The stage's name (``--from``, ``--until``, ``--force``, the manifest's key).
    upstream : tuple of str
        Stages whose recorded outputs it reads: a change in them redoes it.
    run : callable
        The step: ``run(context)`` does the work and returns a :class:`StageOutput`
        naming every file written.
    settings : callable
        The configuration values its result depends on (JSON-able; hashed).
    files : callable
        Other files it reads (sizes and hashes are recorded).
    enabled : callable
        False: the stage is turned off by the configuration.
    version : int
        Bumped when the stage's code changes what it writes.
    before_run : callable, optional
        ``before_run(folder, forced)`` (an :class:`OpenFolder`), called for every
        stage of the table before any runs, under the run's lock: refuses (raises) or
        repairs a folder the stage cannot work on.
    """

    name: str
    upstream: tuple[str, ...]
    run: Callable[[Context], StageOutput]
    settings: Callable[[Config], dict[str, Any]] = no_settings
    files: Callable[[WorkingFolder, Config], list[Path]] = no_files
    enabled: Callable[[Config], bool] = always
    version: int = 1
    before_run: Callable[[OpenFolder, bool], None] | None = None


@dataclass(frozen=True)
class StageTable:
    """Stages in the order they run, and how to open the folder they share.

    ``folder(config)`` opens the working folder and its job, handed to every stage
    (once per run, under the lock).
    """

    stages: tuple[Stage, ...]
    folder: Callable[[Config], OpenFolder]

    @property
    def names(self) -> tuple[str, ...]:
        """The stages' names, in order."""
        return tuple(s.name for s in self.stages)
