"""Close the loop: send units that need another judgment back to the job, once each.

A unit needs another judgment when

* every judgment of its montage reported a broken link (:func:`still_broken`);
* none of its annotations could be downloaded (listed in ``wf.failures_csv`` and no
  judgment file on disk);
* with ``min_agreement``: the consensus of its judgments agreed poorly, read from
  ``wf.consensus_report_path(montage)`` (``mean_agreement``, the annotators' mean F1
  against the consensus; montages without such a report are left alone).

:func:`resend_units` writes those rows (``identifier,image_url``, the upload format)
to ``wf.resend_csv(job_id)``; unless ``dry_run``, it adds them to the job with
``POST {base}/jobs/{id}/upload.json`` (JSON lines, one object per row; the method and
the answer's shape are UNVERIFIED: older clients used ``PUT``) and records them in
``wf.resent`` (keyed by ``image_url``), so a row is never sent twice: running it again
sends nothing. The upload is *not* retried automatically (a retried POST whose first
answer was lost could add the rows twice): a failure raises, nothing is recorded, and
the next run tries again. A run killed after the service accepted the rows but before
they were recorded would send them again (a window of one write).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Config
from .errors import InputError
from .files import atomic_write_text, natural_key
from .layout import WorkingFolder

__all__ = ["ResendResult", "ResendRow", "resend_units", "units_to_resend"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResendRow:
    """A unit to judge again: the uploaded row and why."""

    montage: str
    identifier: str
    image_url: str
    reason: str


@dataclass(frozen=True)
class ResendResult:
    """What :func:`resend_units` did."""

    csv: Path
    rows: tuple[ResendRow, ...]
    already_sent: int
    sent: bool


def _failed_montages(wf: WorkingFolder, job_id: int, judgments: Sequence[Any]) -> set[str]:
    """Montages in the failures CSV with no judgment file on disk."""
    path = wf.failures_csv(job_id)
    if not path.is_file():
        return set()
    with open(path, encoding="utf-8", newline="") as fh:
        listed = {row.get("montage", "") for row in csv.DictReader(fh)}
    have = {j.montage for j in judgments
            if j.usable and wf.judgment_path(j.montage, j.unit_id, j.judgment_id).is_file()}
    return {m for m in listed if m and m not in have}


def _agreement(wf: WorkingFolder, montage: str) -> float | None:
    """The consensus report's ``mean_agreement`` of a montage (None if absent)."""
    try:
        data = json.loads(wf.consensus_report_path(montage).read_text(encoding="utf-8"))
        return float(data["mean_agreement"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def units_to_resend(config: Config, *, min_agreement: float | None = None) -> list[ResendRow]:
    """Every unit that needs another judgment (see the module docstring), by montage."""
    from .appen.report import read_report, still_broken

    wf = config.working_folder()
    report = wf.report_csv(config.job_id, config.service.report_type)
    if not report.is_file():
        raise InputError("no report yet: run `cellcrowd report CONFIG` (or watch) first",
                         path=report)
    judgments = read_report(report, report_type=config.service.report_type)
    first: dict[str, Any] = {}
    for j in judgments:
        first.setdefault(j.montage, j)
    reasons = dict.fromkeys(still_broken(judgments), "broken link in every judgment")
    for name in _failed_montages(wf, config.job_id, judgments):
        reasons.setdefault(name, "no annotation could be downloaded")
    if min_agreement is not None:
        for name in first:
            score = _agreement(wf, name)
            if score is not None and score < min_agreement:
                reasons.setdefault(name, f"annotators agree poorly (mean F1 {score:.2f} < "
                                         f"{min_agreement:.2f})")
    return [ResendRow(name, first[name].identifier, first[name].image_url, reason)
            for name, reason in sorted(reasons.items(), key=lambda kv: natural_key(kv[0]))]


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


def _csv_text(rows: Sequence[ResendRow]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["identifier", "image_url"])
    writer.writerows([r.identifier, r.image_url] for r in rows)
    return buf.getvalue()


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
        Also resend montages whose consensus agreed less than this (0 to 1).

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
    path = atomic_write_text(wf.resend_csv(config.job_id), _csv_text(rows))
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
