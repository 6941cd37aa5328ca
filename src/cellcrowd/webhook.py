"""Receive the service's webhooks: verify, drop duplicates and replays, wake the harvest.

The service POSTs form fields ``signal`` (``unit_complete``, ``job_complete``, …),
``payload`` (JSON) and ``signature`` = SHA-1 hex of ``payload + webhook token``
(FORMATS.md §1). :class:`WebhookReceiver` is a small threaded HTTP server
(``http.server``) that

* answers only ``POST`` on its ``path`` (default ``/hook``; another path is 404, another
  method 405), with bodies of at most ``max_body`` bytes (413 beyond);
* refuses a missing or wrong signature with **403**, and logs it (the peer's address,
  the ``X-Forwarded-For`` chain when behind a reverse proxy, the signal; never the
  token): nothing else happens;
* acknowledges a webhook it has acted on before (same signature, or same signal and
  payload id) with 200 and ignores it: the service retries deliveries for hours, and a
  replayed request is indistinguishable from such a retry, so neither may wake anything;
* records every new webhook (signature and payload id) in the working folder
  (``wf.webhooks_seen``, a journal, see :class:`SeenWebhooks`) *before* it answers, so
  duplicates are recognised across restarts, and then calls ``on_event`` (the harvest's
  wake-up).

``X-Forwarded-*`` headers are used for log lines only, never to decide anything. The
token comes from the environment (:data:`WEBHOOK_TOKEN_ENV`) and is compared with
:func:`hmac.compare_digest`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .errors import ConfigError
from .files import atomic_write_text
from .layout import WorkingFolder

__all__ = [
    "WEBHOOK_TOKEN_ENV",
    "SeenWebhooks",
    "Webhook",
    "WebhookReceiver",
    "listen_for_webhooks",
    "parse_listen",
    "verify_webhook",
    "webhook_token",
]

logger = logging.getLogger(__name__)

#: The environment variable holding the job's webhook token.
WEBHOOK_TOKEN_ENV = "CELLCROWD_WEBHOOK_TOKEN"
_MAX_REMEMBERED = 100_000


@dataclass(frozen=True)
class Webhook:
    """A verified webhook: its signal, decoded payload, signature and payload id."""

    signal: str
    payload: Mapping[str, Any]
    signature: str

    @property
    def key(self) -> str:
        """``signal:id`` of the payload (the unit or job it is about)."""
        return f"{self.signal}:{self.payload.get('id', '')}"


def webhook_token(environ: Mapping[str, str] | None = None) -> str:
    """The webhook token from :data:`WEBHOOK_TOKEN_ENV`.

    >>> webhook_token({"CELLCROWD_WEBHOOK_TOKEN": " t0k "})
    't0k'
    """
    env = os.environ if environ is None else environ
    token = (env.get(WEBHOOK_TOKEN_ENV) or "").strip()
    if not token:
        raise ConfigError(
            f"--listen needs the job's webhook token in the environment variable "
            f"{WEBHOOK_TOKEN_ENV} (set it as the job's webhook token on the service)"
        )
    return token


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) as a host and a port.

    >>> parse_listen("127.0.0.1:8080"), parse_listen("[::1]:0")
    (('127.0.0.1', 8080), ('::1', 0))
    """
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"--listen {text!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    return host, int(port)


def verify_webhook(form: Mapping[str, str], token: str) -> Webhook | None:
    """The webhook when ``form`` is completely and correctly signed, else None.

    >>> payload = '{"id": 5}'
    >>> sig = hashlib.sha1((payload + "tok").encode()).hexdigest()
    >>> verify_webhook({"signal": "unit_complete", "payload": payload, "signature": sig},
    ...                "tok").key
    'unit_complete:5'
    >>> verify_webhook({"signal": "unit_complete", "payload": payload, "signature": sig},
    ...                "other") is None
    True
    """
    signal, payload, signature = (form.get(k, "") for k in ("signal", "payload", "signature"))
    if not (signal and payload and signature and token):
        return None
    expected = hashlib.sha1((payload + token).encode("utf-8")).hexdigest()
    if not hmac.compare_digest(expected.encode(), signature.strip().lower().encode()):
        return None
    try:
        data = json.loads(payload)
    except ValueError:
        return None
    return Webhook(signal, data if isinstance(data, dict) else {"value": data}, expected)


class SeenWebhooks:
    """Signatures and payload ids acted on, kept across restarts.

    The record (``wf.webhooks_seen``) is a journal of JSON lines: each new webhook is one
    line appended and flushed to disk before the receiver answers, so recording costs the
    same however long the job runs, and a line cut short by a crash is ignored (with a
    warning) when read back. Past ``2 * keep`` entries the journal is rewritten
    atomically with the latest ``keep``.
    """

    def __init__(self, path: Path, *, keep: int = _MAX_REMEMBERED) -> None:
        self.path, self.keep = path, keep
        self._lock = threading.Lock()
        entries: list[tuple[str, str]] = []
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            text = ""
        for number, line in enumerate(text.splitlines(), 1):
            try:
                item = json.loads(line)
                entries.append((str(item["signature"]), str(item["key"])))
            except (ValueError, KeyError, TypeError):
                logger.warning("%s line %d is unreadable: ignored (a webhook recorded there "
                               "may be acted on again)", path, number)
        self._set(entries[-keep:])

    def _set(self, entries: list[tuple[str, str]]) -> None:
        self.entries = entries
        self._sigs = {sig for sig, _ in entries}
        self._keys = {key for _, key in entries}

    @property
    def keys(self) -> list[str]:
        """The payload ids (``signal:id``) remembered, oldest first."""
        return [key for _, key in self.entries]

    def add(self, hook: Webhook) -> bool:
        """Record ``hook``; False when it (or its payload id) was seen before."""
        with self._lock:
            if hook.signature in self._sigs or hook.key in self._keys:
                return False
            line = json.dumps({"signature": hook.signature, "key": hook.key}) + "\n"
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
            self.entries.append((hook.signature, hook.key))
            self._sigs.add(hook.signature)
            self._keys.add(hook.key)
            if len(self.entries) > 2 * self.keep:
                self._set(self.entries[-self.keep:])
                atomic_write_text(self.path, "".join(
                    json.dumps({"signature": s, "key": k}) + "\n" for s, k in self.entries))
            return True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], receiver: WebhookReceiver) -> None:
        super().__init__(address, _Handler)
        self.receiver = receiver


class _Handler(BaseHTTPRequestHandler):
    timeout = 10
    server: _Server

    def do_POST(self) -> None:
        status, message = self.server.receiver._handle(self)
        body = json.dumps({"status": message}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _refuse_method(self) -> None:
        self.send_error(405, "only POST is accepted")

    do_GET = do_PUT = do_DELETE = do_HEAD = _refuse_method  # noqa: N815

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("webhook receiver: %s", format % args)


class WebhookReceiver:
    """A threaded HTTP server receiving the service's webhooks (see the module docstring).

    Parameters
    ----------
    host, port : str, int
        Where to listen (port 0: a free one, see :attr:`url`).
    token : str
        The job's webhook token.
    seen : SeenWebhooks
        Webhooks already acted on (persisted).
    on_event : callable
        Called with each new verified :class:`Webhook` (from the server's thread).
    path : str
        The URL path the service posts to (as the reverse proxy forwards it).
    max_body : int
        Largest accepted request body in bytes.
    """

    def __init__(self, host: str, port: int, *, token: str, seen: SeenWebhooks,
                 on_event: Callable[[Webhook], None], path: str = "/hook",
                 max_body: int = 256 << 10) -> None:
        if not token:
            raise ConfigError(f"the webhook token is empty: set {WEBHOOK_TOKEN_ENV}")
        self.path = "/" + path.strip("/")
        self._token, self.seen, self.on_event, self.max_body = token, seen, on_event, max_body
        self.counts: dict[str, int] = {"accepted": 0, "duplicate": 0, "refused": 0}
        self._lock = threading.Lock()
        try:
            self._server = _Server((host, port), self)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port} for webhooks ({exc}): choose "
                              "another --listen address or port") from None
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.1},
                                        name="cellcrowd-webhooks", daemon=True)

    def __repr__(self) -> str:  # never show the token
        return f"WebhookReceiver(url={self.url!r})"

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        name = host.decode() if isinstance(host, bytes) else str(host)
        return f"http://{name}:{port}{self.path}"

    def start(self) -> WebhookReceiver:
        """Start serving (idempotent)."""
        if self._thread.is_alive():
            return self
        self._thread.start()
        logger.info("listening for webhooks at %s", self.url)
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1

    def _handle(self, handler: _Handler) -> tuple[int, str]:
        where = _peer(handler)
        if urlsplit(handler.path).path.rstrip("/") != self.path.rstrip("/"):
            return 404, "not found"
        length_text = handler.headers.get("content-length") or ""
        if not length_text.isdigit():
            handler.close_connection = True
            return 411, "a Content-Length is required"
        if int(length_text) > self.max_body:
            handler.close_connection = True  # the body is left unread
            logger.warning("webhook from %s refused: %s bytes is more than %d", where,
                           length_text, self.max_body)
            return 413, "too large"
        raw = handler.rfile.read(int(length_text))
        form = {k: v[0] for k, v in parse_qs(raw.decode("utf-8", "replace")).items()}
        hook = verify_webhook(form, self._token)
        if hook is None:
            self._count("refused")
            why = "unsigned" if not form.get("signature") else "bad signature"
            logger.warning("webhook from %s refused (%s; signal %r)", where, why,
                           form.get("signal", "")[:40])
            return 403, "forbidden"
        if not self.seen.add(hook):
            self._count("duplicate")
            logger.info("webhook %s from %s already handled: ignored", hook.key, where)
            return 200, "duplicate"
        self._count("accepted")
        logger.info("webhook %s from %s", hook.key, where)
        self.on_event(hook)
        return 200, "ok"


def _peer(handler: BaseHTTPRequestHandler) -> str:
    """The peer's address, plus the proxy's ``X-Forwarded-For`` chain (for logs only)."""
    peer = str(handler.client_address[0])
    forwarded = (handler.headers.get("x-forwarded-for") or "")[:200]
    return f"{peer} (forwarded for {forwarded})" if forwarded else peer


def listen_for_webhooks(wf: WorkingFolder, listen: str, wake: threading.Event, *,
                        path: str = "/hook", token: str | None = None) -> WebhookReceiver:
    """A started receiver for ``HOST:PORT`` that sets ``wake`` on each new webhook.

    Seen webhooks are kept in ``wf.webhooks_seen``; the token defaults to
    :func:`webhook_token` (the environment). Stop it with ``stop()`` (or ``with``).
    """
    host, port = parse_listen(listen)
    seen = SeenWebhooks(wf.webhooks_seen)
    receiver = WebhookReceiver(host, port, token=token or webhook_token(), seen=seen,
                               on_event=lambda hook: wake.set(), path=path)
    return receiver.start()
