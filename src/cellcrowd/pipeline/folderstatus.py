"""Where a working folder stands: what is done, what a run would redo and why."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..config import Config
from .lock import lock_holder
from .manifest import Manifest, judge, skipped_from, stage_inputs
from .results import StageState, StageStatus, StatusReport
from .stage import StageTable

__all__ = ["status"]


def status(config: Config, table: StageTable, *, until: str | None = None) -> StatusReport:
    """What is done, what a run of ``table`` would redo and why, what failed, what was
    skipped (for the stages up to and including ``until``, when given: each stage's
    outputs are hashed to see that they are intact, so looking at fewer costs less).

    Reads the manifest and re-checks inputs and outputs; changes nothing.

    Raises
    ------
    ValueError
        ``until`` is not a stage of ``table``.
    """
    names = [stage.name for stage in table.stages]
    if until is not None and until not in names:
        raise ValueError(f"unknown stage {until!r}: one of {', '.join(names)}")
    stages = table.stages[:names.index(until) + 1] if until is not None else table.stages
    wf = table.folder(config).wf
    manifest = Manifest(wf)
    holder = lock_holder(wf)
    out: list[StageStatus] = []
    will_run: set[str] = set()
    for stage in stages:
        entry = manifest.entry(stage.name)
        if not stage.enabled(config):
            out.append(StageStatus(stage.name, "disabled", "turned off in [outputs]"))
            continue
        reason = judge(entry, stage_inputs(stage, wf, config, manifest), wf.base)
        state, why = _state(entry, reason, will_run & set(stage.upstream), holder)
        if state != "done":
            will_run.add(stage.name)
        out.append(StageStatus(stage.name, state, why, (entry or {}).get("counts", {}),
                               skipped_from(entry), len((entry or {}).get("outputs", {}))))
    return StatusReport(config.base, tuple(out))


def _state(entry: Mapping[str, Any] | None, reason: str | None, waits_for: set[str],
           holder: str | None) -> tuple[StageState, str]:
    """A stage's state and its reason, from :func:`judge`'s ``reason`` and the manifest."""
    if reason is None and waits_for:
        return "waiting", "redone if " + ", ".join(sorted(waits_for)) + " output changes"
    if reason is None:
        return "done", "up to date"
    if entry is None:
        return "pending", reason
    if entry.get("state") == "failed":
        return "failed", reason
    if entry.get("state") == "running" and holder is not None:
        return "running", f"running now ({holder})"
    if entry.get("state") == "running":
        return "interrupted", reason
    return "stale", reason
