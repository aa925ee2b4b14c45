"""One proxied request: pick a backend, get a connection, forward, retry, relay the response.

Most plain requests never make one (lane.py hands over what it cannot finish). ``prepare()`` (or
``whole``) builds the upstream head; ``begin()`` (its turn on the client connection) picks a
backend in the live table, pooled connection or new; ``_attach()`` writes the request bytes;
``on_response_*`` relay the response (``whole.relay``: a plain one as it came); ``complete()``.

Request bytes (head and body, already framed for the backend) wait in ``pending`` for a
connection, and for retryable requests also in ``replay`` up to ``REPLAY_LIMIT``. When may a
request be sent again?

* the connection could not be made (refused, reset, timeout): always; nothing reached an app;
* it was sent, and the connection failed before any response byte was relayed: only for
  idempotent methods whose bytes so far are all still in ``replay``;
* anything else (a response started, a non-idempotent method, a big body): the client gets 502,
  or, if the response head was already relayed, its connection is cut.

A response of known length is *held* until whole (or ``HOLD_LIMIT`` bytes): a backend dying
between its head and body (http.server sends them apart: 40% arrive split) leaves a request to
send again, not a client to cut. One without a length may be a stream: relayed as it comes.

Attempts are bounded by ``MAX_ATTEMPTS`` and the route's backends not tried yet; a retry matches
the live table, so it never goes to a backend removed meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from functools import partial
from time import perf_counter
from typing import TYPE_CHECKING

from hinotori.router.builtin import http1
from hinotori.router.builtin.upstream import UpstreamProtocol

if TYPE_CHECKING:
    from hinotori.router.builtin.downstream import ClientProtocol
    from hinotori.router.builtin.table import CompiledRoute, Target
    from hinotori.router.builtin.worker import Worker

log = logging.getLogger("hinotori.router")

MAX_ATTEMPTS = 3
HOLD_LIMIT = 64 * 1024       # response bytes held back until the response is whole
REPLAY_LIMIT = 64 * 1024     # request bytes kept for a re-send
PENDING_LIMIT = 256 * 1024   # request bytes buffered before we stop reading the client
_NONE_TRIED: frozenset[str] = frozenset()
CONNECT_TIMEOUT = 2.0  # a lost SYN is sent again after 1 s: allow that once, then go elsewhere


class Exchange:
    __slots__ = (
        "accept", "attempts", "body_chunked", "client", "close_after", "connecting", "connection",
        "cookie", "done", "expect_continue", "headers", "holding", "host", "http11", "keep_alive",
        "method", "path", "pending", "pending_size", "rechunk", "reject", "release",
        "release_hint", "replay", "replay_size", "request_complete", "response_started", "route",
        "set_cookie", "stale_retry_used", "started", "status", "target", "tried", "upstream",
        "url", "wbuf", "worker")

    def __init__(self, client: ClientProtocol) -> None:
        self.client = client
        self.worker: Worker = client.worker
        self.url = self.method = self.host = b""
        self.path = b"/"
        self.http11 = self.keep_alive = True
        # connection: a Connection header came (see downstream); set_cookie: a sticky route
        # tells the client its release
        self.body_chunked = self.expect_continue = self.connection = self.set_cookie = False
        self.request_complete = self.stale_retry_used = self.response_started = False
        self.rechunk = self.close_after = self.done = self.holding = False
        self.reject: tuple[int, str] | None = None
        self.release_hint: bytes | None = None  # X-Hinotori-Release
        self.cookie: bytes | None = None
        self.accept: bytes | None = None
        self.route: CompiledRoute | None = None
        self.release: int | None = None         # the release this request is held to
        self.started = 0.0
        self.status = self.pending_size = self.replay_size = self.attempts = 0
        self.pending: list[bytes] = []
        self.replay: list[bytes] | None = None
        self.target: Target | None = None
        self.upstream: UpstreamProtocol | None = None
        self.connecting: asyncio.Task[None] | None = None
        # Shared empties, replaced (never changed in place): most requests retry nothing, and
        # a response head brings its own list. headers: on_message_begin's.
        self.tried: frozenset[str] | set[str] = _NONE_TRIED
        self.wbuf: list[bytes] | tuple[()] = ()

    # -- request side (driven by the client's parser) ------------------------------------------

    def prepare(self) -> None:
        """Headers are complete: build the head for the backend."""
        if self.method == b"CONNECT":
            self.reject = (405, "CONNECT is not supported by this router")
            self.keep_alive = False
            return
        client = self.client
        (data, self.host, self.path, self.body_chunked, self.expect_continue, self.release_hint,
         self.cookie, self.accept, self.connection) = http1.request_head(
            self.method, self.url, self.headers, client.peer, self.worker.listen_bytes,
            client.scheme)
        if self.method in http1.IDEMPOTENT_METHODS and len(data) <= REPLAY_LIMIT:
            self.replay = [data]
            self.replay_size = len(data)
        self.pending.append(data)  # nothing is attached yet: _push's other branch cannot be
        self.pending_size = len(data)

    def on_request_body(self, data: bytes) -> None:
        if not self.done and self.reject is None:
            self._push(http1.chunk(data) if self.body_chunked else data)

    def on_request_complete(self) -> None:
        self.request_complete = True
        if self.done:
            return
        if self.body_chunked:
            self._push(http1.LAST_CHUNK)
        up = self.upstream
        if up is not None:
            up.last_active = self.worker.clock  # the backend timeout runs from here

    def _push(self, data: bytes) -> None:
        replay = self.replay
        if replay is not None:
            self.replay_size += len(data)
            if self.replay_size > REPLAY_LIMIT:
                self.replay = None
            else:
                replay.append(data)
        up = self.upstream
        if up is not None and not self.client.in_feed:
            up.transport.write(data)  # type: ignore[union-attr]
            return
        self.pending.append(data)
        self.pending_size += len(data)
        if self.pending_size > PENDING_LIMIT:
            self.client.block_reading(self.client.BLOCK_PENDING)

    def flush_request(self) -> None:
        up = self.upstream
        pending = self.pending
        if up is None or not pending:
            return
        up.transport.write(b"".join(pending) if len(pending) > 1 else pending[0])  # type: ignore[union-attr]
        pending.clear()
        self.pending_size = 0
        client = self.client
        if client.blocked:
            client.unblock_reading(client.BLOCK_PENDING)

    # -- dispatch ------------------------------------------------------------------------------

    def begin(self) -> None:
        """This exchange's turn on its client connection."""
        if self.reject is not None:
            self._reply(*self.reject)
            return
        worker = self.worker
        if worker.redirect_http and self.client.scheme == b"http":
            self._answer(lambda close: http1.redirect_response(
                self.host, self.url, worker.tls_port, close=close, http11=self.http11,
                head=self.method == b"HEAD"))
            return
        compiled = worker.table
        if compiled is None:
            self._reply(503, "no routing table loaded yet")
            return
        route = compiled.match(self.host, self.path)
        if route is None:
            self._reply(404, "no route for this host and path")
            return
        self.route = route
        if (answer := route.maintenance) is not None:  # the router answers: no backend
            self._answer(lambda close: http1.maintenance_response(
                answer, self.accept, close=close, http11=self.http11,
                head=self.method == b"HEAD"))
            return
        # route.selects_release, spelled out: a property call per request costs more
        if route.sticky or route.canary is not None or route.preview is not None:
            self.release = route.wanted(self.release_hint,
                                        http1.cookie_value(self.cookie, route.cookie))
            self.set_cookie = route.sticky and self.release is None
            if self.release is None and self.client.preview and route.preview is not None:
                self.release = route.preview  # the preview listener: the held release
                self.set_cookie = False
            target = self._pick(route)
        else:
            target = route.pick()
        if target is None:
            self._reply(503, f"service {route.service} has no backends")
            return
        self.started = perf_counter()
        if self.expect_continue and self.http11:
            self.client.transport.write(http1.CONTINUE_100)  # type: ignore[union-attr]
        self._send_to(target)

    def go(self, route: CompiledRoute, target: Target) -> None:
        """``begin`` for a plain request whose route (no release to select, no maintenance)
        and backend the fast lane picked already (lane.serve)."""
        self.route = route
        self.started = perf_counter()
        self._send_to(target)

    def _retry(self) -> None:
        """Send again, elsewhere if possible; or give up with 502."""
        compiled = self.worker.table
        route = compiled.match(self.host, self.path) if compiled is not None else None
        target = self._pick(route) if route is not None else None
        if target is None or self.attempts >= MAX_ATTEMPTS:
            self._fail(502, "no backend could take the request")
            return
        self._send_to(target)

    def _pick(self, route: CompiledRoute) -> Target | None:
        if self.release is not None:
            target = route.pick_release(self.release, self.tried)
            if target is not None or self.release == route.preview:
                return target  # else: that release has no reachable backend left (a held
                # one answers 503 then, never silently the live release)
        return route.pick() if not self.tried else route.pick_other(self.tried)

    def _send_to(self, target: Target) -> None:
        self.attempts += 1
        self.target = target
        conn = target.pool.checkout()
        if conn is not None:
            self._attach(conn, target, reused=True)
        else:
            self.connecting = self.worker.loop.create_task(self._connect(target))

    async def _connect(self, target: Target) -> None:
        loop = self.worker.loop
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                _, conn = await loop.create_connection(partial(UpstreamProtocol, target.pool),
                                                       target.host, target.port)
        except (OSError, TimeoutError) as exc:
            self.connecting = None
            target.counters.errors += 1
            self.worker.report_backend_error(target, f"connect failed: {str(exc) or 'timed out'}")
            if not self.done:
                self.tried = self.tried | {target.address}
                self._retry()
            return
        self.connecting = None
        if self.done:
            target.pool.checkin(conn)  # the client left meanwhile; keep the fresh connection
            return
        self._attach(conn, target, reused=False)

    def _attach(self, conn: UpstreamProtocol, target: Target, reused: bool) -> None:
        # conn is idle or fresh: bind it (the fields a response's parsing starts from)
        self.upstream = conn
        conn.exchange = self
        conn.reused = reused
        conn.got_bytes = conn.head_done = conn.skip_body = conn.eof_body = False
        conn.last_active = self.worker.clock
        target.counters.active += 1
        client = self.client
        if client.write_paused:
            conn.pause_reading()
        if not client.in_feed and self.pending:  # flush_request, inline
            pending = self.pending
            conn.transport.write(b"".join(pending) if len(pending) > 1 else pending[0])  # type: ignore[union-attr]
            pending.clear()
            self.pending_size = 0
            if client.blocked:
                client.unblock_reading(client.BLOCK_PENDING)

    def _detach(self) -> UpstreamProtocol | None:
        if (conn := self.upstream) is not None:
            self.upstream = None
            conn.exchange = None
            self.target.counters.active -= 1  # type: ignore[union-attr]
            self.client.unblock_reading(self.client.BLOCK_UPSTREAM)
        return conn

    # -- response side (driven by the upstream parser) -----------------------------------------

    def on_response_head(self, conn: UpstreamProtocol, status: int, reason: bytes,
                         head: list[bytes], has_length: bool, chunked: bytes | None) -> None:
        """``head``: [status line slot, forwarded headers' pieces] (UpstreamProtocol.on_header):
        the start of the bytes for the client."""
        if status == 101:
            self.on_upstream_broken(conn, "backend switched protocols without being asked")
            return
        close = not self.keep_alive or self.client.closing or not self.request_complete
        if self.method == b"HEAD":
            conn.skip_body = True
        else:
            closes, self.rechunk, conn.eof_body = http1.frame_body(head, status, has_length,
                                                                   chunked, self.http11)
            close = close or closes
        if self.set_cookie:
            head.append(http1.set_cookie_line(self.route.cookie,  # type: ignore[union-attr]
                                              self.target.release))  # type: ignore[union-attr]
        head.append(http1.connection_header(close, self.http11) + b"\r\n")
        head[0] = http1.STATUS_LINES.get((status, reason)) or http1.status_line(status, reason)
        self.close_after = close
        self.status = status
        # Its length known, it is held until whole (flush_response; the module's docstring).
        self.holding = has_length and not conn.skip_body
        self.response_started = not self.holding
        self.wbuf = self.wbuf + head if self.wbuf else head

    def flush_response(self, whole: bool = False) -> None:
        """Relay what came of the response; a held one (see the module) only when ``whole``
        or past ``HOLD_LIMIT``."""
        wbuf = self.wbuf
        if self.holding:
            if not whole and sum(map(len, wbuf)) <= HOLD_LIMIT:
                return
            self.holding = False
            self.response_started = True
        if wbuf:
            self.client.transport.write(b"".join(wbuf) if len(wbuf) > 1 else wbuf[0])  # type: ignore[union-attr]
            wbuf.clear()

    def on_response_complete(self, conn: UpstreamProtocol, keep_alive: bool) -> None:
        if self.rechunk:
            self.wbuf.append(http1.LAST_CHUNK)  # type: ignore[union-attr]
        self.flush_response(whole=True)
        self.complete(conn, keep_alive)

    def complete(self, conn: UpstreamProtocol, keep_alive: bool) -> None:
        """The response is out: the connection goes back to its pool, the client's next."""
        # _detach and _finish, inline: this runs once per request.
        client = self.client
        self.upstream = None
        conn.exchange = None
        target = self.target
        counters = target.counters  # type: ignore[union-attr]
        counters.active -= 1
        if client.blocked:
            client.unblock_reading(client.BLOCK_UPSTREAM)
        if self.worker.metrics:
            if self.status < 300:  # counted in a batch (Counters.fold)
                counters.ok_ms.append((perf_counter() - self.started) * 1000.0)
            else:
                counters.observe(self.status, (perf_counter() - self.started) * 1000.0)
        else:
            counters.requests += 1
        if keep_alive and self.request_complete and not conn.closed:
            conn.pool.checkin(conn)
        else:
            conn.close()
        self.done = True
        client.exchange_done(self, self.close_after)

    def on_upstream_lost(self, conn: UpstreamProtocol) -> None:
        """The backend connection closed before its response was complete."""
        self._detach()
        if self.done:
            return
        if self.response_started:
            self._cut(f"backend {self.target.address} closed mid-response")  # type: ignore[union-attr]
            return
        if self.replay is None or (conn.got_bytes and not self.holding):
            what = "an invalid" if conn.got_bytes else "no"
            self._fail(502, f"backend closed the connection with {what} response")
            return
        if self.holding:  # it died mid-response, and nothing of that went out: elsewhere
            self.holding, self.wbuf = False, ()
            self.target.counters.errors += 1  # type: ignore[union-attr]
            self.worker.report_backend_error(self.target,  # type: ignore[arg-type]
                                             "closed mid-response; the request is sent again")
            self.tried = self.tried | {conn.pool.address}
        elif conn.reused and not self.stale_retry_used:
            # Most likely a keep-alive connection the backend had just closed: its other idle
            # connections are suspect too; this backend may be tried again, fresh.
            self.stale_retry_used = True
            conn.pool.close_idle()
        else:
            self.tried = self.tried | {conn.pool.address}
        self.pending = list(self.replay)
        self.pending_size = self.replay_size
        self._retry()

    def on_upstream_broken(self, conn: UpstreamProtocol, why: str) -> None:
        """The backend sent something we cannot relay (bad HTTP)."""
        self._detach()
        conn.abort()
        if not self.done:
            self.worker.report_backend_error(self.target, why)  # type: ignore[arg-type]
            if self.response_started:
                self._cut(why)
            else:
                self._fail(502, "backend sent an invalid response")

    def on_upstream_timeout(self) -> None:
        if (conn := self._detach()) is not None:
            conn.abort()
        if self.response_started:
            self._cut("backend timed out mid-response")
        else:
            self._fail(504, "backend did not answer in time")

    # -- endings -------------------------------------------------------------------------------

    def _answer(self, response: Callable[[bool], bytes]) -> None:
        """A response the router makes itself (an error, a redirect, maintenance): no backend
        is involved. ``response(close)`` gives its bytes."""
        close = not self.keep_alive or not self.request_complete or self.client.closing
        self.client.transport.write(response(close))  # type: ignore[union-attr]
        self._finish(close)

    def _reply(self, status: int, text: str) -> None:
        self._answer(lambda close: http1.router_response(
            status, text, close=close, http11=self.http11, head=self.method == b"HEAD"))

    def _observe(self, status: int) -> None:
        counters = self.target.counters  # type: ignore[union-attr]
        if self.worker.metrics:
            counters.observe(status, (perf_counter() - self.started) * 1000.0)
        else:
            counters.requests += 1

    def _fail(self, status: int, text: str) -> None:
        """A router-generated 5xx blamed on the last backend tried."""
        self.holding, self.wbuf = False, ()  # a held response never went out: this replaces it
        if self.target is not None:
            self.target.counters.errors += 1
            self._observe(status)
        self._reply(status, text)

    def _cut(self, why: str) -> None:
        """The response head is already out: the only honest signal left is a cut connection."""
        if self.target is not None:
            self.target.counters.errors += 1
            self._observe(502)
        log.warning("%s; closing the client connection", why)
        self.flush_response()
        self.done = True
        self.client.abort()

    def _finish(self, close: bool) -> None:
        self.done = True
        self.client.exchange_done(self, close)

    def abort(self) -> None:
        """The client went away: stop everything, keep nothing half-used."""
        self.done = True
        if self.connecting is not None:
            self.connecting.cancel()
            self.connecting = None
        conn = self._detach()
        if conn is not None:
            conn.abort()
