"""The HTTP/1.1 reverse proxy of one data-plane worker.

Per client connection, one coroutine reads requests (parsed by httptools, the parser of uvicorn
and others) and relays each to a backend chosen *per request* from the table live at that moment,
so a keep-alive client moves to the new release on its very next request after a switch.

Why it is safe to switch and drain at any moment:

- a request already relayed to a backend that the new table drops finishes there (the old
  backend keeps running while it drains); only idle pooled connections to dropped backends are
  closed, and never handed out again;
- a backend that cannot be connected to is skipped and the request tried on another backend
  of the route (it never reached an app, so any method may be retried);
- a request that was sent but got no response byte back (reset, EOF) is re-sent elsewhere only
  if its method is idempotent and its body was small enough to keep; otherwise the client gets a
  502 rather than a duplicated side effect.

HTTP hygiene: hop-by-hop headers (and any named in Connection) are dropped in both directions;
X-Forwarded-For/-Proto/-Host are set; bodies are streamed (Content-Length passed through,
chunked re-chunked, close-delimited responses turned into chunked for HTTP/1.1 clients);
``Expect: 100-continue`` is answered by the proxy; HEAD, 1xx, 204 and 304 carry no body.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import deque
from dataclasses import dataclass, field

import httptools

from hinotori.router.proxy.routes import CompiledRoute, CompiledTable, Counters

log = logging.getLogger("hinotori.router")

HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                        b"transfer-encoding", b"upgrade", b"proxy-authenticate",
                        b"proxy-authorization", b"expect"})
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
REPLAY_LIMIT = 64 * 1024  # request bodies up to this size are kept for a retry
CONNECT_TIMEOUT = 2.0
RESPONSE_TIMEOUT = 300.0
POOL_IDLE = 2.0  # a pooled connection idle longer than this is not reused: backends time out
POOL_MAX = 64
CLIENT_IDLE = 75.0
READ = 65536


class BackendFailed(Exception):
    def __init__(self, reason: str, *, answered: bool) -> None:
        super().__init__(reason)
        self.answered = answered  # response bytes already went to the client: cannot retry


@dataclass
class Request:
    method: bytes
    target: bytes
    version: bytes
    headers: list[tuple[bytes, bytes]]
    keep_alive: bool
    chunked: bool
    length: int | None

    def header(self, name: bytes) -> bytes | None:
        """Value of header ``name`` (lower-case); names keep the client's spelling."""
        return next((v for k, v in self.headers if k.lower() == name), None)


@dataclass
class Stats:
    by_host: dict[str, Counters] = field(default_factory=dict)

    def of(self, host_id: str) -> Counters:
        c = self.by_host.get(host_id)
        if c is None:
            c = self.by_host[host_id] = Counters()
        return c


class _RequestEvents:
    """httptools callback target: turns the byte stream into head/body/end events."""

    def __init__(self) -> None:
        self.events: deque[tuple[str, object]] = deque()
        self.parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []

    def on_message_begin(self) -> None:
        self._url, self._headers = b"", []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        p = self.parser
        headers = self._headers
        te = next((v for k, v in headers if k.lower() == b"transfer-encoding"), b"")
        cl = next((v for k, v in headers if k.lower() == b"content-length"), None)
        self.events.append(("head", Request(
            method=p.get_method(), target=self._url, version=p.get_http_version().encode(),
            headers=headers, keep_alive=p.should_keep_alive(),
            chunked=b"chunked" in te.lower(), length=int(cl) if cl is not None else None)))

    def on_body(self, body: bytes) -> None:
        self.events.append(("body", body))

    def on_message_complete(self) -> None:
        self.events.append(("end", None))


class _ResponseEvents:
    def __init__(self, no_body: bool) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.no_body = no_body  # HEAD request: the parser cannot know there is no body
        self.headers: list[tuple[bytes, bytes]] = []
        self.reason = b""
        self.status = 0
        self.head_done = False
        self.done = False
        self.body: list[bytes] = []

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if 100 <= self.status < 200:  # an interim response: wait for the real one
            self.headers, self.reason, self.status = [], b"", 0
            return
        self.head_done = True
        if self.no_body or self.status in (204, 304):
            self.done = True

    def on_body(self, body: bytes) -> None:
        if not self.done:
            self.body.append(body)

    def on_message_complete(self) -> None:
        if self.status:
            self.done = True


@dataclass
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = 0.0
    reused: bool = False

    def close(self) -> None:
        self.writer.close()


class Pool:
    """Idle keep-alive connections per backend address."""

    def __init__(self) -> None:
        self.idle: dict[str, list[_Conn]] = {}
        self.live: set[str] = set()  # addresses in the current table

    async def acquire(self, address: str) -> _Conn:
        stack = self.idle.get(address)
        now = time.monotonic()
        while stack:
            conn = stack.pop()
            if now - conn.idle_since < POOL_IDLE and not conn.reader.at_eof() \
                    and not conn.writer.is_closing():
                conn.reused = True
                return conn
            conn.close()
        host, _, port = address.rpartition(":")
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host.strip("[]"), int(port), limit=READ),
            CONNECT_TIMEOUT)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _Conn(reader, writer)

    def release(self, address: str, conn: _Conn) -> None:
        stack = self.idle.setdefault(address, [])
        if address not in self.live or len(stack) >= POOL_MAX or conn.reader.at_eof():
            conn.close()
            return
        conn.idle_since = time.monotonic()
        stack.append(conn)

    def retain(self, addresses: set[str]) -> None:
        """Close idle connections to backends no longer in the table (they are draining)."""
        self.live = set(addresses)
        for address in [a for a in self.idle if a not in addresses]:
            for conn in self.idle.pop(address):
                conn.close()


class Proxy:
    """Shared state of one worker: the live table, the pool, the counters."""

    def __init__(self, table: CompiledTable, scheme: str = "http") -> None:
        self.table = table
        self.pool = Pool()
        self.pool.retain(table.addresses)
        self.stats = Stats()
        self.scheme = scheme.encode()
        self.connections: set[ClientConnection] = set()
        self.in_flight = 0
        self.closing = False

    def swap(self, table: CompiledTable) -> None:
        self.table = table  # one reference: requests after this line see only the new table
        self.pool.retain(table.addresses)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = ClientConnection(self, reader, writer)
        self.connections.add(conn)
        try:
            await conn.serve()
        finally:
            self.connections.discard(conn)

    def close_idle(self) -> None:
        for conn in list(self.connections):
            if conn.idle:
                conn.writer.close()


class ClientConnection:
    def __init__(self, proxy: Proxy, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.proxy = proxy
        self.reader = reader
        self.writer = writer
        self.events = _RequestEvents()
        self.eof = False
        self.idle = True
        peer = writer.get_extra_info("peername")
        self.client_ip = (peer[0] if isinstance(peer, tuple) else "127.0.0.1").encode()
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def next_event(self, timeout: float | None = None) -> tuple[str, object] | None:
        queue = self.events.events
        while not queue:
            if self.eof:
                return None
            data = await asyncio.wait_for(self.reader.read(READ), timeout)
            if not data:
                self.eof = True
                return None
            self.events.parser.feed_data(data)
        return queue.popleft()

    async def serve(self) -> None:
        try:
            while not self.proxy.closing:
                self.idle = True
                event = await self.next_event(timeout=CLIENT_IDLE)
                self.idle = False
                if event is None:
                    return
                kind, request = event
                if kind != "head":  # the end of a bodyless request just handled
                    continue
                assert isinstance(request, Request)
                if not await self.handle(request):
                    return
        except httptools.HttpParserUpgrade:
            await self.simple(501, b"upgrade (e.g. WebSocket) is not supported", False)
        except httptools.HttpParserError:
            await self.simple(400, b"malformed request", False)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:  # a bug must cost one connection, never the worker
            log.exception("request handling failed")
        finally:
            self.writer.close()

    async def simple(self, status: int, text: bytes, keep_alive: bool) -> None:
        reason = {400: b"Bad Request", 404: b"Not Found", 501: b"Not Implemented",
                  502: b"Bad Gateway", 503: b"Service Unavailable",
                  504: b"Gateway Timeout"}.get(status, b"Error")
        body = text + b"\n"
        self.writer.write(b"HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                          b"Connection: %s\r\n\r\n%s" % (status, reason, len(body),
                                                        b"keep-alive" if keep_alive else b"close",
                                                        body))
        with contextlib.suppress(ConnectionError):
            await self.writer.drain()

    async def skip_body(self) -> bool:
        """Read and drop the rest of the request body; False if the client went away."""
        while True:
            event = await self.next_event()
            if event is None:
                return False
            if event[0] == "end":
                return True

    async def handle(self, request: Request) -> bool:
        """Relay one request; True if the client connection may carry another."""
        proxy = self.proxy
        keep = request.keep_alive and not proxy.closing
        path = request.target.split(b"?", 1)[0].decode("latin-1")
        host = request.header(b"host")
        route = proxy.table.match(host.decode("latin-1") if host else None, path)
        if route is None or not route.backends:
            if not await self.skip_body():
                return False
            status, text = (404, b"no service matches this request") if route is None else \
                (503, b"service has no healthy hosts")
            await self.simple(status, text, keep)
            return keep
        if (request.header(b"expect") or b"").lower() == b"100-continue":
            self.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        proxy.in_flight += 1
        try:
            return await self._relay(request, route, keep)
        finally:
            proxy.in_flight -= 1

    async def _relay(self, request: Request, route: CompiledRoute, keep: bool) -> bool:
        proxy = self.proxy
        has_body = request.chunked or bool(request.length)
        kept: list[bytes] | None = [] if has_body else None  # the body, while small enough
        body_read = not has_body
        tried: set[str] = set()
        last_error = "no backend"
        for _ in range(min(3, len(route.backends))):
            backend = route.pick(tried)
            if backend is None:
                break
            tried.add(backend.host_id)
            counters = proxy.stats.of(backend.host_id)
            try:
                conn = await proxy.pool.acquire(backend.address)
            except (OSError, TimeoutError) as e:
                counters.errors += 1
                last_error = f"connect to {backend.address}: {e.__class__.__name__}"
                continue
            counters.active += 1
            started = time.perf_counter()
            try:
                self._send_head(conn, request)
                if has_body:
                    if body_read:
                        assert kept is not None
                        self._send_chunks(conn, request, kept, final=True)
                    else:
                        kept, body_read = await self._stream_body(conn, request, kept), True
                status, reusable, keep = await self._relay_response(conn, request, keep)
            except BackendFailed as e:
                conn.close()
                counters.errors += 1
                last_error = str(e)
                if e.answered:
                    return False  # half a response went out: all we can do is cut
                if not body_read:  # the body went to a backend that died: cannot replay
                    if not await self.skip_body():
                        return False
                    await self.simple(502, b"backend failed while receiving the body", keep)
                    return keep
                replayable = request.method in IDEMPOTENT and (kept is not None or not has_body)
                if not replayable:
                    await self.simple(502, b"backend failed after the request was sent", keep)
                    return keep
                continue
            finally:
                counters.active -= 1
            counters.observe(status, (time.perf_counter() - started) * 1000)
            if reusable:
                proxy.pool.release(backend.address, conn)
            else:
                conn.close()
            return keep
        if not body_read and not await self.skip_body():
            return False
        await self.simple(502, f"no backend could be reached ({last_error})".encode(), keep)
        return keep

    def _send_head(self, conn: _Conn, request: Request) -> None:
        drop = HOP_BY_HOP | _connection_tokens(request.headers)
        lines = [b"%s %s HTTP/1.1\r\n" % (request.method, request.target)]
        forwarded_for = self.client_ip
        for k, v in request.headers:
            name = k.lower()
            if name in drop or name in (b"x-forwarded-proto", b"x-forwarded-host"):
                continue
            if name == b"x-forwarded-for":
                forwarded_for = v + b", " + self.client_ip
                continue
            lines.append(k + b": " + v + b"\r\n")
        lines.append(b"x-forwarded-for: " + forwarded_for + b"\r\n")
        lines.append(b"x-forwarded-proto: " + self.proxy.scheme + b"\r\n")
        host = request.header(b"host")
        if host:
            lines.append(b"x-forwarded-host: " + host + b"\r\n")
        if request.chunked:
            lines.append(b"transfer-encoding: chunked\r\n")
        lines.append(b"\r\n")
        conn.writer.write(b"".join(lines))

    @staticmethod
    def _send_chunks(conn: _Conn, request: Request, chunks: list[bytes], final: bool) -> None:
        for chunk in chunks:
            if not chunk:
                continue
            conn.writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if request.chunked else chunk)
        if final and request.chunked:
            conn.writer.write(b"0\r\n\r\n")

    async def _stream_body(self, conn: _Conn, request: Request,
                           kept: list[bytes] | None) -> list[bytes] | None:
        """Forward the request body as it arrives; keep a copy while it is small."""
        size = 0
        while True:
            event = await self.next_event()
            if event is None:
                raise BackendFailed("client went away mid-body", answered=True)
            kind, data = event
            if kind == "end":
                self._send_chunks(conn, request, [], final=True)
                return kept
            assert isinstance(data, bytes)
            self._send_chunks(conn, request, [data], final=False)
            size += len(data)
            if kept is not None and size <= REPLAY_LIMIT:
                kept.append(data)
            else:
                kept = None
            try:
                await conn.writer.drain()
            except ConnectionError as e:
                raise BackendFailed(f"backend closed mid-body: {e}", answered=False) from e

    async def _relay_response(self, conn: _Conn, request: Request,
                              keep: bool) -> tuple[int, bool, bool]:
        """Stream the backend's response to the client.
        Returns (status, backend connection reusable, client connection may stay open)."""
        try:
            await conn.writer.drain()
        except ConnectionError as e:
            raise BackendFailed(f"backend closed: {e}", answered=False) from e
        resp = _ResponseEvents(no_body=request.method == b"HEAD")
        parser = resp.parser
        sent_head = False
        mode = b""  # how the body goes to the client: b"length", b"chunked" or b"raw"
        until_eof = False
        write = self.writer.write
        while not resp.done:
            try:
                data = await asyncio.wait_for(conn.reader.read(READ), RESPONSE_TIMEOUT)
            except (ConnectionError, OSError) as e:
                raise BackendFailed(f"backend connection failed: {e}", answered=sent_head) from e
            except TimeoutError as e:
                raise BackendFailed("backend response timed out", answered=sent_head) from e
            if not data:
                if until_eof:
                    break
                raise BackendFailed("backend closed the connection before answering"
                                    if not sent_head else "backend closed mid-response",
                                    answered=sent_head)
            if until_eof:
                write(b"%x\r\n%s\r\n" % (len(data), data) if mode == b"chunked" else data)
            else:
                try:
                    parser.feed_data(data)
                except httptools.HttpParserError as e:
                    raise BackendFailed(f"backend sent a malformed response: {e}",
                                        answered=sent_head) from e
            if resp.head_done and not sent_head:
                mode, until_eof, keep = self._write_head(resp, request, keep)
                sent_head = True
            if resp.body:
                for chunk in resp.body:
                    write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if mode == b"chunked" else chunk)
                resp.body.clear()
            await self._drain_client(sent_head)
        if mode == b"chunked" and not resp.no_body and resp.status not in (204, 304):
            write(b"0\r\n\r\n")
        await self._drain_client(True)
        reusable = not until_eof and parser.should_keep_alive()
        return resp.status, reusable, keep

    async def _drain_client(self, answered: bool) -> None:
        try:
            await self.writer.drain()
        except ConnectionError as e:
            raise BackendFailed(f"client went away: {e}", answered=True) from e

    def _write_head(self, resp: _ResponseEvents, request: Request,
                    keep: bool) -> tuple[bytes, bool, bool]:
        drop = HOP_BY_HOP | _connection_tokens(resp.headers)
        has_length = any(k.lower() == b"content-length" for k, _ in resp.headers)
        chunked = any(k.lower() == b"transfer-encoding" and b"chunked" in v.lower()
                      for k, v in resp.headers)
        bodiless = resp.no_body or resp.status in (204, 304)
        until_eof = not (has_length or chunked or bodiless)
        http11 = request.version == b"1.1"
        if has_length or bodiless:
            mode = b"length"
        elif http11:
            mode = b"chunked"
        else:
            mode, keep = b"raw", False  # an HTTP/1.0 client learns the end by the close
        lines = [b"HTTP/1.1 %d %s\r\n" % (resp.status, resp.reason or b"OK")]
        lines += [k + b": " + v + b"\r\n" for k, v in resp.headers if k.lower() not in drop]
        if mode == b"chunked" and not bodiless:
            lines.append(b"transfer-encoding: chunked\r\n")
        lines.append(b"connection: keep-alive\r\n" if keep else b"connection: close\r\n")
        lines.append(b"\r\n")
        self.writer.write(b"".join(lines))
        return mode, until_eof, keep


def _connection_tokens(headers: list[tuple[bytes, bytes]]) -> set[bytes]:
    """Header names listed in Connection: hop-by-hop too (RFC 9110, 7.6.1)."""
    return {token.strip().lower() for k, v in headers if k.lower() == b"connection"
            for token in v.split(b",")}


def counters_snapshot(stats: Stats) -> dict[str, dict[str, object]]:
    return {host: c.to_dict() for host, c in stats.by_host.items()}

