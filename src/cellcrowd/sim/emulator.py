"""A local emulator of the annotation service: a real HTTP server on loopback.

It serves one or more :class:`~cellcrowd.sim.crowd.CrowdJob` the way the service does
(as far as public documentation tells, see FORMATS.md), so the real client is tested
over real sockets:

* ``GET /v1/jobs/{id}.csv?type=T`` and ``POST /v3/jobs/download.csv?jobId=…&type=…``:
  every report type (``full``, ``aggregated``, ``json``, ``gold_report``, ``workset``,
  ``source``), zipped with one member (full ``f{id}.csv``, aggregated ``a{id}.csv``,
  the others ``{type}_{id}.csv``, json ``job_{id}.json``); 202 "being generated" for
  the first ``report_polls`` requests of each report; ``POST /v1/jobs/{id}/regenerate``
  makes it "being generated" again; with ``redirect_reports`` a ready report is a 302 to
  a second server (another port: another origin) that records what it saw;
* ``GET /v1/jobs/{id}.json`` and ``GET /v1/jobs/{id}/ping.json``;
* jobs still running (``live=``, :class:`~cellcrowd.sim.live.LiveJob`): units complete
  over time, reports are snapshots refreshed by ``regenerate``, ``GET /v3/jobs/{id}/status``,
  signed webhooks; and ``POST /v1/jobs/{id}/upload.json`` adds rows to any job
  (recorded in ``Emulator.inbox``); see :mod:`cellcrowd.sim.live`;
* annotation PNGs at ``/v1/jobs/{id}/judgments/{jid}/annotation.png`` (key required), or
  on the second server without a key (``annotations_on_storage``);
* 401 with ``{"error": {"message": …}}`` for a missing or wrong key (header
  ``Authorization: Token token=…`` or ``?key=…``), 404 for unknown jobs;
* fault injection (:class:`Faults`): latency, 5xx, 429 bursts with ``Retry-After``,
  truncated bodies, dropped connections. Faults are decided by hashing (seed, request
  path, attempt number of that path), so they do not depend on how threads interleave;
  a path is faulted at most ``max_faults_per_path`` times so that retries end.

``Emulator.counts`` counts requests by kind (``annotation``, ``report``, ``report_202``,
``redirect``, ``storage``, ``fault_5xx``, …); ``api_requests`` / ``storage_requests``
record method, path, query and headers of the latest 100 000 requests (in memory only).
The emulator logs (DEBUG) with the key redacted and never prints.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import threading
import time
import zipfile
from collections import Counter, deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..appen.client import REPORT_TYPES
from ..errors import redact
from ..layout import WorkingFolder
from .crowd import CrowdConfig, CrowdJob, Painter, crowd_from_folder
from .faults import Faults, SeenRequest
from .live import LiveJob, RowInbox, WebhookPump
from .reports import build_report

__all__ = [
    "Emulator",
    "Faults",
    "SeenRequest",
    "serve_forever",
    "serve_job_from_folder",
]

logger = logging.getLogger(__name__)

_DEFAULT_CROWD = CrowdConfig()
_MAX_RECORDED = 100_000
_NOT_READY = {"notice": {"message": "Your CSV is being generated. Try again in 10 seconds."}}
_JOB_PATH = re.compile(r"^/v1/jobs/(?P<job>\d+)(?P<rest>\.csv|\.json|/ping\.json|/regenerate"
                       r"|/upload\.json|/judgments/(?P<jid>\d+)/annotation\.png)$")
_V3_STATUS = re.compile(r"^/v3/jobs/(?P<job>\d+)/status$")
_STORAGE_PATH = re.compile(r"^/(?:reports/(?P<token>\d+)/[^/]+|annotations/(?P<job>\d+)/"
                           r"(?P<jid>\d+)\.png)$")


@dataclass
class _Answer:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


def _json_answer(status: int, data: Any, **headers: str) -> _Answer:
    return _Answer(status, json.dumps(data).encode(), dict(headers))


def _error(status: int, message: str) -> _Answer:
    return _json_answer(status, {"error": {"message": message}})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256  # many clients connect at once; the default 5 drops SYNs

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-request is no error worth printing (the library
        # never prints); keep the details at DEBUG.
        logger.debug("emulator: connection from %s ended abruptly", client_address,
                     exc_info=True)

    def __init__(self, address: tuple[str, int], emulator: Emulator, role: str) -> None:
        super().__init__(address, _Handler)
        self.emulator = emulator
        self.role = role


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 15
    disable_nagle_algorithm = True  # headers and body go out in two writes
    server: _Server

    def do_GET(self) -> None:
        self.server.emulator._serve(self, "GET", self.server.role)

    def do_POST(self) -> None:
        self.server.emulator._serve(self, "POST", self.server.role)

    def do_PUT(self) -> None:
        self.server.emulator._serve(self, "PUT", self.server.role)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("emulator: %s", self.server.emulator.redact(format % args))


class Emulator:
    """The annotation service on loopback, serving simulated jobs.

    Parameters
    ----------
    jobs : CrowdJob or sequence of CrowdJob
        What to serve.
    api_key : str
        The one key accepted.
    faults : Faults, optional
        Faults to inject (default none).
    report_polls : int
        Requests of each report answered 202 before it is ready (after a regenerate too).
    redirect_reports : bool
        Ready reports are a 302 to the second server.
    annotations_on_storage : bool
        Annotation URLs point to the second server (no key needed there).
    missing_annotations : collection of int
        Judgment ids whose annotation answers 404.
    host, port, storage_port : str, int, int
        Where to listen; port 0 picks a free port.
    live : LiveJob or sequence of LiveJob
        Jobs still running (served beside ``jobs``; see :mod:`cellcrowd.sim.live`).

    Examples
    --------
    >>> from cellcrowd.sim.crowd import CrowdJob
    >>> with Emulator(CrowdJob(7, "empty", (), ()), api_key="k") as emu:
    ...     emu.url.startswith("http://127.0.0.1:") and emu.url.endswith("/v1")
    True
    """

    def __init__(
        self,
        jobs: CrowdJob | Sequence[CrowdJob],
        *,
        api_key: str,
        faults: Faults | None = None,
        report_polls: int = 1,
        redirect_reports: bool = False,
        annotations_on_storage: bool = False,
        missing_annotations: Collection[int] = (),
        host: str = "127.0.0.1",
        port: int = 0,
        storage_port: int = 0,
        live: LiveJob | Sequence[LiveJob] = (),
    ) -> None:
        if not api_key:
            raise ValueError("the emulator needs a non-empty api_key")
        job_list = [jobs] if isinstance(jobs, CrowdJob) else list(jobs)
        live_list = [live] if isinstance(live, LiveJob) else list(live)
        self.live = {lj.job_id: lj for lj in live_list}
        self.jobs = {job.job_id: job for job in [*job_list, *(lj.job for lj in live_list)]}
        self.inbox = RowInbox()
        self._snapshots: dict[tuple[int, str], int] = {}
        self._pump = WebhookPump(live_list)
        self.api_key = api_key
        self.faults = faults or Faults()
        self.report_polls = report_polls
        self.redirect_reports = redirect_reports
        self.annotations_on_storage = annotations_on_storage
        self.missing_annotations = frozenset(missing_annotations)
        self.counts: Counter[str] = Counter()
        # The latest requests each server saw (bounded, for long `serve_forever` runs).
        self.api_requests: deque[SeenRequest] = deque(maxlen=_MAX_RECORDED)
        self.storage_requests: deque[SeenRequest] = deque(maxlen=_MAX_RECORDED)
        self._host, self._port, self._storage_port = host, port, storage_port
        self._lock = threading.Lock()
        self._attempts: Counter[str] = Counter()
        self._polls: Counter[tuple[str, int, str]] = Counter()
        self._reports: dict[tuple[int, str, int], tuple[str, bytes]] = {}
        self._tokens: dict[int, tuple[str, bytes]] = {}
        self._servers: list[tuple[_Server, threading.Thread]] = []

    # -- lifecycle --

    def start(self) -> Emulator:
        """Start both servers (idempotent)."""
        if self._servers:
            return self
        for role, port in (("api", self._port), ("storage", self._storage_port)):
            server = _Server((self._host, port), self, role)
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                      name=f"cellcrowd-emulator-{role}", daemon=True)
            thread.start()
            self._servers.append((server, thread))
        with self._lock:
            self._reports.clear()
        self._pump.start()
        logger.info("emulator serving %d job(s) at %s", len(self.jobs), self.url)
        return self

    def stop(self) -> None:
        """Stop both servers and close their sockets."""
        self._pump.stop()
        for server, thread in self._servers:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
        self._servers = []

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- addresses --

    def _root(self, index: int) -> str:
        if not self._servers:
            raise RuntimeError("the emulator is not running: call start() or use `with`")
        host, port = self._servers[index][0].server_address[:2]
        name = host.decode() if isinstance(host, bytes) else str(host)
        return f"http://{name}:{port}"

    @property
    def url(self) -> str:
        """The v1 base URL (``http://127.0.0.1:PORT/v1``)."""
        return f"{self._root(0)}/v1"

    @property
    def storage_url(self) -> str:
        """The second server's root (another origin: the key must not be sent there)."""
        return self._root(1)

    def annotation_url(self, job_id: int, judgment_id: int) -> str:
        """Where the annotation of a judgment is served."""
        if self.annotations_on_storage:
            sig = hashlib.sha256(f"{job_id}/{judgment_id}".encode()).hexdigest()[:16]
            return f"{self.storage_url}/annotations/{job_id}/{judgment_id}.png?signature={sig}"
        return f"{self.url}/jobs/{job_id}/judgments/{judgment_id}/annotation.png"

    def redact(self, text: str) -> str:
        """``text`` without the emulator's key."""
        return redact(text, self.api_key)

    # -- reports --

    def report_member(self, job_id: int, report_type: str) -> tuple[str, bytes]:
        """The name and bytes of the single file in a report's zip."""
        job, done = self._report_job(job_id, report_type)
        with self._lock:
            cached = self._reports.get((job_id, report_type, done))
        if cached is not None:
            return cached
        name, text = build_report(report_type, job, self.annotation_url)
        member = (name, text.encode("utf-8"))
        with self._lock:
            self._reports[(job_id, report_type, done)] = member
        return member

    def replace_report(self, job_id: int, report_type: str, data: bytes) -> None:
        """Serve ``data`` as the report's single file from now on (hostile-report tests)."""
        name, _ = self.report_member(job_id, report_type)
        _, done = self._report_job(job_id, report_type)
        with self._lock:
            self._reports[(job_id, report_type, done)] = (name, data)

    def _report_job(self, job_id: int, report_type: str) -> tuple[CrowdJob, int]:
        """The job a report shows: a live job's snapshot (units done then), or the job."""
        live = self.live.get(job_id)
        if live is None:
            return self.jobs[job_id], -1
        with self._lock:
            done = self._snapshots.setdefault((job_id, report_type), live.completed())
        return live.job_at(done), done

    def report_zip(self, job_id: int, report_type: str) -> bytes:
        """The zip a ready report is served as."""
        name, data = self.report_member(job_id, report_type)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(name, data)
        return buf.getvalue()

    # -- request handling --

    def _serve(self, handler: _Handler, method: str, role: str) -> None:
        parts = urlsplit(handler.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        seen = SeenRequest(role, method, parts.path, query,
                           {k.lower(): v for k, v in handler.headers.items()})
        length = int(handler.headers.get("content-length") or 0)
        body = handler.rfile.read(length) if length else b""
        kind = self._kind(parts.path, role)
        fault_key = parts.path + "?" + "&".join(
            f"{k}={v}" for k, values in sorted(query.items()) if k != "key" for v in values)
        with self._lock:
            (self.api_requests if role == "api" else self.storage_requests).append(seen)
            self.counts["request"] += 1
            self.counts[kind] += 1
            attempt = self._attempts[fault_key]
            self._attempts[fault_key] += 1
        if self.faults.latency:
            time.sleep(self.faults.latency)
        fault = self.faults.decide(fault_key, attempt) if kind in self.faults.kinds else None
        if fault == "drop":
            self._count("fault_drop")
            handler.close_connection = True
            return
        if fault == "5xx":
            self._count("fault_5xx")
            answer = _error((500, 502, 503)[attempt % 3], "Internal Server Error")
        elif fault == "429":
            self._count("fault_429")
            answer = _error(429, "Too Many Requests")
            answer.headers["Retry-After"] = str(self.faults.retry_after)
        else:
            answer = self._answer(method, role, parts.path, query, seen.headers, body)
        self._write(handler, answer, truncate=fault == "truncate")

    def _count(self, kind: str) -> None:
        with self._lock:
            self.counts[kind] += 1

    @staticmethod
    def _kind(path: str, role: str) -> str:
        if role == "storage":
            return "storage"
        if path.endswith("/annotation.png"):
            return "annotation"
        if path.endswith(".csv"):
            return "report"
        if path.endswith("/regenerate"):
            return "regenerate"
        if path.endswith("/upload.json"):
            return "upload"
        return "status"

    def _write(self, handler: _Handler, answer: _Answer, *, truncate: bool) -> None:
        body = answer.body
        handler.send_response(answer.status)
        handler.send_header("Content-Type", answer.content_type)
        handler.send_header("Content-Length", str(len(body)))
        for name, value in answer.headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        if truncate and len(body) > 1:
            self._count("fault_truncate")
            handler.wfile.write(body[: len(body) // 2])
            handler.wfile.flush()
            handler.close_connection = True
            return
        handler.wfile.write(body)

    def _authorized(self, query: dict[str, list[str]], headers: dict[str, str]) -> bool:
        auth = headers.get("authorization", "")
        match = re.fullmatch(r"\s*Token\s+token=(\S+)\s*", auth)
        return (match is not None and match[1] == self.api_key) or (
            self.api_key in query.get("key", []))

    def _answer(self, method: str, role: str, path: str, query: dict[str, list[str]],
                headers: dict[str, str], body: bytes = b"") -> _Answer:
        if role == "storage":
            return self._storage(path)
        if not self._authorized(query, headers):
            self._count("unauthorized")
            return _error(401, "Unauthorized: a valid API key is required")
        if path == "/v3/jobs/download.csv" and method == "POST":
            self._count("v3")
            job_text, report_type = _first(query, "jobId"), _first(query, "type") or "full"
            if not job_text.isdigit():
                return _error(400, "jobId is required")
            return self._report("v3", int(job_text), report_type)
        v3 = _V3_STATUS.match(path)
        if v3 is not None and method == "GET" and int(v3["job"]) in self.live:
            return _json_answer(200, self.live[int(v3["job"])].v3_status())
        match = _JOB_PATH.match(path)
        if match is None:
            return self._not_found("Not found")
        job_id, rest = int(match["job"]), match["rest"]
        if job_id not in self.jobs:
            return self._not_found(f"Job {job_id} not found")
        report_type = _first(query, "type") or "full"
        if rest == ".csv" and method == "GET":
            return self._report("v1", job_id, report_type)
        if rest == "/regenerate" and method == "POST":
            if report_type not in REPORT_TYPES:
                return _error(400, f"Unknown report type {report_type}")
            with self._lock:
                for key in [k for k in self._polls if k[1:] == (job_id, report_type)]:
                    self._polls[key] = 0
                self._snapshots.pop((job_id, report_type), None)
            return _json_answer(200, {"notice": {"message": "Regenerating the report"}})
        live = self.live.get(job_id)
        if rest == ".json" and method == "GET":
            return _json_answer(200, live.attributes() if live else
                                self._job_attributes(self.jobs[job_id]))
        if rest == "/ping.json" and method == "GET":
            return _json_answer(200, live.ping() if live else self._ping(self.jobs[job_id]))
        if rest == "/upload.json" and method in ("POST", "PUT"):
            try:
                count = self.inbox.add(job_id, body, headers.get("content-type", ""))
            except ValueError as exc:
                return _error(400, f"the rows could not be read: {exc}")
            with self._lock:
                self.counts["upload_rows"] += count
            return _json_answer(200, {"count": count})
        if match["jid"] is not None and method == "GET":
            return self._annotation(job_id, int(match["jid"]))
        return _error(405, f"{method} is not allowed here")

    def _not_found(self, message: str) -> _Answer:
        self._count("not_found")
        return _error(404, message)

    def _report(self, version: str, job_id: int, report_type: str) -> _Answer:
        if job_id not in self.jobs:
            return self._not_found(f"Job {job_id} not found")
        if report_type not in REPORT_TYPES:
            return _error(400, f"Unknown report type {report_type}")
        with self._lock:
            polls = self._polls[(version, job_id, report_type)]
            self._polls[(version, job_id, report_type)] += 1
        if polls < self.report_polls:
            self._count("report_202")
            return _json_answer(202, _NOT_READY)
        name, _ = self.report_member(job_id, report_type)
        data = self.report_zip(job_id, report_type)
        if self.redirect_reports:
            with self._lock:
                token = len(self._tokens) + 1
                self._tokens[token] = (name, data)
            self._count("redirect")
            location = f"{self.storage_url}/reports/{token}/{Path(name).stem}.zip"
            return _Answer(302, b"", {"Location": location})
        self._count("report_ready")
        return _Answer(200, data, {"Content-Disposition": f'attachment; filename="{name}.zip"'},
                       content_type="application/zip")

    def _storage(self, path: str) -> _Answer:
        match = _STORAGE_PATH.match(path)
        if match is None:
            return self._not_found("NoSuchKey")
        if match["token"] is not None:
            with self._lock:
                found = self._tokens.get(int(match["token"]))
            if found is None:
                return self._not_found("NoSuchKey")
            return _Answer(200, found[1], content_type="application/zip")
        return self._annotation(int(match["job"]), int(match["jid"]))

    def _annotation(self, job_id: int, judgment_id: int) -> _Answer:
        judgment = self.jobs[job_id].judgments_by_id.get(judgment_id) if (
            job_id in self.jobs) else None
        if judgment is None or judgment.annotation is None or (
                judgment_id in self.missing_annotations):
            return self._not_found(f"no annotation for judgment {judgment_id}")
        return _Answer(200, judgment.annotation, content_type="image/png")

    @staticmethod
    def _job_attributes(job: CrowdJob) -> dict[str, Any]:
        return {"id": job.job_id, "title": job.title, "state": "finished",
                "units_count": len(job.units), "judgments_per_unit": 1,
                "gold_per_assignment": 0, "completed": True,
                "created_at": "2016-01-28T18:00:00+00:00"}

    @staticmethod
    def _ping(job: CrowdJob) -> dict[str, Any]:
        units = len(job.units)
        return {"all_units": units, "golden_units": 0, "ordered_units": units,
                "completed_units_estimate": units, "needed_judgments": 0,
                "all_judgments": len(job.judgments),
                "tainted_judgments": sum(j.worker.tainted for j in job.judgments),
                "completed_gold_estimate": 0, "completed_non_gold_estimate": units}


def _first(query: dict[str, list[str]], name: str) -> str:
    values = query.get(name)
    return values[0] if values else ""


# -- entry points -----------------------------------------------------------------------------


def serve_job_from_folder(
    wf: WorkingFolder,
    *,
    job_id: int,
    api_key: str,
    seed: int = 0,
    faults: Faults | None = None,
    crowd: CrowdConfig = _DEFAULT_CROWD,
    painter: Painter | None = None,
    **options: Any,
) -> Emulator:
    """A started emulator serving a simulated crowd's job on a prepared working folder.

    Units come from ``wf.upload_csv``, annotations are painted from the truth montages
    (``prepare(..., truth=…)``); ``options`` go to :class:`Emulator` (``report_polls``,
    ``redirect_reports``, ``host``, ``port``…). Use it as a context manager to stop it.
    """
    job = crowd_from_folder(wf, job_id=job_id, config=crowd, seed=seed, painter=painter)
    return Emulator(job, api_key=api_key, faults=faults, **options).start()


def serve_forever(
    base_dir: str | Path,
    identifier: str,
    *,
    job_id: int,
    api_key: str,
    host: str = "127.0.0.1",
    port: int = 0,
    seed: int = 0,
    faults: Faults | None = None,
    crowd: CrowdConfig = _DEFAULT_CROWD,
    ready: Callable[[Emulator], None] | None = None,
    stop: threading.Event | None = None,
    job: CrowdJob | LiveJob | None = None,
    **options: Any,
) -> Emulator:
    """Serve a prepared working folder's simulated job until ``stop`` is set (or Ctrl-C).

    For ``cellcrowd emulator serve``: prints nothing; ``ready(emulator)`` is called once
    the server listens (the CLI prints ``emulator.url`` from it). ``job`` serves that
    job instead of painting the folder's truth montages (see
    :mod:`cellcrowd.sim.serve_folder`); a :class:`~cellcrowd.sim.live.LiveJob` is
    served still running. Returns the stopped emulator (its counts).
    """
    wf = WorkingFolder(Path(base_dir), identifier)
    stop = stop or threading.Event()
    if isinstance(job, LiveJob):
        job, options = None, {**options, "live": job}
    served: CrowdJob | list[CrowdJob] = [] if job is None else job
    server = (Emulator(served, api_key=api_key, faults=faults, host=host, port=port,
                       **options).start() if job is not None or "live" in options else
              serve_job_from_folder(wf, job_id=job_id, api_key=api_key, seed=seed,
                                    faults=faults, crowd=crowd, host=host, port=port,
                                    **options))
    with server as emulator:
        if ready is not None:
            ready(emulator)
        try:
            while not stop.wait(0.2):
                pass
        except KeyboardInterrupt:
            logger.info("emulator stopped")
    return emulator
