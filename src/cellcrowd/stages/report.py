"""The ``report`` stage: download the job report (CSV), write the broken-link CSVs.

Library: :meth:`cellcrowd.appen.client.AppenClient.download_report`,
:func:`cellcrowd.appen.report.write_broken_link_csvs`.
"""

from __future__ import annotations

from typing import Any

from ..config import Config
from ..pipeline.stage import Context, SkippedUnit, Stage, StageOutput
from ._shared import existing, read_judgments, service_client

__all__ = ["STAGE"]


def _settings(config: Config) -> dict[str, Any]:
    """The settings the report depends on."""
    s = config.service
    return {"job_id": config.job_id, "report_type": s.report_type, "api_url": s.api_url,
            "api_version": s.api_version, "identifier": config.identifier,
            "allow_other_identifier": s.allow_other_identifier}


def _run(ctx: Context) -> StageOutput:
    """Download the report; write the broken-link, re-upload and problems CSVs."""
    from ..appen.report import write_broken_link_csvs, write_problems_csv

    cfg, wf = ctx.config, ctx.wf
    service = cfg.service
    dest = wf.report_csv(cfg.job_id, service.report_type)
    with service_client(ctx) as client:
        client.download_report(cfg.job_id, dest, report_type=service.report_type,
                               api_version=service.api_version)
    judgments = read_judgments(cfg, wf)
    broken = write_broken_link_csvs(judgments, dest, wf, cfg.job_id)
    write_problems_csv(judgments, wf, cfg.job_id)
    outputs = existing([dest, wf.broken_links_csv(cfg.job_id, service.report_type),
                        wf.reupload_csv(cfg.job_id), wf.report_problems_csv(cfg.job_id)])
    skipped = [SkippedUnit("report", name, "broken link: the annotator could not open the "
                           f"image; re-upload the rows of {wf.reupload_csv(cfg.job_id).name}")
               for name in broken]
    skipped += [SkippedUnit("report", f"row {p.row} (unit {p.unit_id})", p.reason)
                for p in judgments.problems]
    counts = {"judgments": len(judgments), "units": len({j.unit_id for j in judgments}),
              "broken_links": len(broken)}
    return StageOutput(outputs, counts, skipped)


#: The stage the engine runs.
STAGE = Stage("report", (), _run, settings=_settings)
