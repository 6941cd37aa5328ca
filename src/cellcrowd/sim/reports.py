"""The service's reports of a simulated job, as the emulator serves them (see FORMATS.md).

Each builder returns the name and text of the report's single file: :func:`full_report`
(``f{id}.csv``), :func:`aggregated_report` (``a{id}.csv``), :func:`json_report`
(``job_{id}.json``, JSON lines), :func:`gold_report`, :func:`workset_report` and
:func:`source_report`. :func:`build_report` picks one by report type. Annotation cells
carry URLs made by the emulator's ``link(job_id, judgment_id)``.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

from ..appen.report import FULL_REPORT_COLUMNS
from .crowd import CrowdJob, SimJudgment, SimUnit

__all__ = [
    "aggregated_report",
    "build_report",
    "full_report",
    "gold_report",
    "json_report",
    "source_report",
    "workset_report",
]

#: Where a judgment's annotation is served: ``link(job_id, judgment_id) -> URL``.
Link = Callable[[int, int], str]


def build_report(report_type: str, job: CrowdJob, link: Link) -> tuple[str, str]:
    """The name and text of the single file of the report ``report_type`` of ``job``."""
    if report_type == "full":
        return full_report(job, link)
    if report_type == "aggregated":
        return aggregated_report(job, link)
    if report_type == "json":
        return json_report(job, link)
    builders = {"gold_report": gold_report, "workset": workset_report, "source": source_report}
    return builders[report_type](job)


def _cell(job: CrowdJob, link: Link, j: SimJudgment) -> dict[str, Any] | None:
    if j.annotation is None:
        return None
    return {"url": link(job.job_id, j.judgment_id), "instances": [],
            "imageWidth": None, "imageHeight": None}


def full_report(job: CrowdJob, link: Link) -> tuple[str, str]:
    """The full report: one row per judgment."""
    columns = [*FULL_REPORT_COLUMNS, "annotation", "broken_link", "annotation_gold",
               "broken_link_gold", "identifier", "image_url"]
    rows = []
    for j in job.judgments:
        unit, w = job.units_by_id[j.unit_id], j.worker
        cell = _cell(job, link, j)
        rows.append([
            j.unit_id, _date(j.created_at), _bool(j.golden), j.judgment_id, "",
            _date(j.started_at), _bool(w.tainted), w.channel, w.trust, w.worker_id,
            w.country, w.region, w.city, w.ip,
            "" if cell is None else json.dumps(cell), _bool(j.broken_link), "", "",
            unit.identifier, unit.image_url,
        ])
    return f"f{job.job_id}.csv", _csv(columns, rows)


def aggregated_report(job: CrowdJob, link: Link) -> tuple[str, str]:
    """The aggregated report: one row per unit, its most trusted annotation."""
    columns = ["_unit_id", "_golden", "_unit_state", "_trusted_judgments",
               "_last_judgment_at", "annotation", "annotation:confidence", "broken_link",
               "broken_link:confidence", "identifier", "image_url"]
    rows = []
    for unit, judgments in _by_unit(job):
        best = _best(judgments)
        broken = sum(j.broken_link for j in judgments)
        cell = None if best is None else _cell(job, link, best)
        rows.append([
            unit.unit_id, "false", "finalized", len(judgments),
            _date(max(j.created_at for j in judgments)),
            "" if cell is None else json.dumps(cell),
            "" if best is None else best.worker.trust,
            _bool(broken * 2 > len(judgments) or best is None),
            round(max(broken, len(judgments) - broken) / len(judgments), 4),
            unit.identifier, unit.image_url,
        ])
    return f"a{job.job_id}.csv", _csv(columns, rows)


def json_report(job: CrowdJob, link: Link) -> tuple[str, str]:
    """The JSON report: one line per unit with all its judgments."""
    lines = []
    for unit, judgments in _by_unit(job):
        best = _best(judgments)
        data = {"identifier": unit.identifier, "image_url": unit.image_url}
        results: dict[str, Any] = {"judgments": [
            {"id": j.judgment_id, "unit_id": unit.unit_id, "job_id": job.job_id,
             "created_at": j.created_at.isoformat(), "started_at": j.started_at.isoformat(),
             "external_type": j.worker.channel, "golden": j.golden, "missed": None,
             "tainted": j.worker.tainted, "worker_id": j.worker.worker_id,
             "worker_trust": j.worker.trust, "country": j.worker.country,
             "region": j.worker.region, "city": j.worker.city, "ip": j.worker.ip,
             "unit_state": "finalized",
             "data": {"annotation": _cell(job, link, j) or "",
                      "broken_link": _bool(j.broken_link)},
             "unit_data": data}
            for j in judgments
        ]}
        results["annotation"] = {
            "agg": None if best is None else _cell(job, link, best),
            "confidence": None if best is None else best.worker.trust,
        }
        lines.append(json.dumps({
            "id": unit.unit_id, "data": data, "job_id": job.job_id, "state": "finalized",
            "judgments_count": len(judgments), "missed_count": 0, "gold_pool": None,
            "created_at": unit.created_at.isoformat(), "results": results,
        }))
    return f"job_{job.job_id}.json", "".join(line + "\n" for line in lines)


def _date(when: datetime) -> str:
    return f"{when.month}/{when.day}/{when.year} {when:%H:%M:%S}"


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _csv(columns: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return buf.getvalue()


def _by_unit(job: CrowdJob) -> list[tuple[SimUnit, list[SimJudgment]]]:
    grouped: dict[int, list[SimJudgment]] = {u.unit_id: [] for u in job.units}
    for j in job.judgments:
        grouped[j.unit_id].append(j)
    return [(job.units_by_id[uid], js) for uid, js in grouped.items() if js]


def _best(judgments: Sequence[SimJudgment]) -> SimJudgment | None:
    good = [j for j in judgments if j.annotation is not None]
    return min(good, key=lambda j: (j.worker.tainted, -j.worker.trust), default=None)


def gold_report(job: CrowdJob) -> tuple[str, str]:
    """The gold report (no test questions in a simulated job: the header only)."""
    columns = ["_unit_id", "_golden", "_missed_count", "_judgments_count", "_contention",
               "annotation_gold", "annotation_gold_reason", "broken_link_gold",
               "identifier", "image_url"]
    return f"gold_report_{job.job_id}.csv", _csv(columns, [])


def workset_report(job: CrowdJob) -> tuple[str, str]:
    """The workset report: one row per worker."""
    columns = ["worker_id", "external_type", "judgments_count", "missed_count", "golds_count",
               "forgiven_count", "channel", "country", "region", "city", "last_ip",
               "flagged_at", "rejected_at", "bonus", "flag_reason", "trust_overall",
               "tainted"]
    counts = Counter(j.worker for j in job.judgments)
    rows = [[w.worker_id, w.channel, n, 0, 0, 0, w.channel, w.country, w.region, w.city,
             w.ip, "", "", 0, "", w.trust, _bool(w.tainted)]
            for w, n in sorted(counts.items(), key=lambda item: item[0].worker_id)]
    return f"workset_{job.job_id}.csv", _csv(columns, rows)


def source_report(job: CrowdJob) -> tuple[str, str]:
    """The source report: one row per unit as uploaded."""
    columns = ["_unit_id", "_created_at", "_golden", "_unit_state", "identifier", "image_url"]
    rows = [[u.unit_id, _date(u.created_at), "false", "finalized", u.identifier, u.image_url]
            for u in job.units]
    return f"source_{job.job_id}.csv", _csv(columns, rows)
