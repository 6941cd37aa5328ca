"""The real client against the emulator on loopback (and a mock transport for odd servers)."""

from __future__ import annotations

import io
import logging
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from cellcrowd.appen.client import (
    REPORT_TYPES,
    AppenClient,
    api_url_from_env,
    extract_single_member,
    get_api_key,
    v3_base_url,
    versioned_base_url,
)
from cellcrowd.errors import (
    AuthenticationError,
    ConfigError,
    JobNotFoundError,
    ReportError,
    ReportNotReadyError,
    ServiceError,
    TemporaryServiceError,
)
from cellcrowd.sim.crowd import CrowdJob
from cellcrowd.sim.emulator import Emulator, Faults

JOB = 1363594


def client_for(
    emu: Emulator, key: str, sleep: Callable[[float], None], **kw: object
) -> AppenClient:
    options: dict[str, object] = {"poll_interval": 5.0, "max_retries": 4, "timeout": 10.0}
    options.update(kw)
    return AppenClient(key, base_url=emu.url, sleep=sleep, **options)  # type: ignore[arg-type]


# -- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, "https://api.appen.com/v1"),
        ({"CELLCROWD_API_URL": "http://127.0.0.1:8000/v1/"}, "http://127.0.0.1:8000/v1"),
        ({"CELLCROWD_API_URL": "  "}, "https://api.appen.com/v1"),
    ],
    ids=["default", "set", "blank"],
)
def test_api_url_from_env(environ: dict[str, str], expected: str) -> None:
    assert api_url_from_env(environ=environ) == expected


def test_api_url_from_env_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELLCROWD_API_URL", "https://api.eu.appen.com/v1")
    assert api_url_from_env() == "https://api.eu.appen.com/v1"


def test_api_url_from_env_rejects_non_http() -> None:
    with pytest.raises(ConfigError, match="CELLCROWD_API_URL='ftp://x' is not an http"):
        api_url_from_env(environ={"CELLCROWD_API_URL": "ftp://x"})


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"CELLCROWD_API_KEY": "a", "APPEN_API_KEY": "b", "FIGURE_EIGHT_API_KEY": "c"}, "a"),
        ({"CELLCROWD_API_KEY": "", "APPEN_API_KEY": "b", "FIGURE_EIGHT_API_KEY": "c"}, "b"),
        ({"FIGURE_EIGHT_API_KEY": " c "}, "c"),
    ],
    ids=["cellcrowd-first", "empty-skipped", "figure-eight"],
)
def test_get_api_key_from_env(environ: dict[str, str], expected: str) -> None:
    assert get_api_key(environ=environ) == expected


def test_get_api_key_prompts_without_echo() -> None:
    prompts: list[str] = []

    def fake_getpass(prompt: str) -> str:
        prompts.append(prompt)
        return "typed-key\n"

    assert get_api_key(environ={}, getpass_fn=fake_getpass) == "typed-key"
    assert len(prompts) == 1
    assert "not shown" in prompts[0]


def test_get_api_key_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="no API key given: set one of CELLCROWD_API_KEY"):
        get_api_key(prompt=False, environ={})
    with pytest.raises(ConfigError, match="no API key entered"):
        get_api_key(environ={}, getpass_fn=lambda prompt: "  ")
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    with pytest.raises(ConfigError, match="no terminal to ask for one"):
        get_api_key(environ={})


def test_v3_base_url() -> None:
    assert v3_base_url("http://127.0.0.1:5/v1/") == "http://127.0.0.1:5/v3"
    with pytest.raises(ConfigError, match="must end in '/v1'"):
        v3_base_url("https://api.appen.com/api")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"auth": "cookie"}, "auth must be 'header' or 'query'"),
        ({"max_retries": -1}, "max_retries must be 0 or more"),
        ({"max_connections": 0}, "max_connections must be at least 1"),
    ],
    ids=["auth", "retries", "connections"],
)
def test_client_rejects_bad_options(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AppenClient("k", **kwargs)  # type: ignore[arg-type]


def test_client_rejects_bad_report_type_and_version(tmp_path: Path) -> None:
    with AppenClient("k", base_url="http://127.0.0.1:9/v1") as client:
        with pytest.raises(ValueError, match="unknown report type 'fulll'"):
            client.download_report(1, tmp_path / "r.csv", report_type="fulll")
        with pytest.raises(ValueError, match="api_version must be 'v1' or 'v3'"):
            client.report_url(1, api_version="v2")  # type: ignore[arg-type]


# -- reports from the emulator ---------------------------------------------------------------


@pytest.mark.parametrize("version", ["v1", "v3"])
@pytest.mark.parametrize("report_type", REPORT_TYPES)
def test_every_report_type_and_version(
    emulator: Emulator, api_key: str, fake_sleep: Callable[[float], None], tmp_path: Path,
    report_type: str, version: str,
) -> None:
    dest = tmp_path / "CSV" / f"job_{JOB}_{report_type}_report.csv"
    with client_for(emulator, api_key, fake_sleep) as client:
        out = client.download_report(JOB, dest, report_type=report_type,
                                     api_version=version)  # type: ignore[arg-type]
    assert out == dest
    _, expected = emulator.report_member(JOB, report_type)
    assert dest.read_bytes() == expected
    assert sorted(p.name for p in dest.parent.iterdir()) == [dest.name]  # no zip, no temp
    assert emulator.counts["v3"] == (2 if version == "v3" else 0)


def test_report_zip_is_kept_on_request(
    emulator: Emulator, api_key: str, fake_sleep: Callable[[float], None], tmp_path: Path,
) -> None:
    dest = tmp_path / "job_full_report.csv"
    with client_for(emulator, api_key, fake_sleep) as client:
        client.download_report(JOB, dest, keep_zip=True)
    with zipfile.ZipFile(dest.with_suffix(".zip")) as archive:
        assert archive.namelist() == [f"f{JOB}.csv"]
        assert archive.read(f"f{JOB}.csv") == dest.read_bytes()


def test_polls_while_the_report_is_generated(
    small_job: CrowdJob, api_key: str, sleeps: list[float], tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="cellcrowd")
    with Emulator(small_job, api_key=api_key, report_polls=3) as emu, client_for(
            emu, api_key, sleeps.append, poll_interval=7.0) as client:
        client.download_report(JOB, tmp_path / "r.csv")
        assert emu.counts["report_202"] == 3
        assert emu.counts["report"] == 4
    assert sleeps == [7.0, 7.0, 7.0]
    assert caplog.text.count("is being generated") == 3


def test_report_never_ready(
    small_job: CrowdJob, api_key: str, sleeps: list[float], tmp_path: Path,
) -> None:
    with Emulator(small_job, api_key=api_key, report_polls=1000) as emu, client_for(
            emu, api_key, sleeps.append, max_polls=2) as client:
        with pytest.raises(ReportNotReadyError,
                           match="full report was still being generated after 2 polls"):
            client.download_report(JOB, tmp_path / "r.csv")
        assert emu.counts["report"] == 3
    assert not (tmp_path / "r.csv").exists()
    assert [p.name for p in tmp_path.iterdir()] == []


def test_regenerate_asks_for_a_fresh_report(
    emulator: Emulator, api_key: str, sleeps: list[float], tmp_path: Path,
) -> None:
    with client_for(emulator, api_key, sleeps.append) as client:
        client.download_report(JOB, tmp_path / "a.csv", report_type="aggregated")
        assert emulator.counts["report_202"] == 1
        client.download_report(JOB, tmp_path / "a.csv", report_type="aggregated",
                               regenerate=True)
    assert emulator.counts["regenerate"] == 1
    assert emulator.counts["report_202"] == 2  # being generated again after regenerate
    assert [r.method for r in emulator.api_requests if r.path.endswith("/regenerate")] == [
        "POST"]


@pytest.mark.parametrize("auth", ["header", "query"])
@pytest.mark.parametrize("version", ["v1", "v3"])
def test_redirect_to_another_host_carries_no_credential(
    small_job: CrowdJob, api_key: str, fake_sleep: Callable[[float], None], tmp_path: Path,
    auth: str, version: str,
) -> None:
    with Emulator(small_job, api_key=api_key, redirect_reports=True) as emu, client_for(
            emu, api_key, fake_sleep, auth=auth) as client:
        dest = client.download_report(JOB, tmp_path / "r.csv",
                                      api_version=version)  # type: ignore[arg-type]
        assert dest.read_bytes() == emu.report_member(JOB, "full")[1]
        assert emu.counts["redirect"] == 1
        assert len(emu.storage_requests) == 1
        seen = emu.storage_requests[0]
        assert seen.method == "GET"  # a 302 after a POST becomes a GET
        assert "authorization" not in seen.headers
        assert "key" not in seen.query
        assert api_key not in repr(seen)
        # ... while the API host did get it, the way it was asked for
        api = emu.api_requests[-1]
        if auth == "header":
            assert api.headers["authorization"] == f"Token token={api_key}"
            assert "key" not in api.query
        else:
            assert api.query["key"] == [api_key]
            assert "authorization" not in api.headers


def test_wrong_key_is_refused_without_showing_it(
    emulator: Emulator, fake_sleep: Callable[[float], None], tmp_path: Path,
) -> None:
    wrong = "wrong-key-0123456789"
    with client_for(emulator, wrong, fake_sleep, auth="query") as client, pytest.raises(
            AuthenticationError, match=r"refused the API key \(HTTP 401: Unauthorized") as info:
        client.download_report(JOB, tmp_path / "r.csv")
    assert wrong not in str(info.value)
    assert info.value.url is not None
    assert wrong not in info.value.url
    assert info.value.status == 401
    assert emulator.counts["unauthorized"] == 1


def test_unknown_job_is_not_found(
    emulator: Emulator, api_key: str, fake_sleep: Callable[[float], None], tmp_path: Path,
) -> None:
    with client_for(emulator, api_key, fake_sleep) as client:
        with pytest.raises(JobNotFoundError, match=r"job 999's full report: not found \(HTTP 404"):
            client.download_report(999, tmp_path / "r.csv")
        with pytest.raises(JobNotFoundError, match="Job 999 not found"):
            client.job_status(999)


def test_base_url_without_version_is_v1(
    emulator: Emulator, api_key: str, fake_sleep: Callable[[float], None], tmp_path: Path,
) -> None:
    root = emulator.url.removesuffix("/v1")
    assert versioned_base_url(root + "/") == emulator.url
    with AppenClient(api_key, base_url=root, sleep=fake_sleep, timeout=10.0) as client:
        assert client.base_url == emulator.url
        path = client.download_report(JOB, tmp_path / "r.csv")
        with AppenClient(api_key, base_url=emulator.url, sleep=fake_sleep,
                         timeout=10.0) as versioned:
            again = versioned.download_report(JOB, tmp_path / "again.csv")
        assert path.read_bytes() == again.read_bytes()
        with pytest.raises(JobNotFoundError, match=rf"names no API version, so {emulator.url} "
                           r"was used: give the full versioned URL"):
            client.download_report(999, tmp_path / "x.csv")
    # A path without a version is used as given; its 404 says what is missing.
    with AppenClient(api_key, base_url=root + "/api", sleep=fake_sleep,
                     max_retries=0) as client, pytest.raises(
            JobNotFoundError, match=r"/api names no API version: give the full versioned URL"):
        client.download_report(JOB, tmp_path / "y.csv")
    with client_for(emulator, api_key, fake_sleep) as client, pytest.raises(
            JobNotFoundError) as info:
        client.download_report(999, tmp_path / "z.csv")
    assert "no API version" not in str(info.value)


def test_network_error_names_the_host(tmp_path: Path) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with mock_client(refuse, max_retries=1) as client, pytest.raises(
            TemporaryServiceError, match=r"gave up after 2 attempts at api\.test, .*"
            r"ConnectError: connection refused.*may not reach api\.test") as info:
        client.download_report(JOB, tmp_path / "r.csv")
    assert "secret-key" not in str(info.value)


def test_other_client_errors(
    emulator: Emulator, api_key: str, fake_sleep: Callable[[float], None],
) -> None:
    with client_for(emulator, api_key, fake_sleep) as client, pytest.raises(
            ServiceError, match=r"HTTP 405 \(POST is not allowed here\)"):
        client.get_json(f"{emulator.url}/jobs/{JOB}.json", method="POST", what="x")


def test_job_status_and_ping(
    emulator: Emulator, small_job: CrowdJob, api_key: str, fake_sleep: Callable[[float], None],
) -> None:
    with client_for(emulator, api_key, fake_sleep) as client:
        status = client.job_status(JOB)
        ping = client.ping(JOB)
    assert status["id"] == JOB
    assert status["state"] == "finished"
    assert ping["all_units"] == len(small_job.units)
    assert ping["all_judgments"] == len(small_job.judgments)
    assert ping["needed_judgments"] == 0


# -- retries -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("faults", "counter"),
    [
        (Faults(error_rate=1.0, max_faults_per_path=2), "fault_5xx"),
        (Faults(truncate_rate=1.0, max_faults_per_path=2), "fault_truncate"),
        (Faults(drop_rate=1.0, max_faults_per_path=2), "fault_drop"),
    ],
    ids=["5xx", "truncated", "dropped"],
)
def test_temporary_failures_are_retried(
    small_job: CrowdJob, api_key: str, sleeps: list[float], tmp_path: Path,
    caplog: pytest.LogCaptureFixture, faults: Faults, counter: str,
) -> None:
    caplog.set_level(logging.WARNING, logger="cellcrowd")
    with Emulator(small_job, api_key=api_key, faults=faults, report_polls=0) as emu, \
            client_for(emu, api_key, sleeps.append, backoff=2.0, max_backoff=3.0) as client:
        dest = client.download_report(JOB, tmp_path / "r.csv")
        assert dest.read_bytes() == emu.report_member(JOB, "full")[1]
        assert emu.counts[counter] == 2
    assert len(sleeps) == 2
    assert 1.0 <= sleeps[0] <= 2.0
    assert 1.5 <= sleeps[1] <= 3.0
    retries = [r for r in caplog.records if "retry" in r.getMessage()]
    assert [r.getMessage().split("; ")[-1][:10] for r in retries] == ["retry 1 of", "retry 2 of"]


def test_429_honours_retry_after(
    small_job: CrowdJob, api_key: str, sleeps: list[float], tmp_path: Path,
) -> None:
    faults = Faults(burst_rate=1.0, burst_len=3, retry_after=42, kinds=frozenset({"report"}))
    with Emulator(small_job, api_key=api_key, faults=faults, report_polls=0) as emu, \
            client_for(emu, api_key, sleeps.append, max_retry_after=100.0) as client:
        client.download_report(JOB, tmp_path / "r.csv")
        assert emu.counts["fault_429"] == 3
    assert sleeps == [42.0, 42.0, 42.0]


def test_retries_run_out(
    small_job: CrowdJob, api_key: str, sleeps: list[float], tmp_path: Path,
) -> None:
    faults = Faults(error_rate=1.0, max_faults_per_path=100)
    with Emulator(small_job, api_key=api_key, faults=faults) as emu, client_for(
            emu, api_key, sleeps.append, max_retries=2) as client, pytest.raises(
            TemporaryServiceError,
            match=r"gave up after 3 attempts at 127\.0\.0\.1:\d+, the last one .* HTTP 5"):
        client.download_report(JOB, tmp_path / "r.csv")
    assert len(sleeps) == 2
    assert list(tmp_path.iterdir()) == []


# -- keys never leak ---------------------------------------------------------------------------


@pytest.mark.parametrize("auth", ["header", "query"])
def test_key_in_no_log_file_or_message(
    small_job: CrowdJob, api_key: str, fake_sleep: Callable[[float], None], tmp_path: Path,
    caplog: pytest.LogCaptureFixture, auth: str,
) -> None:
    caplog.set_level(logging.DEBUG)  # root: httpx and httpcore included
    faults = Faults(error_rate=0.5, truncate_rate=0.3, seed=3)
    messages = []
    with Emulator(small_job, api_key=api_key, faults=faults, redirect_reports=True) as emu, \
            client_for(emu, api_key, fake_sleep, auth=auth, max_retries=8) as client:
        for report_type in ("full", "json"):
            client.download_report(JOB, tmp_path / f"{report_type}.csv", report_type=report_type,
                                   keep_zip=True)
        client.ping(JOB)
        for call in (lambda: client.download_report(999, tmp_path / "x.csv"),
                     lambda: client.get_json(f"{emu.url}/nowhere?key={api_key}", what="x")):
            with pytest.raises(JobNotFoundError) as info:
                call()
            messages.append(f"{info.value} {info.value.url}")
    assert any("HTTP Request" in r.getMessage() for r in caplog.records)  # httpx did log
    assert any(r.name.startswith("httpcore") for r in caplog.records)
    assert api_key not in caplog.text
    assert all(api_key not in m for m in messages)
    assert "/nowhere" in messages[1]  # the URL is shown, without the key
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert api_key.encode() not in path.read_bytes(), path


# -- unusual servers (mock transport) ----------------------------------------------------------


def mock_client(handler: Callable[[httpx.Request], httpx.Response], **kw: object) -> AppenClient:
    return AppenClient("secret-key", base_url="https://api.test/v1", sleep=lambda s: None,
                       transport=httpx.MockTransport(handler), **kw)  # type: ignore[arg-type]


def test_plain_csv_body_is_accepted(tmp_path: Path) -> None:
    body = b"_unit_id,_id\n1,2\n"
    with mock_client(lambda r: httpx.Response(200, content=body)) as client:
        dest = client.download_report(5, tmp_path / "r.csv")
    assert dest.read_bytes() == body


def test_html_page_is_refused(tmp_path: Path) -> None:
    page = b"<!doctype html><html>login</html>"
    with mock_client(lambda r: httpx.Response(200, content=page)) as client, pytest.raises(
            ServiceError, match="sent an HTML page instead of the report"):
        client.download_report(5, tmp_path / "r.csv")


def test_damaged_zip_is_retried_then_given_up(tmp_path: Path) -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(200, content=b"PK\x03\x04 not really a zip")

    with mock_client(handler, max_retries=1) as client, pytest.raises(
            TemporaryServiceError, match="the report zip is damaged"):
        client.download_report(5, tmp_path / "r.csv")
    assert len(calls) == 2


@pytest.mark.parametrize(
    ("location", "message"),
    [
        (None, "redirect without a Location header"),
        ("ftp://files.test/r.zip", "redirect to a non-HTTP URL"),
        ("/v1/jobs/5.csv", "more than 5 redirects"),
    ],
    ids=["no-location", "ftp", "loop"],
)
def test_bad_redirects(tmp_path: Path, location: str | None, message: str) -> None:
    headers = {} if location is None else {"Location": location}
    with mock_client(lambda r: httpx.Response(302, headers=headers)) as client, pytest.raises(
            ServiceError, match=message):
        client.download_report(5, tmp_path / "r.csv")


def test_key_echoed_into_a_foreign_redirect_is_stripped(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("f5.csv", "a,b\n")

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.host == "api.test":
            return httpx.Response(302, headers={
                "Location": f"https://storage.test/r.zip?{request.url.query.decode()}"})
        return httpx.Response(200, content=archive.getvalue())

    with mock_client(handler, auth="query") as client:
        client.download_report(5, tmp_path / "r.csv")
    assert seen[0].url.params["key"] == "secret-key"
    assert "key" not in seen[1].url.params
    assert seen[1].url.params["type"] == "full"
    assert "authorization" not in seen[1].headers


def test_retry_after_as_http_date(tmp_path: Path) -> None:
    sleeps: list[float] = []
    answers = iter([httpx.Response(503, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}),
                    httpx.Response(200, content=b"a,b\n")])
    with AppenClient("k", base_url="https://api.test/v1", sleep=sleeps.append,
                     transport=httpx.MockTransport(lambda r: next(answers))) as client:
        client.download_report(5, tmp_path / "r.csv")
    assert sleeps == [0.0]  # a date in the past: no wait


def test_non_json_answer(tmp_path: Path) -> None:
    with mock_client(lambda r: httpx.Response(200, content=b"nope")) as client, pytest.raises(
            ServiceError, match="the answer is not JSON"):
        client.ping(5)


# -- unzipping safely --------------------------------------------------------------------------


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_member_name_cannot_escape(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "r.zip", {"../../evil.csv": b"x,y\n"})
    (tmp_path / "out").mkdir()
    name = extract_single_member(archive, tmp_path / "out" / "r.csv")
    assert name == "../../evil.csv"
    assert (tmp_path / "out" / "r.csv").read_bytes() == b"x,y\n"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["out", "r.csv", "r.zip"]


@pytest.mark.parametrize(
    ("members", "kwargs", "message"),
    [
        ({"a.csv": b"1", "b.csv": b"2"}, {}, r"holds 2 files \('a.csv', 'b.csv'\), expected"),
        ({}, {}, "holds 0 files"),
        ({"f.csv": b"0" * 1000}, {"max_bytes": 100}, "would unpack to 1000 bytes"),
        ({"f.csv": bytes(17 << 20)}, {}, r"refusing a possible zip bomb"),
    ],
    ids=["two-members", "empty", "too-large", "zip-bomb"],
)
def test_unsafe_zips_are_refused(tmp_path: Path, members: dict[str, bytes],
                                 kwargs: dict[str, int], message: str) -> None:
    archive = make_zip(tmp_path / "r.zip", members)
    with pytest.raises(ReportError, match=message):
        extract_single_member(archive, tmp_path / "r.csv", **kwargs)


def test_not_a_zip_and_damaged_member(tmp_path: Path) -> None:
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"hello")
    with pytest.raises(ReportError, match="is not a valid zip"):
        extract_single_member(bad, tmp_path / "r.csv")
    archive = make_zip(tmp_path / "r.zip", {"f.csv": b"abcdef" * 1000})
    data = bytearray(archive.read_bytes())
    start = data.index(b"f.csv") + len(b"f.csv")
    data[start + 10 : start + 30] = bytes(20)  # damage the compressed stream
    archive.write_bytes(bytes(data))
    with pytest.raises(ReportError, match=r"'f\.csv' is damaged"):
        extract_single_member(archive, tmp_path / "r.csv")


def test_refusal_by_a_host_without_the_key_is_no_auth_error(tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "api.test":
            return httpx.Response(302, headers={"Location": "https://storage.test/r.zip?sig=1"})
        return httpx.Response(403, json={"error": {"message": "Request has expired"}})

    with mock_client(handler) as client:
        assert client.sends_credentials_to("https://api.test/v1/jobs/5.json")
        assert not client.sends_credentials_to("https://storage.test/r.zip")
        assert not client.sends_credentials_to("http://api.test/v1/jobs/5.json")  # scheme
        with pytest.raises(ServiceError, match=r"HTTP 403 from storage.test \(Request has "
                           r"expired\), which got no API key") as info:
            client.download_report(5, tmp_path / "r.csv")
    assert not isinstance(info.value, AuthenticationError)
