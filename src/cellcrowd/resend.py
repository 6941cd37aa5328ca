"""Close the loop: send units that need another judgment back to the job, once each.

The units are exactly those ``cellcrowd review`` lists
(:func:`cellcrowd.review.units_needing_judgment`: every link broken, no annotation
downloaded or no clean labels, agreement below ``[clean] min_agreement``).
:func:`resend_units` writes those not sent before (``identifier,image_url``, the upload
format) to ``wf.resend_csv(job_id)``; unless ``dry_run``, it adds them to the job with
``POST {base}/jobs/{id}/upload.json`` (JSON lines, one object per row; the method and
the answer's shape are UNVERIFIED: older clients used ``PUT``) and records them in
``wf.resent`` (keyed by ``image_url``), so a row is never sent twice: running it again
sends nothing. The upload is *not* retried automatically (a retried POST whose first
answer was lost could add the rows twice): a failure raises, nothing is recorded, and
the next run tries again. A run killed after the service accepted the rows but before
they were recorded would send them again (a window of one write).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Config
from .errors import InputError
from .files import atomic_write_text
from .layout import WorkingFolder
from .review import ReviewItem, job_units_needing_judgment
from .uploadcsv import write_upload_csv

__all__ = ["ResendResult", "ResendRow", "resend_units", "units_to_resend"]

logger = logging.getLogger(__name__)

#: A unit to judge again: the uploaded row and why (the same record ``review`` lists).
ResendRow = ReviewItem


@dataclass(frozen=True)
class ResendResult:
    """What :func:`resend_units` did."""

    csv: Path
    rows: tuple[ResendRow, ...]
    already_sent: int
    sent: bool


def units_to_resend(config: Config, *, min_agreement: float | None = None) -> list[ResendRow]:
    """Every unit that needs another judgment, as ``cellcrowd review`` selects them.

    ``min_agreement`` replaces ``config.clean.min_agreement``.

    Raises
    ------
    InputError
        If the report has not been downloaded yet, the clean stage has not run, or a
        consensus report cannot be read.
    """
    threshold = config.clean.min_agreement if min_agreement is None else min_agreement
    return job_units_needing_judgment(config.working_folder(), config.job_id,
                                      report_type=config.service.report_type,
                                      min_agreement=threshold)


def _ledger(wf: WorkingFolder) -> dict[str, Any]:
    try:
        data = json.loads(wf.resent.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise InputError(f"the record of rows already sent is unreadable ({exc}); fix or "
                         "delete it (rows listed in it may then be sent again)",
                         path=wf.resent) from None
    return data if isinstance(data, dict) else {}


def resend_units(
    config: Config,
    *,
    api_key: Callable[[], str] | None = None,
    dry_run: bool = False,
    min_agreement: float | None = None,
) -> ResendResult:
    """Write the rows to send back, and (unless ``dry_run``) add them to the job once.

    Parameters
    ----------
    config : Config
        The working folder and job.
    api_key : callable, optional
        Returns the API key (not called for a dry run).
    dry_run : bool
        Only write ``wf.resend_csv(job_id)``.
    min_agreement : float, optional
        Replaces ``[clean] min_agreement``: resend montages whose annotators agree less
        with their consensus (mean F1, 0 to 1).

    Returns
    -------
    ResendResult
        The CSV, the rows not sent before, how many were sent before, whether sent now.
    """
    from .appen.client import AppenClient

    wf = config.working_folder()
    ledger = _ledger(wf)
    wanted = units_to_resend(config, min_agreement=min_agreement)
    rows = tuple(r for r in wanted if r.image_url not in ledger)
    path = write_upload_csv(wf.resend_csv(config.job_id),
                            ((r.identifier, r.image_url) for r in rows))
    done = len(wanted) - len(rows)
    if dry_run or not rows:
        logger.info("%d row(s) to send back written to %s (%d sent before)%s", len(rows),
                    path.name, done, "; dry run: nothing sent" if dry_run else "")
        return ResendResult(path, rows, done, False)
    body = "".join(json.dumps({"identifier": r.identifier, "image_url": r.image_url}) + "\n"
                   for r in rows).encode()
    from .config import get_api_key

    key = api_key() if api_key is not None else get_api_key(prompt=False)
    with AppenClient(key, base_url=config.service.api_url, max_retries=0) as client:
        client.send("POST", f"{client.base_url}/jobs/{config.job_id}/upload.json",
                    handle=lambda response: response.read(),
                    content=body, headers={"Content-Type": "application/json"},
                    what=f"adding {len(rows)} row(s) to job {config.job_id}")
    for r in rows:
        ledger[r.image_url] = {"montage": r.montage, "reason": r.reason}
    wf.state.mkdir(parents=True, exist_ok=True)
    atomic_write_text(wf.resent, json.dumps(ledger, indent=1, sort_keys=True) + "\n")
    logger.info("sent %d row(s) back to job %d (listed in %s)", len(rows), config.job_id,
                path.name)
    return ResendResult(path, rows, done, True)
