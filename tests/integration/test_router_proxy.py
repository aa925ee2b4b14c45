"""The proxy data plane (hinotori.router.proxy) against real sockets and real worker processes.

Every test starts its own ``BuiltinRouter`` (worker processes on a free port) and stops it in
``finally``. Backends are small asyncio servers on one loop in a daemon thread; each names itself
in ``X-Backend``, counts its requests and open connections, and records what it received (method,
path, headers with their spelling, de-chunked body). Their answer depends on the path (``/slow``,
``/echo``, ``/headers``, ``/chunked``, ``/eof``, ``/big``, ``/204``, ``/304``, ``/status``,
``/hop``) or on their mode (``die``: read the request, then close without answering; ``reset``:
the same with an RST). Clients speak raw HTTP/1.x over asyncio streams, so every byte on the wire
is the test's to choose, and the load generator provides continuous keep-alive traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hinotori.errors import RouterError
from hinotori.loadgen import LoadGenerator
from hinotori.model import LATENCY_BUCKETS_MS, Backend, RoutingTable, ServiceRoute
from hinotori.router.base import Router
from hinotori.router.proxy import BuiltinRouter
from hinotori.router.proxy.relay import Proxy
from hinotori.router.proxy.routes import CompiledTable

from .conftest import free_port

pytestmark = pytest.mark.integration

IO_TIMEOUT = 10.0  # a broken relay fails the test with a timeout instead of hanging it


# -- backends ----------------------------------------------------------------------------------

@dataclass
class Seen:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


@dataclass
class App:
    name: str
    port: int
    mode: str = "ok"
    seen: list[Seen] = field(default_factory=list)
    open_connections: int = 0
    received: int = 0  # request body bytes read so far, while reading (streaming proof)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def backend(self, weight: int = 100, release: int = 1) -> Backend:
        return Backend(self.name, self.address, release, weight)

    def count(self, method: str | None = None) -> int:
        return sum(1 for s in self.seen if method is None or s.method == method)


async def read_body(reader: asyncio.StreamReader, headers: list[tuple[str, str]],
                    on_bytes: Any = None) -> bytes:
    """A message body framed by chunked or Content-Length (none: empty)."""
    h = {k.lower(): v for k, v in headers}
    parts: list[bytes] = []
    if "chunked" in h.get("transfer-encoding", "").lower():
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass  # trailers
                return b"".join(parts)
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
            if on_bytes:
                on_bytes(size)
    remaining = int(h.get("content-length", 0))
    while remaining:  # in pieces, so a streaming test can watch the body arrive
        piece = await reader.read(min(remaining, 1 << 16))
        if not piece:
            raise asyncio.IncompleteReadError(b"".join(parts), remaining)
        parts.append(piece)
        remaining -= len(piece)
        if on_bytes:
            on_bytes(len(piece))
    return b"".join(parts)


def head(status: int, app: App, extra: list[str] | None = None, reason: str = "X") -> bytes:
    return ("\r\n".join([f"HTTP/1.1 {status} {reason}", f"X-Backend: {app.name}",
                         *(extra or [])]) + "\r\n\r\n").encode()


class Backends:
    """Every test's backends, served by one asyncio loop in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.servers: list[asyncio.AbstractServer] = []
        self.writers: set[asyncio.StreamWriter] = set()

    def add(self, name: str, mode: str = "ok") -> App:
        app = App(name, free_port(), mode)

        async def start() -> asyncio.AbstractServer:
            return await asyncio.start_server(lambda r, w: self._serve(app, r, w), "127.0.0.1",
                                              app.port)

        self.servers.append(asyncio.run_coroutine_threadsafe(start(), self.loop).result(5))
        return app

    async def _serve(self, app: App, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        app.open_connections += 1
        self.writers.add(writer)
        try:
            while True:
                raw = await reader.readuntil(b"\r\n\r\n")
                lines = raw.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = [(k.strip(), v.strip()) for k, _, v in
                           (line.partition(":") for line in lines[1:] if line)]

                def count(n: int) -> None:
                    app.received += n

                body = await read_body(reader, headers, count)
                app.seen.append(Seen(method, target, headers, body))
                if app.mode == "die":
                    return  # read it all, answer nothing, close (FIN)
                if app.mode == "reset":  # read it all, answer nothing, abort (RST)
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                    return
                if not await self._respond(app, method, target, headers, body, writer):
                    return
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            app.open_connections -= 1
            self.writers.discard(writer)
            writer.close()

    async def _respond(self, app: App, method: str, target: str,
                       headers: list[tuple[str, str]], body: bytes,
                       writer: asyncio.StreamWriter) -> bool:
        """Write the response; False when the connection closes afterwards."""
        path, _, query = target.partition("?")
        arg = query.partition("=")[2]
        if path == "/slow":
            await asyncio.sleep(float(arg or 500) / 1000)
        if method == "HEAD":
            writer.write(head(200, app, ["Content-Length: 1234"]))
        elif path == "/echo":
            if any(k.lower() == "transfer-encoding" for k, _ in headers):
                writer.write(head(200, app, ["Transfer-Encoding: chunked"]))
                for i in range(0, len(body), 7000):  # uneven pieces
                    piece = body[i:i + 7000]
                    writer.write(b"%x\r\n%b\r\n" % (len(piece), piece))
                writer.write(b"0\r\n\r\n")
            else:
                writer.write(head(200, app, [f"Content-Length: {len(body)}"]) + body)
        elif path == "/headers":
            data = json.dumps(headers).encode()
            writer.write(head(200, app, [f"Content-Length: {len(data)}",
                                         "X-ReSpOnSe-CaSe: kept"]) + data)
        elif path == "/chunked":
            writer.write(head(200, app, ["Transfer-Encoding: chunked"]))
            for i in range(5):
                writer.write(b"6\r\npart%d\n\r\n" % i)
                await writer.drain()
            writer.write(b"0\r\n\r\n")
        elif path == "/eof":  # close-delimited: no length, no chunks, the close ends it
            writer.write(head(200, app, ["Connection: close"]) + b"until the ")
            await writer.drain()
            await asyncio.sleep(0.01)
            writer.write(b"end")
            await writer.drain()
            return False
        elif path == "/big":
            size = int(arg)
            writer.write(head(200, app, [f"Content-Length: {size}"]))
            block = bytes(range(256)) * 256
            for i in range(0, size, len(block)):
                writer.write(block[:size - i])
                await writer.drain()
        elif path == "/204":
            writer.write(head(204, app, reason="No Content"))
        elif path == "/304":
            writer.write(head(304, app, ['ETag: "v1"'], reason="Not Modified"))
        elif path == "/status":
            writer.write(head(int(arg), app, ["Content-Length: 0"]))
        elif path == "/hop":
            writer.write(head(200, app, [
                "Content-Length: 2", "Keep-Alive: timeout=5", "Connection: X-Resp-Hop",
                "X-Resp-Hop: secret", "Proxy-Connection: keep-alive", "Upgrade: h2c",
                "X-End: visible"]) + b"ok")
        else:
            data = app.name.encode()
            writer.write(head(200, app, [f"Content-Length: {len(data)}"]) + data)
        await writer.drain()
        return True

    def close(self) -> None:
        async def shutdown() -> None:
            for s in self.servers:
                s.close()
            for w in list(self.writers):
                w.transport.abort()
            await asyncio.sleep(0.05)

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture(scope="module")
def backends() -> Iterator[Backends]:
    b = Backends()
    yield b
    b.close()


# -- a raw HTTP client -------------------------------------------------------------------------

@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    raw_head: bytes = b""

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    @property
    def backend(self) -> str | None:
        return self.header("x-backend")


async def read_response(reader: asyncio.StreamReader, method: str = "GET") -> Response:
    async with asyncio.timeout(IO_TIMEOUT):
        raw = await reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = [(k.strip(), v.strip()) for k, _, v in
                   (line.partition(":") for line in lines[1:] if line)]
        h = {k.lower(): v for k, v in headers}
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            body = b""
        elif "transfer-encoding" in h or "content-length" in h:
            body = await read_body(reader, headers)
        else:
            body = await reader.read()  # delimited by the connection's end
        return Response(status, headers, body, raw)


class Conn:
    """One client connection to the router."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Conn:
        return cls(*await asyncio.open_connection("127.0.0.1", port, limit=1 << 20))

    def send(self, path: str = "/", method: str = "GET", host: str | None = "svc.test",
             headers: list[str] | None = None, body: bytes | None = None,
             chunks: list[bytes] | None = None, version: str = "1.1") -> None:
        lines = [f"{method} {path} HTTP/{version}",
                 *([f"Host: {host}"] if host is not None else []), *(headers or [])]
        payload = b""
        if chunks is not None:
            lines.append("Transfer-Encoding: chunked")
            payload = b"".join(b"%x\r\n%b\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
        elif body is not None:
            lines.append(f"Content-Length: {len(body)}")
            payload = body
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + payload)

    async def request(self, path: str = "/", method: str = "GET", **kw: Any) -> Response:
        self.send(path, method, **kw)
        return await read_response(self.reader, method)

    async def closed_by_peer(self) -> bool:
        """True once the router closes (or resets); False if it is still open after 2 s."""
        try:
            return await asyncio.wait_for(self.reader.read(1), 2.0) == b""
        except TimeoutError:
            return False
        except ConnectionError:
            return True

    def close(self) -> None:
        self.writer.close()


async def fetch(port: int, path: str = "/", **kw: Any) -> Response:
    conn = await Conn.open(port)
    try:
        return await conn.request(path, **kw)
    finally:
        conn.close()


# -- the router --------------------------------------------------------------------------------

_versions = iter(range(1, 10**6))


def route(*backends: Backend, service: str = "svc", hosts: tuple[str, ...] = (),
          prefix: str = "/", **kw: Any) -> ServiceRoute:
    return ServiceRoute(service=service, backends=backends, hosts=hosts, path_prefix=prefix, **kw)


def table(*routes: ServiceRoute) -> RoutingTable:
    return RoutingTable(version=next(_versions), routes=routes)


def port_of(r: BuiltinRouter) -> int:
    return int(r.listen.rpartition(":")[2])


@contextlib.asynccontextmanager
async def started(tmp_path: Path, workers: int = 1) -> AsyncIterator[BuiltinRouter]:
    r = BuiltinRouter(tmp_path / "router", f"127.0.0.1:{free_port()}", workers=workers)
    try:
        await r.start()
        yield r
    finally:
        await r.stop()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def control(r: BuiltinRouter, i: int, msg: dict[str, Any]) -> dict[str, Any]:
    """Ask worker ``i`` directly over its control socket (not through BuiltinRouter)."""
    reader, writer = await asyncio.open_unix_connection(str(r.state_dir / f"router-{i}.sock"),
                                                        limit=1 << 24)
    try:
        writer.write(json.dumps(msg).encode() + b"\n")
        return json.loads(await asyncio.wait_for(reader.readline(), 5))  # type: ignore[no-any-return]
    finally:
        writer.close()


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (a killed orphan may wait for its reaper)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False


async def until(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return bool(predicate())


# -- routing -----------------------------------------------------------------------------------

def test_weights_hold_within_two_points_over_10000_requests(tmp_path: Path,
                                                            backends: Backends) -> None:
    apps = [backends.add(n) for n in ("w70", "w20", "w10", "w0")]
    weights = {"w70": 70, "w20": 20, "w10": 10, "w0": 0}

    async def main() -> None:
        async with started(tmp_path) as r:
            assert isinstance(r, Router)
            await r.apply(table(route(*(a.backend(weights[a.name]) for a in apps))))
            async with LoadGenerator(r.listen, clients=10, record_header="x-backend") as lg:
                assert await until(lambda: lg.stats().total >= 10_000, 60)
            s = lg.stats()
            assert s.failed == 0, s.failures
            for name, weight in weights.items():
                share = 100 * s.by_header[name] / s.total
                assert abs(share - weight) <= 2, (name, share, s.by_header)
            assert apps[3].count() == 0  # weight 0: never
            assert sum(a.count() for a in apps) == s.total  # per request, nothing lost
    run(main())


def test_host_and_path_matching_404_and_503_keep_the_connection(tmp_path: Path,
                                                                backends: Backends) -> None:
    default, static, api, api_v2 = (backends.add(n) for n in ("default", "static", "api",
                                                              "api_v2"))

    async def main() -> None:
        async with started(tmp_path) as r:
            await r.apply(table(
                route(default.backend(), service="default"),
                route(static.backend(), service="static", prefix="/static"),
                route(api.backend(), service="api", hosts=("API.example.com",)),
                route(api_v2.backend(), service="api2", hosts=("api.example.com",),
                      prefix="/v2"),
                route(service="empty", hosts=("empty.test",))))
            conn = await Conn.open(port_of(r))
            cases = [("api.example.com:8080", "/v2/users", "api_v2"),
                     ("API.EXAMPLE.COM", "/users?x=1", "api"),
                     ("api.example.com", "/static/a.css", "api"),  # a host beats no host
                     ("other.test", "/static/a.css", "static"),  # a longer prefix wins
                     ("other.test", "/stat", "default")]
            for host, path, want in cases:
                got = await conn.request(path, host=host)
                assert (got.status, got.backend) == (200, want), (host, path)

            got = await conn.request("/", host="empty.test", body=b"ignored")
            assert (got.status, got.backend) == (503, None)
            assert got.header("connection") == "keep-alive"
            assert (await conn.request("/", host="x.test")).backend == "default"  # still usable

            await r.apply(table(route(api.backend(), service="api", hosts=("api.example.com",))))
            got = await conn.request("/", host="nobody.test")
            assert got.status == 404 and got.header("connection") == "keep-alive"
            # A router-made answer to HEAD has no body (it would be read as the next response).
            got = await conn.request("/", "HEAD", host="nobody.test")
            assert got.status == 404 and int(got.header("content-length") or 0) > 0
            assert (await conn.request("/", host="api.example.com")).backend == "api"
            conn.close()
    run(main())


# -- switching and draining --------------------------------------------------------------------

def test_switch_is_atomic_under_keep_alive_load(tmp_path: Path, backends: Backends) -> None:
    sets = [[backends.add(f"s{i}a"), backends.add(f"s{i}b")] for i in range(3)]
    clients = 20

    async def main() -> None:
        async with started(tmp_path) as r:
            await r.apply(table(route(*(a.backend() for a in sets[0]))))
            async with LoadGenerator(r.listen, clients=clients, record_header="x-backend") as lg:
                assert await until(lambda: lg.stats().total >= 300)
                for old, new in itertools.pairwise(sets):
                    await r.apply(table(route(*(a.backend() for a in new))))
                    at_apply = sum(a.count() for a in old)  # right after apply returned
                    # Requests relayed before the swap may still be arriving: at most one per
                    # client connection. Then the old set must see nothing more, ever.
                    await asyncio.sleep(0.3)
                    settled = sum(a.count() for a in old)
                    assert settled - at_apply <= clients
                    served = sum(a.count() for a in new)
                    assert await until(lambda n=served, s=new: sum(a.count() for a in s) > n + 500)
                    assert sum(a.count() for a in old) == settled, "a removed backend got traffic"
            s = lg.stats()
            assert s.failed == 0, s.failures
            assert s.total == sum(a.count() for group in sets for a in group)
            assert all(a.count() > 0 for group in sets for a in group)
    run(main())


def test_draining_request_finishes_and_idle_pooled_connections_close(
        tmp_path: Path, backends: Backends) -> None:
    old, new = backends.add("old"), backends.add("new")

    async def main() -> None:
        async with started(tmp_path) as r:
            port = port_of(r)
            await r.apply(table(route(old.backend())))
            slow = asyncio.create_task(fetch(port, "/slow?ms=800"))
            assert await until(lambda: old.count() == 1)
            await fetch(port)  # needs a second backend connection, which then idles in the pool
            assert old.open_connections == 2  # one busy, one idle

            await r.apply(table(route(new.backend())))
            assert (await fetch(port)).backend == "new"
            assert await until(lambda: old.open_connections == 1), "idle pooled conn kept"
            got = await slow
            assert (got.status, got.backend, got.body) == (200, "old", b"old")  # drained
            assert await until(lambda: old.open_connections == 0), \
                "a drained connection went back into a retired pool"
    run(main())


# -- retries -----------------------------------------------------------------------------------

def test_connect_refused_is_retried_on_another_backend(tmp_path: Path,
                                                       backends: Backends) -> None:
    alive_app = backends.add("alive")
    dead = Backend("dead", f"127.0.0.1:{free_port()}", 1, 100)  # nothing listens there

    async def main() -> None:
        async with started(tmp_path) as r:
            await r.apply(table(route(dead, alive_app.backend())))
            conn = await Conn.open(port_of(r))
            got = [await conn.request(method=m, body=b"x" if m == "POST" else None)
                   for m in ("GET", "POST") * 10]
            conn.close()
            # POST too: a refused connect never reached an app, so any method may move.
            assert [(g.status, g.backend) for g in got] == [(200, "alive")] * 20
            assert alive_app.count("POST") == 10
            stats = await r.stats()
            assert stats["dead"].errors >= 5 and stats["dead"].requests == 0
            assert stats["alive"].requests == 20 and stats["alive"].errors == 0
    run(main())


@pytest.mark.parametrize("mode", ["die", "reset"])
def test_unanswered_get_is_resent_but_post_is_not(tmp_path: Path, backends: Backends,
                                                  mode: str) -> None:
    dying, healthy = backends.add(f"dying-{mode}", mode=mode), backends.add(f"healthy-{mode}")
    # Weighted so that smooth round-robin's first pick of a fresh table is the dying one.
    routes = route(dying.backend(100), healthy.backend(1))

    async def main() -> None:
        async with started(tmp_path) as r:
            await r.apply(table(routes))
            got = await fetch(port_of(r), "/get")
            assert (got.status, got.backend) == (200, healthy.name)
            assert dying.count("GET") == 1  # it reached the dying one first, then moved

            await r.apply(table(routes))  # a fresh table: the first pick is dying again
            got = await fetch(port_of(r), "/post", method="POST", body=b"charge once")
            assert got.status == 502
            assert dying.count("POST") == 1, "a POST that reached a backend was re-sent"
            assert healthy.count("POST") == 0
            assert (await r.stats())[dying.name].errors >= 2
    run(main())


# -- bodies ------------------------------------------------------------------------------------

def test_request_bodies_content_length_chunked_and_streamed(tmp_path: Path,
                                                           backends: Backends) -> None:
    echo = backends.add("echo-req")

    async def main() -> None:
        async with started(tmp_path) as r:
            await r.apply(table(route(echo.backend())))
            conn = await Conn.open(port_of(r))
            got = await conn.request("/echo", "PUT", body=b"hello, length")
            assert got.body == b"hello, length" and got.header("content-length") == "13"
            assert echo.seen[-1].body == b"hello, length"

            chunks = [b"a", b"\r\n0\r\n", os.urandom(5000), b"", b"end"]
            got = await conn.request("/echo", "POST", chunks=[c for c in chunks if c])
            assert echo.seen[-1].body == b"".join(chunks)  # exact bytes, even chunk-like ones
            assert echo.seen[-1].header("transfer-encoding") == "chunked"
            assert got.body == b"".join(chunks)

            # > 64 KiB: streamed. The backend sees the first part before the client sends the
            # rest, so the router did not wait for (or buffer) the whole body.
            big = os.urandom(1 << 20)
            before = echo.received
            conn.writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                              % len(big) + big[:200_000])
            assert await until(lambda: echo.received - before >= 200_000), "body not streamed"
            conn.writer.write(big[200_000:])
            got = await read_response(conn.reader)
            assert got.status == 200 and got.body == big and echo.seen[-1].body == big

            big_chunks = [os.urandom(100_000) for _ in range(3)]
            got = await conn.request("/echo", "POST", chunks=big_chunks)
            assert echo.seen[-1].body == b"".join(big_chunks) == got.body
            conn.close()
    run(main())


def test_response_bodies_every_framing(tmp_path: Path, backends: Backends) -> None:
    web = backends.add("framing")
    parts = b"".join(b"part%d\n" % i for i in range(5))

    async def main() -> None:
        async with started(tmp_path) as r:
            port = port_of(r)
            await r.apply(table(route(web.backend())))
            conn = await Conn.open(port)
            got = await conn.request("/")
            assert got.body == b"framing" and got.header("content-length") == "7"
            got = await conn.request("/chunked")
            assert got.body == parts and got.header("transfer-encoding") == "chunked"
            # Close-delimited from the backend: an HTTP/1.1 client gets it chunked and keeps
            # its connection.
            got = await conn.request("/eof")
            assert got.body == b"until the end" and got.header("transfer-encoding") == "chunked"
            assert got.header("connection") == "keep-alive"
            # HEAD: Content-Length and no body; the next response must parse cleanly.
            got = await conn.request("/", "HEAD")
            assert got.status == 200 and got.header("content-length") == "1234"
            for path, status in (("/204", 204), ("/304", 304)):
                got = await conn.request(path)
                assert got.status == status and got.header("transfer-encoding") is None
            got = await conn.request("/")
            assert (got.status, got.body) == (200, b"framing")  # nothing stray on the wire
            assert not conn.reader._buffer  # type: ignore[attr-defined]
            conn.close()

            # An HTTP/1.0 client knows no chunks: the body raw, ended by the close.
            conn = await Conn.open(port)
            got = await conn.request("/eof", version="1.0", headers=["Connection: keep-alive"])
            assert got.body == b"until the end" and got.header("transfer-encoding") is None
            assert got.header("connection") == "close"
            conn = await Conn.open(port)
            got = await conn.request("/chunked", version="1.0")
            assert got.body == parts and got.header("transfer-encoding") is None
    run(main())


def test_backend_connection_paused_by_a_slow_client_reads_again_in_the_pool(
        backends: Backends) -> None:
    """Back-pressure: while the client lags, the relay stops reading from the backend. When the
    response completes in that state, the backend connection goes back to the pool, and it must
    read again there, or the next request on it never gets its response (nor sees a close).

    The proxy runs in this process (still real sockets) so the test can shrink the router's
    buffers toward the client: then nearly every write outruns the client and pauses reading.
    """
    web = backends.add("paused")

    async def main() -> None:
        proxy = Proxy(CompiledTable(table(route(web.backend()))))
        loop = asyncio.get_running_loop()
        server = await loop.create_server(proxy.client_factory, "127.0.0.1", 0)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await loop.sock_connect(sock, server.sockets[0].getsockname())
        conn = Conn(*await asyncio.open_connection(sock=sock, limit=16384))
        try:
            assert await until(lambda: len(proxy.clients) == 1)
            (client,) = proxy.clients
            client.transport.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            client.transport.set_write_buffer_limits(high=0)  # any backlog pauses the backend
            for size in (3 << 20, (3 << 20) + 77_777, (2 << 20) + 123_457):
                got = await conn.request(f"/big?n={size}")
                assert got.status == 200 and len(got.body) == size
                pooled = [c for stack in proxy.idle.values() for c in stack]
                assert pooled and all(c.transport.is_reading() for c in pooled), \
                    "a backend connection went back to the pool with reading paused"
                got = await conn.request("/")  # on that pooled connection
                assert (got.status, got.body) == (200, b"paused")
        finally:
            conn.close()
            server.close()
            for stack in proxy.idle.values():
                for c in stack:
                    c.close()
            await asyncio.sleep(0.05)
    run(main())


# -- connection handling -----------------------------------------------------------------------

def test_connection_close_http10_and_expect_continue(tmp_path: Path,
                                                     backends: Backends) -> None:
    web = backends.add("conn")

    async def main() -> None:
        async with started(tmp_path) as r:
            port = port_of(r)
            await r.apply(table(route(web.backend())))
            conn = await Conn.open(port)
            got = await conn.request(headers=["Connection: close"])
            assert got.status == 200 and got.header("connection") == "close"
            assert await conn.closed_by_peer()

            conn = await Conn.open(port)  # HTTP/1.0 without keep-alive: one request, then close
            got = await conn.request(version="1.0", host=None)
            assert (got.status, got.body) == (200, b"conn")
            assert got.header("connection") == "close"
            assert await conn.closed_by_peer()

            conn = await Conn.open(port)  # HTTP/1.0 asking for keep-alive gets it
            got = await conn.request(version="1.0", headers=["Connection: keep-alive"])
            assert got.header("connection") == "keep-alive"
            assert (await conn.request(version="1.0")).status == 200
            assert await conn.closed_by_peer()

            conn = await Conn.open(port)  # the backend closing does not close the client
            got = await conn.request("/eof")
            assert (await conn.request("/")).backend == "conn"

            # Expect: 100-continue is answered by the router before the body is sent.
            conn.writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                              b"Expect: 100-continue\r\n\r\n")
            interim = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), IO_TIMEOUT)
            assert interim.startswith(b"HTTP/1.1 100 ")
            conn.writer.write(b"hello")
            got = await read_response(conn.reader)
            assert got.body == b"hello" and web.seen[-1].header("expect") is None

            # Pipelined behind a slow request, its 100 must not come first: a client would
            # take it for an interim answer to the slow one.
            conn.writer.write(b"GET /slow?ms=300 HTTP/1.1\r\nHost: x\r\n\r\n"
                              b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                              b"Expect: 100-continue\r\n\r\n")
            first = await read_response(conn.reader)
            assert first.status == 200 and first.body == b"conn", first.raw_head
            interim = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), IO_TIMEOUT)
            assert interim.startswith(b"HTTP/1.1 100 ")
            conn.writer.write(b"ok")
            assert (await read_response(conn.reader)).body == b"ok"
            conn.close()
    run(main())


def test_hop_by_hop_forwarded_headers_spelling_and_400(tmp_path: Path,
                                                       backends: Backends) -> None:
    web = backends.add("hdr")

    async def main() -> None:
        async with started(tmp_path) as r:
            await r.apply(table(route(web.backend())))
            conn = await Conn.open(port_of(r))
            got = await conn.request("/headers", host="shop.test:8080", headers=[
                "Connection: keep-alive, X-Client-Hop", "X-Client-Hop: secret",
                "Keep-Alive: timeout=5", "TE: trailers", "Proxy-Connection: keep-alive",
                "Upgrade: h2c", "X-Forwarded-For: 203.0.113.7",
                "X-Forwarded-Proto: https", "X-Forwarded-Host: evil.test",
                "X-MiXeD-CaSe: 1", "x-lower: 2"])
            sent = json.loads(got.body)
            names = [k for k, _ in sent]
            for hop in ("connection", "x-client-hop", "keep-alive", "te", "proxy-connection",
                        "upgrade"):
                assert hop not in {n.lower() for n in names}, hop
            assert "X-MiXeD-CaSe" in names and "x-lower" in names  # spelling preserved
            got_h = {k.lower(): v for k, v in sent}
            assert got_h["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"
            assert got_h["x-forwarded-proto"] == "http"
            assert got_h["x-forwarded-host"] == "shop.test:8080"
            assert got_h["host"] == "shop.test:8080"
            assert [n.lower() for n in names].count("x-forwarded-host") == 1
            assert "X-ReSpOnSe-CaSe: kept" in got.raw_head.decode()

            got = await conn.request("/headers", headers=["X-Forwarded-For: 198.51.100.1",
                                                          "X-Forwarded-For: 203.0.113.7"])
            xff = [v for k, v in json.loads(got.body) if k.lower() == "x-forwarded-for"]
            assert xff == ["198.51.100.1, 203.0.113.7, 127.0.0.1"]  # the whole chain, once

            got = await conn.request("/hop")  # and hop-by-hop response headers stay behind
            names = {k.lower() for k, _ in got.headers}
            assert not names & {"keep-alive", "x-resp-hop", "proxy-connection", "upgrade"}
            assert got.header("x-end") == "visible" and got.body == b"ok"
            assert got.header("connection") == "keep-alive"
            conn.close()

            for bad in (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
                        b"NOT-HTTP\r\n\r\n",
                        # a smuggling attempt: two framings the backend might read differently
                        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"):
                conn = await Conn.open(port_of(r))
                seen = web.count()
                conn.writer.write(bad)
                got = await read_response(conn.reader)
                assert got.status == 400 and got.header("connection") == "close", bad
                assert await conn.closed_by_peer()
                assert web.count() == seen  # nothing of it reached the backend
    run(main())


# -- stats, workers ----------------------------------------------------------------------------

def test_stats_summed_over_two_workers_that_both_ack(tmp_path: Path, backends: Backends) -> None:
    web = backends.add("counted")

    async def main() -> None:
        async with started(tmp_path, workers=2) as r:
            pids = {(await control(r, i, {"op": "ping"}))["pid"] for i in range(2)}
            assert len(pids) == 2
            t = table(route(web.backend()))
            await r.apply(t)
            for i in range(2):  # "applied" means applied on every worker
                assert (await control(r, i, {"op": "get"}))["table"] == t.to_dict()
            assert await r.current() == t

            port = port_of(r)
            # New connections each time: SO_REUSEPORT spreads them over both workers.
            statuses = [200] * 30 + [404] * 6 + [503] * 4
            for status in statuses:
                got = await fetch(port, f"/status?code={status}")
                assert got.status == status
            for _ in range(4):
                assert (await fetch(port, "/slow?ms=120")).status == 200
            per_worker = [(await control(r, i, {"op": "stats"}))["backends"]["counted"]
                          for i in range(2)]
            assert all(w["requests"] > 0 for w in per_worker), per_worker
            s = (await r.stats())["counted"]
            assert s.requests == sum(w["requests"] for w in per_worker) == 44
            assert s.statuses == {"2xx": 34, "3xx": 0, "4xx": 6, "5xx": 4}
            assert s.active == 0 and s.errors == 0
            assert len(s.latency) == len(LATENCY_BUCKETS_MS) + 1 and sum(s.latency) == 44
            assert list(s.latency) == [a + b for a, b in zip(per_worker[0]["latency"],
                                                             per_worker[1]["latency"],
                                                             strict=True)]
            slow_bucket = LATENCY_BUCKETS_MS.index(200)  # 120 ms lands at 200 or beyond
            assert sum(s.latency[slow_bucket:]) >= 4
            assert s.latency_sum_ms >= 4 * 120
    run(main())


# -- process life cycle ------------------------------------------------------------------------

def test_a_new_router_object_adopts_the_running_worker(tmp_path: Path,
                                                       backends: Backends) -> None:
    web = backends.add("adopted")

    async def main() -> None:
        async with started(tmp_path) as r:
            t = table(route(web.backend()))
            await r.apply(t)
            pid = int((r.state_dir / "router-0.pid").read_text())
            again = BuiltinRouter(r.state_dir, r.listen)  # as a restarted controller would
            await again.start()
            assert int((r.state_dir / "router-0.pid").read_text()) == pid and alive(pid)
            assert (await control(r, 0, {"op": "ping"}))["pid"] == pid
            assert await again.current() == t
            assert (await fetch(port_of(r))).backend == "adopted"
            t2 = table(route(web.backend(), service="other"))
            await again.apply(t2)  # the adopter drives it
            assert await r.current() == t2
    run(main())


SPAWNER = """\
import asyncio, sys, time
from pathlib import Path
from hinotori.model import Backend, RoutingTable, ServiceRoute
from hinotori.router.proxy import BuiltinRouter
from hinotori.router.proxy.relay import Proxy
from hinotori.router.proxy.routes import CompiledTable
r = BuiltinRouter(Path(sys.argv[1]), sys.argv[2])
t = RoutingTable(7, (ServiceRoute("svc", (Backend("survivor", sys.argv[3], 1),)),))
async def main() -> None:
    await r.start()
    await r.apply(t)
asyncio.run(main())
print("ready", flush=True)
time.sleep(60)
"""


def test_worker_survives_its_spawner_and_restarts_with_its_last_table(
        tmp_path: Path, backends: Backends) -> None:
    web, web2 = backends.add("survivor"), backends.add("survivor2")
    state, listen = tmp_path / "router", f"127.0.0.1:{free_port()}"
    port = int(listen.rpartition(":")[2])
    spawner = subprocess.Popen([sys.executable, "-c", SPAWNER, str(state), listen, web.address],
                               stdout=subprocess.PIPE)
    adopter = BuiltinRouter(state, listen)

    async def main() -> None:
        assert spawner.stdout is not None and spawner.stdout.readline() == b"ready\n"
        spawner.send_signal(signal.SIGKILL)
        spawner.wait(5)
        pid = int((state / "router-0.pid").read_text())
        assert alive(pid)
        assert (await fetch(port)).backend == "survivor"  # orphaned, still serving

        await adopter.start()
        assert int((state / "router-0.pid").read_text()) == pid
        current = await adopter.current()
        assert current is not None and current.version == 7

        # A close by the router leaves a TIME_WAIT on the listen port: a restart must bind.
        assert (await fetch(port, headers=["Connection: close"])).status == 200
        t = table(route(web2.backend()))
        await adopter.apply(t)
        os.kill(pid, signal.SIGKILL)  # right after the ack: the switch must survive a crash
        assert await until(lambda: not alive(pid))
        await adopter.start()
        new_pid = int((state / "router-0.pid").read_text())
        assert new_pid != pid and alive(new_pid)
        assert await adopter.current() == t
        assert (await fetch(port)).backend == "survivor2"

    try:
        run(main())
    finally:
        spawner.kill()
        run(adopter.stop())
    assert not list(state.glob("router-*.sock")) and not list(state.glob("router-*.pid"))


def test_port_in_use_is_a_router_error_that_says_what_to_do(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        listen = f"127.0.0.1:{holder.getsockname()[1]}"
        r = BuiltinRouter(tmp_path / "router", listen)
        try:
            with pytest.raises(RouterError) as err:
                run(r.start())
        finally:
            run(r.stop())
    text = str(err.value)
    assert listen in text and "in use" in text and "[router] listen" in text


def test_graceful_stop_lets_the_request_in_flight_finish(tmp_path: Path,
                                                         backends: Backends) -> None:
    web = backends.add("graceful")

    async def main() -> None:
        r = BuiltinRouter(tmp_path / "router", f"127.0.0.1:{free_port()}")
        await r.start()
        try:
            await r.apply(table(route(web.backend())))
            pid = int((r.state_dir / "router-0.pid").read_text())
            idle = await Conn.open(port_of(r))
            assert (await idle.request()).status == 200
            slow = asyncio.create_task(fetch(port_of(r), "/slow?ms=600"))
            assert await until(lambda: web.count() == 2)
        finally:
            await r.stop()  # returns once the worker has exited
        got = await slow
        assert (got.status, got.backend) == (200, "graceful")
        assert await idle.closed_by_peer()  # idle keep-alive connections are closed
        assert not alive(pid)
        with pytest.raises(OSError):
            await fetch(port_of(r))
    run(main())
