"""Where the service's API is and how requests prove who sends them.

Base URLs
    ``base_url`` is the v1 base (default :data:`DEFAULT_API_URL`, or the
    ``CELLCROWD_API_URL`` environment variable through :func:`api_url_from_env`). The v3
    base is derived from it by replacing the trailing ``/v1`` with ``/v3``
    (:func:`v3_base_url`), so a base URL must end in ``/v1`` to use v3.

Credentials
    The key (:func:`get_api_key`) goes in the header ``Authorization: Token token=<key>``
    (``auth="header"``, preferred) or in a ``key=`` query parameter (``auth="query"``, as
    older clients did). :class:`AuthTransport` attaches it *below* httpx's own logging,
    and only to requests whose origin (scheme, host and port) is the API's
    (:class:`Credentials`). Hence httpx's ``HTTP Request: …`` log lines never contain
    it, and a redirect to another host (a storage URL, or merely another port) carries
    no credential.

:class:`cellcrowd.appen.client.AppenClient` uses these; every public name here can also
be imported from :mod:`cellcrowd.appen.client`.
"""

from __future__ import annotations

import getpass
import os
import re
import sys
from collections.abc import Callable, Mapping
from typing import Literal

import httpx

from ..errors import ConfigError, redact

__all__ = [
    "API_KEY_ENV_VARS",
    "API_URL_ENV",
    "DEFAULT_API_URL",
    "AuthMode",
    "AuthTransport",
    "Credentials",
    "api_url_from_env",
    "get_api_key",
    "has_version",
    "host_of",
    "v3_base_url",
    "versioned_base_url",
]

DEFAULT_API_URL = "https://api.appen.com/v1"
API_URL_ENV = "CELLCROWD_API_URL"
API_KEY_ENV_VARS = ("CELLCROWD_API_KEY", "APPEN_API_KEY", "FIGURE_EIGHT_API_KEY")

AuthMode = Literal["header", "query"]


def api_url_from_env(
    default: str = DEFAULT_API_URL, *, environ: Mapping[str, str] | None = None
) -> str:
    """The API base URL: ``CELLCROWD_API_URL`` when set, else ``default``.

    >>> api_url_from_env(environ={})
    'https://api.appen.com/v1'
    >>> api_url_from_env(environ={"CELLCROWD_API_URL": "https://api.eu.appen.com/v1/"})
    'https://api.eu.appen.com/v1'
    """
    env = os.environ if environ is None else environ
    url = (env.get(API_URL_ENV) or "").strip() or default
    if not re.match(r"(?i)^https?://[^/\s]+", url):
        raise ConfigError(
            f"{API_URL_ENV}={redact(url)!r} is not an http(s) URL: use e.g. "
            f"{DEFAULT_API_URL!r} or the EU tenant 'https://api.eu.appen.com/v1'"
        )
    return url.rstrip("/")


def get_api_key(
    prompt: bool = True,
    *,
    environ: Mapping[str, str] | None = None,
    getpass_fn: Callable[[str], str] | None = None,
) -> str:
    """The API key from the environment, else from an interactive prompt (never echoed).

    The first of ``CELLCROWD_API_KEY``, ``APPEN_API_KEY``, ``FIGURE_EIGHT_API_KEY`` that
    is set and non-empty wins. Otherwise, when ``prompt`` is true and the standard input
    is a terminal or a Jupyter kernel (or ``getpass_fn`` is given), the key is asked for
    with :func:`getpass.getpass`.

    >>> get_api_key(environ={"APPEN_API_KEY": "k2", "FIGURE_EIGHT_API_KEY": "k3"})
    'k2'
    """
    env = os.environ if environ is None else environ
    for name in API_KEY_ENV_VARS:
        value = (env.get(name) or "").strip()
        if value:
            return value
    hint = f"set one of {', '.join(API_KEY_ENV_VARS)}"
    if not prompt:
        raise ConfigError(f"no API key given: {hint}")
    if getpass_fn is None:
        # Jupyter's getpass works though its stdin is no terminal.
        if not sys.stdin or not (sys.stdin.isatty() or "ipykernel" in sys.modules):
            raise ConfigError(f"no API key given and no terminal to ask for one: {hint}")
        getpass_fn = getpass.getpass
    key = getpass_fn("Appen / Figure Eight API key (not shown): ").strip()
    if not key:
        raise ConfigError(f"no API key entered: type the key at the prompt, or {hint}")
    return key


def versioned_base_url(base_url: str) -> str:
    """The v1 base URL: a bare host (``https://api.appen.com``) gets ``/v1`` added.

    >>> versioned_base_url("https://api.appen.com/")
    'https://api.appen.com/v1'
    >>> versioned_base_url("https://api.eu.appen.com/v1")
    'https://api.eu.appen.com/v1'
    """
    base = base_url.strip().rstrip("/")
    if httpx.URL(base).path in ("", "/"):
        return f"{base}/v1"
    return base


def host_of(url: httpx.URL) -> str:
    """``host`` or ``host:port`` of a URL (never its path or query, where a key may be)."""
    return f"{url.host}:{url.port}" if url.port else url.host


def has_version(base_url: str) -> bool:
    """Whether a base URL ends in an API version (``/v1``)."""
    return re.search(r"/v\d+$", base_url.strip().rstrip("/")) is not None


def v3_base_url(base_url: str) -> str:
    """The v3 API base derived from a v1 base URL (``…/v1`` becomes ``…/v3``).

    >>> v3_base_url("https://api.appen.com/v1")
    'https://api.appen.com/v3'
    """
    base = base_url.rstrip("/")
    if not base.endswith("/v1"):
        raise ConfigError(
            f"cannot derive the v3 API URL from {redact(base)!r}: the base URL must end in "
            "'/v1' (e.g. https://api.appen.com/v1), or use the v1 API ([service] "
            "api_version = \"v1\")"
        )
    return base[: -len("/v1")] + "/v3"


# -- credentials ---------------------------------------------------------------------------


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    default = {"http": 80, "https": 443}.get(url.scheme)
    return (url.scheme.lower(), url.host.lower(), url.port or default)


class Credentials:
    """Adds the key to requests for the API's origin, and only to those."""

    def __init__(self, api_key: str | None, base_url: str, mode: AuthMode) -> None:
        self.key = api_key or None
        self.mode = mode
        self.origin = _origin(httpx.URL(base_url))

    def applies_to(self, url: httpx.URL) -> bool:
        return self.key is not None and _origin(url) == self.origin

    def strip(self, url: httpx.URL) -> httpx.URL:
        """``url`` without any query parameter holding the key (it is added back later)."""
        items = url.params.multi_items()
        kept = [(k, v) for k, v in items if self.key is None or v != self.key]
        return url if len(kept) == len(items) else url.copy_with(params=kept)

    def apply(self, request: httpx.Request) -> httpx.Request:
        if self.key is None:
            return request
        # Never pass our key on, even if a redirect echoed it into the Location.
        url = self.strip(request.url)
        headers = httpx.Headers(request.headers)
        if not self.applies_to(url):
            if url == request.url:
                return request
        elif self.mode == "header":
            headers["Authorization"] = f"Token token={self.key}"
        else:
            url = url.copy_set_param("key", self.key)
        return httpx.Request(
            request.method, url, headers=headers, stream=request.stream,
            extensions=request.extensions,
        )


class AuthTransport(httpx.BaseTransport):
    """Adds credentials after httpx has logged the (credential-free) request."""

    def __init__(self, inner: httpx.BaseTransport, credentials: Credentials) -> None:
        self._inner = inner
        self._credentials = credentials

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self._inner.handle_request(self._credentials.apply(request))

    def close(self) -> None:
        self._inner.close()
