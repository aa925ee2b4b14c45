"""Client connections: parse requests with httptools and serve them one at a time, in order.

A plain request the connection sent before, arriving whole while nothing else is going on, goes
straight out in the fast lane (lane.py). Every other request is parsed (or recognised whole,
whole.py) and becomes an ``Exchange`` queued on its connection; the head of the queue is
the one being proxied. Queuing (instead of proxying straight from the parser callbacks) gives
pipelining for free and lets a request's head and the body bytes that came in the same read
leave in one write: exchanges start, and pending request bytes are flushed, only after
``feed_data`` returns (``in_feed`` marks the window).

Reading from the client stops while any of these holds (``blocked`` is a bit set of reasons):
a pipelined request waits behind the current one; request bytes pile up with no backend
connection yet; the backend connection's write buffer is full. Symmetrically, when the client's
write buffer is full, reading from the backend pauses.

Hostile clients. httptools reports a header only once it is complete, and joins its pieces as
they come, so the head limit cannot wait for callbacks: every read that gives the parser no
callback at all (no header completed, no body piece...) is bytes it is holding, and those are
counted as they arrive (``unparsed``, O(1) per read). Past ``MAX_HEAD_SIZE`` the client gets 431
and the connection closes: the parser never holds more than the limit plus one read. A head must
also arrive whole within the worker's ``request_timeout`` of the connection being accepted, or of
its first byte after a keep-alive wait (``head_since``; the worker's sweep answers 408 and
closes), so a slow client cannot hold a connection forever.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from time import perf_counter
from typing import TYPE_CHECKING

from httptools import HttpParserCallbackError, HttpParserError, HttpParserUpgrade, HttpRequestParser

from hinotori.router.builtin import http1, lane, whole
from hinotori.router.builtin.exchange import Exchange
from hinotori.router.builtin.upstream import MAX_IDLE

if TYPE_CHECKING:
    from hinotori.router.builtin.table import CompiledRoute, CompiledTable, Target
    from hinotori.router.builtin.upstream import UpstreamProtocol
    from hinotori.router.builtin.worker import Worker

log = logging.getLogger("hinotori.router")

MAX_HEAD_SIZE = 64 * 1024  # request line + headers
_NO_VERSION = ("0.0", "0.9")  # what httptools reports for a request line without a version
_UNRESOLVED: object = object()  # plain_table before lane.resolve ran (the live one may be None)


class ClientProtocol(asyncio.Protocol):
    BLOCK_PIPELINE = 1
    BLOCK_PENDING = 2
    BLOCK_UPSTREAM = 4
    BLOCK_REFUSED = 8
    scheme = b"http"  # X-Forwarded-Proto (tls.HttpsClient: https)

    __slots__ = (
        "blocked", "closing", "current", "eof", "forwarded", "head_since", "head_size", "in_feed",
        "in_head", "lane", "last_active", "metrics", "parser", "parsing", "peer", "plain",
        "plain_head", "plain_key", "plain_route", "plain_table", "preview", "progress", "queue",
        "refused", "started", "target", "transport", "unparsed", "up", "worker", "write_paused",
    )

    def __init__(self, worker: Worker, preview: bool = False) -> None:
        self.worker = worker
        self.preview = preview  # came in on the preview listener: held releases answer
        self.transport: asyncio.Transport | None = None
        self.parser = HttpRequestParser(self)
        self.peer = b""
        self.parsing: Exchange | None = None   # request whose head/body is being parsed
        self.current: Exchange | None = None   # request being proxied
        self.queue: deque[Exchange] = deque()  # parsed, waiting for their turn
        self.in_feed = False
        self.blocked = 0
        self.write_paused = False
        self.closing = False                   # close after the current response
        self.eof = False
        self.head_size = 0
        self.in_head = False                   # between message begin and headers complete
        self.last_active = worker.clock
        self.head_since = worker.clock         # waiting for a head since (0: not waiting)
        self.progress = False                  # the parser called back during this read
        self.unparsed = 0                      # bytes read since the parser last called back
        self.refused: tuple[int, str] | None = None  # answer owed after the queued requests
        self.forwarded = b""                   # X-Forwarded-For and -Proto for this client
        # The fast lane (lane.py). The last plain request (its bytes, what they say, the head
        # for the backend), its route in the live table (None: not the lane's) and, while it
        # is out, the backend connection carrying it (``up``), its backend and start.
        self.lane = False  # idle as a request in the fast lane left it (data_received)
        self.metrics = worker.metrics
        self.plain_key = b""
        self.plain: whole.Plain | None = None
        self.plain_head = b""
        self.plain_table: CompiledTable | object | None = _UNRESOLVED
        self.plain_route: CompiledRoute | None = None
        self.up: UpstreamProtocol | None = None
        self.target: Target | None = None
        self.started = 0.0

    # -- asyncio callbacks ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = peer[0].encode() if peer else b"unknown"
        self.forwarded = b"X-Forwarded-For: %b\r\nX-Forwarded-Proto: %b\r\n" % (self.peer,
                                                                              self.scheme)
        self.worker.clients.add(self)
        if self.worker.stopping:
            self.closing = True

    def connection_lost(self, exc: Exception | None) -> None:
        self._leave_lane()
        self.worker.clients.discard(self)
        self.queue.clear()
        # The parser and this protocol refer to each other: drop the parser now, with the
        # partial head it may hold (up to the limit), instead of at the next cyclic GC.
        self.parser = None  # type: ignore[assignment]
        self.parsing = None
        ex = self.current
        if ex is not None:
            self.current = None
            ex.abort()

    def data_received(self, data: bytes) -> None:
        worker = self.worker
        if self.lane or (self.up is None and self.current is None and self.parsing is None
                         and not self.queue and not self.unparsed and self.refused is None
                         and not self.closing and not self.write_paused):
            # Between requests, the parser idle (``lane``: as the fast lane's last request left
            # it, which nothing changed since): a whole plain request needs no parser.
            if data == self.plain_key or (known := self._remember(data)) == 1:
                self.last_active = worker.clock
                self.head_since = 0.0
                if self.plain_table is not worker.table:
                    lane.resolve(self)
                route = self.plain_route
                if route is None:
                    lane.serve(self, self.plain, self.plain_head,  # type: ignore[arg-type]
                               None, None)
                    return
                # The fast lane: CompiledRoute.pick and Pool.checkout, inline.
                target = route.turn()  # type: ignore[misc]
                idle = target.pool.idle
                if idle:
                    conn = idle.pop()
                    now = perf_counter()
                    if now - conn.idle_since <= MAX_IDLE and not conn.closed:
                        self.lane = False
                        self.up = conn
                        conn.client = self
                        self.target = target
                        self.started = now
                        target.counters.active += 1
                        conn.transport.write(self.plain_head)  # type: ignore[union-attr]
                        return
                    idle.append(conn)  # Pool.checkout drops it, and any older ones
                # A new connection, or stale ones to drop first: an exchange's work.
                lane.serve(self, self.plain, self.plain_head,  # type: ignore[arg-type]
                           route, target)
                return
            if known:
                return  # served (a long head)
        elif self.up is not None:
            self.promote()  # bytes behind a request in the lane: an exchange takes over
        self.lane = False
        clock = self.last_active = worker.clock
        if self.parsing is None and not self.head_since:
            self.head_since = clock  # the first byte after a keep-alive wait
        self.in_feed = True
        self.progress = False
        refusal: tuple[int, str] | None = None
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade:
            # An Upgrade request: served as plain HTTP, then the connection closes. Bytes after
            # it are never parsed (nor held), so they do not count against the head limit.
            self.progress = True
        except HttpParserCallbackError as exc:
            bad = exc.__context__
            if isinstance(bad, http1.BadRequest):
                refusal = (bad.status, bad.text)
            else:
                log.error("request parsing failed on %r", bad)
                refusal = (400, "malformed request")
        except HttpParserError:
            refusal = (400, "malformed request")
        finally:
            self.in_feed = False
        if refusal is None:
            if self.progress:
                self.unparsed = 0
            else:  # all of it is held by the parser (or skipped): count it, never parse on
                self.unparsed += len(data)
                if self.unparsed + (self.head_size if self.in_head else 0) > MAX_HEAD_SIZE:
                    refusal = (431, "request headers too large") \
                        if self.in_head or self.parsing is None else (400, "malformed request")
            if self.in_head and data[-1] == 10 and self.parser.get_http_version() in _NO_VERSION:
                # A request line ended with no HTTP version (HTTP/0.9): refuse it now, as
                # HAProxy does, rather than wait for a blank line such a client never sends.
                refusal = (400, "HTTP/0.9 is not supported")
        if refusal is not None and self._refuse(*refusal):
            return
        if self.current is None:
            if self.queue:
                self._next()
        else:
            self.current.flush_request()
            if self.queue:  # pipelined requests wait; stop reading more behind them
                self.block_reading(self.BLOCK_PIPELINE)

    def eof_received(self) -> bool:
        self._leave_lane()
        self.eof = True
        ex = self.current
        if ex is None and not self.queue:
            return False  # nothing to answer: close
        if ex is not None and not ex.request_complete:
            # The client stopped mid-request; it can never be completed.
            self.abort()
            return False
        return True  # half-close: write the responses still owed, then close

    def pause_writing(self) -> None:
        self._leave_lane()
        self.write_paused = True
        ex = self.current
        if ex is not None and ex.upstream is not None:
            ex.upstream.pause_reading()

    def resume_writing(self) -> None:
        self._leave_lane()
        self.write_paused = False
        ex = self.current
        if ex is not None and ex.upstream is not None:
            ex.upstream.resume_reading()

    # -- httptools callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.progress = True
        self.parsing = ex = Exchange(self)
        ex.headers = []
        self.head_size = 0
        self.in_head = True
        if not self.head_since:
            self.head_since = self.worker.clock

    def on_url(self, url: bytes) -> None:
        self.progress = True
        self.head_size += len(url)
        if self.head_size > MAX_HEAD_SIZE:
            raise http1.BadRequest(431, "request headers too large")
        self.parsing.url += url  # type: ignore[union-attr]

    def on_header(self, name: bytes, value: bytes) -> None:
        self.progress = True
        ex = self.parsing
        if not self.in_head or ex is None:  # trailers of a chunked body: dropped
            return
        self.head_size += len(name) + len(value) + 4
        if self.head_size > MAX_HEAD_SIZE:
            raise http1.BadRequest(431, "request headers too large")
        ex.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.progress = True
        ex = self.parsing
        p = self.parser
        self.in_head = False
        self.head_since = 0.0
        ex.method = p.get_method()  # type: ignore[union-attr]
        ex.prepare()  # type: ignore[union-attr]
        # Keep-alive without a Connection header is HTTP/1.1 and nothing else (llhttp accepts
        # the versions 0.9, 1.0, 1.1 and 2.0, and keeps 1.0 and 2.0 alive only when asked to):
        # then the exchange's defaults (HTTP/1.1, keep-alive) hold, and the version, which
        # httptools builds as a str with format() per call, is not needed.
        if ex.connection or not p.should_keep_alive():  # type: ignore[union-attr]
            version = p.get_http_version()
            if version in _NO_VERSION:
                raise http1.BadRequest(400, "HTTP/0.9 is not supported")
            ex.http11 = version == "1.1"  # type: ignore[union-attr]
            ex.keep_alive = (ex.keep_alive  # type: ignore[union-attr]
                             and p.should_keep_alive() and not p.should_upgrade())
        self.queue.append(ex)  # type: ignore[arg-type]

    def on_body(self, data: bytes) -> None:
        self.progress = True
        self.parsing.on_request_body(data)  # type: ignore[union-attr]

    def on_chunk_header(self) -> None:
        self.progress = True

    def on_message_complete(self) -> None:
        self.progress = True
        ex = self.parsing
        self.parsing = None
        ex.on_request_complete()  # type: ignore[union-attr]

    # -- serving -------------------------------------------------------------------------------

    def _next(self) -> None:
        ex = self.queue.popleft()
        self.current = ex
        if self.queue:
            self.block_reading(self.BLOCK_PIPELINE)
        elif self.blocked:
            self.unblock_reading(self.BLOCK_PIPELINE)
        ex.begin()

    def _remember(self, data: bytes) -> int:
        """Is ``data`` one whole plain request? 0: no (the parser's); 1: yes, and now this
        connection's plain request (``plain_key``...); 2: yes, a long one, served now."""
        if data[-4:] != b"\r\n\r\n" or len(data) > MAX_HEAD_SIZE:
            return 0
        plain = whole.request(data)
        if plain is None:
            return 0
        head = whole.upstream_head(plain, data, self.forwarded, self.worker.listen_bytes)
        if len(data) > whole.SEEN_HEAD_MAX:  # kept per connection: short ones only
            self.last_active = self.worker.clock
            self.head_since = 0.0
            lane.serve(self, plain, head, None, None)
            return 2
        self.plain_key, self.plain, self.plain_head = data, plain, head
        self.plain_table = _UNRESOLVED
        return 1

    def promote(self) -> Exchange:
        """The request in the fast lane goes on as an exchange (see lane.py)."""
        return lane.promote(self)

    def _leave_lane(self) -> None:
        """Anything but a plain request or its whole response (an EOF, a loss, flow control):
        the next request checks again whether the lane may take it, and one in the lane now
        goes on as an exchange."""
        self.lane = False
        if self.up is not None:
            self.promote()

    def exchange_done(self, ex: Exchange, close: bool) -> None:
        if self.current is not ex:
            return
        self.current = None
        self.last_active = self.worker.clock
        if self.head_since:  # a head that came in behind this response: its time starts now
            self.head_since = self.last_active
        if self.refused is not None and not (close or self.closing):
            if self.queue:
                self._next()  # parsed whole before the bad bytes: answered first
            else:
                self._send_refusal(*self.refused)
            return
        if close or self.closing or (self.eof and not self.queue):
            self.closing = True
            self.transport.close()  # type: ignore[union-attr]
            return
        if self.queue:
            self._next()

    def block_reading(self, reason: int) -> None:
        if not self.blocked and not self.transport.is_closing():  # type: ignore[union-attr]
            self.transport.pause_reading()  # type: ignore[union-attr]
        self.blocked |= reason

    def unblock_reading(self, reason: int) -> None:
        if self.blocked & reason:
            self.blocked &= ~reason
            if not self.blocked and not self.transport.is_closing():  # type: ignore[union-attr]
                self.transport.resume_reading()  # type: ignore[union-attr]

    def _refuse(self, status: int, text: str) -> bool:
        """Bad bytes from the client: answer ``status`` and close. Requests parsed whole before
        them are answered first (reading stops meanwhile). True if the connection closed now."""
        self.lane = False
        bad = self.parsing  # the message the bad bytes belong to, if one had begun
        self.parsing = None
        self.in_head = False
        self.head_since = 0.0
        if bad is not None and self.queue and self.queue[-1] is bad:
            self.queue.pop()  # its head was whole, its body cannot be
        ex = self.current
        if (ex is not None and ex is not bad) or (ex is None and self.queue):
            self.refused = (status, text)
            self.block_reading(self.BLOCK_REFUSED)
            return False
        if ex is not None:  # the bad bytes are in the body of the request being proxied
            self.current = None
            ex.abort()
            if ex.response_started:
                self.abort()
                return True
        self._send_refusal(status, text)
        return True

    def _send_refusal(self, status: int, text: str) -> None:
        self.closing = True
        self.transport.write(http1.router_response(status, text, close=True))  # type: ignore[union-attr]
        self.transport.close()  # type: ignore[union-attr]

    def head_timeout(self) -> None:
        """No whole request head within the request timeout: 408 and close (as HAProxy)."""
        self._refuse(408, "request head not received in time")

    def shutdown(self) -> None:
        """Graceful stop: close now if idle, else after the response in progress."""
        self.closing = True
        self.lane = False
        if self.current is None and self.parsing is None and not self.queue and self.up is None:
            self.transport.close()  # type: ignore[union-attr]

    def idle_for(self, now: float) -> float:
        return now - self.last_active

    def expire(self) -> None:
        """Idle timeout: close quietly if between requests, abort a stalled request."""
        self.lane = False
        if self.current is None:
            self.closing = True
            self.transport.close()  # type: ignore[union-attr]
        else:
            self.abort()

    def abort(self) -> None:
        self.closing = True
        self.lane = False
        if self.transport is not None:
            self.transport.abort()
