"""Client connections: parse requests with httptools and serve them one at a time, in order.

Every parsed request becomes an ``Exchange`` queued on its connection; the head of the queue is
the one being proxied. Queuing (instead of proxying straight from the parser callbacks) gives
pipelining for free and lets a request's head and the body bytes that came in the same read
leave in one write: exchanges start, and pending request bytes are flushed, only after
``feed_data`` returns (``in_feed`` marks the window).

Reading from the client stops while any of these holds (``blocked`` is a bit set of reasons):
a pipelined request waits behind the current one; request bytes pile up with no backend
connection yet; the backend connection's write buffer is full. Symmetrically, when the client's
write buffer is full, reading from the backend pauses.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

from httptools import HttpParserCallbackError, HttpParserError, HttpParserUpgrade, HttpRequestParser

from hinotori.router.builtin import http1
from hinotori.router.builtin.exchange import Exchange

if TYPE_CHECKING:
    from hinotori.router.builtin.worker import Worker

MAX_HEAD_SIZE = 64 * 1024  # request line + headers


class HeadTooLarge(Exception):
    pass


class ClientProtocol(asyncio.Protocol):
    BLOCK_PIPELINE = 1
    BLOCK_PENDING = 2
    BLOCK_UPSTREAM = 4

    __slots__ = (
        "blocked", "closing", "current", "eof", "head_size", "in_feed", "in_head",
        "last_active", "parser", "parsing", "peer", "queue", "transport", "worker",
        "write_paused",
    )

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
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

    # -- asyncio callbacks ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = peer[0].encode() if peer else b"unknown"
        self.worker.clients.add(self)
        if self.worker.stopping:
            self.closing = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.worker.clients.discard(self)
        self.queue.clear()
        ex = self.current
        if ex is not None:
            self.current = None
            ex.abort()

    def data_received(self, data: bytes) -> None:
        self.last_active = self.worker.clock
        self.in_feed = True
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade:
            pass  # an Upgrade request: served as plain HTTP, then the connection closes
        except HttpParserCallbackError as exc:
            self.in_feed = False
            too_large = isinstance(exc.__context__, HeadTooLarge)
            self._bad_request(431 if too_large else 400)
            return
        except HttpParserError:
            self.in_feed = False
            self._bad_request(400)
            return
        finally:
            self.in_feed = False
        if self.current is None:
            if self.queue:
                self._next()
        else:
            self.current.flush_request()
            if self.queue:  # pipelined requests wait; stop reading more behind them
                self.block_reading(self.BLOCK_PIPELINE)

    def eof_received(self) -> bool:
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
        self.write_paused = True
        ex = self.current
        if ex is not None and ex.upstream is not None:
            ex.upstream.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        ex = self.current
        if ex is not None and ex.upstream is not None:
            ex.upstream.resume_reading()

    # -- httptools callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.parsing = Exchange(self)
        self.head_size = 0
        self.in_head = True

    def on_url(self, url: bytes) -> None:
        self.head_size += len(url)
        if self.head_size > MAX_HEAD_SIZE:
            raise HeadTooLarge()
        self.parsing.url += url  # type: ignore[union-attr]

    def on_header(self, name: bytes, value: bytes) -> None:
        ex = self.parsing
        if not self.in_head or ex is None:  # trailers of a chunked body: dropped
            return
        self.head_size += len(name) + len(value) + 4
        if self.head_size > MAX_HEAD_SIZE:
            raise HeadTooLarge()
        ex.headers.append((name, value))

    def on_headers_complete(self) -> None:
        ex = self.parsing
        p = self.parser
        self.in_head = False
        ex.method = p.get_method()  # type: ignore[union-attr]
        ex.http11 = p.get_http_version() == "1.1"  # type: ignore[union-attr]
        ex.keep_alive = p.should_keep_alive() and not p.should_upgrade()  # type: ignore[union-attr]
        ex.prepare()  # type: ignore[union-attr]
        self.queue.append(ex)  # type: ignore[arg-type]

    def on_body(self, data: bytes) -> None:
        self.parsing.on_request_body(data)  # type: ignore[union-attr]

    def on_message_complete(self) -> None:
        ex = self.parsing
        self.parsing = None
        ex.on_request_complete()  # type: ignore[union-attr]

    # -- serving -------------------------------------------------------------------------------

    def _next(self) -> None:
        ex = self.queue.popleft()
        self.current = ex
        if self.queue:
            self.block_reading(self.BLOCK_PIPELINE)
        else:
            self.unblock_reading(self.BLOCK_PIPELINE)
        ex.begin()

    def exchange_done(self, ex: Exchange, close: bool) -> None:
        if self.current is not ex:
            return
        self.current = None
        self.last_active = self.worker.clock
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

    def _bad_request(self, status: int) -> None:
        ex = self.current
        if ex is not None:
            started = ex.response_started
            self.current = None
            ex.abort()
            if started:
                self.abort()
                return
        text = "request headers too large" if status == 431 else "malformed request"
        self.closing = True
        self.transport.write(http1.router_response(status, text, close=True))  # type: ignore[union-attr]
        self.transport.close()  # type: ignore[union-attr]

    def shutdown(self) -> None:
        """Graceful stop: close now if idle, else after the response in progress."""
        self.closing = True
        if self.current is None and self.parsing is None and not self.queue:
            self.transport.close()  # type: ignore[union-attr]

    def idle_for(self, now: float) -> float:
        return now - self.last_active

    def expire(self) -> None:
        """Idle timeout: close quietly if between requests, abort a stalled request."""
        if self.current is None:
            self.closing = True
            self.transport.close()  # type: ignore[union-attr]
        else:
            self.abort()

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()
