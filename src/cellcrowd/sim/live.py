"""A job that is still running, for the emulator: units finish over time, webhooks fire.

:class:`LiveJob` wraps a finished :class:`~cellcrowd.sim.crowd.CrowdJob` and lets
its units complete one by one, in a random (seeded) order, spread over ``duration``
seconds of a clock. The clock is any function returning seconds: :class:`ManualClock`
(tests move it by hand, nothing waits), or :class:`WallClock` (real time, optionally
sped up). All judgments of a unit appear together when the unit completes; once every
unit is complete the job is exactly the wrapped one, so its reports are byte-identical
to those of a job served finished.

What the emulator serves for a live job (hooks in :mod:`cellcrowd.sim.emulator`)
    * reports are *snapshots*, as on the service: a report shows the units complete when
      it was first asked for after the latest ``POST …/regenerate`` (a client that wants
      fresh results regenerates);
    * ``GET /v1/jobs/{id}/ping.json``: ``all_units``, ``completed_units_estimate``,
      ``needed_judgments``, ``all_judgments``, …; ``GET /v1/jobs/{id}.json``: ``state``
      ``running`` until every unit is complete, then ``finished``;
    * ``GET /v3/jobs/{id}/status`` (the newer job-status endpoint; its exact path is
      UNVERIFIED): ``completionPercentage``, ``totalUnits``, ``submittedUnits``,
      ``totalJudgments``, ``submittedJudgments``, ``state`` (``RUNNING``/``COMPLETED``).

Webhooks (:class:`WebhookSender`)
    When units complete, the emulator's pump thread (or a test calling
    :meth:`LiveJob.pump`) POSTs form fields ``signal`` (``unit_complete``, then
    ``job_complete``), ``payload`` (JSON) and ``signature`` = SHA-1 hex of
    ``payload + token`` to the job's webhook URL. A failed delivery (connection error or
    an answer other than 2xx) is retried a few times with a short capped backoff (the
    service retries for hours; that is shortened here), then given up (counted). Chosen
    deliveries (by their 0-based sequence number) are *lost* (never sent) or *duplicated*
    (sent twice), as happens with the real service.

Re-uploaded rows (:class:`RowInbox`)
    ``POST`` (or ``PUT``) ``/v1/jobs/{id}/upload.json`` with JSON lines (one object per
    row, ``Content-Type: application/json``) or a CSV body (``text/csv``) adds rows to
    a job; the answer is ``{"count": n}``. Rows are recorded in
    :attr:`RowInbox.rows` (the simulated crowd does not judge them). The method and the
    answer's shape are UNVERIFIED (older clients sent ``PUT`` with ``curl -T``).
"""

from __future__ import annotations

import bisect
import csv
import hashlib
import io
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
import numpy as np

from .crowd import CrowdJob

__all__ = [
    "LiveJob",
    "ManualClock",
    "RowInbox",
    "WallClock",
    "WebhookPump",
    "WebhookSender",
    "sign_payload",
]

logger = logging.getLogger(__name__)

_MAX_UPLOAD = 16 << 20


def sign_payload(payload: str, token: str) -> str:
    """The service's webhook signature: SHA-1 hex of ``payload + token``.

    >>> sign_payload('{"id": 1}', "t") == hashlib.sha1(b'{"id": 1}t').hexdigest()
    True
    """
    return hashlib.sha1((payload + token).encode("utf-8")).hexdigest()


class ManualClock:
    """A clock tests move by hand (seconds; starts at 0).

    >>> clock = ManualClock()
    >>> clock.advance(2.5)
    >>> clock()
    2.5
    """

    def __init__(self, now: float = 0.0) -> None:
        self._now = now
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward (never back)."""
        if seconds < 0:
            raise ValueError(f"a clock only moves forward, got {seconds} s")
        with self._lock:
            self._now += seconds


class WallClock:
    """Real time since the clock was made, times ``speed``."""

    def __init__(self, speed: float = 1.0) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be positive, got {speed}")
        self.speed = speed
        self._start = time.monotonic()

    def __call__(self) -> float:
        return (time.monotonic() - self._start) * self.speed


@dataclass
class WebhookSender:
    """Delivers signed webhooks to one URL, with retries, losses and duplicates.

    Parameters
    ----------
    url : str
        Where to POST (the job's ``webhook_uri``).
    token : str
        The job's webhook token (signs every payload).
    lost, duplicated : collection of int
        Sequence numbers (0-based, in the order deliveries are made) never sent / sent twice.
    retries : int
        Further attempts after a failed one.
    backoff : float
        First retry delay in seconds (doubled each time, at most 1 s).
    timeout : float
        Seconds to wait for the receiver.
    sleep : callable
        Every wait between retries goes through it.

    Not thread-safe by itself: :meth:`LiveJob.pump` makes one delivery at a time.
    """

    url: str
    token: str
    lost: Collection[int] = ()
    duplicated: Collection[int] = ()
    retries: int = 3
    backoff: float = 0.05
    timeout: float = 2.0
    sleep: Callable[[float], None] = time.sleep
    counts: Counter[str] = field(default_factory=Counter)
    sent: list[tuple[str, str, str]] = field(default_factory=list)
    _seq: int = field(default=0, init=False, repr=False)

    def deliver(self, signal: str, payload: str) -> None:
        """Send one webhook (or lose it, or send it twice), as chosen by its number."""
        seq, self._seq = self._seq, self._seq + 1
        if seq in self.lost:
            self.counts["lost"] += 1
            logger.debug("emulator webhook %d (%s) lost on purpose", seq, signal)
            return
        form = {"signal": signal, "payload": payload,
                "signature": sign_payload(payload, self.token)}
        for _ in range(2 if seq in self.duplicated else 1):
            self._post(form)
        if seq in self.duplicated:
            self.counts["duplicated"] += 1

    def _post(self, form: dict[str, str]) -> None:
        for attempt in range(self.retries + 1):
            try:
                response = httpx.post(self.url, data=form, timeout=self.timeout)
                ok = 200 <= response.status_code < 300
                reason = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                ok, reason = False, type(exc).__name__
            if ok:
                self.counts["delivered"] += 1
                self.sent.append((form["signal"], form["payload"], form["signature"]))
                return
            self.counts["failed_attempts"] += 1
            if attempt < self.retries:
                self.sleep(min(1.0, self.backoff * 2**attempt))
        self.counts["given_up"] += 1
        logger.debug("emulator webhook %s not delivered (%s)", form["signal"], reason)


class RowInbox:
    """Rows added to jobs through ``upload.json`` (see the module docstring)."""

    def __init__(self) -> None:
        self.rows: dict[int, list[dict[str, str]]] = {}
        self._lock = threading.Lock()

    def add(self, job_id: int, body: bytes, content_type: str) -> int:
        """Parse and record a body's rows; return how many (ValueError when unreadable)."""
        if len(body) > _MAX_UPLOAD:
            raise ValueError(f"the upload is larger than {_MAX_UPLOAD} bytes")
        text = body.decode("utf-8-sig")
        if "csv" in content_type:
            rows = [dict(r) for r in csv.DictReader(io.StringIO(text, newline=""))]
        else:
            rows = []
            for number, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    item = json.loads(line)
                    if not isinstance(item, dict):
                        raise ValueError(f"line {number} is not a JSON object")
                    rows.append({str(k): str(v) for k, v in item.items()})
        with self._lock:
            self.rows.setdefault(job_id, []).extend(rows)
        return len(rows)


class LiveJob:
    """A job whose units complete over ``duration`` seconds of ``clock``.

    Parameters
    ----------
    job : CrowdJob
        The job as it is once complete.
    duration : float
        Seconds (of ``clock``) by which every unit is complete.
    clock : callable
        Returns the current time in seconds (:class:`ManualClock`, :class:`WallClock`).
    seed : int
        Seeds the order and times at which units complete.
    webhooks : WebhookSender, optional
        Where completions are announced.

    Examples
    --------
    >>> live = LiveJob(CrowdJob(7, "t", (), ()), duration=1.0, clock=ManualClock())
    >>> live.complete
    True
    """

    def __init__(self, job: CrowdJob, *, duration: float, clock: Callable[[], float],
                 seed: int = 0, webhooks: WebhookSender | None = None) -> None:
        if duration <= 0:
            raise ValueError(f"duration must be positive, got {duration}")
        self.job, self.clock, self.webhooks = job, clock, webhooks
        units = sorted({j.unit_id for j in job.judgments})
        rng = np.random.default_rng(seed)
        self.order: tuple[int, ...] = tuple(units[i] for i in rng.permutation(len(units)))
        self.times: tuple[float, ...] = tuple(
            sorted(float(t) for t in rng.uniform(0.0, duration, size=len(units))))
        self._announced = 0
        self._lock = threading.Lock()
        self._pump_lock = threading.Lock()  # one pump at a time: deliveries stay in order
        self._snapshots: dict[int, CrowdJob] = {}

    @property
    def job_id(self) -> int:
        return self.job.job_id

    def completed(self) -> int:
        """How many units are complete now."""
        return bisect.bisect_right(self.times, self.clock())

    @property
    def complete(self) -> bool:
        return self.completed() == len(self.order)

    def job_at(self, done: int) -> CrowdJob:
        """The job as it was when ``done`` units were complete (the job itself when all)."""
        if done >= len(self.order):
            return self.job
        with self._lock:
            cached = self._snapshots.get(done)
            if cached is None:
                finished = set(self.order[:done])
                cached = replace(self.job, judgments=tuple(
                    j for j in self.job.judgments if j.unit_id in finished))
                self._snapshots[done] = cached
        return cached

    def ping(self) -> dict[str, Any]:
        """``ping.json``'s counts now."""
        done = self.completed()
        visible = self.job_at(done).judgments
        units = len(self.job.units)
        return {"all_units": units, "golden_units": 0, "ordered_units": units,
                "completed_units_estimate": done + units - len(self.order),
                "needed_judgments": len(self.job.judgments) - len(visible),
                "all_judgments": len(visible),
                "tainted_judgments": sum(j.worker.tainted for j in visible),
                "completed_gold_estimate": 0,
                "completed_non_gold_estimate": done + units - len(self.order)}

    def attributes(self) -> dict[str, Any]:
        """``{id}.json``'s attributes now (``state`` running / finished)."""
        complete = self.complete
        return {"id": self.job_id, "title": self.job.title,
                "state": "finished" if complete else "running",
                "units_count": len(self.job.units), "completed": complete}

    def v3_status(self) -> dict[str, Any]:
        """The newer job-status answer now."""
        done, total = self.completed(), len(self.order)
        return {"jobId": self.job_id, "state": "COMPLETED" if done == total else "RUNNING",
                "completionPercentage": round(100.0 * done / total, 1) if total else 100.0,
                "totalUnits": len(self.job.units),
                "submittedUnits": done + len(self.job.units) - total,
                "totalJudgments": len(self.job.judgments),
                "submittedJudgments": len(self.job_at(done).judgments)}

    def pump(self) -> int:
        """Announce units completed since the last call (webhooks); return how many.

        Deliveries are made before it returns, one pump at a time.
        """
        if self.webhooks is None:
            return 0
        with self._pump_lock:
            return self._announce(self.webhooks)

    def _announce(self, webhooks: WebhookSender) -> int:
        done = self.completed()
        new = self.order[self._announced:done]
        self._announced = done
        finishing = bool(new) and done == len(self.order)
        counts = Counter(j.unit_id for j in self.job.judgments)
        for unit_id in new:
            unit = self.job.units_by_id[unit_id]
            payload = json.dumps({"id": unit_id, "job_id": self.job_id, "state": "finalized",
                                  "judgments_count": counts[unit_id],
                                  "data": {"identifier": unit.identifier,
                                           "image_url": unit.image_url}})
            webhooks.deliver("unit_complete", payload)
        if finishing:
            webhooks.deliver("job_complete", json.dumps(self.attributes()))
        return len(new)


class WebhookPump:
    """A thread calling every live job's :meth:`LiveJob.pump` until stopped."""

    def __init__(self, jobs: Sequence[LiveJob], interval: float = 0.05) -> None:
        self.jobs, self.interval = list(jobs), interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cellcrowd-emulator-webhooks",
                                        daemon=True)

    def start(self) -> None:
        if any(job.webhooks is not None for job in self.jobs):
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            for job in self.jobs:
                try:
                    job.pump()
                except Exception:  # keep pumping; the details are for debugging
                    logger.debug("emulator webhook pump failed", exc_info=True)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
