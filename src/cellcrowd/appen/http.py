"""Bounded waits for the service's HTTP layer: a deadline per request, capped server waits.

httpx's timeouts bound each *step* (connecting, each read): a server that sends one byte
every few seconds never trips them, and a ``Retry-After`` of a day is a valid header.
This module adds the bounds :class:`~cellcrowd.appen.client.AppenClient` needs:

* :class:`DeadlineTransport` wraps a transport so that each request (connecting, the
  headers and the whole body) must finish within ``deadline`` seconds; past it the body
  raises :class:`httpx.ReadTimeout`, which the client retries like any timeout.
* :func:`capped_wait` caps a wait the server asked for (``Retry-After`` on 202, 429 or
  5xx) and says so at WARNING when the server asked for more than a minute.
"""

from __future__ import annotations

import email.utils
import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone

import httpx

__all__ = ["LONG_WAIT", "DeadlineTransport", "PerThreadTransport", "capped_wait", "retry_after"]

logger = logging.getLogger(__name__)

#: Server-requested waits longer than this (seconds) are logged at WARNING.
LONG_WAIT = 60.0


def capped_wait(asked: float, cap: float, what: str) -> float:
    """The wait to obey when the server asks for ``asked`` seconds: at most ``cap``.

    >>> capped_wait(86400, 300, "job 1's report")
    300.0
    """
    wait = min(max(float(asked), 0.0), float(cap))
    if asked > LONG_WAIT:
        logger.warning(
            "%s: the service asks to wait %.0f s%s", what, asked,
            f"; waiting {wait:.0f} s at most (service.max_wait)" if wait < asked else "",
        )
    return wait


def retry_after(response: httpx.Response) -> float | None:
    """Seconds from a ``Retry-After`` header (seconds or an HTTP date), if any."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


class _DeadlineStream(httpx.SyncByteStream):
    """A response body that raises ReadTimeout once the request's deadline has passed."""

    def __init__(self, inner: httpx.SyncByteStream, request: httpx.Request, end: float,
                 seconds: float, clock: Callable[[], float]) -> None:
        self._inner, self._request = inner, request
        self._end, self._seconds, self._clock = end, seconds, clock

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            if self._clock() > self._end:
                raise httpx.ReadTimeout(
                    f"the answer took longer than the request deadline of {self._seconds:g} s "
                    "(service.request_deadline): the server or the network is too slow",
                    request=self._request,
                )
            yield chunk

    def close(self) -> None:
        self._inner.close()


class DeadlineTransport(httpx.BaseTransport):
    """A transport whose requests (connect, headers, whole body) end within ``deadline`` s.

    Parameters
    ----------
    inner : httpx.BaseTransport
        The transport that does the work.
    deadline : float
        Seconds from sending a request to the last byte of its answer.
    clock : callable
        Monotonic seconds (tests may pass their own).
    """

    def __init__(self, inner: httpx.BaseTransport, deadline: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if deadline <= 0:
            raise ValueError(f"the request deadline must be positive, got {deadline}")
        self._inner, self.deadline, self._clock = inner, deadline, clock

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        end = self._clock() + self.deadline
        response = self._inner.handle_request(request)
        stream = response.stream
        if not isinstance(stream, httpx.SyncByteStream):
            raise TypeError(f"the deadline transport needs a synchronous transport below it, "
                            f"got a {type(stream).__name__} stream")
        response.stream = _DeadlineStream(stream, request, end, self.deadline, self._clock)
        return response

    def close(self) -> None:
        self._inner.close()


class PerThreadTransport(httpx.BaseTransport):
    """A transport of its own for each thread, made by ``make`` at the thread's first request.

    httpcore's connection pool looks at every connection it holds (and asks the socket
    of each idle one whether it was closed) for every request, so 32 download threads
    sharing one pool of 32 connections spend more of the client's CPU (and of the GIL
    the threads share) on the pool than 32 pools of one connection each: measured in
    ``docs/performance.md``. The transports of threads that have ended are closed when
    a new thread makes one, and all of them by :meth:`close`.
    """

    def __init__(self, make: Callable[[], httpx.BaseTransport]) -> None:
        self._make = make
        self._local = threading.local()
        self._lock = threading.Lock()
        self._made: list[tuple[threading.Thread, httpx.BaseTransport]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        transport: httpx.BaseTransport | None = getattr(self._local, "transport", None)
        if transport is None:
            transport = self._local.transport = self._new()
        return transport.handle_request(request)

    def _new(self) -> httpx.BaseTransport:
        made = self._make()
        with self._lock:
            ended = [t for thread, t in self._made if not thread.is_alive()]
            self._made = [(th, t) for th, t in self._made if th.is_alive()]
            self._made.append((threading.current_thread(), made))
        for transport in ended:
            transport.close()
        return made

    @property
    def open_transports(self) -> int:
        """How many threads' transports are open."""
        with self._lock:
            return len(self._made)

    def close(self) -> None:
        with self._lock:
            made, self._made = self._made, []
        for _, transport in made:
            transport.close()
