"""Running a stage table over one working folder: select, decide, run, record.

The engine knows no stage: it gets a :class:`~cellcrowd.pipeline.stage.StageTable`
and, for each stage in order, decides from the manifest whether it must run
(:func:`cellcrowd.pipeline.manifest.judge`), runs its body with a
:class:`~cellcrowd.pipeline.stage.Context`, and records its outputs. An entry is
committed only after all of the stage's outputs are written (and synced), and every
output is written atomically, so a run killed at any moment (SIGKILL included) is
redone from the interrupted stage and ends with the same bytes as an uninterrupted run.

**Units.** A stage that must run gets its per-unit records in ``ctx.units``
(:class:`cellcrowd.pipeline.units.UnitRecords`, keys salted with its settings and
versions; nothing is fresh when it is forced) and may reuse the units whose inputs and
outputs did not change. The records are committed with the entry, after the sync;
every unit's output files are among the stage's recorded outputs. The engine decides
per stage only and knows no unit; :attr:`StageRun.units` says how many it redid and
reused.

**Observers.** :data:`observers` holds factories of :class:`StageObserver`: each run
calls every factory once and tells the observers it gets when a stage starts, how
many of its items are done and when its outputs are written but not yet recorded.
Nothing in cellcrowd registers one; the interruption tests use it (from a launcher
in ``tests/``) to stop a run at a known point.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..config import Config, get_api_key
from ..errors import CellcrowdError, PipelineError
from ..executor import Executor, make_executor
from ..files import confine, deferred_sync, describe_os_error, sync_paths
from ..hashes import hashing_writes
from ..layout import WorkingFolder
from .lock import hold_lock
from .manifest import (
    Manifest,
    digest,
    judge,
    record,
    recorded_paths,
    remove_stale,
    remove_temporary_files,
    resolving_once,
    skipped_from,
    stage_inputs,
)
from .results import Progress, RunSummary, StageRun
from .stage import Context, OpenFolder, Stage, StageOutput, StageTable
from .units import UnitRecords

__all__ = ["StageObserver", "observers", "run", "select"]

logger = logging.getLogger(__name__)


class StageObserver(Protocol):
    """Told what a run's stages do, in the run's process (it may sleep or raise)."""

    def started(self, stage: str) -> None:
        """``stage`` will run: its manifest entry says ``running``, no item is done yet."""

    def advanced(self, stage: str, count: int) -> None:
        """``count`` more items of ``stage`` are done."""

    def written(self, stage: str) -> None:
        """``stage`` wrote (and synced) its outputs; its entry is not committed yet."""


#: Factories of observers; every :func:`run` calls each once (see the module docstring).
observers: list[Callable[[], StageObserver]] = []


def select(names: Sequence[str], from_stage: str | None, until_stage: str | None,
           force: Sequence[str]) -> set[str]:
    """The stage names in ``from_stage..until_stage`` (inclusive).

    Raises
    ------
    PipelineError
        A name (in the range or ``force``) that is not a stage, or a range backwards.
    """
    names = list(names)
    for name in [from_stage, until_stage, *force]:
        if name is not None and name not in names:
            raise PipelineError(
                f"unknown stage {name!r}: the stages are {', '.join(names)}"
            )
    start = names.index(from_stage) if from_stage else 0
    stop = names.index(until_stage) if until_stage else len(names) - 1
    if start > stop:
        raise PipelineError(
            f"--from {from_stage} comes after --until {until_stage}: the order is "
            f"{' -> '.join(names)}"
        )
    return set(names[start:stop + 1])


class _Services:
    """The executor and the API key of a run, each made on first use."""

    def __init__(self, config: Config, executor: Executor | None,
                 api_key: Callable[[], str] | None) -> None:
        self._config, self._given, self._api_key = config, executor, api_key
        self._made: list[Executor] = []
        self._keys: list[str] = []

    def executor(self) -> Executor:
        if self._given is not None:
            return self._given
        if not self._made:
            ex = self._config.executor
            try:
                self._made.append(make_executor(ex.workers or None, ex.scheduler or None))
            except OSError as exc:
                raise PipelineError(
                    f"cannot reach the dask scheduler at {ex.scheduler} ({exc}): start it, "
                    "or leave executor.scheduler empty to run on local processes"
                ) from None
        return self._made[0]

    def key(self) -> str:
        if not self._keys:
            self._keys.append(self._api_key() if self._api_key is not None else get_api_key())
        return self._keys[0]

    def close(self) -> None:
        for ex in self._made:
            ex.close()


@dataclass
class _Run:
    """What every stage of one run shares."""

    config: Config
    wf: WorkingFolder
    manifest: Manifest
    selected: set[str]
    force: tuple[str, ...]
    progress: Progress | None
    watchers: list[StageObserver]
    services: _Services
    opened: OpenFolder


@dataclass(frozen=True)
class _Due:
    """A stage that must run: its old entry, its inputs now, and why."""

    entry: dict[str, Any] | None
    inputs: dict[str, Any]
    reason: str


def run(
    config: Config,
    table: StageTable,
    *,
    from_stage: str | None = None,
    until_stage: str | None = None,
    force: Sequence[str] = (),
    executor: Executor | None = None,
    progress: Progress | None = None,
    api_key: Callable[[], str] | None = None,
) -> RunSummary:
    """Run the stages of ``table`` that are not up to date.

    Parameters
    ----------
    config : Config
        What to harvest and where.
    table : StageTable
        The stages, in order (the harvest's: :data:`cellcrowd.stages.HARVEST`).
    from_stage, until_stage : str, optional
        Run only this range of the table (inclusive); the others are left as they are.
    force : sequence of str
        Stages to redo even when they are up to date.
    executor : Executor, optional
        Where per-item tasks run; default from ``config.executor`` (made only when
        a stage has work, closed at the end).
    progress : Progress, optional
        Told when stages start, advance and finish.
    api_key : callable, optional
        Returns the service's API key; called only when a stage asks for it.
        Default: :func:`cellcrowd.config.get_api_key` (environment only).

    Returns
    -------
    RunSummary
        Per stage: ran / up-to-date / disabled / not-selected, counts, outputs and
        skipped units.

    Raises
    ------
    PipelineError
        An unknown stage name or an impossible range, another run holds the folder,
        or a stage failed on a file system error.
    CellcrowdError
        A stage failed (recorded in the manifest as failed, see
        :func:`cellcrowd.pipeline.folderstatus.status`).
    """
    selected = select(table.names, from_stage, until_stage, force)
    services = _Services(config, executor, api_key)
    watchers = [make() for make in observers]
    runs: list[StageRun] = []
    plain = config.working_folder()
    with hold_lock(plain), confine(plain.base):
        remove_temporary_files(plain.base)
        opened = table.folder(config)
        for stage in table.stages:
            if stage.before_run is not None:
                stage.before_run(opened, stage.name in force)
        shared = _Run(config, opened.wf, Manifest(plain), selected, tuple(force), progress,
                      watchers, services, opened)
        try:
            runs += [_run_reported(stage, shared) for stage in table.stages]
        finally:
            services.close()
            with contextlib.suppress(OSError):  # (a cache: the next run hashes again)
                shared.manifest.keep_hashes()
    return RunSummary(config.base, tuple(runs))


def _run_reported(stage: Stage, r: _Run) -> StageRun:
    try:
        stage_run = _run_stage(stage, r)
    except OSError as exc:  # writing the manifest or cleaning up
        raise PipelineError(f"stage {stage.name} failed: {describe_os_error(exc)}") from exc
    if r.progress is not None:
        r.progress.finish(stage_run)
    return stage_run


def _run_stage(stage: Stage, r: _Run) -> StageRun:
    with resolving_once():  # each folder resolved once per stage, not once per file
        due = _decide(stage, r)
        return due if isinstance(due, StageRun) else _execute(stage, r, due)


def _decide(stage: Stage, r: _Run) -> StageRun | _Due:
    """The stage's record when it does not run, else what its run needs."""
    name = stage.name
    entry = r.manifest.entry(name)
    if not stage.enabled(r.config):
        return StageRun(name, "disabled", "turned off in [outputs]")
    if name not in r.selected:
        return StageRun(name, "not-selected", "outside --from/--until",
                        counts=(entry or {}).get("counts", {}), skipped=skipped_from(entry))
    inputs = stage_inputs(stage, r.wf, r.config, r.manifest)
    reason = "forced" if name in r.force else judge(entry, inputs, r.wf.base)
    if reason is None and entry is not None:
        logger.info("%s: up to date", name)
        return StageRun(
            name, "up-to-date", "inputs and outputs unchanged",
            counts=entry.get("counts", {}),
            outputs=recorded_paths(entry.get("outputs", {}), r.wf.base),
            skipped=skipped_from(entry),
        )
    return _Due(entry, inputs, reason or "")


def _execute(stage: Stage, r: _Run, due: _Due) -> StageRun:
    name = stage.name
    logger.info("%s: running (%s)", name, due.reason)
    r.manifest.set(name, {**(due.entry or {}), "state": "running"})
    if r.progress is not None:
        r.progress.start(name, None)
    for watcher in r.watchers:
        watcher.started(name)
    started = time.perf_counter()
    units = _unit_records(due, r, name in r.force)
    out = _call(stage, _context(name, r, units), r.manifest, due.entry, units)
    for watcher in r.watchers:
        watcher.written(name)
    outputs = _commit(name, r, due, out, units)
    seconds = time.perf_counter() - started
    for unit in out.skipped:
        logger.info("%s: skipped %s: %s", name, unit.unit, unit.reason)
    used = units.counts if units.redone or units.reused else {}
    if used:
        logger.info("%s: redid %d units, reused %d", name, units.redone, units.reused)
    logger.info("%s: done in %.1f s (%d files)", name, seconds, len(outputs))
    return StageRun(name, "ran", due.reason, dict(out.counts),
                    recorded_paths(outputs, r.wf.base), tuple(out.skipped), seconds, used)


def _unit_records(due: _Due, r: _Run, forced: bool) -> UnitRecords:
    """The stage's unit records from its last entry; keys salted with its settings and
    versions (a change in them makes every unit stale)."""
    salt = digest({k: due.inputs.get(k) for k in ("cellcrowd", "stage_version", "settings")})
    return UnitRecords(due.entry, salt, r.wf.base, forced)


def _context(name: str, r: _Run, units: UnitRecords) -> Context:
    def set_total(total: int | None) -> None:
        if r.progress is not None:
            r.progress.start(name, total)

    def item_done(n: int) -> None:
        if r.progress is not None:
            r.progress.advance(name, n)
        for watcher in r.watchers:
            watcher.advanced(name, n)

    return Context(r.config, r.wf, r.services.executor, r.services.key, set_total, item_done,
                   r.manifest.counts, r.opened, units, r.manifest.stages)


def _call(stage: Stage, ctx: Context, manifest: Manifest, entry: dict[str, Any] | None,
          units: UnitRecords) -> StageOutput:
    """Run the stage's body; a failure is recorded in the manifest before it is raised."""
    name = stage.name
    try:
        # one sync for the stage's files, below, not one per file; each file hashed by
        # the process that wrote it, for the record
        with deferred_sync(), hashing_writes():
            out = stage.run(ctx)
        out.outputs = _with_unit_paths(out.outputs, units)
        sync_paths(out.outputs)
    except CellcrowdError as exc:
        with contextlib.suppress(OSError):
            manifest.set(name, {**(entry or {}), "state": "failed", "error": str(exc)})
        raise
    except OSError as exc:
        with contextlib.suppress(OSError):  # the disk may be full: the manifest can wait
            manifest.set(name, {**(entry or {}), "state": "failed", "error": str(exc)})
        raise PipelineError(f"stage {name} failed: {describe_os_error(exc)}") from exc
    return out


def _with_unit_paths(outputs: list[Path], units: UnitRecords) -> list[Path]:
    """The stage's outputs and every output of its unit records (recorded, so synced)."""
    named = set(outputs)
    return outputs + [p for p in dict.fromkeys(units.paths()) if p not in named]


def _commit(name: str, r: _Run, due: _Due, out: StageOutput, units: UnitRecords
            ) -> dict[str, list[Any]]:
    """Record the stage as done (after removing what its earlier run wrote and this did not).

    The unit records go into the same entry, so they are committed only with it.
    """
    outputs = record(out.outputs, r.wf.base)
    remove_stale(due.entry, outputs, r.wf.base)
    r.manifest.set(name, {
        "state": "done",
        "fingerprint": digest(due.inputs),
        "inputs": due.inputs,
        "outputs": outputs,
        "outputs_digest": digest(outputs),
        "counts": out.counts,
        "skipped": [{"stage": u.stage, "unit": u.unit, "reason": u.reason}
                    for u in out.skipped],
        "retry": out.retry,
        **({"units": recs} if (recs := units.records()) else {}),
    })
    return outputs
