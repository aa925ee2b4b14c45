"""Backend connections: the protocol that reads responses, and a keep-alive pool per address.

An ``UpstreamProtocol`` is either idle in its ``Pool`` or bound to exactly one ``Exchange``
(one proxied request). It parses the response with httptools and hands head, body pieces and
completion to the exchange; the exchange decides what reaches the client. Or it carries a
request of the fast lane (``client``, lane.py): then a whole plain response (the very bytes of
the last one, or the same head and size, or one ``whole.known`` recognises) is relayed, counted
and the connection pooled right here; anything else hands the request to an exchange first.

Why the pool is careful:

* backends close idle keep-alive connections on their own schedule (gunicorn after 2 s, node and
  uvicorn after 5 s). Reusing one at that moment loses the request, so a connection idle longer
  than ``MAX_IDLE`` is never handed out, and one the backend closed (EOF, reset) is dropped at
  once;
* a pool whose address left the routing table is *retired*: its idle connections close now, and
  connections still carrying a request close when that request is done (draining).

The response head is filtered as httptools reports it: each forwarded header goes straight into
the list of pieces that becomes the bytes for the client (status line slot first), hop-by-hop
ones are set aside, and only when one of those is there (rare) is the list edited afterwards
(``http1.finish_response_head``). No list of header tuples, no second pass per response.

httptools cannot be told a response is to a HEAD request, so it would wait for a body the
``Content-Length`` announces but that never comes. For HEAD the exchange sets ``skip_body``; the
message ends with its head and the connection gets a fresh parser.
"""

from __future__ import annotations

import asyncio
from time import perf_counter
from typing import TYPE_CHECKING

from httptools import HttpParserError, HttpResponseParser

from hinotori.router.builtin import whole
from hinotori.router.builtin.http1 import HOP_BY_HOP, chunk, finish_response_head

if TYPE_CHECKING:
    from hinotori.router.builtin.downstream import ClientProtocol
    from hinotori.router.builtin.exchange import Exchange

MAX_IDLE = 1.5            # seconds a pooled connection may sit unused (below gunicorn's 2 s)
MAX_IDLE_PER_POOL = 512   # idle connections kept per backend address
_SMALL = 4096             # a plain response this long or shorter is remembered whole


class UpstreamProtocol(asyncio.Protocol):
    __slots__ = (
        "client", "closed", "eof_body", "exchange", "got_bytes", "has_length", "head_done",
        "hop", "idle_since", "interim", "last", "last_active", "parser", "pieces", "pool",
        "read_paused", "reason", "reused", "seen", "skip_body", "transport",
    )

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = HttpResponseParser(self)
        self.exchange: Exchange | None = None
        self.client: ClientProtocol | None = None  # carrying its request in the fast lane
        # The fast lane's last plain response: what whole.known() said of it, and its bytes
        # when small (a backend often sends the very same bytes again).
        self.seen: tuple[bytes, int, int, bytes | None] | None = None
        self.last = b""
        self.closed = False
        self.idle_since = 0.0
        self.last_active = 0.0     # coarse clock; read by the worker's timeout sweep
        self.read_paused = False
        self.reused = False        # came from the pool (may have been closed under us)
        self.got_bytes = False     # any byte of a response arrived for the current exchange
        self.head_done = False
        self.interim = False       # parsing a 1xx interim response (dropped)
        self.skip_body = False     # response to HEAD: ends with its head
        self.eof_body = False      # response body is delimited by connection close
        # The head being parsed: [status line slot, then 4 pieces per forwarded header], the
        # hop-by-hop headers set aside (http1.add_response_header, inline in on_header).
        self.pieces: list[bytes] = []
        self.hop: list[tuple[bytes, bytes]] | None = None
        self.has_length = False
        self.reason = b""

    # -- bound to an exchange (Exchange._attach binds) --------------------------------------------

    def close(self) -> None:
        self.closed = True
        self.exchange = None
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Drop the connection without flushing (its response is of no use any more)."""
        self.closed = True
        self.exchange = None
        if self.transport is not None:
            self.transport.abort()

    def pause_reading(self) -> None:
        if not self.read_paused and self.transport is not None:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused and self.transport is not None:
            self.read_paused = False
            self.transport.resume_reading()

    # -- asyncio callbacks ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.pool.conns.add(self)

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is not None:  # the fast lane's request (lane.py)
            seen = self.seen
            if data != self.last:  # else the very bytes of the last response
                # A response with the head and size of the last one is as plain.
                if seen is None or len(data) != seen[1] or not data.startswith(seen[0]):
                    seen = self.seen = whole.known(data)
                self.last = data if seen is not None and seen[1] <= _SMALL else b""
            if seen is None:
                ex = client.promote()  # the parser's: an exchange takes over
                self.last_active = ex.worker.clock
                self.got_bytes = True
            else:
                head, _, status, lean = seen
                if lean is not None:
                    data = lean + data[len(head):]
                # Exchange.complete, whole.relay and ClientProtocol.exchange_done, inline.
                closing = client.closing
                if closing:  # the worker is stopping
                    data = whole.closing(data, len(head if lean is None else lean))
                client.transport.write(data)  # type: ignore[union-attr]
                self.client = None
                client.up = None
                now = perf_counter()
                counters = client.target.counters  # type: ignore[union-attr]
                counters.active -= 1
                if not client.metrics:
                    counters.requests += 1
                elif status < 300:  # counted in a batch (Counters.fold)
                    counters.ok_ms.append((now - client.started) * 1000.0)
                else:
                    counters.observe(status, (now - client.started) * 1000.0)
                pool = self.pool
                idle = pool.idle
                if pool.retired or self.closed or len(idle) >= MAX_IDLE_PER_POOL:
                    self.close()
                else:  # Pool.checkin, inline
                    self.idle_since = now
                    idle.append(self)
                client.last_active = client.worker.clock
                if closing:
                    client.transport.close()  # type: ignore[union-attr]
                else:
                    client.lane = True
                return
        else:
            ex = self.exchange
            if ex is None:
                # Bytes on an idle connection: the backend is confused; never reuse it.
                self.close()
                return
            self.last_active = ex.worker.clock
            if not self.got_bytes:
                self.got_bytes = True
                # The parser is idle (nothing read since bind): a whole plain response skips it.
                if ex.method != b"HEAD" and (found := whole.response(data)) is not None:
                    whole.relay(ex, self, found[0], found[2], found[1])
                    return
        try:
            self.parser.feed_data(data)
        except HttpParserError as exc:
            if self.exchange is ex:
                ex.on_upstream_broken(self, f"invalid response from backend: {exc}")
            return
        if self.exchange is not ex:
            return  # completed (or failed) inside the parser callbacks
        if self.skip_body and self.head_done:
            keep = self.parser.should_keep_alive()
            self.parser = HttpResponseParser(self)
            ex.on_response_complete(self, keep)
        else:
            ex.flush_response()

    def eof_received(self) -> bool:
        return False  # let the transport close; connection_lost does the rest

    def connection_lost(self, exc: Exception | None) -> None:
        if self.client is not None:
            self.client.promote()
        self.closed = True
        self.pool.conns.discard(self)
        # The parser and this protocol refer to each other (its callbacks are our bound
        # methods): drop it now, so reference counting frees a closed connection at once. Left
        # to the cyclic GC, a switch at 1,000 backends retiring a few hundred connections made
        # generation-2 collections of 5-22 ms in the worker. Nothing reads it after the loss.
        self.parser = None  # type: ignore[assignment]
        ex = self.exchange
        if ex is None:
            return  # idle in a pool: the pool skips closed connections
        self.exchange = None
        if self.eof_body and self.head_done:
            ex.on_response_complete(self, False)  # body delimited by close: this is its end
        else:
            ex.on_upstream_lost(self)

    def pause_writing(self) -> None:
        ex = self.exchange if self.client is None else self.client.promote()
        if ex is not None:
            ex.client.block_reading(ex.client.BLOCK_UPSTREAM)

    def resume_writing(self) -> None:
        ex = self.exchange if self.client is None else self.client.promote()
        if ex is not None:
            ex.client.unblock_reading(ex.client.BLOCK_UPSTREAM)

    # -- httptools callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.exchange is None and not self.interim:
            # A second response nobody asked for, in the same read as the first (which already
            # put us back in the pool): the connection is out of step; never reuse it.
            self.close()
        self.pieces = [b""]  # [0]: the status line, set by the exchange
        self.hop = None
        self.has_length = False
        self.reason = b""

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        # http1.add_response_header, inline: this runs for every header of every response.
        if self.head_done:
            return  # headers after the head are trailers: dropped
        lname = name.lower()
        if lname in HOP_BY_HOP:
            if self.hop is None:
                self.hop = []
            self.hop.append((lname, value))
            return
        self.pieces += (name, b": ", value, b"\r\n")
        if lname == b"content-length":
            self.has_length = True

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self.interim = True  # e.g. 103 Early Hints: not forwarded
            return
        self.head_done = True
        ex = self.exchange
        if ex is not None:
            chunked = None
            if self.hop is not None:
                self.has_length, chunked = finish_response_head(self.pieces, self.hop,
                                                                self.has_length, 1)
            ex.on_response_head(self, status, self.reason, self.pieces, self.has_length,
                                chunked)

    def on_body(self, data: bytes) -> None:
        ex = self.exchange
        if ex is not None and not self.interim and not self.skip_body:
            ex.wbuf.append(chunk(data) if ex.rechunk else data)  # flushed after the read

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        ex = self.exchange
        if ex is not None and not self.skip_body:
            ex.on_response_complete(self, self.parser.should_keep_alive())


class Pool:
    """Idle keep-alive connections to one backend address, most recently used first (their
    ``idle_since`` on ``time.perf_counter``: the lane's one clock read per request end)."""

    __slots__ = ("address", "conns", "idle", "retired")

    def __init__(self, address: str) -> None:
        self.address = address
        self.idle: list[UpstreamProtocol] = []
        self.conns: set[UpstreamProtocol] = set()  # every open one, idle or busy
        self.retired = False

    def checkout(self) -> UpstreamProtocol | None:
        idle = self.idle
        if not idle:
            return None
        now = perf_counter()
        while idle:
            conn = idle.pop()
            if conn.closed:
                continue
            if now - conn.idle_since > MAX_IDLE:
                # Everything below it in the stack is older still.
                conn.close()
                self.close_idle()
                return None
            return conn
        return None

    def checkin(self, conn: UpstreamProtocol) -> None:
        if self.retired or conn.closed or len(self.idle) >= MAX_IDLE_PER_POOL:
            conn.close()
            return
        conn.exchange = None
        if conn.read_paused:  # paused for a slow client
            conn.resume_reading()
        conn.idle_since = perf_counter()
        self.idle.append(conn)

    def close_idle(self) -> None:
        idle, self.idle = self.idle, []
        for conn in idle:
            conn.close()

    def sweep(self) -> None:
        """Close connections idle too long (the backend would time them out anyway)."""
        now = perf_counter()
        idle = self.idle
        if idle and now - idle[0].idle_since > MAX_IDLE:
            self.idle = [c for c in idle if not c.closed and now - c.idle_since <= MAX_IDLE]
            for c in idle:
                if now - c.idle_since > MAX_IDLE:
                    c.close()

    def fail_all(self) -> None:
        """The backend is gone for good (its machine is down): every connection is dropped,
        and the exchanges on them learn it as a lost connection (so an idempotent request
        whose answer has not started is re-sent elsewhere)."""
        self.retire()
        for conn in list(self.conns):
            if conn.transport is not None:
                conn.transport.abort()

    def retire(self) -> None:
        """The address left the routing table: close idle connections, refuse check-ins."""
        self.retired = True
        self.close_idle()
