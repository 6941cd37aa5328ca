"""Units that need another judgment, as a CSV ready to upload to the service again.

After ``cellcrowd run``, :func:`review_units` looks at every montage of the report:

``broken``
    every judgment reported a broken link (nothing could be annotated);
``failed``
    it has usable judgments but no clean labels (downloads failed, annotations
    could not be read, or their consensus failed: see ``cellcrowd status``);
``low agreement``
    its annotators agree with their consensus less than ``min_agreement`` (mean
    F1, ``mean_agreement`` of ``{id}_labels/{montage}_consensus.json``).

:func:`write_review_csv` writes them as ``CSV/job_{id}_review.csv`` in the
re-upload CSV's format (``identifier,image_url``, one row per montage, in
natural order), so the rows can be uploaded as new units. With nothing to
review, no file is written and a stale one is removed.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .appen.report import Judgment, read_report, still_broken
from .errors import InputError
from .files import atomic_write_text, natural_key
from .layout import WorkingFolder

__all__ = ["ReviewItem", "review_units", "write_review_csv"]

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


def review_units(wf: WorkingFolder, judgments: Sequence[Judgment], *,
                 min_agreement: float = 0.7) -> list[ReviewItem]:
    """Every montage that needs another judgment, and why (see the module docstring).

    Raises
    ------
    InputError
        If a consensus report cannot be read (the message names it).
    """
    broken = set(still_broken(judgments))
    first: dict[str, Judgment] = {}
    usable: set[str] = set()
    for j in judgments:
        first.setdefault(j.montage, j)
        if j.usable:
            usable.add(j.montage)
    items = []
    for name in sorted(first, key=natural_key):
        agreement = _agreement(wf, name) if name in usable else None
        if name in broken:
            reason = "broken: every judgment reported a broken link"
        elif name in usable and not wf.label_path(name).is_file():
            reason = "failed: no clean labels (see `cellcrowd status`)"
        elif agreement is not None and agreement < min_agreement:
            reason = f"low agreement: {agreement:.2f} < {min_agreement:.2f} (mean F1)"
        else:
            continue
        items.append(ReviewItem(name, first[name].identifier, first[name].image_url, reason))
    return items


def write_review_csv(wf: WorkingFolder, job_id: int | str, *, report_type: str = "full",
                     min_agreement: float = 0.7) -> tuple[Path, list[ReviewItem]]:
    """Write ``wf.review_csv(job_id)`` for the units :func:`review_units` finds.

    Returns the CSV's path (absent when there is nothing to review) and the items.

    Raises
    ------
    InputError
        If the report has not been downloaded yet, or as :func:`review_units`.
    """
    judgments = read_report(wf.report_csv(job_id, report_type), report_type=report_type)
    items = review_units(wf, judgments, min_agreement=min_agreement)
    path = wf.review_csv(job_id)
    if not items:
        if path.exists():
            logger.info("nothing to review: removing the old %s", path.name)
            path.unlink()
        return path, items
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerows([("identifier", "image_url"), *((i.identifier, i.image_url) for i in items)])
    atomic_write_text(path, buf.getvalue())
    logger.info("%d unit(s) to judge again: %s", len(items), path)
    return path, items
