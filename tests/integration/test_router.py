"""The built-in router with real sockets: routing, switching, draining, retries, HTTP hygiene,
adoption. Backends are small threaded HTTP servers that name themselves and log what they got."""

from __future__ import annotations

import asyncio
import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from hinotori.errors import RouterError
from hinotori.loadgen import LoadGenerator
from hinotori.model import Backend, RoutingTable, ServiceRoute
from hinotori.router.builtin import BuiltinRouter
from tests.support import free_port

pytestmark = pytest.mark.integration


class Recorder(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out apart: no 40 ms delayed-ACK stall

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self) -> None:
        server = self.server
        server.seen.append((self.command, self.path, dict(self.headers)))  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.headers.get("Transfer-Encoding") == "chunked":
            while (size := int(self.rfile.readline().strip(), 16)) > 0:
                body += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
        server.bodies.append(body)  # type: ignore[attr-defined]
        if self.path.startswith("/sleep"):
            time.sleep(float(self.path.split("=")[1]))
        if self.path == "/reset" and server.name == "resetter":  # type: ignore[attr-defined]
            # read the request, then drop the connection unanswered
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        out = body or server.name.encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("X-Backend", server.name)  # type: ignore[attr-defined]
        self.send_header("Keep-Alive", "timeout=5")
        if self.path == "/chunked":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"hello ", b"chunked ", b"world"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
            return
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_HEAD = _answer


def backend(name: str) -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    server.daemon_threads = True
    server.name, server.seen, server.bodies = name, [], []  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def be(server: http.server.ThreadingHTTPServer, weight: int = 1) -> Backend:
    return Backend(server.name, f"127.0.0.1:{server.server_address[1]}", 1, weight)  # type: ignore[attr-defined]


def table(version: int, *backends: Backend, **route: object) -> RoutingTable:
    return RoutingTable(version, (ServiceRoute("web", tuple(backends), **route),))  # type: ignore[arg-type]


@pytest.fixture
def router(tmp_path: Path) -> Iterator[BuiltinRouter]:
    r = BuiltinRouter(tmp_path / "router", f"127.0.0.1:{free_port()}")
    asyncio.run(r.start())
    yield r
    asyncio.run(r.stop())


def raw(router: BuiltinRouter, data: bytes, *, wait_close: bool = False) -> bytes:
    host, _, port = router.listen.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(data)
        if not wait_close:
            time.sleep(0.3)
            s.settimeout(0.5)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
        return b"".join(chunks)


def test_weights_are_accurate_and_switch_is_atomic(router: BuiltinRouter) -> None:
    a, b, c = backend("a"), backend("b"), backend("c")
    asyncio.run(router.apply(table(1, be(a, 3), be(b, 1))))

    async def load() -> tuple[Counter[str], int, int]:
        async with LoadGenerator(router.listen, clients=10, record_header="x-backend") as lg:
            while lg.stats().total < 10_000:  # the issue asks for +-2 points over 10,000
                await asyncio.sleep(0.05)
            split = lg.stats().by_header
            await router.apply(table(2, be(c)))
            seen_a, seen_b = len(a.seen), len(b.seen)  # type: ignore[attr-defined]
            await asyncio.sleep(0.5)
        stats = lg.stats()
        assert stats.failed == 0, stats.failures
        # Nothing new reached a or b once apply returned (at most the requests in flight).
        assert len(a.seen) - seen_a + len(b.seen) - seen_b <= 10  # type: ignore[attr-defined]
        return split, stats.by_header["c"], stats.total

    split, on_c, _ = asyncio.run(load())
    share = split["a"] / (split["a"] + split["b"])
    assert abs(share - 0.75) <= 0.02
    assert on_c > 0


def test_match_404_503_and_keep_alive(router: BuiltinRouter) -> None:
    a = backend("a")
    asyncio.run(router.apply(RoutingTable(1, (
        ServiceRoute("api", (be(a),), hosts=("api.test",), path_prefix="/v1"),
        ServiceRoute("empty", (), path_prefix="/empty")))))
    out = raw(router, b"GET /v1/x HTTP/1.1\r\nHost: API.test:8080\r\n\r\n"
                      b"GET /nothing HTTP/1.1\r\nHost: api.test\r\n\r\n"
                      b"GET /empty HTTP/1.1\r\nHost: x\r\n\r\n")
    assert out.count(b"HTTP/1.1 200") == 1 and b"HTTP/1.1 404" in out and b"HTTP/1.1 503" in out


def test_draining_request_finishes_after_switch(router: BuiltinRouter) -> None:
    a, b = backend("a"), backend("b")
    asyncio.run(router.apply(table(1, be(a))))
    result: dict[str, bytes] = {}
    slow = threading.Thread(target=lambda: result.setdefault(
        "out", raw(router, b"GET /sleep=1.0 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                   wait_close=True)))
    slow.start()
    time.sleep(0.3)
    asyncio.run(router.apply(table(2, be(b))))
    slow.join(10)
    assert result["out"].startswith(b"HTTP/1.1 200") and b"X-Backend: a" in result["out"]
    stats = asyncio.run(router.stats())
    assert stats["a"].active == 0 and stats["a"].requests == 1


def test_retries_refused_backend_and_never_resends_a_post(router: BuiltinRouter) -> None:
    good = backend("good")
    dead = Backend("dead", f"127.0.0.1:{free_port()}", 1)
    asyncio.run(router.apply(table(1, dead, be(good))))
    out = raw(router, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 4)
    assert out.count(b"HTTP/1.1 200") == 4
    assert asyncio.run(router.stats())["dead"].errors >= 1
    # A backend that reads the request and drops the connection: GET goes elsewhere...
    resetter, other = backend("resetter"), backend("other")
    asyncio.run(router.apply(table(2, be(resetter), be(other))))
    gets = raw(router, b"GET /reset HTTP/1.1\r\nHost: x\r\n\r\n" * 2)
    assert gets.count(b"HTTP/1.1 200") == 2
    # ...but a POST that may have had its effect is answered 502, never sent twice.
    asyncio.run(router.apply(table(3, be(resetter))))
    before = len(resetter.seen)  # type: ignore[attr-defined]
    post = raw(router, b"POST /reset HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
    assert post.startswith(b"HTTP/1.1 502")
    assert len(resetter.seen) - before == 1  # type: ignore[attr-defined]


def test_bodies_headers_and_connection_handling(router: BuiltinRouter) -> None:
    a = backend("a")
    asyncio.run(router.apply(table(1, be(a))))
    chunked = raw(router, b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                          b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    assert a.bodies[-1] == b"hello world" and chunked.endswith(b"hello world")  # type: ignore[attr-defined]
    big = os.urandom(200_000)
    out = raw(router, b"PUT /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
              % (len(big), big))
    assert a.bodies[-1] == big and out.endswith(big)  # type: ignore[attr-defined]
    out = raw(router, b"GET /chunked HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"transfer-encoding: chunked" in out.lower() and b"chunked " in out
    head = raw(router, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert head.count(b"HTTP/1.1 200") == 2  # the HEAD had no body; the connection went on
    out = raw(router, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close, X-Secret\r\n"
                      b"X-Secret: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nProxy-Connection: x\r\n"
                      b"X-Forwarded-For: 10.9.9.9\r\nX-Custom-Case: Yes\r\n\r\n", wait_close=True)
    assert b"Connection: close" in out
    got = a.seen[-1][2]  # type: ignore[attr-defined]
    for hop in ("X-Secret", "Keep-Alive", "TE", "Proxy-Connection"):
        assert hop not in got
    assert got["X-Forwarded-For"] == "10.9.9.9, 127.0.0.1"
    assert got["X-Forwarded-Proto"] == "http" and got["X-Forwarded-Host"] == "x"
    assert "X-Custom-Case" in got  # name spelling kept
    old = raw(router, b"GET / HTTP/1.0\r\n\r\n", wait_close=True)
    assert old.startswith(b"HTTP/1.1 200") and b"Connection: close" in old
    assert raw(router, b"GARBAGE\r\n\r\n", wait_close=True).startswith(b"HTTP/1.1 400")


def test_new_controller_adopts_workers_that_survive_their_parent(tmp_path: Path) -> None:
    listen = f"127.0.0.1:{free_port()}"
    state = tmp_path / "router"
    a = backend("a")
    script = (f"import asyncio; from pathlib import Path; "
              f"from hinotori.router.builtin import BuiltinRouter; "
              f"r = BuiltinRouter(Path({str(state)!r}), {listen!r}); asyncio.run(r.start())")
    parent = subprocess.Popen([sys.executable, "-c", script + "; import time; time.sleep(60)"])
    deadline = time.monotonic() + 15
    while not (state / "router-0.pid").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    adopter = BuiltinRouter(state, listen)
    try:
        pid = (state / "router-0.pid").read_text()
        asyncio.run(adopter.start())
        assert (state / "router-0.pid").read_text() == pid
        asyncio.run(adopter.apply(table(7, be(a))))
        assert asyncio.run(adopter.current()).version == 7  # type: ignore[union-attr]
        assert raw(adopter, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 200")
    finally:
        asyncio.run(adopter.stop())


def test_two_workers_and_port_in_use(tmp_path: Path) -> None:
    a = backend("a")
    r = BuiltinRouter(tmp_path / "r2", f"127.0.0.1:{free_port()}", workers=2)
    try:
        asyncio.run(r.start())
        asyncio.run(r.apply(table(1, be(a))))
        for _ in range(20):
            raw(r, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", wait_close=True)
        assert asyncio.run(r.stats())["a"].requests == 20
    finally:
        asyncio.run(r.stop())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RouterError, match=r"in use.*\[router\] listen"):
            asyncio.run(BuiltinRouter(tmp_path / "r3", f"127.0.0.1:{port}").start())
