"""Tests of cellcrowd.sim.live: a running job in the emulator, over real HTTP."""

from __future__ import annotations

import hashlib
import io
import json
import threading
import zipfile
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from cellcrowd.appen.client import AppenClient
from cellcrowd.sim.crowd import CrowdJob
from cellcrowd.sim.emulator import Emulator
from cellcrowd.sim.live import LiveJob, ManualClock, WallClock, WebhookSender, sign_payload

KEY = "live-test-KEY-0b3d"


@pytest.fixture
def job(job_factory: Callable[..., CrowdJob]) -> CrowdJob:
    return job_factory(9, seed=4)


def _report(client: AppenClient, emu: Emulator, job_id: int) -> bytes:
    data = client.send("GET", f"{emu.url}/jobs/{job_id}.csv", params={"type": "full"},
                       handle=lambda r: r.read())
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return archive.read(archive.namelist()[0])


def test_units_complete_over_time_in_random_order(job: CrowdJob) -> None:
    clock = ManualClock()
    live = LiveJob(job, duration=60.0, clock=clock, seed=1)
    judged = sorted({j.unit_id for j in job.judgments})
    assert sorted(live.order) == judged
    assert list(live.order) != judged
    assert live.completed() == 0
    assert not live.complete
    seen: list[int] = []
    for _ in range(12):
        clock.advance(5.0)
        seen.append(live.completed())
    assert seen == sorted(seen)
    assert seen[-1] == len(judged)
    assert live.complete
    assert live.job_at(len(judged)) is job
    partial = live.job_at(4)
    assert {j.unit_id for j in partial.judgments} == set(live.order[:4])
    assert [j for j in job.judgments if j.unit_id in set(live.order[:4])] == list(
        partial.judgments)


def test_status_endpoints_follow_the_clock(job: CrowdJob) -> None:
    clock = ManualClock()
    live = LiveJob(job, duration=10.0, clock=clock, seed=2)
    units = len(job.units)
    with Emulator([], api_key=KEY, live=live) as emu, AppenClient(
            KEY, base_url=emu.url, max_retries=0) as client:
        v3 = emu.url[:-3] + f"/v3/jobs/{job.job_id}/status"
        before = client.ping(job.job_id), client.get_json(v3, what="status")
        clock.advance(10.0)
        after = client.ping(job.job_id), client.get_json(v3, what="status")
        states = client.job_status(job.job_id)["state"]
    assert before[0]["completed_units_estimate"] == units - len(live.order)
    assert before[0]["all_judgments"] == 0
    assert before[0]["needed_judgments"] == len(job.judgments)
    assert before[1]["state"] == "RUNNING"
    assert before[1]["completionPercentage"] == 0
    assert after[0]["completed_units_estimate"] == units
    assert after[0]["all_judgments"] == len(job.judgments)
    assert after[1] == {"jobId": job.job_id, "state": "COMPLETED",
                        "completionPercentage": 100.0, "totalUnits": units,
                        "submittedUnits": units, "totalJudgments": len(job.judgments),
                        "submittedJudgments": len(job.judgments)}
    assert states == "finished"


def test_reports_are_snapshots_until_regenerated(job: CrowdJob) -> None:
    clock = ManualClock()
    live = LiveJob(job, duration=10.0, clock=clock, seed=3)
    with Emulator(job, api_key=KEY, report_polls=0) as finished, AppenClient(
            KEY, base_url=finished.url) as plain:
        complete = _report(plain, finished, job.job_id).replace(finished.url.encode(), b"API")
    with Emulator([], api_key=KEY, live=live, report_polls=0) as emu, AppenClient(
            KEY, base_url=emu.url, max_retries=0) as client:
        clock.advance(5.0)
        first = _report(client, emu, job.job_id)
        clock.advance(5.0)
        stale = _report(client, emu, job.job_id)
        client.regenerate_report(job.job_id)
        fresh = _report(client, emu, job.job_id).replace(emu.url.encode(), b"API")
    rows = first.decode().count("\n") - 1
    visible = live.job_at(bisect_count(live, 5.0))
    assert rows == len(visible.judgments)
    assert 0 < rows < len(job.judgments)
    assert stale == first
    assert fresh == complete  # annotation URLs (another port) aside


def bisect_count(live: LiveJob, when: float) -> int:
    return sum(t <= when for t in live.times)


class _Hooks(BaseHTTPRequestHandler):
    """A receiver answering 500 to its first ``fail`` requests, then 200."""

    server: Any

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        with self.server.lock:
            self.server.bodies.append(body)
            failing = len(self.server.bodies) <= self.server.fail
        self.send_response(500 if failing else 200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _hook_server(fail: int) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hooks)
    server.bodies, server.fail, server.lock = [], fail, threading.Lock()  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    return server


def test_webhooks_are_signed_retried_lost_and_duplicated(job: CrowdJob) -> None:
    server = _hook_server(fail=2)
    sleeps: list[float] = []
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    sender = WebhookSender(url, "tok", lost={0}, duplicated={3}, sleep=sleeps.append)
    clock = ManualClock()
    live = LiveJob(job, duration=10.0, clock=clock, seed=5, webhooks=sender)
    try:
        clock.advance(10.0)
        assert live.pump() == len(live.order)
        assert live.pump() == 0
    finally:
        server.shutdown()
        server.server_close()
    forms = [dict(httpx.QueryParams(b.decode())) for b in server.bodies]  # type: ignore[attr-defined]
    units = len(live.order)
    # every unit, then the job; the first lost, one sent twice, 2 failures retried
    assert len(forms) == (units + 1) - 1 + 1 + 2
    assert sleeps == [0.05, 0.1]
    for form in forms:
        assert form["signature"] == hashlib.sha1(
            (form["payload"] + "tok").encode()).hexdigest()
    signals = [f["signal"] for f in forms]
    assert signals.count("job_complete") == 1
    assert signals[-1] == "job_complete"
    ids = [json.loads(f["payload"])["id"] for f in forms if f["signal"] == "unit_complete"]
    assert set(ids) == set(live.order[1:])
    assert sender.counts == {"lost": 1, "duplicated": 1, "delivered": units + 1,
                             "failed_attempts": 2}


def test_a_receiver_that_is_down_is_given_up_on(job: CrowdJob) -> None:
    sleeps: list[float] = []
    sender = WebhookSender("http://127.0.0.1:9/hook", "tok", retries=2, sleep=sleeps.append)
    sender.deliver("unit_complete", '{"id": 1}')
    assert sender.counts == {"failed_attempts": 3, "given_up": 1}
    assert sleeps == [0.05, 0.1]


def test_rows_uploaded_to_a_job_are_recorded(job: CrowdJob) -> None:
    rows = [{"identifier": "exp", "image_url": f"https://b.example/m{i}.png"} for i in range(3)]
    body = "".join(json.dumps(r) + "\n" for r in rows).encode()
    with Emulator(job, api_key=KEY) as emu:
        url = f"{emu.url}/jobs/{job.job_id}/upload.json"
        ok = httpx.post(url, content=body, headers={"Authorization": f"Token token={KEY}",
                                                    "Content-Type": "application/json"})
        as_csv = httpx.put(url, content=b"identifier,image_url\nexp,https://b.example/c.png\n",
                           headers={"Authorization": f"Token token={KEY}",
                                    "Content-Type": "text/csv"})
        bad = httpx.post(url, content=b"[1, 2]\n",
                         headers={"Authorization": f"Token token={KEY}"})
        anonymous = httpx.post(url, content=body)
    assert ok.json() == {"count": 3}
    assert as_csv.json() == {"count": 1}
    assert bad.status_code == 400
    assert "line 1 is not a JSON object" in bad.text
    assert anonymous.status_code == 401
    assert emu.inbox.rows[job.job_id] == [
        *rows, {"identifier": "exp", "image_url": "https://b.example/c.png"}]
    assert emu.counts["upload_rows"] == 4


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ManualClock().advance(-1), "only moves forward"),
        (lambda: WallClock(speed=0), "speed must be positive"),
        (lambda: LiveJob(CrowdJob(1, "t", (), ()), duration=0, clock=ManualClock()),
         "duration must be positive"),
    ],
    ids=["clock-back", "speed", "duration"],
)
def test_bad_arguments(make: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_sign_payload_matches_the_formula() -> None:
    assert sign_payload("{}", "k") == hashlib.sha1(b"{}k").hexdigest()
    assert WallClock(speed=1000.0)() >= 0
