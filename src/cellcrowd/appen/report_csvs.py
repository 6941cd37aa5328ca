"""The CSVs written from a job report: broken links, re-uploads, rows that were not used.

Broken links
    A montage is *still broken* when at least one judgment of it reported a broken link
    and no judgment of it has a usable annotation. In the seed notebook the good
    judgment comes later in the report (the row was re-uploaded and annotated); here any
    good judgment of the same image clears its broken ones, so one worker's broken link
    never discards another worker's annotation. :func:`write_broken_link_csvs` writes
    ``CSV/job_{id}_{type}_report_broken_links.csv`` (every column of the broken rows of
    still-broken montages) and ``CSV/job_{id}_reupload.csv`` (``identifier,image_url``,
    one row per still-broken image). When nothing is still broken no file is written,
    and stale ones from an earlier run are removed, so an old re-upload list is never
    mistaken for a current one.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..files import atomic_write_text, natural_key, remove_file
from ..layout import WorkingFolder
from ..uploadcsv import write_upload_csv

if TYPE_CHECKING:
    from .report import Judgment, Report

__all__ = ["still_broken", "write_broken_link_csvs", "write_problems_csv"]

logger = logging.getLogger(__name__)

_REPORT_NAME = re.compile(r"^job_.+?_(?P<type>[a-z_]+?)_report\.csv$")


def still_broken(judgments: Iterable[Judgment]) -> list[str]:
    """Montages with a broken-link judgment and no usable one, in natural order."""
    broken: set[str] = set()
    good: set[str] = set()
    for j in judgments:
        if j.usable:
            good.add(j.montage)
        elif j.broken_link:
            broken.add(j.montage)
    return sorted(broken - good, key=natural_key)


def write_broken_link_csvs(
    judgments: Sequence[Judgment], report_csv: str | Path, wf: WorkingFolder,
    job_id: int | str, *, report_type: str | None = None,
) -> list[str]:
    """Write the broken-link and re-upload CSVs; return the still-broken montage names.

    Parameters
    ----------
    judgments : sequence of Judgment
        The report's judgments (a :class:`Report` or any list).
    report_csv : Path
        The report they came from; its name gives the report type when
        ``report_type`` is not given (``job_{id}_{type}_report.csv``).
    wf : WorkingFolder
        Where the CSVs go (``wf.broken_links_csv``, ``wf.reupload_csv``).
    job_id : int or str
        The job.

    Returns
    -------
    list of str
        Montage names (image file names without suffix) that no judgment annotated.
    """
    kind = report_type or _type_from_name(Path(report_csv), judgments)
    broken_csv, reupload_csv = wf.broken_links_csv(job_id, kind), wf.reupload_csv(job_id)
    names = still_broken(judgments)
    if not names:
        for stale in (broken_csv, reupload_csv):
            if stale.exists():
                logger.info("no broken links left: removing the old %s", stale.name)
                remove_file(stale)
        return []
    wanted = set(names)
    rows = [j for j in judgments if j.broken_link and j.montage in wanted]
    columns = list(getattr(judgments, "columns", ()) or ())
    for j in rows:
        columns.extend(k for k in j.row if k not in columns)
    atomic_write_text(broken_csv, _csv_text(columns, (j.row for j in rows)))
    first: dict[str, Judgment] = {}
    for j in rows:
        first.setdefault(j.montage, j)
    write_upload_csv(reupload_csv, ((j.identifier, j.image_url) for j in
                                    sorted(first.values(), key=lambda j: natural_key(j.montage))))
    logger.warning("%d montage(s) still have broken links: listed in %s, ready to re-upload "
                   "from %s", len(names), broken_csv.name, reupload_csv.name)
    return names


def write_problems_csv(report: Report, wf: WorkingFolder, job_id: int | str) -> Path | None:
    """Write ``wf.report_problems_csv(job_id)`` (row, unit, judgment, image_url, reason).

    Returns the file, or None when the report has no problems (a stale file is removed).
    """
    path = wf.report_problems_csv(job_id)
    if not report.problems:
        if path.exists():
            logger.info("no report problems left: removing the old %s", path.name)
            remove_file(path)
        return None
    rows = ({"row": str(p.row), "unit": p.unit_id, "judgment": p.judgment_id,
             "image_url": p.image_url, "reason": p.reason} for p in report.problems)
    atomic_write_text(path, _csv_text(["row", "unit", "judgment", "image_url", "reason"], rows))
    logger.warning("%d report row(s) could not be used: listed with the reasons in %s",
                   len(report.problems), path)
    return path


def _type_from_name(report_csv: Path, judgments: Sequence[Judgment]) -> str:
    kind = getattr(judgments, "report_type", None)
    match = _REPORT_NAME.match(report_csv.name)
    if match:
        return match["type"]
    return kind if isinstance(kind, str) else "full"


def _csv_text(columns: Sequence[str], rows: Iterable[Mapping[str, str]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n",
                            extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
