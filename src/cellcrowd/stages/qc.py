"""The ``qc`` stage: the quality-control report, ``qc/index.html`` and overlays.

Library: :func:`cellcrowd.qc.collect_qc`, :func:`cellcrowd.qc.write_qc`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import Config
from ..files import list_images
from ..layout import WorkingFolder
from ..pipeline.stage import Context, Stage, StageOutput
from ._shared import log_files

__all__ = ["STAGE", "UPSTREAM"]

#: Every stage before it: the report summarises them all.
UPSTREAM = ("report", "fetch", "clean", "movies", "npz", "stitch", "trk", "ctc", "omezarr",
            "geff")

#: Earlier stages' counts shown in the QC report (only those that do not depend on how
#: often a run was interrupted, so that the report is the same bytes after a resume).
_QC_COUNTS = (
    ("clean", "cleaned", "montages with clean labels"),
    ("clean", "montages_merged", "montages merged from several judgments"),
    ("clean", "cells_dropped", "cells dropped by the consensus (too few annotators)"),
    ("clean", "mean_agreement_pct", "mean agreement of annotators with the consensus (F1, %)"),
    ("stitch", "cells", "cells in the stitched movie"),
    ("stitch", "divisions", "divisions in the stitched movie"),
)


def _settings(config: Config) -> dict[str, Any]:
    return {"job_id": config.job_id}


def _files(wf: WorkingFolder, config: Config) -> list[Path]:
    """The logs and the raw montages (the overlays' backgrounds), read by no other stage."""
    montages = list_images(wf.montages) if wf.montages.is_dir() else []
    return log_files(wf, config) + montages


def _enabled(config: Config) -> bool:
    return config.outputs.qc


def _run(ctx: Context) -> StageOutput:
    """Collect the numbers and write the report."""
    from ..qc import collect_qc, write_qc

    cfg = ctx.config
    summary: dict[str, object] = {}
    for stage, key, label in _QC_COUNTS:
        value = ctx.counts_of(stage).get(key)
        if value is not None:
            summary[label] = value
    job = ctx.known_job
    qc = collect_qc(ctx.wf, summary=summary or None, job_id=cfg.job_id, job=job,
                    executor=ctx.executor, recorded=ctx.recorded)
    files = write_qc(qc, executor=ctx.executor)
    totals = qc.totals()
    counts = {"montages": totals["montages"], "labels": totals["labels"],
              "overlays": len(files.overlays), "missing": len(qc.missing),
              "units_to_check": totals["units_to_check"]}
    return StageOutput(files.paths, counts)


#: The stage the engine runs.
STAGE = Stage("qc", UPSTREAM, _run, settings=_settings, files=_files, enabled=_enabled)
