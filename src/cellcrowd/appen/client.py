"""A client for the annotation service's REST API (Figure Eight, now Appen).

The client downloads job reports (``full``, ``aggregated``, ``json``, ``gold_report``,
``workset``, ``source``) over the v1 API (``GET {base}/jobs/{id}.csv?type=T``) or the newer
v3 one (``POST {base3}/jobs/download.csv?jobId=…&type=…&filename=…``), polls while the
service answers 202 "being generated", unzips the single file of the zip and writes it
atomically (usually to ``wf.report_csv(job_id, type)``). It also reads the job status
(``{base}/jobs/{id}.json`` and ``{base}/jobs/{id}/ping.json``) and offers
:meth:`AppenClient.send`, the retrying request used by :mod:`cellcrowd.download`.

Base URLs and credentials
    See :mod:`cellcrowd.appen.auth`: the v3 base is derived from the v1 one, and the key
    goes only to the API's origin, below httpx's logging (never in its log lines, never
    to a storage host a redirect leads to). Error messages pass through
    :func:`cellcrowd.errors.redact` and remove the key itself. Environment proxy
    variables are not read (``trust_env=False``) so that every request goes through that
    wrapper; pass ``proxy=`` to use a proxy.

Retries
    429, 5xx, connection errors, timeouts and truncated bodies are retried up to
    ``max_retries`` times with capped exponential backoff (``backoff`` × 2^n, at most
    ``max_backoff`` seconds, with jitter), or after the server's ``Retry-After`` when it
    sends one (capped at ``max_retry_after``; a wait of more than a minute is logged at
    WARNING). Each retry logs one warning line. Every request, body included, must end
    within ``request_deadline`` seconds, and a report must be ready within
    ``report_deadline`` seconds of waiting (:mod:`cellcrowd.appen.http`). Every wait goes
    through the ``sleep`` function given to the client, so tests can replace it.
    Redirects are followed by hand (at most ``max_redirects``); a retry starts again from
    the original URL, since a signed storage URL may have expired.

Reports
    The zip is streamed to a temporary file beside the destination and its one member
    extracted (:mod:`cellcrowd.appen.bodies`). The zip is not kept unless
    ``keep_zip=True`` (then it sits beside the CSV, ``.zip`` instead of ``.csv``): the CSV
    is the content, the zip only its transport. A body that is not a zip but plain text
    is written as it is. The ``json`` report is JSON lines and is written under the same
    ``…_report.csv`` name the seed notebook used.

The URL and key helpers (:mod:`cellcrowd.appen.auth`) and the body readers
(:mod:`cellcrowd.appen.bodies`) can also be imported from here.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import shutil
import ssl
import time
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx

from ..errors import (
    AuthenticationError,
    JobNotFoundError,
    ReportNotReadyError,
    ServiceError,
    TemporaryServiceError,
    redact,
)
from ..files import atomic_path
from .auth import (
    API_KEY_ENV_VARS,
    API_URL_ENV,
    DEFAULT_API_URL,
    AuthMode,
    AuthTransport,
    Credentials,
    api_url_from_env,
    get_api_key,
    has_version,
    host_of,
    v3_base_url,
    versioned_base_url,
)
from .bodies import (
    EMPTY_ZIP_MAGIC,
    ZIP_MAGIC,
    RetryableError,
    check_complete,
    extract_single_member,
    read_head,
    read_limited,
    scratch_path,
    server_message,
    stream_to_file,
)
from .http import DeadlineTransport, PerThreadTransport, capped_wait
from .http import retry_after as _retry_after

__all__ = [
    "API_KEY_ENV_VARS",
    "API_URL_ENV",
    "DEFAULT_API_URL",
    "REPORT_TYPES",
    "AppenClient",
    "RetryableError",
    "api_url_from_env",
    "check_complete",
    "extract_single_member",
    "get_api_key",
    "v3_base_url",
    "versioned_base_url",
]

logger = logging.getLogger(__name__)

REPORT_TYPES = ("full", "aggregated", "json", "gold_report", "workset", "source")

ApiVersion = Literal["v1", "v3"]

_REDIRECTS = frozenset({301, 302, 303, 307, 308})

T = TypeVar("T")


# -- the client ----------------------------------------------------------------------------


class AppenClient:
    """Talks to the annotation service: reports, job status, retried downloads.

    Parameters
    ----------
    api_key : str or None
        The API key. ``None`` sends no credential (only useful for public storage URLs).
    base_url : str
        The v1 API base URL; see :func:`api_url_from_env`.
    timeout : float
        Seconds to wait for a connection or for data.
    max_retries : int
        Retries of one request after a temporary failure (429, 5xx, connection errors,
        truncated bodies).
    poll_interval : float
        Seconds between polls while a report is being generated (the server's
        ``Retry-After`` wins when it sends one).
    max_polls : int
        Polls before giving up with :class:`ReportNotReadyError`.
    sleep : callable
        Every wait goes through it (tests pass a recorder).
    auth : {"header", "query"}
        Where the key goes: ``Authorization: Token token=…`` or ``?key=…``.
    backoff, max_backoff, max_retry_after : float
        First retry delay, its cap, and the cap on a server's ``Retry-After`` (202, 429
        and 5xx alike).
    request_deadline : float
        Seconds each request may take, from connecting to the last byte of the answer.
    report_deadline : float
        Seconds of waiting for a report to be generated before giving up.
    max_redirects : int
        Redirects followed per request.
    max_connections : int
        Most downloads at once. Each thread using the client has connections of its
        own (at most 2: one answer is read at a time), so this also bounds the
        connections the downloads open.
    max_report_bytes : int
        Largest report accepted (compressed download and uncompressed member).
    proxy : str or None
        Proxy URL (environment proxy variables are not read).
    verify : bool or ssl.SSLContext
        TLS certificate checks (``True``: the system-independent certifi bundle, one
        context shared by all clients since building it takes a while).
    transport : httpx.BaseTransport or None
        The transport under the credential wrapper (tests may give a mock).

    Examples
    --------
    >>> client = AppenClient("secret", base_url="http://127.0.0.1:9/v1", max_retries=0)
    >>> client.report_url(7, api_version="v3")
    'http://127.0.0.1:9/v3/jobs/download.csv'
    >>> client.close()
    """

    def __init__(
        self,
        api_key: str | None,
        *,
        base_url: str = DEFAULT_API_URL,
        timeout: float = 60.0,
        max_retries: int = 6,
        poll_interval: float = 10.0,
        max_polls: int = 30,
        sleep: Callable[[float], None] = time.sleep,
        auth: AuthMode = "header",
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        max_retry_after: float = 300.0,
        request_deadline: float = 600.0,
        report_deadline: float = 1800.0,
        max_redirects: int = 5,
        max_connections: int = 64,
        max_report_bytes: int = 4 << 30,
        proxy: str | None = None,
        verify: bool | ssl.SSLContext = True,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if auth not in ("header", "query"):
            raise ValueError(f"auth must be 'header' or 'query', got {auth!r}")
        for name, value in (("max_retries", max_retries), ("max_polls", max_polls),
                            ("max_redirects", max_redirects)):
            if value < 0:
                raise ValueError(f"{name} must be 0 or more, got {value}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        httpx.URL(base_url)  # fail early on a malformed URL
        self.base_url = versioned_base_url(base_url)
        self._given_base_url = base_url.strip().rstrip("/")
        self.max_retries = max_retries
        self.poll_interval = poll_interval
        self.max_polls = max_polls
        self.backoff, self.max_backoff = backoff, max_backoff
        self.max_retry_after, self.report_deadline = max_retry_after, report_deadline
        self.max_redirects = max_redirects
        self.max_connections = max_connections
        self.max_report_bytes = max_report_bytes
        self._sleep = sleep
        self._key = api_key or None
        self._credentials = Credentials(api_key, self.base_url, auth)
        self._random = random.Random()
        tls = _default_ssl_context() if verify is True else verify
        inner = transport or PerThreadTransport(lambda: httpx.HTTPTransport(
            verify=tls, limits=httpx.Limits(max_connections=2, max_keepalive_connections=2),
            proxy=proxy))
        self._http = httpx.Client(
            transport=AuthTransport(DeadlineTransport(inner, request_deadline),
                                     self._credentials),
            timeout=httpx.Timeout(min(timeout, request_deadline), pool=None),
            follow_redirects=False,
            trust_env=False,
            headers={"User-Agent": "cellcrowd"},
        )

    def __repr__(self) -> str:
        return f"AppenClient(base_url={self.base_url!r}, auth={self._credentials.mode!r})"

    # -- lifecycle --

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> AppenClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- small helpers --

    def redact(self, text: str) -> str:
        """``text`` without the key or credential-looking URL parameters."""
        return redact(text, self._key)

    def sends_credentials_to(self, url: str) -> bool:
        """Whether a request to ``url`` would carry the key (same origin as the API)."""
        return self._credentials.applies_to(httpx.URL(url))

    def sleep(self, seconds: float) -> None:
        """Wait through the injected sleep function."""
        self._sleep(seconds)

    def report_url(self, job_id: int | str, *, api_version: ApiVersion = "v1") -> str:
        """The URL a report is requested from (without query parameters)."""
        if api_version == "v3":
            return f"{v3_base_url(self.base_url)}/jobs/download.csv"
        if api_version != "v1":
            raise ValueError(f"api_version must be 'v1' or 'v3', got {api_version!r}")
        return f"{self.base_url}/jobs/{job_id}.csv"

    # -- the retrying request --

    def send(
        self,
        method: str,
        url: str,
        *,
        handle: Callable[[httpx.Response], T],
        params: Mapping[str, str] | None = None,
        what: str = "request",
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> T:
        """Send a request with retries and manual redirects; ``handle`` reads the answer.

        ``handle`` gets the final 2xx response with its body still unread (stream it)
        and may raise :class:`RetryableError` (e.g. for a truncated body). 401/403 raise
        :class:`AuthenticationError` from the API's host (a plain :class:`ServiceError`
        from other hosts, which get no key), 404 :class:`JobNotFoundError`, other 4xx
        :class:`ServiceError`; 429/5xx/connection errors are retried and become
        :class:`TemporaryServiceError` when the retries run out. ``what`` names the
        request in messages (e.g. ``"job 12's full report"``). ``content`` and ``headers``
        go with the request (a body, e.g. rows added to a job).
        """
        start = self._credentials.strip(httpx.URL(url))
        if params:
            start = start.copy_merge_params(dict(params))
        attempt = 0
        while True:
            try:
                return self._send_once(method, start, handle, what, content, headers)
            except RetryableError as exc:
                reason, retry_after = exc.reason, exc.retry_after
            except httpx.TransportError as exc:
                reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                retry_after = None
            if attempt == self.max_retries:
                raise TemporaryServiceError(
                    f"{what}: gave up after {self.max_retries + 1} attempts at "
                    f"{host_of(start)}, the last one failed with {self.redact(reason)}; the "
                    "service may be overloaded or down, or the network may not reach "
                    f"{start.host}: check the base URL and try again later",
                    url=self.redact(str(start)),
                ) from None
            delay = self._retry_delay(attempt, retry_after, what)
            logger.warning(
                "%s: %s; retry %d of %d in %.1f s",
                what, self.redact(reason), attempt + 1, self.max_retries, delay,
            )
            self._sleep(delay)
            attempt += 1

    def _send_once(
        self, method: str, url: httpx.URL, handle: Callable[[httpx.Response], T], what: str,
        content: bytes | None = None, headers: Mapping[str, str] | None = None,
    ) -> T:
        for _ in range(self.max_redirects + 1):
            request = self._http.build_request(method, url, content=content, headers=headers)
            response = self._http.send(request, stream=True)
            try:
                code = response.status_code
                if code in _REDIRECTS:
                    url, method = self._redirect_target(response, url, method, what)
                    continue
                if code == 429 or code >= 500:
                    read_limited(response, 64 << 10, what, strict=False)  # keep-alive
                    raise RetryableError(
                        f"HTTP {code} {response.reason_phrase}".strip(),
                        retry_after=_retry_after(response),
                    )
                if code >= 400:
                    self._raise_for_status(response, what)
                return handle(response)
            finally:
                response.close()
        raise ServiceError(
            f"{what}: more than {self.max_redirects} redirects; the service or its storage "
            "is misconfigured: report it to the service, or try the v3 API ([service] "
            "api_version = \"v3\")",
            url=self.redact(str(url)),
        )

    def _redirect_target(
        self, response: httpx.Response, url: httpx.URL, method: str, what: str
    ) -> tuple[httpx.URL, str]:
        location = response.headers.get("location")
        if not location:
            raise ServiceError(
                f"{what}: HTTP {response.status_code} redirect without a Location header",
                url=self.redact(str(url)), status=response.status_code,
            )
        target = self._credentials.strip(url.join(location))
        if target.scheme not in ("http", "https"):
            raise ServiceError(
                f"{what}: redirect to a non-HTTP URL {self.redact(str(target))!r}",
                url=self.redact(str(url)), status=response.status_code,
            )
        code = response.status_code
        if code == 303 or (code in (301, 302) and method == "POST"):
            method = "GET"
        logger.debug(
            "%s: HTTP %d redirect to %s%s", what, code, self.redact(str(target)),
            "" if self._credentials.applies_to(target) else " (another host: no credentials)",
        )
        return target, method

    def _raise_for_status(self, response: httpx.Response, what: str) -> None:
        code = response.status_code
        url = self.redact(str(response.request.url))
        detail = self.redact(server_message(response))
        if code in (401, 403) and not self._credentials.applies_to(response.request.url):
            raise ServiceError(
                f"{what}: HTTP {code} from {response.request.url.host} ({detail}), which got "
                "no API key: a signed storage link may have expired; download the report "
                "again for fresh links",
                url=url, status=code,
            )
        if code in (401, 403):
            raise AuthenticationError(
                f"{what}: the service refused the API key (HTTP {code}: {detail}); check the "
                f"key in {API_KEY_ENV_VARS[0]} (or {API_KEY_ENV_VARS[1]}), that it belongs to "
                f"the team that owns the job, and the base URL {self.redact(self.base_url)}",
                url=url, status=code,
            )
        if code == 404:
            raise JobNotFoundError(
                f"{what}: not found (HTTP 404: {detail}); check the job id and the base URL "
                f"{self.redact(self.base_url)} (EU jobs live at api.eu.appen.com)"
                f"{self._version_note()}",
                url=url, status=code,
            )
        raise ServiceError(f"{what}: HTTP {code} ({detail})", url=url, status=code)

    def _version_note(self) -> str:
        """What a 404 may owe to a base URL given without an API version."""
        given = self._given_base_url
        if has_version(given):
            return ""
        used = "" if given == self.base_url else f", so {self.redact(self.base_url)} was used"
        return (f"; the base URL {self.redact(given)} names no API version{used}: give the "
                "full versioned URL, e.g. https://api.appen.com/v1")

    def _retry_delay(self, attempt: int, retry_after: float | None, what: str) -> float:
        if retry_after is not None:
            return capped_wait(retry_after, self.max_retry_after, what)
        delay = min(self.max_backoff, self.backoff * 2.0**attempt)
        return delay * (0.5 + 0.5 * self._random.random())

    # -- JSON endpoints --

    def get_json(self, url: str, *, what: str, params: Mapping[str, str] | None = None,
                 method: str = "GET") -> Any:
        """A JSON answer (retried like every request)."""

        def read(response: httpx.Response) -> Any:
            body = read_limited(response, 64 << 20, what)
            try:
                return json.loads(body) if body.strip() else {}
            except ValueError:
                raise ServiceError(
                    f"{what}: the answer is not JSON (starts {body[:60]!r})",
                    url=self.redact(str(response.request.url)), status=response.status_code,
                ) from None

        return self.send(method, url, handle=read, params=params, what=what)

    def job_status(self, job_id: int | str) -> dict[str, Any]:
        """The job's attributes (``GET {base}/jobs/{id}.json``), e.g. ``state``, ``title``."""
        data = self.get_json(f"{self.base_url}/jobs/{job_id}.json", what=f"job {job_id}")
        return dict(data) if isinstance(data, dict) else {"data": data}

    def ping(self, job_id: int | str) -> dict[str, Any]:
        """The job's counts (``GET {base}/jobs/{id}/ping.json``): all_units, needed_judgments…"""
        data = self.get_json(f"{self.base_url}/jobs/{job_id}/ping.json",
                             what=f"job {job_id} status")
        return dict(data) if isinstance(data, dict) else {"data": data}

    def regenerate_report(self, job_id: int | str, report_type: str = "full") -> None:
        """Ask for a fresh report (``POST {base}/jobs/{id}/regenerate?type=T``)."""
        _check_report_type(report_type)
        self.get_json(
            f"{self.base_url}/jobs/{job_id}/regenerate", method="POST",
            params={"type": report_type}, what=f"regenerating job {job_id}'s {report_type} report",
        )
        logger.info("asked the service to regenerate job %s's %s report", job_id, report_type)

    # -- reports --

    def download_report(
        self,
        job_id: int | str,
        dest_csv: str | Path,
        *,
        report_type: str = "full",
        api_version: ApiVersion = "v1",
        regenerate: bool = False,
        keep_zip: bool = False,
    ) -> Path:
        """Download a report, unzip its single file and write it atomically to ``dest_csv``.

        Parameters
        ----------
        job_id : int or str
            The job.
        dest_csv : Path
            Where the report goes, usually ``wf.report_csv(job_id, report_type)``.
        report_type : str
            One of :data:`REPORT_TYPES`.
        api_version : {"v1", "v3"}
            ``GET {base}/jobs/{id}.csv`` or ``POST {base3}/jobs/download.csv``.
        regenerate : bool
            Ask for a fresh report first (otherwise the service may hand out an old one).
        keep_zip : bool
            Keep the downloaded zip beside the CSV (``.zip`` suffix).

        Returns
        -------
        Path
            ``dest_csv``.
        """
        _check_report_type(report_type)
        dest = Path(dest_csv)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if regenerate:
            self.regenerate_report(job_id, report_type)
        what = f"job {job_id}'s {report_type} report"
        keep = atomic_path(dest.with_suffix(".zip")) if keep_zip else scratch_path(dest)
        with keep as tmp_zip:
            self._fetch_report(job_id, report_type, api_version, tmp_zip, what)
            with atomic_path(dest) as tmp_csv:
                head = read_head(tmp_zip)
                if head.startswith((ZIP_MAGIC, EMPTY_ZIP_MAGIC)):
                    extract_single_member(tmp_zip, tmp_csv, max_bytes=self.max_report_bytes,
                                          source=what)
                else:
                    logger.info("%s came as plain text, not a zip", what)
                    shutil.copyfile(tmp_zip, tmp_csv)
        logger.info("wrote %s to %s", what, dest)
        return dest

    def _fetch_report(
        self, job_id: int | str, report_type: str, api_version: ApiVersion, target: Path,
        what: str,
    ) -> None:
        url = self.report_url(job_id, api_version=api_version)
        if api_version == "v3":
            method = "POST"
            params = {"jobId": str(job_id), "type": report_type,
                      "filename": f"job_{job_id}_{report_type}_report.zip"}
        else:
            method, params = "GET", {"type": report_type}
        started, waited = time.monotonic(), 0.0
        for poll in range(self.max_polls + 1):
            wait = self.send(method, url, params=params, what=what,
                             handle=lambda r: self._save_report(r, target, what))
            if wait is None:
                return
            delay = capped_wait(wait, self.max_retry_after, what) if wait > 0 else (
                self.poll_interval)
            spent = max(waited, time.monotonic() - started)
            if poll == self.max_polls or spent + delay > self.report_deadline:
                break
            logger.info("%s is being generated; asking again in %.0f s (poll %d of %d)",
                        what, delay, poll + 1, self.max_polls)
            self._sleep(delay)
            waited += delay
        raise ReportNotReadyError(
            f"{what} was still being generated after {poll} polls and "
            f"{max(waited, time.monotonic() - started):.0f} s of waiting (limits: "
            f"{self.max_polls} polls, {self.report_deadline:g} s, service.report_deadline): "
            "large jobs can take minutes; run the download again later, or allow more time",
            url=self.redact(url), status=202,
        )

    def _save_report(self, response: httpx.Response, target: Path, what: str) -> float | None:
        """Save a ready report; or return how long to wait (0 = default) on a 202."""
        if response.status_code == 202:
            read_limited(response, 1 << 20, what)
            return _retry_after(response) or 0.0
        stream_to_file(response, target, self.max_report_bytes, what)
        head = read_head(target)
        if head.startswith(ZIP_MAGIC):
            try:
                with zipfile.ZipFile(target):
                    pass
            except zipfile.BadZipFile as exc:
                raise RetryableError(f"the report zip is damaged ({exc})") from None
        elif head.lstrip().startswith(b"<"):
            raise ServiceError(
                f"{what}: the service sent an HTML page instead of the report (starts "
                f"{head[:40]!r}); check the base URL {self.redact(self.base_url)}",
                url=self.redact(str(response.request.url)), status=response.status_code,
            )
        return None


# -- module helpers -------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _default_ssl_context() -> ssl.SSLContext:
    return httpx.create_ssl_context()


def _check_report_type(report_type: str) -> None:
    if report_type not in REPORT_TYPES:
        raise ValueError(
            f"unknown report type {report_type!r}: use one of {', '.join(REPORT_TYPES)}"
        )
