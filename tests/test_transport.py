"""The client's transport: a connection pool per thread, closed when its thread ends."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from cellcrowd.appen.http import PerThreadTransport


@pytest.fixture
def port_echo() -> Iterator[str]:
    """An HTTP/1.1 server on 127.0.0.1 that answers each GET with the client's port."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: a connection serves many requests

        def do_GET(self) -> None:
            body = str(self.client_address[1]).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def _ports(client: httpx.Client, url: str, threads: int, requests: int) -> list[set[str]]:
    """The client ports the server saw, per thread (each thread's requests in turn)."""
    seen: list[set[str]] = [set() for _ in range(threads)]
    start = threading.Barrier(threads)

    def work(i: int) -> None:
        start.wait(timeout=10)
        for _ in range(requests):
            seen[i].add(client.get(url, timeout=10).text)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
    return seen


def test_each_thread_keeps_a_connection_of_its_own(port_echo: str) -> None:
    transport = PerThreadTransport(httpx.HTTPTransport)
    with httpx.Client(transport=transport) as client:
        seen = _ports(client, port_echo, threads=6, requests=5)
        assert all(len(ports) == 1 for ports in seen), seen  # reused, request after request
        assert len(set().union(*seen)) == 6  # and not shared between threads
        assert transport.open_transports == 6
        # the threads have ended: the next thread to make one closes theirs
        again = _ports(client, port_echo, threads=1, requests=2)
        assert transport.open_transports == 1
        assert not again[0] & set().union(*seen)
    assert transport.open_transports == 0  # closing the client closed them all
