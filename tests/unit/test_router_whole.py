"""Whole plain messages skip the parser's callbacks (router/builtin/whole.py): what goes over the
wire must be exactly what the parser's path sends, and only heads llhttp accepts may qualify.

Each exchange runs twice through one in-process worker (in-memory transports, no timing): with
the whole-message path, and with it switched off (its recognisers answering None), and the
bytes the backend and the client get are compared."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httptools
import pytest

from hinotori.model import Backend, RoutingTable, ServiceRoute
from hinotori.router.builtin import http1, whole
from hinotori.router.builtin.downstream import ClientProtocol
from hinotori.router.builtin.upstream import UpstreamProtocol
from hinotori.router.builtin.worker import Worker
from tests.support_transport import Transport

OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Backend: a\r\nContent-Length: 2\r\n\r\nhi"


class Proxy:
    def __init__(self, tmp: Path, route: ServiceRoute) -> None:
        self.loop = asyncio.new_event_loop()
        self.worker = Worker("127.0.0.1:8080", tmp / "w.sock", tmp / "table.json", self.loop)
        self.worker.apply(RoutingTable(version=1, routes=(route,)), persist=False)
        self.pools = list(self.worker.pools.values())
        self.backends: dict[str, Transport] = {}
        self.conns: dict[str, UpstreamProtocol] = {}
        for pool in self.pools:
            self.backends[pool.address] = Transport()
            self.conns[pool.address] = conn = UpstreamProtocol(pool)
            conn.connection_made(self.backends[pool.address])  # type: ignore[arg-type]
            pool.checkin(conn)
        self.client = Transport()
        self.protocol = ClientProtocol(self.worker)
        self.protocol.connection_made(self.client)  # type: ignore[arg-type]

    def exchange(self, request: bytes, responses: list[bytes]) -> tuple[bytes, bytes]:
        """(what the backends got, what the client got); ``responses`` arrive read by read."""
        self.protocol.data_received(request)
        sent = b""
        for address, backend in self.backends.items():
            got = backend.take()
            if got:
                sent += got
                for piece in responses:
                    self.conns[address].data_received(piece)
        return sent, self.client.take()


def both_ways(tmp: Path, monkeypatch: pytest.MonkeyPatch, request: bytes,
              responses: list[bytes], route: ServiceRoute | None = None
              ) -> tuple[tuple[bytes, bytes, bool], tuple[bytes, bytes, bool]]:
    """The same exchange with and without the whole-message path: (backend got, client got,
    client connection closed) for each."""
    route = route or ServiceRoute(service="web", backends=(Backend("a", "127.0.0.1:9", 1),))
    results = []
    for path in ("whole", "parser"):
        if path == "parser":
            monkeypatch.setattr(whole, "request", lambda data: None)
            monkeypatch.setattr(whole, "response", lambda data: None)
            monkeypatch.setattr(whole, "known", lambda data: None)
        (tmp / path).mkdir(parents=True)
        proxy = Proxy(tmp / path, route)
        try:
            sent, got = proxy.exchange(request, responses)
            results.append((sent, got, proxy.client.closed))
        finally:
            proxy.loop.close()
    monkeypatch.undo()
    return results[0], results[1]


@pytest.mark.parametrize("request_head", [
    b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n",
    b"GET /a/b?c=1&d=%20 HTTP/1.1\r\nHost: Shop.Test:8080\r\nUser-Agent: t\r\nAccept: */*\r\n\r\n",
    b"HEAD /x HTTP/1.1\r\nHost: a\r\n\r\n",
    b"DELETE /x HTTP/1.1\r\nHost: a\r\nX-Hinotori-Release: v1\r\n\r\n",
    b"OPTIONS /x HTTP/1.1\r\nhost: a\r\ncookie: k=v\r\n\r\n",
    b"GET / HTTP/1.1\r\nUser-Agent: no host\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: \r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",            # the parser's
    b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",                                 # the parser's
    b"GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n",       # the parser's
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi",         # the parser's
])
@pytest.mark.parametrize("response", [
    [OK],
    [OK[:30], OK[30:]],                                                     # two reads
    [b"HTTP/1.1 404 \r\nContent-Length: 0\r\n\r\n"],                        # no reason
    [b"HTTP/1.1 201 Made\r\nConnection: X-Gone\r\nX-Gone: 1\r\nContent-Length: 1\r\n\r\nx"],
    [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"],
    [b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n"],
    [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nSet-Cookie: a=b\r\n\r\nhi"],
    [b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK],
    [b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nConnection: keep-alive\r\n"   # Node's
     b"Keep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\nhi"],
    [b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi"],
])
def test_the_whole_message_path_sends_what_the_parser_path_sends(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request_head: bytes,
        response: list[bytes]) -> None:
    fast, slow = both_ways(tmp_path, monkeypatch, request_head, response)
    assert fast == slow
    assert fast[1].startswith(b"HTTP/1.1 ")


def test_a_plain_exchange_never_reaches_the_parsers(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def parsed(*args: object) -> None:
        raise AssertionError("parsed")

    for cls in (ClientProtocol, UpstreamProtocol):
        monkeypatch.setattr(cls, "on_header", parsed)
        monkeypatch.setattr(cls, "on_headers_complete", parsed)
    proxy = Proxy(tmp_path, ServiceRoute(service="web", backends=(
        Backend("a", "127.0.0.1:9", 1),)))
    try:
        for _ in range(3):
            sent, got = proxy.exchange(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", [OK])
            assert sent == (b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 127.0.0.1\r\n"
                            b"X-Forwarded-Proto: http\r\nX-Forwarded-Host: a\r\n\r\n")
            assert got == OK and not proxy.client.closed
        stats = proxy.worker.stats()["a"]
        assert stats["requests"] == 3 and stats["statuses"]["2xx"] == 3  # type: ignore[index]
    finally:
        proxy.loop.close()


def test_one_connection_s_requests_in_turn_are_the_same_both_ways(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    heads = [b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n", b"GET /b HTTP/1.1\r\nHost: b\r\n\r\n",
             b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n", b"HEAD /a HTTP/1.1\r\n\r\n",
             b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n",
             b"GET /" + b"x" * whole.SEEN_HEAD_MAX + b" HTTP/1.1\r\nHost: a\r\n\r\n"] * 2
    results = []
    for path in ("whole", "parser"):
        if path == "parser":
            monkeypatch.setattr(whole, "request", lambda data: None)
            monkeypatch.setattr(whole, "response", lambda data: None)
            monkeypatch.setattr(whole, "known", lambda data: None)
        (tmp_path / path).mkdir()
        proxy = Proxy(tmp_path / path, ServiceRoute(service="web", backends=(
            Backend("a", "127.0.0.1:9", 1),)))
        try:
            results.append([proxy.exchange(head, [OK[:-2] if head.startswith(b"HEAD") else OK])
                            for head in heads])
        finally:
            proxy.loop.close()
    assert results[0] == results[1]
    assert [sent.split(b"\r\n")[0] for sent, _ in results[0]] == [
        h.split(b"\r\n")[0] for h in heads]


def test_sticky_cookie_and_released_requests_are_the_same_both_ways(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    route = ServiceRoute(service="web", sticky=True, backends=(
        Backend("a", "127.0.0.1:9", 1), Backend("b", "127.0.0.1:10", 2)))
    for request_head in (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
                         b"GET / HTTP/1.1\r\nHost: a\r\nCookie: hinotori-web=v2\r\n\r\n",
                         b"GET / HTTP/1.1\r\nHost: a\r\nX-Hinotori-Release: v1\r\n\r\n"):
        fast, slow = both_ways(tmp_path / str(len(request_head)), monkeypatch, request_head,
                               [OK], route)
        if b"v2" in request_head or b"v1" in request_head:
            assert fast == slow
        else:  # which release a new client gets is the schedule's: compare the cookie's shape
            assert b"Set-Cookie: hinotori-web=v" in fast[1]
            assert fast[0].split(b"\r\n")[:2] == slow[0].split(b"\r\n")[:2]


PLAIN_REQUESTS = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /p?q=1 HTTP/1.1\r\nHost:a\r\nAccept:\t*/*\r\nX-Empty:\r\n\r\n",
    b"HEAD / HTTP/1.1\r\nCookie: a=b; c=d\r\nX-Hinotori-Release: canary\r\n\r\n",
]
NOT_PLAIN_REQUESTS = [
    b"GET / HTTP/1.1\nHost: a\n\n",                           # bare LF
    b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",                    # space before the colon
    b"GET / HTTP/1.1\r\nX-A: 1\r\n 2\r\n\r\n",                # folded
    b"GET / HTTP/1.1\r\nX-A: \xe9\r\n\r\n",                   # obs-text
    b"GET / HTTP/1.1\r\nX-A: a\x00b\r\n\r\n",                 # a control byte
    b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
    b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",             # absolute form
    b"GET /a#f HTTP/1.1\r\nHost: a\r\n\r\n",                  # a fragment
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nCookie: a\r\ncookie: b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",  # pipelined
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\nx",
    b"GET / HTTP/1.1\r\nHost: a\r\n",                         # not whole
]


class Seen:
    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.url = b""
        self.complete = 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_message_complete(self) -> None:
        self.complete += 1


@pytest.mark.parametrize("data", PLAIN_REQUESTS + NOT_PLAIN_REQUESTS)
def test_only_heads_llhttp_reads_the_same_way_qualify(data: bytes) -> None:
    found = whole.request(data)
    assert (found is not None) == (data in PLAIN_REQUESTS)
    if found is None:
        return
    seen = Seen()
    parser = httptools.HttpRequestParser(seen)
    parser.feed_data(data)
    assert seen.complete == 1 and parser.get_method() == found.method and seen.url == found.url
    by_name = dict(seen.headers)
    assert (found.cookie, found.accept, found.release) == (
        by_name.get(b"cookie"), by_name.get(b"accept"), by_name.get(b"x-hinotori-release"))
    host = by_name.get(b"host")
    assert found.host == (http1.split_host(host) if host else b"")
    assert (found.tail is None) == (host is None)


@pytest.mark.parametrize(("data", "expected"), [
    (OK, (200, len(OK) - 2)),
    (b"HTTP/1.1 500 Oops\r\ncontent-length: 0\r\n\r\n", (500, 40)),
    (OK + b"HTTP/1.1", None),                                      # more than one response
    (OK[:-1], None),                                               # the body is not all here
    (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", None),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx", None),
    (b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nContent-Length: 0\r\n\r\n",
     (200, 38, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")),
    (b"HTTP/1.1 200 OK\r\nUpgrade: h2c\r\nContent-Length: 0\r\n\r\n", None),
    (b"HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\nx", None),
    (b"HTTP/1.1 200 OK\r\nX: 1\nContent-Length: 0\r\n\r\n", None),  # bare LF
    (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n", None),
    (b"HTTP/1.1 100 Continue\r\n\r\n", None),
    (b"HTTP/1.1 200 OK\r\n\r\n", None),                            # body up to the close
    (b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive\r\nKeep-Alive: timeout=5\r\nX: 1\r\n"
     b"Content-Length: 1\r\n\r\nx", (200, 44, b"HTTP/1.1 200 OK\r\nX: 1\r\nContent-Length: 1\r\n"
                                     b"\r\nx")),
    (b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X\r\nContent-Length: 0\r\n\r\n", None),
    (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", None),
])
def test_only_whole_plain_responses_qualify(data: bytes, expected: tuple[int, ...] | None
                                            ) -> None:
    for _ in range(2):  # the remembered answer is the same
        found = whole.response(data)
        assert (found and found[:2]) == (expected and expected[:2])
        if found is not None:
            assert found[2] == (expected[2] if len(expected) > 2 else data)  # type: ignore[misc]


def test_remembered_heads_are_bounded() -> None:
    for i in range(whole._SEEN_MAX + 10):
        assert whole.request(b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % i) is not None
        assert whole.response(b"HTTP/1.1 200 R%d\r\nContent-Length: 0\r\n\r\n" % i) is not None
    assert len(whole._SEEN_REQUESTS) <= whole._SEEN_MAX
    assert len(whole._SEEN_RESPONSES) <= whole._SEEN_MAX
    big = b"GET /" + b"a" * whole.SEEN_HEAD_MAX + b" HTTP/1.1\r\nHost: a\r\n\r\n"
    assert whole.request(big) is not None and big not in whole._SEEN_REQUESTS


def test_the_latency_table_is_bisect_s_answer() -> None:
    from bisect import bisect_left

    from hinotori.model import LATENCY_BUCKETS_MS
    from hinotori.router.builtin.table import BUCKET_BY_MS
    for tenths in range(0, 10_000):
        ms = tenths / 10 + 0.01 * (tenths % 3)
        whole_ms = int(ms)
        assert BUCKET_BY_MS[whole_ms + (whole_ms < ms)] == bisect_left(LATENCY_BUCKETS_MS, ms)


@pytest.mark.parametrize(("latency_ms", "status"), [
    (0.0, 200), (0.4, 200), (1.0, 200), (1.5, 201), (7.0, 200), (999.9, 200), (1500.0, 200),
    (0.3, 404), (2.0, 503)])
@pytest.mark.parametrize("path", ["whole", "parser"])
def test_counters_are_what_observe_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          latency_ms: float, status: int, path: str) -> None:
    from hinotori.router.builtin import downstream, exchange, upstream
    from hinotori.router.builtin.table import Counters
    now = [100.0]
    for module in (downstream, exchange, upstream):
        monkeypatch.setattr(module, "perf_counter", lambda: now[0])
    if path == "parser":
        monkeypatch.setattr(whole, "known", lambda data: None)
        monkeypatch.setattr(whole, "response", lambda data: None)
    proxy = Proxy(tmp_path, ServiceRoute(service="web", backends=(
        Backend("a", "127.0.0.1:9", 1),)))
    try:
        proxy.protocol.data_received(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        now[0] = 100.0 + latency_ms / 1000
        (conn,) = proxy.conns.values()
        conn.data_received(b"HTTP/1.1 %d X\r\nContent-Length: 0\r\n\r\n" % status)
        expected = Counters()
        expected.observe(status, ((100.0 + latency_ms / 1000) - 100.0) * 1000.0)
        got = proxy.worker.stats()["a"]
        assert got == expected.to_dict()
    finally:
        proxy.loop.close()
