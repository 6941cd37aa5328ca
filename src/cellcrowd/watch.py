"""Follow a running job: harvest units as they finish, until the job completes.

:func:`watch` loops, one *round* at a time:

1. read the job's progress (``GET /v1/jobs/{id}/ping.json`` for the counts and
   ``GET /v1/jobs/{id}.json`` for the state, see :func:`job_progress`);
2. when the job has judgments the last harvest did not see (and in the first round once
   there are judgments at all, so that an interrupted harvest is finished), *harvest*:
   ask the service to regenerate the report (a report is a snapshot) and run the
   pipeline with the report stage forced (:func:`cellcrowd.pipeline.run`): the fetch
   stage downloads only annotations not already on disk, and the manifest redoes only
   stages whose inputs changed, the QC page included. Within those, clean, movies and
   npz redo only the units whose inputs changed (a montage's judgments, its label
   montage, a part's frames: :mod:`cellcrowd.pipeline.units`) and reuse the others'
   files; the round's log says how many units each redid and reused
   (:attr:`cellcrowd.pipeline.StageRun.units`). Stitch stitches only the parts whose
   frames changed (linking the parts and writing the frames run whole); trk, ctc,
   omezarr, geff and qc are redone whole when their inputs changed (they join every part);
3. stop once a harvest saw the job complete (or cancelled); otherwise wait ``interval``
   seconds, or less when a webhook wakes the loop (:mod:`cellcrowd.webhook`).

What the last harvest saw is kept in ``wf.watch_state`` (written atomically after each
harvest), so a watch that is stopped (Ctrl-C, a kill) and started again resumes. When
the job completes, the working folder holds exactly what one ``cellcrowd run`` after
completion writes: the last harvest downloads the complete report and the pipeline is
deterministic.

Every wait goes through one replaceable function (``wait``, default
:func:`wait_for_wake`) and is bounded by ``interval``; temporary service errors
(429/5xx, timeouts, a report still being generated) are logged and retried in the next
round, at most ``max_failures`` rounds in a row.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .config import Config
from .errors import ReportNotReadyError, TemporaryServiceError
from .executor import Executor, owned_executor
from .files import atomic_write_text
from .layout import WorkingFolder
from .pipeline import Progress, RunSummary, run

__all__ = [
    "JobProgress",
    "WatchResult",
    "WatchRound",
    "estimate_left",
    "harvest_text",
    "job_progress",
    "wait_for_wake",
    "watch",
]

logger = logging.getLogger(__name__)

_DONE_STATES = frozenset({"finished", "completed", "canceled", "cancelled"})
_TEMPORARY = (TemporaryServiceError, ReportNotReadyError)


@dataclass(frozen=True)
class JobProgress:
    """How far a job is: units complete / total, judgments made / still needed, state."""

    units_done: int
    units_total: int
    judgments: int
    judgments_needed: int
    state: str

    @property
    def complete(self) -> bool:
        """The job will get no more judgments (finished, or cancelled)."""
        if self.state.lower() in _DONE_STATES:
            return True
        return self.units_total > 0 and self.units_done >= self.units_total and (
            self.judgments_needed == 0)


def _count(data: dict[str, Any], key: str) -> int:
    value = data.get(key)
    try:
        return max(0, int(value)) if value is not None else 0
    except (TypeError, ValueError):
        return 0


def job_progress(client: Any, job_id: int) -> JobProgress:
    """The job's progress from ``ping.json`` and ``{id}.json`` (tolerant of missing keys)."""
    ping = client.ping(job_id)
    attributes = client.job_status(job_id)
    return JobProgress(
        units_done=_count(ping, "completed_units_estimate"),
        units_total=_count(ping, "all_units") or _count(attributes, "units_count"),
        judgments=_count(ping, "all_judgments"),
        judgments_needed=_count(ping, "needed_judgments"),
        state=str(attributes.get("state") or ""),
    )


def estimate_left(start: tuple[float, int], now: tuple[float, int], total: int
                  ) -> float | None:
    """Seconds left at the rate seen since ``start`` (``(time, units done)`` pairs).

    >>> estimate_left((0.0, 2), (10.0, 4), 10)  # 2 units in 10 s, 6 to go
    30.0
    >>> estimate_left((0.0, 2), (10.0, 2), 10) is None
    True
    """
    (t0, done0), (t1, done1) = start, now
    if done1 >= total:
        return 0.0
    if done1 <= done0 or t1 <= t0:
        return None
    return (total - done1) * (t1 - t0) / (done1 - done0)


def wait_for_wake(wake: threading.Event, seconds: float) -> bool:
    """Wait until ``wake`` is set or ``seconds`` pass; True when woken (then clear it)."""
    woken = wake.wait(max(0.0, seconds))
    wake.clear()
    return woken


@dataclass(frozen=True)
class WatchRound:
    """One round of :func:`watch`: the job's progress and whether it harvested."""

    number: int
    progress: JobProgress
    harvested: bool
    seconds_left: float | None
    summary: RunSummary | None = None
    error: str | None = None
    woken: bool = False


@dataclass(frozen=True)
class WatchResult:
    """How a watch ended."""

    rounds: int
    harvests: int
    complete: bool
    progress: JobProgress | None
    summary: RunSummary | None


def _read_state(wf: WorkingFolder, job_id: int) -> dict[str, Any]:
    try:
        data = json.loads(wf.watch_state.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and data.get("job_id") == job_id else {}


def _write_state(wf: WorkingFolder, job_id: int, progress: JobProgress) -> None:
    wf.state.mkdir(parents=True, exist_ok=True)
    atomic_write_text(wf.watch_state, json.dumps({
        "job_id": job_id, "judgments": progress.judgments, "complete": progress.complete,
        "units_done": progress.units_done, "units_total": progress.units_total,
    }, indent=1, sort_keys=True) + "\n")


def watch(
    config: Config,
    *,
    api_key: Callable[[], str],
    interval: float = 60.0,
    wake: threading.Event | None = None,
    stop: threading.Event | None = None,
    wait: Callable[[threading.Event, float], bool] = wait_for_wake,
    clock: Callable[[], float] = time.monotonic,
    on_round: Callable[[WatchRound], None] | None = None,
    after_harvest: Callable[[RunSummary], None] | None = None,
    progress: Progress | None = None,
    executor: Executor | None = None,
    max_rounds: int | None = None,
    max_failures: int = 10,
) -> WatchResult:
    """Follow ``config``'s job until it completes (see the module docstring).

    Parameters
    ----------
    config : Config
        The working folder and job.
    api_key : callable
        Returns the service's API key.
    interval : float
        Seconds between rounds when nothing wakes the loop.
    wake : threading.Event, optional
        Set (e.g. by a webhook receiver) to start the next round at once.
    stop : threading.Event, optional
        Set to end the watch after the current round.
    wait : callable
        ``wait(wake, seconds) -> woken``: every wait goes through it (the status
        requests' retries too).
    clock : callable
        Seconds, for the estimate of the time left.
    on_round : callable, optional
        Told about every round (the CLI prints progress with it).
    after_harvest : callable, optional
        Called with each harvest's summary (e.g. to send units back to the job).
    progress : Progress, optional
        Receives the pipeline's stage progress.
    executor : Executor, optional
        Shared by every harvest; default from ``config.executor``.
    max_rounds : int, optional
        End after this many rounds even if the job is not complete.
    max_failures : int
        Rounds in a row that may fail with temporary service errors before giving up.

    Returns
    -------
    WatchResult
    """
    from .appen.client import AppenClient

    if interval < 0:
        raise ValueError(f"interval must be 0 or more seconds, got {interval}")
    wake = wake or threading.Event()
    stop = stop or threading.Event()
    client = AppenClient(api_key(), base_url=config.service.api_url,
                         poll_interval=config.service.poll_interval,
                         sleep=_sleep_through(wait))
    with client, owned_executor(executor, config.executor.workers or None,
                                        config.executor.scheduler or None) as ex:
        rounds = _Rounds(config, client, lambda: run(
            config, force=["report"], executor=ex, progress=progress, api_key=api_key),
            clock, max_failures)
        woken = False
        while not stop.is_set() and (max_rounds is None or rounds.number < max_rounds):
            done = rounds.next(woken, after_harvest)
            if done is not None and on_round is not None:
                on_round(done)
            if done is not None and done.error is None and done.progress.complete:
                logger.info("job %d is complete: harvest finished", config.job_id)
                return rounds.result(complete=True)
            if stop.is_set() or (max_rounds is not None and rounds.number >= max_rounds):
                break
            woken = wait(wake, interval)
    return rounds.result(complete=False)


class _Rounds:
    """The state of a watch between rounds: progress seen, harvests, failures in a row."""

    def __init__(self, config: Config, client: Any, harvest: Callable[[], RunSummary],
                 clock: Callable[[], float], max_failures: int) -> None:
        self.config, self.client, self.harvest = config, client, harvest
        self.clock, self.max_failures = clock, max_failures
        self.wf = config.working_folder()
        self.number = self.harvests = self.failures = 0
        self.first: tuple[float, int] | None = None
        self.progress: JobProgress | None = None
        self.summary: RunSummary | None = None

    def next(self, woken: bool,
             after_harvest: Callable[[RunSummary], None] | None) -> WatchRound | None:
        """One round; None when not even the job's progress could be read."""
        self.number += 1
        job_id = self.config.job_id
        due, error = False, None
        try:
            self.progress = current = job_progress(self.client, job_id)
            seen = _read_state(self.wf, job_id)
            due = current.judgments > 0 and (self.harvests == 0 or current.complete or (
                current.judgments != seen.get("judgments")))
            if due:
                self.client.regenerate_report(job_id, self.config.service.report_type)
                self.summary = self.harvest()
                logger.info("harvested: %s", harvest_text(self.summary))
                _write_state(self.wf, job_id, current)
                self.harvests += 1
                if after_harvest is not None:
                    after_harvest(self.summary)
            self.failures = 0
        except _TEMPORARY as exc:
            self.failures += 1
            due, error = False, str(exc)
            logger.warning("round %d failed (%s); trying again in the next round",
                           self.number, exc)
            if self.failures >= self.max_failures:
                raise
        if self.progress is None:
            return None
        now = (self.clock(), self.progress.units_done)
        self.first = self.first or now
        left = estimate_left(self.first, now, self.progress.units_total)
        return WatchRound(self.number, self.progress, due, left,
                          self.summary if due else None, error, woken)

    def result(self, *, complete: bool) -> WatchResult:
        return WatchResult(self.number, self.harvests, complete, self.progress, self.summary)


def harvest_text(summary: RunSummary) -> str:
    """The stages a harvest ran, with the units redone and reused where a stage says.

    >>> from pathlib import Path
    >>> from cellcrowd.pipeline import StageRun
    >>> harvest_text(RunSummary(Path("."), (StageRun("clean", "ran", "", units={
    ...     "redone": 1, "reused": 14}), StageRun("qc", "ran", ""))))
    'clean (1 units redone, 14 reused), qc'
    """
    parts = []
    for s in summary.stages:
        if s.status != "ran":
            continue
        units = s.units
        parts.append(f"{s.name} ({units.get('redone', 0)} units redone, "
                     f"{units.get('reused', 0)} reused)" if units else s.name)
    return ", ".join(parts) or "nothing new"


def _sleep_through(wait: Callable[[threading.Event, float], bool]) -> Callable[[float], None]:
    """A plain ``sleep(seconds)`` that waits through ``wait`` (nothing wakes it)."""

    def sleep(seconds: float) -> None:
        wait(threading.Event(), seconds)

    return sleep

