"""Units that need another judgment: the one rule ``cellcrowd review`` and ``resend`` share.

After ``cellcrowd run``, :func:`units_needing_judgment` looks at every montage of the
report and picks those that need another judgment, each with its reason:

``broken``
    every judgment reported a broken link (nothing could be annotated);
``failed``
    it has usable judgments but no clean labels: either none of its annotations
    could be downloaded (no judgment file on disk), or they could not be read or
    their consensus failed (see ``cellcrowd status``);
``low agreement``
    its annotators agree with their consensus less than ``min_agreement`` (``[clean]
    min_agreement``; the mean F1, ``mean_agreement`` of
    ``{id}_labels/{montage}_consensus.json``; montages without such a report are left
    alone).

:func:`write_review_csv` writes them as ``CSV/job_{id}_review.csv`` in the
re-upload CSV's format (``identifier,image_url``, one row per montage, in
natural order), so the rows can be uploaded as new units. With nothing to
review, no file is written and a stale one is removed. :mod:`cellcrowd.resend`
sends the same units back to the job (those not sent before).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .appen.report import Judgment, read_report, still_broken
from .errors import InputError
from .files import natural_key, remove_file
from .layout import WorkingFolder
from .uploadcsv import write_upload_csv

__all__ = ["ReviewItem", "job_units_needing_judgment", "review_units", "units_needing_judgment",
           "write_review_csv"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReviewItem:
    """One montage to judge again: its upload row and why."""

    montage: str
    identifier: str
    image_url: str
    reason: str


def _agreement(wf: WorkingFolder, montage: str) -> float | None:
    path = wf.consensus_report_path(montage)
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))["mean_agreement"]
        return float(value)
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"unreadable consensus report ({exc}): run `cellcrowd clean "
                         "--force` to write it again", path=path) from None


def _reason(wf: WorkingFolder, name: str, judgments: Sequence[Judgment],
            min_agreement: float) -> str | None:
    """Why the montage ``name`` (not broken) needs another judgment, or None."""
    usable = [j for j in judgments if j.usable]
    if not usable:
        return None
    if not wf.label_path(name).is_file():
        if not any(wf.judgment_path(name, j.unit_id, j.judgment_id).is_file() for j in usable):
            return "failed: no annotation could be downloaded (see `cellcrowd status`)"
        return "failed: no clean labels (see `cellcrowd status`)"
    agreement = _agreement(wf, name)
    if agreement is not None and agreement < min_agreement:
        return f"low agreement: {agreement:.2f} < {min_agreement:.2f} (mean F1)"
    return None


def units_needing_judgment(wf: WorkingFolder, judgments: Sequence[Judgment], *,
                           min_agreement: float = 0.7) -> list[ReviewItem]:
    """Every montage that needs another judgment, and why (see the module docstring).

    The one selection of ``cellcrowd review`` and ``cellcrowd resend``; in natural
    order of the montages.

    Raises
    ------
    InputError
        If the clean stage has not run yet (every usable unit would look failed), or a
        consensus report cannot be read (the message names it).
    """
    if not wf.labels.is_dir() and any(j.usable for j in judgments):
        raise InputError("no clean labels yet: run `cellcrowd run CONFIG` first (else every "
                         "annotated unit would look failed)", path=wf.labels)
    broken = set(still_broken(judgments))
    by_montage: dict[str, list[Judgment]] = {}
    for j in judgments:
        by_montage.setdefault(j.montage, []).append(j)
    items = []
    for name in sorted(by_montage, key=natural_key):
        js = by_montage[name]
        reason = (_reason(wf, name, js, min_agreement) if name not in broken
                  else "broken: every judgment reported a broken link")
        if reason is not None:
            items.append(ReviewItem(name, js[0].identifier, js[0].image_url, reason))
    return items


#: The former name of :func:`units_needing_judgment`.
review_units = units_needing_judgment


def job_units_needing_judgment(wf: WorkingFolder, job_id: int | str, *,
                               report_type: str = "full",
                               min_agreement: float = 0.7) -> list[ReviewItem]:
    """:func:`units_needing_judgment` of the job's downloaded report.

    Raises
    ------
    InputError
        If the report has not been downloaded yet, or as :func:`units_needing_judgment`.
    """
    report = wf.report_csv(job_id, report_type)
    if not report.is_file():
        raise InputError("no report yet: run `cellcrowd run CONFIG` (or `cellcrowd report`) "
                         "first", path=report)
    judgments = read_report(report, report_type=report_type)
    return units_needing_judgment(wf, judgments, min_agreement=min_agreement)


def write_review_csv(wf: WorkingFolder, job_id: int | str, *, report_type: str = "full",
                     min_agreement: float = 0.7) -> tuple[Path, list[ReviewItem]]:
    """Write ``wf.review_csv(job_id)`` for the units :func:`units_needing_judgment` finds.

    Returns the CSV's path (absent when there is nothing to review) and the items.

    Raises
    ------
    InputError
        As :func:`job_units_needing_judgment`.
    """
    items = job_units_needing_judgment(wf, job_id, report_type=report_type,
                                       min_agreement=min_agreement)
    path = wf.review_csv(job_id)
    if not items:
        if path.exists():
            logger.info("nothing to review: removing the old %s", path.name)
            remove_file(path)
        return path, items
    write_upload_csv(path, ((i.identifier, i.image_url) for i in items))
    logger.info("%d unit(s) to judge again: %s", len(items), path)
    return path, items
