"""The harvest as a sequence of resumable stages over one working folder.

This package is the engine and knows no stage: a stage is a record of functions
(:class:`Stage`, in :mod:`.stage`), the engine runs a table of them
(:func:`cellcrowd.pipeline.engine.run`) and reports where a folder stands
(:func:`cellcrowd.pipeline.folderstatus.status`). The harvest's stages (report, fetch,
clean, movies, npz, stitch, trk, ctc, omezarr, geff, qc) and what each does are in
:mod:`cellcrowd.stages`; :func:`run` and :func:`status` here use that table.

Modules: :mod:`.stage` (the stage record and the context handed to its body),
:mod:`.manifest` (fingerprints, judging up to date, stale outputs), :mod:`.lock`
(one run per folder), :mod:`.units` (per-unit records), :mod:`.engine` (running a
table), :mod:`.folderstatus`,
:mod:`.results` (what a run and a status return).

**Resuming.** A manifest (``wf.manifest``, JSON, written atomically) records per
stage the fingerprint of its inputs (the recorded outputs of the stages it reads,
the sizes and SHA-256 of the other files it reads, the configuration values that
matter to it, the cellcrowd version) and its outputs (paths, sizes, SHA-256). A
stage is skipped when its input fingerprint matches and every recorded output
still exists with the same size and hash. An entry is committed only after all
of the stage's outputs are written, and every output is written atomically, so
a run killed at any moment (SIGKILL included) is redone from the interrupted
stage and ends with the same bytes as an uninterrupted run.

**Units.** A stage that runs because some inputs changed may redo only the units of
work whose inputs changed: the entry also records per unit its input key and output
files (:mod:`.units`, ``ctx.units``). Clean (per judgment, and per merged montage),
movies (per label montage and raw frame) and npz (per part) do; stitch, trk, ctc,
omezarr, geff and qc join every part and are redone whole.

**Skipped units.** Broken links, failed downloads and unreadable annotations are
recorded per stage (unit, reason) and carried by the files themselves: a montage
without labels is left out of its part. :class:`RunSummary` and :func:`status`
name every skipped unit and why.

:func:`prepare_folder` (cut a raw movie into montages) is a separate entry: it
makes the working folder the harvest starts from.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from . import engine, folderstatus
from .engine import StageObserver, observers
from .lock import lock_holder
from .results import Progress, RunSummary, StageRun, StageStatus, StatusReport
from .stage import Context, SkippedUnit, Stage, StageOutput, StageTable

if TYPE_CHECKING:
    from ..config import Config
    from ..executor import Executor
    from ..stages import STAGES
    from ..stages.jobview import working_folder
    from ..stages.prepare import prepare_folder

__all__ = [
    "STAGES",
    "Context",
    "Progress",
    "RunSummary",
    "SkippedUnit",
    "Stage",
    "StageObserver",
    "StageOutput",
    "StageRun",
    "StageStatus",
    "StageTable",
    "StatusReport",
    "lock_holder",
    "observers",
    "prepare_folder",
    "run",
    "status",
    "working_folder",
]

#: Names that live with the stages, imported on first use (the stages import this
#: package, so it cannot import them at its own import).
_FROM_STAGES = {
    "STAGES": "cellcrowd.stages",
    "prepare_folder": "cellcrowd.stages.prepare",
    "working_folder": "cellcrowd.stages.jobview",
}


def __getattr__(name: str) -> Any:
    where = _FROM_STAGES.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(where), name)
    globals()[name] = value
    return value


def _harvest() -> StageTable:
    from ..stages import HARVEST

    return HARVEST


def run(
    config: Config,
    *,
    from_stage: str | None = None,
    until_stage: str | None = None,
    force: Sequence[str] = (),
    executor: Executor | None = None,
    progress: Progress | None = None,
    api_key: Callable[[], str] | None = None,
) -> RunSummary:
    """Run the harvest's stages (:data:`STAGES`) that are not up to date.

    :func:`cellcrowd.pipeline.engine.run` over :data:`cellcrowd.stages.HARVEST`; the
    parameters, result and errors are that function's. ``api_key`` is called only
    when the report or fetch stage has work to do.
    """
    return engine.run(config, _harvest(), from_stage=from_stage, until_stage=until_stage,
                      force=force, executor=executor, progress=progress, api_key=api_key)


def status(config: Config, *, until: str | None = None) -> StatusReport:
    """What is done, what a run would redo and why, what failed, what was skipped.

    :func:`cellcrowd.pipeline.folderstatus.status` over the harvest's stages (up to and
    including ``until``, when given). Reads the manifest and re-checks inputs and
    outputs; changes nothing.
    """
    return folderstatus.status(config, _harvest(), until=until)
