"""Every wait is bounded (issue 9): server-requested waits are capped and loud, a request
has an overall deadline (a slow-drip server is cut off), a report has a deadline."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from cellcrowd.appen.client import AppenClient
from cellcrowd.appen.http import DeadlineTransport, capped_wait
from cellcrowd.errors import ReportNotReadyError, TemporaryServiceError
from cellcrowd.sim.crowd import CrowdJob
from cellcrowd.sim.emulator import Emulator, Faults

JOB = 1363594


@pytest.fixture
def loopback() -> Iterator[Callable[[Callable[[BaseHTTPRequestHandler], None]], str]]:
    """Start a tiny HTTP server on 127.0.0.1 whose GET answer is the given function."""
    servers: list[ThreadingHTTPServer] = []

    def start(answer: Callable[[BaseHTTPRequestHandler], None]) -> str:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                answer(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{server.server_address[1]}/v1"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_a_429_asking_for_a_day_is_capped_and_logged(
    small_job: CrowdJob, api_key: str, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    faults = Faults(burst_rate=1.0, burst_len=1, retry_after=86_400, kinds=frozenset({"report"}))
    sleeps: list[float] = []
    with Emulator(small_job, api_key=api_key, faults=faults, report_polls=0) as emu, AppenClient(
            api_key, base_url=emu.url, sleep=sleeps.append, max_retry_after=7.0) as client:
        client.download_report(JOB, tmp_path / "r.csv")
    assert sleeps == [7.0]
    warned = [r for r in caplog.records if r.levelno == logging.WARNING
              and "the service asks to wait 86400 s; waiting 7 s at most" in r.getMessage()]
    assert len(warned) == 1


def _always_202(retry_after: str) -> Callable[[BaseHTTPRequestHandler], None]:
    def answer(handler: BaseHTTPRequestHandler) -> None:
        body = b'{"message": "being generated"}'
        handler.send_response(202)
        handler.send_header("Retry-After", retry_after)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)
    return answer


def test_a_202_asking_for_a_day_is_capped_and_the_report_deadline_ends_the_wait(
    loopback: Callable[..., str], tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    url = loopback(_always_202("86400"))
    sleeps: list[float] = []
    with AppenClient("test-key-0123", base_url=url, sleep=sleeps.append, max_retry_after=90.0,
                     report_deadline=250.0, max_polls=1000) as client, pytest.raises(
            ReportNotReadyError, match=r"still being generated after 2 polls and 180 s of "
                                       r"waiting \(limits: 1000 polls, 250 s, "
                                       r"service.report_deadline\)"):
        client.download_report(JOB, tmp_path / "r.csv")
    assert sleeps == [90.0, 90.0]  # capped; a third wait would pass the deadline
    assert sum("asks to wait 86400 s" in r.getMessage() for r in caplog.records
               if r.levelno == logging.WARNING) == 3
    assert not (tmp_path / "r.csv").exists()


def test_a_short_wait_is_not_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    assert capped_wait(30, 300, "x") == 30
    assert capped_wait(-5, 300, "x") == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert capped_wait(61, 300, "x") == 61
    assert "asks to wait 61 s" in caplog.records[-1].getMessage()


def _slow_drip(handler: BaseHTTPRequestHandler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", "1000")
    handler.end_headers()
    try:
        for _ in range(1000):
            handler.wfile.write(b"x")
            handler.wfile.flush()
            time.sleep(0.05)
    except OSError:
        pass  # the client hung up: that is the point


def test_a_slow_drip_server_is_cut_off_by_the_request_deadline(
    loopback: Callable[..., str], tmp_path: Path,
) -> None:
    url = loopback(_slow_drip)
    sleeps: list[float] = []
    # Each byte comes well within the per-read timeout; only the overall deadline ends it.
    with AppenClient("test-key-0123", base_url=url, sleep=sleeps.append, timeout=30.0,
                     request_deadline=0.4, max_retries=1) as client, pytest.raises(
            TemporaryServiceError, match=r"gave up after 2 attempts at [^,]+, the last one failed "
                                         r"with "
                                         r"ReadTimeout: the answer took longer than the request "
                                         r"deadline of 0.4 s \(service.request_deadline\)"):
        client.get_json(f"{url}/jobs/1.json", what="job 1")
    assert len(sleeps) == 1


def test_deadline_transport_checks_its_setting() -> None:
    with pytest.raises(ValueError, match="the request deadline must be positive, got 0"):
        DeadlineTransport(None, 0)  # type: ignore[arg-type]
