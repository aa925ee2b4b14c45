"""The HTTP/1.1 reverse proxy of one data-plane worker, written as asyncio Protocols.

Why Protocols: a coroutine per request (streams) costs several awaits and task switches per
request; here the httptools parser callbacks write straight into the other side's transport,
which is what makes a Python proxy fast (the same shape as uvicorn's httptools protocol).

One ``ClientSide`` per client connection parses requests and relays them one at a time
(pipelined requests wait their turn); one ``BackendSide`` per backend connection parses the
response and streams it back. Backend connections are pooled per address (keep-alive).

Why it is safe to switch and drain at any moment:

- the backend is chosen *per request* from the table live at that moment, so a keep-alive
  client moves to the new release on its very next request after a switch;
- a request already relayed to a backend that the new table drops finishes there; only idle
  pooled connections to dropped backends are closed, and never handed out again;
- a backend that cannot be connected to is skipped and the request tried on another backend
  of the route (it never reached an app, so any method may be retried);
- a request that was sent but got no response byte back (reset, EOF) is re-sent elsewhere only
  if its method is idempotent and its whole body was kept (small); otherwise the client gets a
  502 rather than a duplicated side effect.

HTTP hygiene: hop-by-hop headers (and any named in Connection) are dropped both ways, header
names keep their spelling, X-Forwarded-For/-Proto/-Host are set, bodies stream (Content-Length
passed through, chunked re-chunked, close-delimited responses sent chunked to HTTP/1.1 clients),
``Expect: 100-continue`` is answered by the proxy (once that request is the one being answered),
HEAD/204/304 carry no body (router-made answers to HEAD neither). Back-pressure: a slow reader on
one side pauses reading on the other; a backend connection reads again once back in the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import deque

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
MAX_TRIES = 3
REASONS = {400: b"Bad Request", 404: b"Not Found", 501: b"Not Implemented",
           502: b"Bad Gateway", 503: b"Service Unavailable", 504: b"Gateway Timeout"}


def connection_tokens(headers: list[tuple[bytes, bytes]]) -> set[bytes]:
    """Header names listed in Connection: hop-by-hop too (RFC 9110, 7.6.1)."""
    return {token.strip().lower() for k, v in headers if k.lower() == b"connection"
            for token in v.split(b",")}


def _cookie(header: bytes | None, name: bytes) -> bytes | None:
    """The value of cookie ``name`` in a Cookie header."""
    if not header:
        return None
    for part in header.split(b";"):
        key, _, value = part.strip().partition(b"=")
        if key == name:
            return value
    return None


def _nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Request:
    __slots__ = ("body", "body_size", "chunked", "complete", "head", "headers", "keep_alive",
                 "kept", "method", "release", "set_cookie", "started", "target", "tried",
                 "version")

    def __init__(self) -> None:
        self.target = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.method = b""
        self.version = b"1.1"
        self.keep_alive = True
        self.chunked = False
        self.complete = False  # the whole body has arrived from the client
        self.body: deque[bytes] = deque()  # body chunks not yet sent to the backend
        self.kept: list[bytes] | None = []  # the whole body, while small: for a retry
        self.body_size = 0
        self.head = b""  # the request head as sent to backends
        self.tried: set[str] = set()
        self.started = 0.0
        self.release: int | None = None  # the release this request is held to, if any
        self.set_cookie = False  # tell the client which release it got (sticky routes)

    def header(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k.lower() == name), None)

    @property
    def replayable(self) -> bool:
        return self.method in IDEMPOTENT and self.kept is not None


class Proxy:
    """Shared state of one worker: the live table, the idle pool, the counters."""

    def __init__(self, table: CompiledTable, scheme: str = "http",
                 metrics: bool = True) -> None:
        self.table = table
        self.metrics = metrics  # off only to measure what counting costs (bench/canary.py)
        self.scheme = scheme.encode()
        self.idle: dict[str, list[BackendSide]] = {}
        self.live: set[str] = set(table.addresses)
        self.stats: dict[str, Counters] = {}
        self.clients: set[ClientSide] = set()
        self.in_flight = 0
        self.closing = False

    def counters(self, host_id: str) -> Counters:
        c = self.stats.get(host_id)
        if c is None:
            c = self.stats[host_id] = Counters()
        return c

    def swap(self, table: CompiledTable) -> None:
        self.table = table  # one reference: requests after this line see only the new table
        self.live = set(table.addresses)
        for address in [a for a in self.idle if a not in self.live]:
            for conn in self.idle.pop(address):  # drained backends: drop their idle conns
                conn.close()

    def take_idle(self, address: str) -> BackendSide | None:
        stack = self.idle.get(address)
        now = time.monotonic()
        while stack:
            conn = stack.pop()
            if now - conn.idle_since < POOL_IDLE and not conn.closed:
                return conn
            conn.close()
        return None

    def give_back(self, conn: BackendSide) -> None:
        stack = self.idle.setdefault(conn.address, [])
        if conn.address not in self.live or len(stack) >= POOL_MAX or conn.closed:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        # A slow client may have paused reading from it (back-pressure) just as its response
        # completed; idle in the pool it must read again, or it would never see its next
        # response, nor its backend closing it.
        conn.transport.resume_reading()
        stack.append(conn)

    def client_factory(self) -> ClientSide:
        return ClientSide(self)

    def sweep(self) -> None:
        """Close client connections idle longer than CLIENT_IDLE (run every few seconds)."""
        cutoff = time.monotonic() - CLIENT_IDLE
        for client in list(self.clients):
            if client.current is None and not client.pending and client.last_active < cutoff:
                client.transport.close()

    def close_idle(self) -> None:
        for client in list(self.clients):
            if client.current is None and not client.pending:
                client.transport.close()


class BackendSide(asyncio.Protocol):
    """One connection to a backend; carries one request at a time."""

    def __init__(self, proxy: Proxy, address: str) -> None:
        self.proxy = proxy
        self.address = address
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.client: ClientSide | None = None
        self.closed = False
        self.idle_since = 0.0
        self.connected: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        _nodelay(transport)
        if not self.connected.done():
            self.connected.set_result(None)

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is None:  # nothing asked: a backend talking out of turn is not reusable
            self.close()
            return
        client.backend_data(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.client is not None:
            self.client.backend_lost(self)

    def pause_writing(self) -> None:
        if self.client is not None:
            self.client.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.client is not None:
            self.client.transport.resume_reading()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class _Response:
    """httptools callback target for one backend response."""

    __slots__ = ("bodiless", "chunked_out", "done", "head_sent", "headers", "parser", "reason",
                 "side", "status", "until_eof")

    def __init__(self, side: ClientSide, bodiless: bool) -> None:
        self.side = side
        self.parser = httptools.HttpResponseParser(self)
        self.bodiless = bodiless  # HEAD: the parser cannot know there is no body
        self.headers: list[tuple[bytes, bytes]] = []
        self.reason = b""
        self.status = 0
        self.head_sent = False
        self.done = False
        self.chunked_out = False
        self.until_eof = False

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # an interim response: wait for the real one
            self.headers, self.reason = [], b""
            return
        self.status = status
        self.side.response_head(self)

    def on_body(self, body: bytes) -> None:
        if not self.done:
            self.side.response_body(self, body)

    def on_message_complete(self) -> None:
        if self.status and not self.done:
            self.side.response_done(self)


class ClientSide(asyncio.Protocol):
    """One client connection: parses requests and relays them, one at a time."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.parser = httptools.HttpRequestParser(self)
        self.reading: Request | None = None  # the request being parsed
        self.pending: deque[Request] = deque()  # parsed (at least the head), not yet relayed
        self.current: Request | None = None  # being relayed
        self.route: CompiledRoute | None = None
        self.backend: BackendSide | None = None
        self.host_id = ""
        self.release = 0  # release of the backend serving the current request
        self.response: _Response | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.keep_alive = True
        self.local_status: tuple[int, bytes] = (404, b"")  # what the router answers itself
        self.client_ip = b"127.0.0.1"
        self.last_active = time.monotonic()
        self.writing_paused = False  # our writes to the client are backed up (back-pressure)

    # -- client connection --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.client_ip = peer[0].encode()
        _nodelay(transport)
        self.proxy.clients.add(self)

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.error_and_close(501, b"upgrade (e.g. WebSocket) is not supported")
        except httptools.HttpParserError:
            self.error_and_close(400, b"malformed request")

    def connection_lost(self, exc: Exception | None) -> None:
        self.proxy.clients.discard(self)
        if self.current is not None:
            self._finish_request(reusable=False)

    def pause_writing(self) -> None:
        self.writing_paused = True
        if self.backend is not None and self.backend.transport is not None:
            self.backend.transport.pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.backend is not None and self.backend.transport is not None:
            self.backend.transport.resume_reading()

    # -- request parser callbacks --------------------------------------------------------
    def on_message_begin(self) -> None:
        self.reading = Request()

    def on_url(self, url: bytes) -> None:
        assert self.reading is not None
        self.reading.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.reading is not None
        self.reading.headers.append((name, value))

    def on_headers_complete(self) -> None:
        req = self.reading
        assert req is not None
        p = self.parser
        req.method = p.get_method()
        req.version = p.get_http_version().encode()
        req.keep_alive = p.should_keep_alive()
        te = req.header(b"transfer-encoding")
        req.chunked = te is not None and b"chunked" in te.lower()
        self.pending.append(req)
        if self.current is None:
            self._start_next()

    def on_body(self, body: bytes) -> None:
        req = self.reading
        assert req is not None
        if req is self.current and self.route is None:
            return  # the router answers this one itself: the body goes nowhere
        req.body_size += len(body)
        if req.kept is not None:
            if req.body_size <= REPLAY_LIMIT:
                req.kept.append(body)
            else:
                req.kept = None
        if req is self.current and self.backend is not None and self.backend.transport:
            self._send_body(req, [body])
        else:
            req.body.append(body)

    def on_message_complete(self) -> None:
        req = self.reading
        assert req is not None
        req.complete = True
        self.reading = None
        if req is self.current and self.backend is not None and self.backend.transport:
            self._send_body(req, [], final=True)
        elif req is self.current and self.route is None and self.response is None:
            self._finish_local(req)

    # -- relaying ------------------------------------------------------------------------
    def _start_next(self) -> None:
        if not self.pending or self.current is not None:
            return
        req = self.current = self.pending.popleft()
        req.started = time.perf_counter()
        # 100 Continue only now that this request is the one being answered: sent while an
        # earlier pipelined response is pending, it would read as an interim answer to that one.
        # An HTTP/1.0 client's expectation is ignored (RFC 9110, 10.1.1).
        if not req.complete and req.version == b"1.1" and \
                (req.header(b"expect") or b"").lower() == b"100-continue":
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.keep_alive = req.keep_alive and not self.proxy.closing
        path = req.target.split(b"?", 1)[0].decode("latin-1")
        host = req.header(b"host")
        route = self.proxy.table.match(host.decode("latin-1") if host else None, path)
        if route is None or not route.backends:
            self.route = None
            self.local_status = (404, b"no service matches this request") if route is None \
                else (503, b"service has no healthy hosts")
            if req.complete:
                self._finish_local(req)
            return
        self.route = route
        self.proxy.in_flight += 1
        req.head = self._request_head(req)
        if route.sticky or route.canary is not None:
            req.release = route.wanted(req.header(b"x-hinotori-release"),
                                       _cookie(req.header(b"cookie"), route.cookie))
            req.set_cookie = route.sticky and req.release is None
        self._dispatch(req)

    def _finish_local(self, req: Request) -> None:
        """Answer a request the router itself answers (404/503), once its body has arrived."""
        status, text = self.local_status
        self._write_simple(status, text, head_only=req.method == b"HEAD")
        self.current = None
        self._next_or_close()

    def _dispatch(self, req: Request) -> None:
        """Send ``req`` to the next untried backend of its route."""
        route = self.route
        assert route is not None
        if len(req.tried) >= MAX_TRIES:
            self._fail(req, 502, b"no backend could be reached")
            return
        backend = route.pick(req.tried, req.release)
        if backend is None and req.release is not None:
            backend = route.pick(req.tried)  # its release has no reachable host left
        if backend is None:
            self._fail(req, 502, b"no backend could be reached")
            return
        req.tried.add(backend.host_id)
        self.release = backend.release
        self.host_id = backend.host_id
        conn = self.proxy.take_idle(backend.address)
        if conn is not None:
            self._attach(req, conn)
            return
        asyncio.get_running_loop().create_task(self._connect(req, backend.address,
                                                             backend.host_id))

    async def _connect(self, req: Request, address: str, host_id: str) -> None:
        host, _, port = address.rpartition(":")
        loop = asyncio.get_running_loop()
        conn = BackendSide(self.proxy, address)
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await loop.create_connection(lambda: conn, host.strip("[]"), int(port))
        except (OSError, TimeoutError):
            self.proxy.counters(host_id).errors += 1
            if self.current is req and not self.transport.is_closing():
                self._dispatch(req)  # never reached an app: any method may go elsewhere
            elif self.current is req:
                self._finish_request(reusable=False)
            return
        if self.current is not req or self.transport.is_closing():
            conn.close()  # the client went away while we connected
            if self.current is req:
                self._finish_request(reusable=False)
            return
        self._attach(req, conn)

    def _attach(self, req: Request, conn: BackendSide) -> None:
        self.backend = conn
        conn.client = self
        if self.writing_paused:  # still backed up from the last response: this one waits too
            conn.transport.pause_reading()
        self.proxy.counters(self.host_id).active += 1
        self.response = _Response(self, bodiless=req.method == b"HEAD")
        self.timer = asyncio.get_running_loop().call_later(RESPONSE_TIMEOUT, self._timed_out)
        conn.transport.write(req.head)
        if req.tried and len(req.tried) > 1 and req.kept is not None:  # a retry: replay
            self._send_body(req, req.kept, final=req.complete)
            req.body.clear()
        elif req.body or req.complete:
            chunks = list(req.body)
            req.body.clear()
            self._send_body(req, chunks, final=req.complete)

    def _send_body(self, req: Request, chunks: list[bytes], final: bool = False) -> None:
        assert self.backend is not None
        write = self.backend.transport.write
        for chunk in chunks:
            if chunk:
                write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if req.chunked else chunk)
        if final and req.chunked:
            write(b"0\r\n\r\n")

    def _request_head(self, req: Request) -> bytes:
        drop = HOP_BY_HOP | connection_tokens(req.headers)
        lines = [b"%s %s HTTP/1.1\r\n" % (req.method, req.target)]
        chain: list[bytes] = []  # every X-Forwarded-For the client sent, in order: one list
        host = None
        for k, v in req.headers:
            name = k.lower()
            if name in drop or name == b"x-forwarded-proto" or name == b"x-forwarded-host":
                continue
            if name == b"x-forwarded-for":
                chain.append(v.strip())
                continue
            if name == b"host":
                host = v
            lines.append(k + b": " + v + b"\r\n")
        chain.append(self.client_ip)
        lines.append(b"X-Forwarded-For: " + b", ".join(chain) + b"\r\n")
        lines.append(b"X-Forwarded-Proto: " + self.proxy.scheme + b"\r\n")
        if host is not None:
            lines.append(b"X-Forwarded-Host: " + host + b"\r\n")
        if req.chunked:
            lines.append(b"Transfer-Encoding: chunked\r\n")
        lines.append(b"\r\n")
        return b"".join(lines)

    # -- backend side events -------------------------------------------------------------
    def backend_data(self, conn: BackendSide, data: bytes) -> None:
        resp = self.response
        if resp is None or conn is not self.backend:
            conn.close()
            return
        if resp.until_eof:
            self._write_body(resp, data)
            return
        try:
            resp.parser.feed_data(data)
        except httptools.HttpParserError:
            self._backend_failed(conn, "malformed response")

    def backend_lost(self, conn: BackendSide) -> None:
        if conn is not self.backend:
            return
        resp = self.response
        if resp is not None and resp.until_eof and resp.head_sent:
            self.response_done(resp)  # a close-delimited body ends with the close
            return
        self._backend_failed(conn, "backend closed the connection")

    def _backend_failed(self, conn: BackendSide, why: str) -> None:
        req, resp = self.current, self.response
        assert req is not None
        self.proxy.counters(self.host_id).errors += 1
        self._detach(reusable=False)
        if resp is not None and resp.head_sent:
            self.transport.close()  # half a response went out: all we can do is cut
            self._finish_request(reusable=False)
            return
        if req.complete and req.replayable:
            self._dispatch(req)  # never answered, and safe to send again
            return
        self._fail(req, 502, b"backend failed after the request was sent")

    def _timed_out(self) -> None:
        self.timer = None
        req, resp = self.current, self.response
        if req is None:
            return
        self.proxy.counters(self.host_id).errors += 1
        head_sent = resp is not None and resp.head_sent
        self._detach(reusable=False)
        if head_sent:
            self.transport.close()
            self._finish_request(reusable=False)
        else:
            self._fail(req, 504, b"backend response timed out")

    def response_head(self, resp: _Response) -> None:
        req = self.current
        assert req is not None
        headers = resp.headers
        drop = HOP_BY_HOP | connection_tokens(headers)
        has_length = any(k.lower() == b"content-length" for k, _ in headers)
        chunked = any(k.lower() == b"transfer-encoding" and b"chunked" in v.lower()
                      for k, v in headers)
        bodiless = resp.bodiless or resp.status in (204, 304)
        resp.until_eof = not (has_length or chunked or bodiless)
        if not (has_length or bodiless):
            if req.version == b"1.1":
                resp.chunked_out = True
            else:
                self.keep_alive = False  # an HTTP/1.0 client learns the end by the close
        lines = [b"HTTP/1.1 %d %s\r\n" % (resp.status, resp.reason or b"OK")]
        lines += [k + b": " + v + b"\r\n" for k, v in headers if k.lower() not in drop]
        if resp.chunked_out:
            lines.append(b"Transfer-Encoding: chunked\r\n")
        if req.set_cookie and self.route is not None:
            lines.append(b"Set-Cookie: %s=v%d; Path=/; HttpOnly; SameSite=Lax\r\n"
                         % (self.route.cookie, self.release))
        lines.append(b"Connection: keep-alive\r\n\r\n" if self.keep_alive
                     else b"Connection: close\r\n\r\n")
        self.transport.write(b"".join(lines))
        resp.head_sent = True
        if bodiless:
            self.response_done(resp)

    def response_body(self, resp: _Response, body: bytes) -> None:
        self._write_body(resp, body)

    def _write_body(self, resp: _Response, body: bytes) -> None:
        if body:
            self.transport.write(b"%x\r\n%s\r\n" % (len(body), body) if resp.chunked_out
                                 else body)

    def response_done(self, resp: _Response) -> None:
        resp.done = True
        if resp.chunked_out:
            self.transport.write(b"0\r\n\r\n")
        req = self.current
        assert req is not None
        if self.proxy.metrics:
            self.proxy.counters(self.host_id).observe(
                resp.status, (time.perf_counter() - req.started) * 1000)
        # Reusable unless the body ended with the close, the backend said close, or it
        # answered before the whole request body went out.
        reusable = req.complete and not resp.until_eof and resp.parser.should_keep_alive()
        self._detach(reusable=reusable)
        self._finish_request(reusable=True)

    # -- endings -------------------------------------------------------------------------
    def _detach(self, reusable: bool) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        conn = self.backend
        if conn is not None:
            self.proxy.counters(self.host_id).active -= 1
            conn.client = None
            self.backend = None
            if reusable:
                self.proxy.give_back(conn)
            else:
                conn.close()
            self.transport.resume_reading()  # in case the backend's back-pressure paused us
        self.response = None

    def _fail(self, req: Request, status: int, text: bytes) -> None:
        if self.host_id and self.proxy.metrics:  # what the client got counts as an answer
            self.proxy.counters(self.host_id).observe(
                status, (time.perf_counter() - req.started) * 1000)
        self._detach(reusable=False)
        if not req.complete:
            self.keep_alive = False  # the rest of the body is not worth reading
        self._write_simple(status, text, head_only=req.method == b"HEAD")
        self._finish_request(reusable=True)

    def _finish_request(self, reusable: bool) -> None:
        if self.backend is not None:
            self._detach(reusable=False)
        if self.current is not None and self.route is not None:
            self.proxy.in_flight -= 1
        self.current = None
        self.route = None
        if reusable:
            self._next_or_close()

    def _next_or_close(self) -> None:
        self.last_active = time.monotonic()
        if not self.keep_alive or (self.proxy.closing and not self.pending):
            self.transport.close()
            return
        self._start_next()

    def _write_simple(self, status: int, text: bytes, head_only: bool = False) -> None:
        """A router-made answer. To HEAD without its body: the client reads no body after a
        HEAD, so one would be taken for the start of the next response."""
        body = text + b"\n"
        self.transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
            b"Connection: %s\r\n\r\n%s" % (status, REASONS.get(status, b"Error"), len(body),
                                          b"keep-alive" if self.keep_alive else b"close",
                                          b"" if head_only else body))

    def error_and_close(self, status: int, text: bytes) -> None:
        self.keep_alive = False
        if self.current is None:
            self._write_simple(status, text)
        self.transport.close()
