"""The ``clean`` stage: annotation colours -> clean, relabelled uint16 label montages.

Library: :func:`cellcrowd.labels.clean_annotations` and, for several judgments of a
montage, :func:`cellcrowd.jobconsensus.merge_job` (see :mod:`.cleanjob`).

**Several annotators.** With ``[clean] consensus = true`` (the default) the stage
uses every usable judgment of a montage (the files the fetch stage downloaded, one
per judgment): one judgment is cleaned straight into the montage's labels; several
are each cleaned into ``{id}_labels/judgments/`` and merged (``[clean] strategy``:
``"reliability"``, job-wide worker reliability first, or ``"vote"``, a trust-weighted
vote per montage; tainted workers weigh 0), with a report
``{id}_labels/{montage}_consensus.json`` next to the labels and the workers'
``consensus_workers.json``. Cells too few annotators found are dropped and named,
like broken-link and undownloaded judgments, in the stage's skipped units.
``consensus = false`` (or ``strategy = "latest"``) cleans only the judgment the fetch
stage chose (``wf.annotation_path``). Either way what cleaning did per montage goes
to ``clean_stats.json``.

Incremental per unit: a judgment is cleaned again, and a montage merged again, only
when what it is made from changed (:mod:`.cleanunits`); ``clean_stats.json`` and
``consensus_workers.json`` are rewritten from every unit's recorded results.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..config import Config
from ..files import natural_key
from ..pipeline.stage import Context, SkippedUnit, Stage, StageOutput
from ._shared import log_files, read_judgments
from .cleanjob import clean_with_consensus
from .cleanunits import clean_or_reuse, fresh_cleanings
from .jobview import tile_windows

if TYPE_CHECKING:
    from ..appen.report import Report

__all__ = ["STAGE"]


def _consensus(config: Config) -> bool:
    return config.clean.consensus and config.clean.strategy != "latest"


def _settings(config: Config) -> dict[str, Any]:
    clean = config.clean.model_dump()
    del clean["min_agreement"]  # only read by `cellcrowd review`
    if not _consensus(config):  # the consensus settings do not matter then
        del clean["min_iou"], clean["min_support"], clean["strategy"]
    return {"job_id": config.job_id, "report_type": config.service.report_type, **clean}


def _run(ctx: Context) -> StageOutput:
    judgments = read_judgments(ctx.config, ctx.wf)
    if _consensus(ctx.config):
        return clean_with_consensus(ctx, judgments)
    return _clean_chosen(ctx, judgments)


def _clean_chosen(ctx: Context, judgments: Report) -> StageOutput:
    """``consensus = false``: clean the one annotation per montage the fetch stage chose."""
    from ..appen.report import still_broken
    from ..labels import CleanTask, write_clean_stats

    cfg, wf = ctx.config, ctx.wf
    montages = sorted({j.montage for j in judgments if j.usable}, key=natural_key)
    skipped: list[SkippedUnit] = []
    tasks = []
    log = ctx.job.montage_log
    c = cfg.clean
    window = tile_windows(ctx.job)
    for name in montages:
        src = wf.annotation_path(name)
        if src.is_file():
            tasks.append(CleanTask(src, wf.label_path(name), log, name, c.encoding,
                                   c.min_size, c.max_hole, window(name)))
        else:
            skipped.append(SkippedUnit("clean", name, "no annotation could be downloaded "
                                       f"(see {wf.failures_csv(cfg.job_id).name})"))
    fresh = fresh_cleanings(ctx, tasks)
    ctx.set_total(fresh.count(False))
    results = clean_or_reuse(ctx, tasks, fresh)
    outputs = [r.dst for r in results if r.ok]
    skipped += [SkippedUnit("clean", r.montage, f"annotation unusable: {r.error}")
                for r in results if not r.ok]
    stats = {r.montage: [r.stats] for r in results if r.stats is not None}
    outputs.append(write_clean_stats(wf.clean_stats_path, stats))
    counts = {"montages": len(montages), "cleaned": len(outputs) - 1,
              "broken_links": len(still_broken(judgments)), "skipped": len(skipped)}
    return StageOutput(outputs, counts, skipped)


#: The stage the engine runs.
STAGE = Stage("clean", ("report", "fetch"), _run, settings=_settings, files=log_files,
              version=3)
