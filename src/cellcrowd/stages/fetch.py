"""The ``fetch`` stage: download every usable judgment's annotation image.

Library: :func:`cellcrowd.download.download_annotations`. Failed downloads are
skipped units, and the stage is marked to be retried on the next run.
"""

from __future__ import annotations

from typing import Any

from ..config import Config
from ..pipeline.stage import Context, SkippedUnit, Stage, StageOutput
from ._shared import read_judgments, service_client

__all__ = ["STAGE"]


def _settings(config: Config) -> dict[str, Any]:
    """The settings the downloads depend on."""
    return {"job_id": config.job_id, "report_type": config.service.report_type,
            "max_pixels": config.service.max_pixels}


def _run(ctx: Context) -> StageOutput:
    """Download the annotations (one file per judgment, and the chosen one per montage)."""
    from ..download import download_annotations, expected_montage_shape

    cfg, wf = ctx.config, ctx.wf
    judgments = read_judgments(cfg, wf)
    usable = {(j.montage, j.unit_id, j.judgment_id) for j in judgments if j.usable}
    ctx.set_total(len(usable))
    with service_client(ctx) as client:
        result = download_annotations(judgments, wf, job_id=cfg.job_id,
                                      concurrency=cfg.service.concurrency, client=client,
                                      progress=ctx.item_done,
                                      max_pixels=cfg.service.max_pixels,
                                      expected_shape=expected_montage_shape(
                                          wf, job=ctx.known_job))
    failed = {(f.montage, f.unit, f.judgment) for f in result.failures}
    outputs = [wf.judgment_path(*key) for key in sorted(usable - failed)]
    outputs += [wf.annotation_path(m) for m in sorted(result.chosen)]
    if result.failures_csv is not None:
        outputs.append(result.failures_csv)
    skipped = [SkippedUnit("fetch", f"{f.montage} (unit {f.unit}, judgment {f.judgment})",
                           f"download failed: {f.reason}") for f in result.failures]
    counts = {"requested": result.requested, "downloaded": result.downloaded,
              "already_there": result.skipped_existing, "failed": result.failed,
              "montages": len(result.chosen), "montages_with_several": len(result.multiple)}
    retry = f"{result.failed} downloads failed" if result.failures else None
    return StageOutput(outputs, counts, skipped, retry=retry)


#: The stage the engine runs.
STAGE = Stage("fetch", ("report",), _run, settings=_settings)
