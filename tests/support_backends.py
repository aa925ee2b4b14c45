"""Helpers of the router tests: small asyncio backends in a background thread that name
themselves in ``X-Backend`` and record what they received (what they do depends on the path:
``/slow``, ``/echo``, ``/headers``, ``/chunked``, ``/eof``, ``/close``, ``/hop``, or on their mode:
``die``, ``silent``, ``half``, ``half-chunked``),
and raw HTTP/1.x clients, so every byte on the wire is under the test's control."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field

from hinotori.model import Backend, RoutingTable, ServiceRoute
from tests.support import free_port

# -- test backends -----------------------------------------------------------------------------

@dataclass
class Seen:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    at: float

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


@dataclass
class AppBackend:
    name: str
    port: int
    mode: str = "ok"
    seen: list[Seen] = field(default_factory=list)
    open_connections: int = 0
    accepted: int = 0  # connections ever opened to it

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def backend(self, weight: int = 100, release: int = 1) -> Backend:
        return Backend(self.name, self.address, release, weight)

    def count(self, method: str | None = None) -> int:
        return sum(1 for s in self.seen if method is None or s.method == method)


async def _read_body(reader: asyncio.StreamReader, headers: list[tuple[str, str]]) -> bytes:
    h = {k.lower(): v for k, v in headers}
    if "chunked" in h.get("transfer-encoding", "").lower():
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass  # trailers
                return body
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    if "content-length" in h:
        return await reader.readexactly(int(h["content-length"]))
    return b""


def _head(status: int, name: str, extra: list[str] | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status} X", f"X-Backend: {name}", *(extra or [])]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# Modes of a backend that dies mid-response: the head line that says how its body is framed.
HALF = {"half": "Content-Length: 100", "half-chunked": "Transfer-Encoding: chunked"}


class Backends:
    """Backends served by one asyncio loop in a daemon thread, shared by the module's tests."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.servers: list[asyncio.AbstractServer] = []
        self.writers: set[asyncio.StreamWriter] = set()

    def add(self, name: str, mode: str = "ok") -> AppBackend:
        b = AppBackend(name, free_port(), mode)

        async def start() -> asyncio.AbstractServer:
            return await asyncio.start_server(lambda r, w: self._serve(b, r, w), "127.0.0.1",
                                              b.port)

        self.servers.append(asyncio.run_coroutine_threadsafe(start(), self.loop).result(5))
        return b

    async def _serve(self, b: AppBackend, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        b.open_connections += 1
        b.accepted += 1
        self.writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = [(k.strip(), v.strip()) for k, _, v in
                           (line.partition(":") for line in lines[1:] if line)]
                body = await _read_body(reader, headers)
                b.seen.append(Seen(method, target, headers, body, time.monotonic()))
                if b.mode == "die":
                    return
                if b.mode in HALF:  # dies between its response's head and the rest
                    writer.write(_head(200, b.name, [HALF[b.mode]]) + b"3\r\nabc\r\n")
                    await writer.drain()
                    return
                if b.mode == "silent":  # as a machine cut off the network: nothing comes back
                    await asyncio.sleep(3600)
                if not await self._respond(b, method, target, headers, body, writer):
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            b.open_connections -= 1
            self.writers.discard(writer)
            writer.close()

    async def _respond(self, b: AppBackend, method: str, target: str,
                       headers: list[tuple[str, str]], body: bytes,
                       writer: asyncio.StreamWriter) -> bool:
        """Write the response; False when the connection must close afterwards."""
        path, _, query = target.partition("?")
        if path == "/slow":
            await asyncio.sleep(float(query.partition("=")[2] or 500) / 1000)
        if path == "/echo":
            chunked = any(k.lower() == "transfer-encoding" for k, _ in headers)
            if chunked:  # answer chunked too, in uneven pieces
                writer.write(_head(200, b.name, ["Transfer-Encoding: chunked"]))
                for i in range(0, len(body), 7000):
                    piece = body[i:i + 7000]
                    writer.write(b"%x\r\n%b\r\n" % (len(piece), piece))
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
            else:
                writer.write(_head(200, b.name, [f"Content-Length: {len(body)}"]) + body)
        elif path == "/headers":
            data = json.dumps(headers).encode()
            writer.write(_head(200, b.name, [f"Content-Length: {len(data)}"]) + data)
        elif path == "/chunked":
            writer.write(_head(200, b.name, ["Transfer-Encoding: chunked"]))
            for i in range(5):
                writer.write(b"6\r\npart%d\n\r\n" % i)
            writer.write(b"0\r\n\r\n")
        elif path == "/eof":
            writer.write(_head(200, b.name, ["Connection: close"]) + b"until the end")
            await writer.drain()
            return False
        elif path == "/close":
            writer.write(_head(200, b.name, ["Content-Length: 2", "Connection: close"]) + b"ok")
            await writer.drain()
            return False
        elif path == "/hop":
            writer.write(_head(200, b.name, [
                "Content-Length: 2", "Keep-Alive: timeout=5", "Connection: X-Resp-Hop",
                "X-Resp-Hop: secret", "Proxy-Connection: keep-alive", "X-End: visible"]) + b"ok")
        elif method == "HEAD":
            writer.write(_head(200, b.name, ["Content-Length: 1234"]))
        else:
            data = b.name.encode()
            writer.write(_head(200, b.name, [f"Content-Length: {len(data)}"]) + data)
        await writer.drain()
        return True

    def close(self) -> None:
        async def shutdown() -> None:
            for s in self.servers:
                s.close()
            for w in list(self.writers):
                w.transport.abort()  # each _serve loop then ends on its own
            await asyncio.sleep(0.05)

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


# -- a raw HTTP client -------------------------------------------------------------------------

@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    @property
    def backend(self) -> str | None:
        return self.header("x-backend")


async def read_response(reader: asyncio.StreamReader, method: str = "GET") -> Response:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = [(k.strip(), v.strip()) for k, _, v in
               (line.partition(":") for line in lines[1:] if line)]
    h = {k.lower(): v for k, v in headers}
    if method == "HEAD" or status in (204, 304):
        body = b""
    elif "transfer-encoding" in h or "content-length" in h:
        body = await _read_body(reader, headers)
    else:
        body = await reader.read()  # delimited by the connection's end
    return Response(status, headers, body)


class Conn:
    """One client keep-alive connection to the router."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Conn:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def request(self, path: str = "/", method: str = "GET", host: str = "svc.test",
                      headers: list[str] | None = None, body: bytes | None = None,
                      chunks: list[bytes] | None = None, version: str = "1.1") -> Response:
        lines = [f"{method} {path} HTTP/{version}", f"Host: {host}", *(headers or [])]
        payload = b""
        if chunks is not None:
            lines.append("Transfer-Encoding: chunked")
            payload = b"".join(b"%x\r\n%b\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
        elif body is not None:
            lines.append(f"Content-Length: {len(body)}")
            payload = body
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + payload)
        return await read_response(self.reader, method)

    async def closed_by_peer(self, timeout: float = 2.0) -> bool:
        try:
            return await asyncio.wait_for(self.reader.read(1), timeout) == b""
        except (TimeoutError, ConnectionError):
            return False

    def close(self) -> None:
        self.writer.close()


async def fetch(port: int, path: str = "/", **kw: object) -> Response:
    conn = await Conn.open(port)
    try:
        return await conn.request(path, **kw)  # type: ignore[arg-type]
    finally:
        conn.close()


def table(version: int, *routes: ServiceRoute) -> RoutingTable:
    return RoutingTable(version=version, routes=routes)


def route(*backends: Backend, service: str = "svc", hosts: tuple[str, ...] = (),
          prefix: str = "/", **kw: object) -> ServiceRoute:
    return ServiceRoute(service=service, backends=backends, hosts=hosts, path_prefix=prefix,
                        **kw)  # type: ignore[arg-type]
