"""The clean stage with several judgments per montage: clean each, then merge them.

Decide, then act: :func:`clean_with_consensus` first works out which judgments of
each montage can be used (:func:`_plan`), cleans them all in one batch of tasks that
carry their montage and judgment with them, merges the montages with several usable
judgments (:func:`cellcrowd.jobconsensus.merge_job`), and names every left-out unit:
broken links, failed downloads, unusable annotations and the cells the consensus
dropped (:func:`dropped_units`, with the number of annotators who found each, as the
consensus counted them).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from ..files import natural_key
from ..pipeline.stage import Context, SkippedUnit, StageOutput
from .cleanunits import clean_or_reuse, fresh_cleanings, merge_units
from .jobview import merge_layout, tile_windows

if TYPE_CHECKING:
    from ..agreement import ConsensusReport
    from ..appen.report import Judgment, Report
    from ..jobconsensus import JudgmentLabels
    from ..labels import CleanResult, CleanStats, CleanTask

__all__ = ["clean_with_consensus", "dropped_units"]

logger = logging.getLogger(__name__)

Strategy = Literal["vote", "reliability"]


def _judgment_unit(montage: str, j: Judgment) -> str:
    """How a skipped judgment is named: ``montage (unit U, judgment J)``."""
    return f"{montage} (unit {j.unit_id}, judgment {j.judgment_id})"


def _judgment_order(j: Judgment) -> tuple[Any, ...]:
    return natural_key(j.unit_id), natural_key(j.judgment_id)


@dataclass
class _Tally:
    """What the stage has to say so far: files written, units left out, cleaning stats."""

    outputs: list[Path] = field(default_factory=list)
    skipped: list[SkippedUnit] = field(default_factory=list)
    stats: dict[str, list[CleanStats]] = field(default_factory=dict)
    #: Judgments left out of a montage whose other judgments are used.
    left_out: int = 0

    def skip(self, unit: str, reason: str) -> None:
        self.skipped.append(SkippedUnit("clean", unit, reason))


class _Cleaning(NamedTuple):
    """One judgment to clean, with the montage it belongs to."""

    montage: str
    judgment: Judgment
    task: CleanTask
    #: The montage's only usable judgment: cleaned straight into its labels.
    single: bool


def _plan(judgments: Report, ctx: Context, tally: _Tally
          ) -> tuple[list[str], dict[str, list[Judgment]]]:
    """Every montage with a usable judgment, and the judgments of each whose file is there.

    Broken links and failed downloads of montages that have another judgment are
    left out (and tallied); a montage with no downloaded judgment is skipped.
    """
    wf, failures_csv = ctx.wf, ctx.wf.failures_csv(ctx.config.job_id).name
    by_montage: dict[str, dict[tuple[str, str], Judgment]] = {}
    for j in judgments:
        if j.usable:
            by_montage.setdefault(j.montage, {}).setdefault((j.unit_id, j.judgment_id), j)
    montages = sorted(by_montage, key=natural_key)
    for j in sorted((j for j in judgments if j.broken_link and j.montage in by_montage),
                    key=lambda j: (natural_key(j.montage), *_judgment_order(j))):
        tally.left_out += 1
        tally.skip(_judgment_unit(j.montage, j), "broken link: the annotator could not open "
                   "the image; the montage's other judgments are used")
    present: dict[str, list[Judgment]] = {}
    for name in montages:
        js = sorted(by_montage[name].values(), key=_judgment_order)
        there = [j for j in js if wf.judgment_path(name, j.unit_id, j.judgment_id).is_file()]
        if not there:
            tally.skip(name, f"no annotation could be downloaded (see {failures_csv})")
            continue
        for j in js:
            if j not in there:
                tally.left_out += 1
                tally.skip(_judgment_unit(name, j), f"download failed (see {failures_csv}); "
                           "the montage's other judgments are used")
        present[name] = there
    return montages, present


def _cleanings(ctx: Context, present: dict[str, list[Judgment]]) -> list[_Cleaning]:
    """The cleaning tasks: montages with one judgment first, then each of the others'."""
    from ..labels import CleanTask

    wf, c = ctx.wf, ctx.config.clean
    log, window = ctx.job.montage_log, tile_windows(ctx.job)

    def cleaning(name: str, j: Judgment, single: bool) -> _Cleaning:
        src = wf.judgment_path(name, j.unit_id, j.judgment_id)
        dst = wf.label_path(name) if single else wf.judgment_label_path(
            name, j.unit_id, j.judgment_id)
        unit = name if single else _judgment_unit(name, j)
        return _Cleaning(name, j, CleanTask(src, dst, log, unit, c.encoding, c.min_size,
                                            c.max_hole, window(name)), single)

    singles = [cleaning(name, js[0], True) for name, js in present.items() if len(js) == 1]
    return singles + [cleaning(name, j, False) for name, js in present.items()
                      if len(js) > 1 for j in js]


def _collect(ctx: Context, done: list[tuple[_Cleaning, CleanResult]], tally: _Tally
             ) -> tuple[dict[str, list[JudgmentLabels]], dict[str, list[Judgment]]]:
    """Tally the cleaned judgments; the merge's inputs and the judgments used, per montage."""
    from ..jobconsensus import JudgmentLabels

    several: dict[str, list[tuple[Judgment, CleanResult]]] = {}
    for x, r in done:
        if not x.single:
            several.setdefault(x.montage, []).append((x.judgment, r))
        elif r.ok:
            tally.outputs.append(r.dst)
        else:
            tally.skip(r.montage, f"annotation unusable: {r.error}")
    for x, r in done:
        if x.single and r.stats is not None:
            tally.stats[x.montage] = [r.stats]
    inputs: dict[str, list[JudgmentLabels]] = {}
    used: dict[str, list[Judgment]] = {}
    for name, results in several.items():
        ok = [j for j, r in results if r.stats is not None]
        for _j, r in results:
            if r.stats is not None:
                tally.outputs.append(r.dst)
                tally.stats.setdefault(name, []).append(r.stats)
            else:
                tally.left_out += 1
                tally.skip(r.montage, f"annotation unusable: {r.error}; the montage's other "
                           "judgments are used")
        if not ok:
            tally.skip(name, "no judgment of this montage is usable")
            ctx.item_done(1)  # the merge it will not need
            continue
        used[name] = ok
        inputs[name] = [JudgmentLabels(
            j.unit_id, j.judgment_id, j.worker_id, j.trust, j.tainted,
            ctx.wf.judgment_label_path(name, j.unit_id, j.judgment_id)) for j in ok]
    return inputs, used


def dropped_units(montage: str, judgments: Sequence[Judgment], report: ConsensusReport,
                  strategy: str) -> list[SkippedUnit]:
    """One record per input cell the consensus of ``montage`` left out.

    ``judgments`` are the consensus's inputs in order (``cell.annotator`` indexes
    them); ``report.finders`` says how many annotators found each dropped cell.
    """
    active = sum(1 for w in report.weights if w > 0)
    out = []
    for cell, count in zip(report.dropped, report.finders, strict=True):
        found = f"found by {count} of {active} annotators"
        if cell.reason == "support" and strategy == "vote":
            reason = (f"dropped: {found} (more than {report.min_support:.0%} of the weight "
                      "needed)")
        elif cell.reason == "support":
            reason = (f"dropped: {found} (more than {report.min_support:.0%} of them, or "
                      "reliable enough ones, needed)")
        else:
            reason = f"dropped: {found}, but other cells won every one of its pixels"
        out.append(SkippedUnit("clean", f"{montage}: cell {cell.label} of judgment "
                               f"{judgments[cell.annotator].judgment_id}", reason))
    return out


def _merge(ctx: Context, inputs: dict[str, list[JudgmentLabels]], strategy: Strategy,
           tally: _Tally) -> list[Any]:
    """Merge every montage with several usable judgments (none: nothing to do)."""
    from ..jobconsensus import merge_job

    if not inputs:
        return []
    c = ctx.config.clean
    reuse, record = merge_units(ctx)
    job = merge_job(ctx.wf, inputs, strategy=strategy, min_iou=c.min_iou,
                    min_support=c.min_support, layout=merge_layout(ctx.job),
                    executor=ctx.executor, progress=ctx.item_done, reuse=reuse)
    record(job.results)
    tally.outputs += job.files
    return list(job.results)


def _record_merged(merged: list[Any], used: dict[str, list[Judgment]], strategy: Strategy,
                   tally: _Tally) -> tuple[list[float], int]:
    """Tally the merged montages; their agreements and the number of cells dropped."""
    from ..jobconsensus import mean_agreement

    dropped = 0
    agreements: list[float] = []
    for m in merged:
        if m.report is None:
            tally.skip(m.montage, f"consensus failed: {m.error}")
            continue
        agreement = mean_agreement(m.report)
        agreements.append(agreement)
        drops = dropped_units(m.montage, used[m.montage], m.report, strategy)
        dropped += len(drops)
        tally.skipped += drops
        tally.outputs.append(m.dst)
        logger.info("%s: %d annotators -> %d cells, %d dropped, mean agreement (F1) %.2f",
                    m.montage, m.report.annotators, m.report.consensus_cells, len(drops),
                    agreement)
    return agreements, dropped


def clean_with_consensus(ctx: Context, judgments: Report) -> StageOutput:
    """Clean every usable judgment of a montage; merge several into one (consensus)."""
    from ..appen.report import still_broken
    from ..labels import write_clean_stats

    wf = ctx.wf
    tally = _Tally()
    montages, present = _plan(judgments, ctx, tally)
    cleanings = _cleanings(ctx, present)
    several = sum(1 for js in present.values() if len(js) > 1)
    tasks = [x.task for x in cleanings]
    fresh = fresh_cleanings(ctx, tasks)
    ctx.set_total(fresh.count(False) + several)
    results = clean_or_reuse(ctx, tasks, fresh)
    inputs, used = _collect(ctx, list(zip(cleanings, results, strict=True)), tally)
    tally.outputs.append(write_clean_stats(wf.clean_stats_path, tally.stats))
    strategy: Strategy = "vote" if ctx.config.clean.strategy == "vote" else "reliability"
    merged = _merge(ctx, inputs, strategy, tally)
    agreements, dropped = _record_merged(merged, used, strategy, tally)
    labelled = sum(1 for p in tally.outputs if p.parent == wf.labels and p.suffix == ".png")
    counts = {"montages": len(montages), "cleaned": labelled,
              "broken_links": len(still_broken(judgments)),
              "skipped": len(montages) - labelled}
    if several or tally.left_out:  # else the counts (and the QC page) of the single path
        counts.update(montages_merged=len(agreements), cells_dropped=dropped,
                      judgments_left_out=tally.left_out)
    if agreements:
        counts["mean_agreement_pct"] = round(100 * sum(agreements) / len(agreements))
    return StageOutput(tally.outputs, counts, tally.skipped)
