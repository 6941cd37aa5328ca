"""The clean stage's units of work, redone only when their inputs changed.

Two kinds of unit, each recorded in the stage's manifest entry (``ctx.units``, see
:mod:`cellcrowd.pipeline.units`):

``clean:<labels file>``
    Cleaning one judgment's annotation into its labels (a montage's labels, or one
    judgment's labels under ``judgments/`` when the montage has several). Key: the
    annotation file's hash, the logs' hashes (the montage layout and the tile grid
    come from them), the tile window and the labels' name; the engine adds the clean
    settings. Recorded data: the :class:`~cellcrowd.labels.CleanStats` it returned.
``merge:<montage>``
    The consensus of a montage's cleaned judgments: its labels and
    ``{montage}_consensus.json``. Key: every field of its
    :class:`~cellcrowd.consensus.MergeTask` (the cleaned labels by hash, the vote
    weights, and with the ``"reliability"`` strategy the workers' odds, the prior
    odds and which are reliable: the job-wide numbers the fusion uses) and what the
    report file says of each judgment (ids, worker, trust, tainted, the worker's
    reliability). Recorded data: the consensus report, which the stage's job-wide
    files and counts are made from. With ``"reliability"``, a new judgment anywhere
    usually moves every worker's reliability a little, so every merged montage of its
    workers is redone; the cleaning of unchanged judgments is still reused.

Equal keys mean equal task arguments and equal input bytes, and cleaning and
merging are deterministic, so a reused unit's files are the bytes a rerun would write.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, fields
from typing import TYPE_CHECKING, Any

from ..pipeline.stage import Context
from ._shared import log_files

if TYPE_CHECKING:
    from ..agreement import ConsensusReport
    from ..consensus import MergeResult, MergeTask
    from ..jobconsensus import JudgmentLabels
    from ..labels import CleanResult, CleanTask
    from ..reliability import Reliability

__all__ = ["clean_or_reuse", "fresh_cleanings", "merge_units"]


def _clean_unit(ctx: Context, task: CleanTask) -> str:
    return "clean:" + task.dst.relative_to(ctx.wf.labels).as_posix()


def _clean_key(ctx: Context, task: CleanTask) -> dict[str, Any]:
    return {"src": ctx.units.file_digest([task.src]),
            "logs": ctx.units.file_digest(log_files(ctx.wf, ctx.config)),
            "window": task.window, "dst": task.dst.name, "montage": task.montage}


def fresh_cleanings(ctx: Context, tasks: Sequence[CleanTask]) -> list[bool]:
    """Per task: its labels are fresh from the last run, with their statistics (call
    once, before :func:`clean_or_reuse`)."""
    return [ctx.units.fresh(_clean_unit(ctx, t), _clean_key(ctx, t), [t.dst])
            and isinstance(ctx.units.data(_clean_unit(ctx, t)), dict) for t in tasks]


def clean_or_reuse(ctx: Context, tasks: Sequence[CleanTask], fresh: Sequence[bool]
                   ) -> list[CleanResult]:
    """:func:`cellcrowd.labels.clean_annotations` over the tasks not ``fresh``; the fresh
    ones' results from their records. Results in task order; the cleaned are recorded."""
    from ..labels import CleanResult, CleanStats, clean_annotations

    todo = [t for t, f in zip(tasks, fresh, strict=True) if not f]
    cleaned = iter(clean_annotations(todo, executor=ctx.executor, progress=ctx.item_done))
    results: list[CleanResult] = []
    for task, is_fresh in zip(tasks, fresh, strict=True):
        unit = _clean_unit(ctx, task)
        if is_fresh:
            stats = CleanStats(**ctx.units.data(unit))
            results.append(CleanResult(task.name, task.src, task.dst, stats))
            continue
        result = next(cleaned)
        if result.ok and result.stats is not None:
            ctx.units.done(unit, _clean_key(ctx, task), [task.dst], asdict(result.stats))
        results.append(result)
    return results


def _report_from(data: dict[str, Any]) -> ConsensusReport:
    """The consensus report a merge unit recorded (:meth:`ConsensusReport.to_dict` and
    ``finders``)."""
    from ..agreement import AnnotatorAgreement, CellRecord, ConsensusReport, DroppedCell

    d = data["report"]
    return ConsensusReport(
        annotators=d["annotators"], weights=tuple(d["weights"]),
        cells_per_annotator=tuple(d["cells_per_annotator"]),
        consensus_cells=d["consensus_cells"],
        dropped=tuple(DroppedCell(**x) for x in d["dropped"]),
        agreement=tuple(AnnotatorAgreement(**x) for x in d["agreement"]),
        ignored=tuple(d["ignored"]), method=d["method"], min_iou=d["min_iou"],
        min_support=d["min_support"], cells=tuple(CellRecord(**x) for x in d["cells"]),
        finders=tuple(data["finders"]))


class _MergeUnits:
    """The ``reuse`` hook of :func:`cellcrowd.jobconsensus.merge_job`, and the records."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.keys: dict[str, dict[str, Any]] = {}
        self.reused: set[str] = set()

    def key(self, task: MergeTask, js: Sequence[JudgmentLabels], rel: Reliability | None
            ) -> dict[str, Any]:
        known = rel.workers if rel is not None else {}
        key: dict[str, Any] = {f.name: getattr(task, f.name) for f in fields(task)}
        key.update(srcs=[self.ctx.units.file_digest([p]) for p in task.srcs],
                   dst=task.dst.name, layout=repr(task.layout))
        key["judgments"] = [
            [j.unit_id, j.judgment_id, j.worker_id, j.trust, j.tainted, j.labels.name,
             known[j.worker_id].reliability if j.worker_id in known else None] for j in js]
        return key

    def __call__(self, task: MergeTask, js: Sequence[JudgmentLabels],
                 rel: Reliability | None) -> MergeResult | None:
        from ..consensus import MergeResult

        unit, key = "merge:" + task.montage, self.key(task, js, rel)
        self.keys[task.montage] = key
        outputs = [task.dst, self.ctx.wf.consensus_report_path(task.montage)]
        data = self.ctx.units.data(unit)
        if not (self.ctx.units.fresh(unit, key, outputs) and isinstance(data, dict)):
            return None
        self.reused.add(task.montage)
        self.ctx.item_done(1)
        return MergeResult(task.montage, task.dst, _report_from(data))

    def record(self, results: Sequence[MergeResult]) -> None:
        """Record the montages merged in this run."""
        for r in results:
            if r.report is None or r.montage in self.reused:
                continue
            self.ctx.units.done(
                "merge:" + r.montage, self.keys[r.montage],
                [r.dst, self.ctx.wf.consensus_report_path(r.montage)],
                {"report": r.report.to_dict(), "finders": list(r.report.finders)})


def merge_units(ctx: Context) -> tuple[Callable[..., MergeResult | None],
                                       Callable[[Sequence[MergeResult]], None]]:
    """The ``reuse`` hook for :func:`cellcrowd.jobconsensus.merge_job`, and the function
    that records the montages it merged (call it with the job's results)."""
    units = _MergeUnits(ctx)
    return units, units.record
