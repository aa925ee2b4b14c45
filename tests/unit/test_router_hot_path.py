"""The built-in router's hot path, whole exchanges in one process: a client connection, the
exchange, a pooled backend connection, with in-memory transports (no timing here).

The shortcuts taken for speed must not change what goes over the wire: the HTTP version is only
looked up when a request is not plain HTTP/1.1 keep-alive, headers are filtered as they are
parsed, status lines come from a cache."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from hinotori.model import Backend, RoutingTable, ServiceRoute
from hinotori.router.builtin import http1
from hinotori.router.builtin.downstream import ClientProtocol
from hinotori.router.builtin.upstream import UpstreamProtocol
from hinotori.router.builtin.worker import Worker
from tests.support_transport import Transport

OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi"


class Proxy:
    """One worker with one route to one backend, one client connection, one pooled backend
    connection."""

    def __init__(self, tmp: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.worker = Worker("127.0.0.1:8080", tmp / "w.sock", tmp / "table.json", self.loop)
        self.worker.apply(RoutingTable(version=1, routes=(ServiceRoute(
            service="web", backends=(Backend("a", "127.0.0.1:9", 1),)),)), persist=False)
        self.pool = next(iter(self.worker.pools.values()))
        self.backend = Transport()
        self.conn = UpstreamProtocol(self.pool)
        self.conn.connection_made(self.backend)  # type: ignore[arg-type]
        self.pool.checkin(self.conn)
        self.client = Transport()
        self.protocol = ClientProtocol(self.worker)
        self.protocol.connection_made(self.client)  # type: ignore[arg-type]

    def exchange(self, request: bytes, response: bytes = OK) -> tuple[bytes, bytes]:
        """(what the backend got, what the client got) for one request and its response."""
        self.protocol.data_received(request)
        sent = self.backend.take()
        if sent:
            self.conn.data_received(response)
        return sent, self.client.take()


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Proxy]:
    p = Proxy(tmp_path)
    yield p
    p.loop.close()


def test_plain_http11_keep_alive_is_proxied_and_kept(proxy: Proxy) -> None:
    for _ in range(3):  # the same pooled connection each time: reused, and nothing left over
        sent, got = proxy.exchange(b"GET /a?b=1 HTTP/1.1\r\nHost: Shop.Test:8080\r\n"
                                   b"User-Agent: t\r\n\r\n")
        assert sent == (b"GET /a?b=1 HTTP/1.1\r\nHost: Shop.Test:8080\r\nUser-Agent: t\r\n"
                        b"X-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\n"
                        b"X-Forwarded-Host: Shop.Test:8080\r\n\r\n")
        assert got == OK
        assert not proxy.client.closed and proxy.pool.idle == [proxy.conn]
    stats = proxy.worker.stats()["a"]
    assert stats["requests"] == 3 and stats["statuses"]["2xx"] == 3  # type: ignore[index]


@pytest.mark.parametrize(("request_line", "connection", "said", "closed"), [
    (b"GET / HTTP/1.1", b"", b"", False),
    (b"GET / HTTP/1.1", b"Connection: close\r\n", b"Connection: close\r\n", True),
    (b"GET / HTTP/1.1", b"Connection: keep-alive, X-Hop\r\nX-Hop: 1\r\n", b"", False),
    (b"GET / HTTP/1.0", b"", b"Connection: close\r\n", True),
    (b"GET / HTTP/1.0", b"Connection: keep-alive\r\n", b"Connection: keep-alive\r\n", False),
    (b"GET / HTTP/2.0", b"", b"Connection: close\r\n", True),
])
def test_the_version_and_keep_alive_decide_the_connection_header(
        proxy: Proxy, request_line: bytes, connection: bytes, said: bytes, closed: bool) -> None:
    sent, got = proxy.exchange(request_line + b"\r\nHost: a\r\n" + connection + b"\r\n")
    assert sent.startswith(b"GET / HTTP/1.1\r\nHost: a\r\n") and b"X-Hop" not in sent
    assert b"Connection" not in sent
    head = got.partition(b"\r\n\r\n")[0] + b"\r\n"
    assert head.endswith(b"Content-Length: 2\r\n" + said)
    assert proxy.client.closed == closed


def test_response_hop_by_hop_headers_go_and_a_chunked_body_is_rechunked(proxy: Proxy) -> None:
    _, got = proxy.exchange(
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"HTTP/1.1 201 Made It\r\nConnection: X-Gone\r\nX-Gone: 1\r\nKeep-Alive: timeout=5\r\n"
        b"Transfer-Encoding: chunked\r\nX-Kept: 2\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n")
    assert got == (b"HTTP/1.1 201 Made It\r\nX-Kept: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"3\r\nabc\r\n0\r\n\r\n")
    _, got = proxy.exchange(b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
                            b"HTTP/1.1 404 \r\nContent-Length: 0\r\n\r\n")
    assert got == b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


def test_headers_named_in_connection_are_dropped_after_an_absolute_url_moved_host() -> None:
    head = http1.build_request_head(
        b"GET", b"http://api.test:81/x?y", [
            (b"X-A", b"1"), (b"Host", b"ignored"), (b"Connection", b"X-B"), (b"X-B", b"2"),
            (b"X-C", b"3")], b"1.1.1.1", b"127.0.0.1:80")
    assert head.data == (b"GET /x?y HTTP/1.1\r\nX-A: 1\r\nX-C: 3\r\nHost: api.test:81\r\n"
                         b"X-Forwarded-For: 1.1.1.1\r\nX-Forwarded-Proto: http\r\n"
                         b"X-Forwarded-Host: api.test:81\r\n\r\n")
    assert (head.host, head.path, head.connection) == (b"api.test", b"/x", True)


def test_remembered_hosts_and_status_lines_match_what_they_stand_for() -> None:
    for value in (b"A.test:80", b"[::1]:8080", b" b.test ", b"A.test:80"):
        assert http1.routing_host(value) == http1.split_host(value)
    for _ in range(2):
        assert http1.status_line(200, b"OK") == b"HTTP/1.1 200 OK\r\n"
        assert http1.status_line(503, b"") == b"HTTP/1.1 503 Service Unavailable\r\n"
    for i in range(300):  # bounded: a stream of new values never grows the tables past it
        http1.routing_host(b"h%d.test" % i)
        http1.status_line(200, b"R%d" % i)
    assert len(http1._HOSTS) <= http1._HOSTS_MAX and len(http1.STATUS_LINES) <= 256
