"""Tests of cellcrowd.webhook: signed webhooks wake the harvest; others change nothing."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cellcrowd.errors import ConfigError
from cellcrowd.layout import WorkingFolder
from cellcrowd.webhook import (
    WEBHOOK_TOKEN_ENV,
    SeenWebhooks,
    WebhookReceiver,
    listen_for_webhooks,
    parse_listen,
    verify_webhook,
    webhook_token,
)

TOKEN = "hook-TOKEN-7c1e44"


def _form(payload: dict[str, object], signal: str = "unit_complete",
          token: str = TOKEN) -> dict[str, str]:
    text = json.dumps(payload)
    return {"signal": signal, "payload": text,
            "signature": hashlib.sha1((text + token).encode()).hexdigest()}


@pytest.fixture
def wf(tmp_path: Path) -> WorkingFolder:
    return WorkingFolder(tmp_path, "exp")


@pytest.fixture
def wake() -> threading.Event:
    return threading.Event()


@pytest.fixture
def receiver(wf: WorkingFolder, wake: threading.Event) -> Iterator[WebhookReceiver]:
    with listen_for_webhooks(wf, "127.0.0.1:0", wake, path="/lab/hook", token=TOKEN) as r:
        yield r


def _state(wf: WorkingFolder) -> bytes | None:
    return wf.webhooks_seen.read_bytes() if wf.webhooks_seen.exists() else None


def test_a_signed_webhook_is_recorded_and_wakes(receiver: WebhookReceiver, wf: WorkingFolder,
                                               wake: threading.Event) -> None:
    answer = httpx.post(receiver.url, data=_form({"id": 17, "job_id": 3}))
    assert answer.status_code == 200
    assert answer.json() == {"status": "ok"}
    assert wake.is_set()
    lines = [json.loads(line) for line in wf.webhooks_seen.read_text().splitlines()]
    assert lines == [{"key": "unit_complete:17",
                      "signature": _form({"id": 17, "job_id": 3})["signature"]}]
    assert receiver.counts == {"accepted": 1, "duplicate": 0, "refused": 0}


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda f: {**f, "signature": "0" * 40}, id="forged-signature"),
        pytest.param(lambda f: {**f, "payload": f["payload"].replace("17", "18")},
                     id="changed-payload"),
        pytest.param(lambda f: _form({"id": 17}, token="not-the-token"), id="other-token"),
        pytest.param(lambda f: {k: v for k, v in f.items() if k != "signature"}, id="unsigned"),
        pytest.param(lambda f: {**f, "signature": ""}, id="empty-signature"),
    ],
)
def test_a_bad_signature_is_refused_and_changes_nothing(
    receiver: WebhookReceiver, wf: WorkingFolder, wake: threading.Event, tamper: object,
    caplog: pytest.LogCaptureFixture,
) -> None:
    httpx.post(receiver.url, data=_form({"id": 99}))  # something already recorded
    wake.clear()
    before = _state(wf)
    with caplog.at_level(logging.INFO, logger="cellcrowd"):
        answer = httpx.post(receiver.url, data=tamper(_form({"id": 17})),  # type: ignore[operator]
                            headers={"X-Forwarded-For": "203.0.113.9"})
    assert answer.status_code == 403
    assert not wake.is_set()
    assert _state(wf) == before
    assert receiver.counts["refused"] == 1
    assert receiver.counts["accepted"] == 1
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 1
    assert "203.0.113.9" in refused[0]
    assert TOKEN not in caplog.text


def test_a_replayed_webhook_changes_nothing_even_after_a_restart(
    receiver: WebhookReceiver, wf: WorkingFolder, wake: threading.Event
) -> None:
    form = _form({"id": 17})
    assert httpx.post(receiver.url, data=form).json() == {"status": "ok"}
    wake.clear()
    before = _state(wf)
    answer = httpx.post(receiver.url, data=form)
    # acknowledged (so the service stops retrying), but ignored
    assert (answer.status_code, answer.json()) == (200, {"status": "duplicate"})
    assert not wake.is_set()
    assert _state(wf) == before
    # the same unit announced again with another payload is a duplicate too
    again = _form({"id": 17, "judgments_count": 3})
    assert httpx.post(receiver.url, data=again).json() == {"status": "duplicate"}
    receiver.stop()
    other = threading.Event()
    with listen_for_webhooks(wf, "127.0.0.1:0", other, path="/lab/hook",
                             token=TOKEN) as restarted:
        assert httpx.post(restarted.url, data=form).json() == {"status": "duplicate"}
        assert not other.is_set()
        assert httpx.post(restarted.url, data=_form({"id": 18})).json() == {"status": "ok"}
        assert other.is_set()


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/elsewhere", b"signal=x", 404),
        ("GET", "/lab/hook", None, 405),
        ("POST", "/lab/hook", b"x" * ((256 << 10) + 1), 413),
    ],
    ids=["wrong-path", "get", "too-large"],
)
def test_other_requests_are_refused(receiver: WebhookReceiver, wf: WorkingFolder,
                                    wake: threading.Event, method: str, path: str,
                                    body: bytes | None, status: int) -> None:
    url = receiver.url.rsplit("/lab/hook", 1)[0] + path
    answer = httpx.request(method, url, content=body)
    assert answer.status_code == status
    assert not wake.is_set()
    assert _state(wf) is None


def test_the_path_works_behind_a_proxy_with_a_trailing_slash(
    receiver: WebhookReceiver, wake: threading.Event
) -> None:
    answer = httpx.post(receiver.url + "/", data=_form({"id": 1}),
                        headers={"X-Forwarded-Proto": "https", "X-Forwarded-Host": "lab.org"})
    assert answer.status_code == 200
    assert wake.is_set()


def test_verify_webhook_needs_json_payload() -> None:
    form = {"signal": "s", "payload": "not json",
            "signature": hashlib.sha1(f"not json{TOKEN}".encode()).hexdigest()}
    assert verify_webhook(form, TOKEN) is None
    assert verify_webhook(_form({"id": 1}), "") is None


def test_a_line_cut_short_is_ignored_with_a_warning(
    wf: WorkingFolder, caplog: pytest.LogCaptureFixture
) -> None:
    seen = SeenWebhooks(wf.webhooks_seen)
    hook = verify_webhook(_form({"id": 1}), TOKEN)
    assert hook is not None
    assert seen.add(hook)
    with open(wf.webhooks_seen, "a") as fh:
        fh.write('{"signature": "ab')  # a crash in the middle of a line
    with caplog.at_level(logging.WARNING, logger="cellcrowd"):
        again = SeenWebhooks(wf.webhooks_seen)
    assert again.keys == ["unit_complete:1"]
    assert "line 2 is unreadable" in caplog.text
    assert not again.add(hook)


def test_the_journal_keeps_the_latest_entries(wf: WorkingFolder) -> None:
    seen = SeenWebhooks(wf.webhooks_seen, keep=2)
    hooks = [verify_webhook(_form({"id": i}), TOKEN) for i in range(5)]
    assert all(h is not None and seen.add(h) for h in hooks)
    lines = wf.webhooks_seen.read_text().splitlines()
    assert 2 <= len(lines) <= 4
    assert SeenWebhooks(wf.webhooks_seen, keep=2).keys[-2:] == [
        "unit_complete:3", "unit_complete:4"]


def test_token_from_the_environment() -> None:
    assert webhook_token({WEBHOOK_TOKEN_ENV: "abc"}) == "abc"
    with pytest.raises(ConfigError, match=WEBHOOK_TOKEN_ENV):
        webhook_token({})


@pytest.mark.parametrize("text", ["8080", "host:", ":80", "h:99999", "h:x"])
def test_parse_listen_refuses_bad_addresses(text: str) -> None:
    with pytest.raises(ConfigError, match="expected HOST:PORT"):
        parse_listen(text)


def test_receiver_refuses_an_empty_token_and_a_busy_port(wf: WorkingFolder) -> None:
    seen = SeenWebhooks(wf.webhooks_seen)
    with pytest.raises(ConfigError, match="token is empty"):
        WebhookReceiver("127.0.0.1", 0, token="", seen=seen, on_event=lambda h: None)
    with WebhookReceiver("127.0.0.1", 0, token=TOKEN, seen=seen,
                         on_event=lambda h: None) as first:
        port = int(first.url.split(":")[2].split("/")[0])
        assert TOKEN not in repr(first)
        with pytest.raises(ConfigError, match="cannot listen"):
            WebhookReceiver("127.0.0.1", port, token=TOKEN, seen=seen,
                            on_event=lambda h: None)
