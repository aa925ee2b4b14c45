"""The built-in load generator: keep-alive HTTP clients that account for every single response.

Used by ``hinotori demo``, the integration tests and the benchmarks to prove that a deploy drops
no request. Written by hand on asyncio and the httptools response parser, because:

- **Per-request attribution.** Every response is counted with its status and the value of one
  header (``X-Hello-Host`` by default: which host answered), and every failure with its reason.
  Generic tools (wrk, hey, ab) report aggregates; they cannot say that request 1234 hit the old
  host, or that a keep-alive connection was reset during the switch.
- **Cheap.** One protocol object per connection, one parser, precomputed request bytes and no
  task per request: on a 2-core box the load generator must not starve the router and the hosts
  it is measuring.

Semantics:

- ``clients`` connections, each looping ``GET path`` over keep-alive; ``rate`` (requests/s across
  all clients) paces each client at ``clients / rate`` seconds, staggered; None = flat out.
- A *failed* request is a connection error, a timeout, or a status >= 500. A keep-alive
  connection that breaks counts as a failure even when it broke while idle (a router must never
  close an idle client connection); the client then reconnects. A response with
  ``Connection: close`` is honoured without a failure.
- Leaving the ``async with`` lets in-flight requests finish (each is counted); clients that are
  between requests stop at once. Requests cut off by cancelling the generator are not counted.
- Responses must be delimited (Content-Length or chunked), as every HTTP/1.1 server here does.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

import httptools

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is not built for every platform
    uvloop = None  # type: ignore[assignment]

T = TypeVar("T")

_MAX_FAILURES_KEPT = 50


@dataclass
class LoadStats:
    total: int = 0
    failed: int = 0
    by_header: Counter[str] = field(default_factory=Counter)  # record_header value -> responses
    failures: list[str] = field(default_factory=list)  # the first 50 failure reasons
    statuses: Counter[int] = field(default_factory=Counter)
    failure_kinds: Counter[str] = field(default_factory=Counter)  # every reason, counted
    elapsed: float = 0.0  # seconds since start (or the last reset)
    latencies_ms: list[float] = field(default_factory=list, repr=False)  # answered requests

    def p(self, percentile: float) -> float:
        """Latency at ``percentile`` (0..100) in ms, nearest rank; 0.0 when nothing answered."""
        if not self.latencies_ms:
            return 0.0
        ordered = sorted(self.latencies_ms)
        rank = round(percentile / 100 * (len(ordered) - 1))
        return ordered[min(max(rank, 0), len(ordered) - 1)]

    @property
    def p50_ms(self) -> float:
        return self.p(50)

    @property
    def p99_ms(self) -> float:
        return self.p(99)

    @property
    def error_rate(self) -> float:
        return self.failed / self.total if self.total else 0.0

    @property
    def rps(self) -> float:
        return self.total / self.elapsed if self.elapsed > 0 else 0.0


class _Broken(Exception):
    """The request failed with ``reason``; the connection is unusable."""


class _Conn(asyncio.Protocol):
    """One keep-alive connection: write a request, resolve ``waiter`` with its response."""

    def __init__(self, record_header: bytes) -> None:
        self.record_header = record_header
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[tuple[int, str | None]] | None = None
        self.value: str | None = None
        self.closed = False
        self.keep_alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(f"bad response: {e}")

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == self.record_header:
            self.value = value.decode("latin-1")

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((self.parser.get_status_code(), self.value))
        elif self.waiter is None:
            self._fail("unsolicited response")  # e.g. a 408 on an idle connection

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        reason = "connection reset" if isinstance(exc, ConnectionResetError) else (
            f"connection error: {exc}" if exc else "connection closed")
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(_Broken(reason))

    def _fail(self, reason: str) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(_Broken(reason))
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def request(self, data: bytes, timeout: float) -> tuple[int, str | None]:
        loop = asyncio.get_running_loop()
        self.value, self.waiter = None, loop.create_future()
        assert self.transport is not None
        self.transport.write(data)
        timer = loop.call_later(timeout, self._fail, "timeout")  # cheaper than wait_for
        try:
            return await self.waiter
        finally:
            timer.cancel()
            self.waiter = None


class LoadGenerator:
    """``async with LoadGenerator("127.0.0.1:8080") as lg: ...; lg.stats()``"""

    def __init__(self, address: str, *, clients: int = 50, path: str = "/",
                 rate: float | None = None, host_header: str | None = None,
                 record_header: str = "x-hello-host", timeout: float = 10.0,
                 tls: ssl.SSLContext | None = None, server_name: str | None = None) -> None:
        host, _, port = address.rpartition(":")
        self._host, self._port = host.strip("[]") or "127.0.0.1", int(port)
        self.clients, self.rate, self.timeout = clients, rate, timeout
        self._request = (f"GET {path} HTTP/1.1\r\nHost: {host_header or address}\r\n"
                         "User-Agent: hinotori-loadgen\r\n\r\n").encode()
        self._record = record_header.lower().encode()
        # HTTPS: each connection's handshake verifies against ``tls`` for ``server_name`` (SNI).
        self._tls = tls
        self._server_name = server_name if tls is not None else None
        self._tasks: list[asyncio.Task[None]] = []
        self._busy: set[int] = set()  # clients with a request in flight
        self._stopping = False
        self._stopped_at: float | None = None
        self.reset()

    def reset(self) -> None:
        self._stats = LoadStats()
        self._started = time.monotonic()

    def stats(self) -> LoadStats:
        s = self._stats
        return LoadStats(total=s.total, failed=s.failed, by_header=Counter(s.by_header),
                         failures=list(s.failures), statuses=Counter(s.statuses),
                         failure_kinds=Counter(s.failure_kinds),
                         elapsed=(self._stopped_at or time.monotonic()) - self._started,
                         latencies_ms=list(s.latencies_ms))

    def p(self, percentile: float) -> float:
        return self._stats.p(percentile)

    async def __aenter__(self) -> LoadGenerator:
        self._stopping, self._stopped_at = False, None
        self.reset()
        self._tasks = [asyncio.create_task(self._client(i)) for i in range(self.clients)]
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Stop every client, letting requests in flight finish (and be counted)."""
        self._stopping = True
        for i, task in enumerate(self._tasks):
            if i not in self._busy:
                task.cancel()  # sleeping or connecting: nothing in flight to lose
        try:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        except asyncio.CancelledError:
            for task in self._tasks:
                task.cancel()
            raise
        self._tasks = []
        self._stopped_at = time.monotonic()

    def _fail(self, reason: str) -> None:
        s = self._stats
        s.total += 1
        s.failed += 1
        s.failure_kinds[reason] += 1
        if len(s.failures) < _MAX_FAILURES_KEPT:
            s.failures.append(reason)

    async def _connect(self) -> _Conn | None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout):
                _, conn = await loop.create_connection(
                    lambda: _Conn(self._record), self._host, self._port, ssl=self._tls,
                    server_hostname=self._server_name)
            return conn
        except TimeoutError:
            self._fail("connect timeout")
        except ConnectionRefusedError:
            self._fail("connection refused")
        except OSError as e:  # ssl.SSLError too: a handshake that failed
            self._fail(f"connect error: {e.strerror or e}")
        return None

    async def _client(self, i: int) -> None:
        interval = self.clients / self.rate if self.rate else 0.0
        next_at = time.monotonic() + interval * i / self.clients  # stagger the clients
        conn: _Conn | None = None
        try:
            while not self._stopping:
                if interval:
                    now = time.monotonic()
                    if next_at > now:
                        await asyncio.sleep(next_at - now)
                    next_at = max(next_at + interval, time.monotonic() - interval)
                if conn is None or conn.closed:
                    if conn is not None and conn.keep_alive:
                        self._fail("connection closed while idle")
                    conn = await self._connect()
                    if conn is None:
                        if not interval:
                            await asyncio.sleep(0.05)  # don't spin on a dead address
                        continue
                self._busy.add(i)
                t0 = time.perf_counter()
                try:
                    status, value = await conn.request(self._request, self.timeout)
                except _Broken as e:
                    self._fail(str(e))
                    conn.close()
                    conn.keep_alive = False  # already counted
                    continue
                finally:
                    self._busy.discard(i)
                s = self._stats
                s.total += 1
                s.statuses[status] += 1
                s.latencies_ms.append((time.perf_counter() - t0) * 1000)
                if value is not None:
                    s.by_header[value] += 1
                if status >= 500:
                    s.failed += 1
                    s.failure_kinds[f"HTTP {status}"] += 1
                    if len(s.failures) < _MAX_FAILURES_KEPT:
                        s.failures.append(f"HTTP {status}")
                if not conn.keep_alive:
                    conn.close()  # the server said Connection: close: reconnect, no failure
        finally:
            if conn is not None:
                conn.close()


class BackgroundLoad:
    """A LoadGenerator on its own event loop in a daemon thread, for synchronous callers (the
    CLI demo, end-to-end tests driving the real CLI).

    ``start()`` returns once every client is started; ``stats()`` takes a snapshot on the load's
    own loop (never racing the counters); ``stop()`` lets in-flight requests finish and returns
    the final stats. The loop is uvloop's where available: cheaper per request.
    """

    def __init__(self, address: str, **options: Any) -> None:
        self.generator = LoadGenerator(address, **options)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        loop = uvloop.new_event_loop() if uvloop is not None else asyncio.new_event_loop()
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self.generator.__aenter__())
            loop.call_soon(started.set)
            loop.run_forever()
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="hinotori-loadgen", daemon=True)
        self._thread.start()
        started.wait()

    def _call(self, fn: Callable[[], T]) -> T:
        if self._loop is None or self._loop.is_closed():
            return fn()

        async def call() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result()

    def stats(self) -> LoadStats:
        return self._call(self.generator.stats)

    def reset(self) -> None:
        self._call(self.generator.reset)

    def stop(self) -> LoadStats:
        if self._loop is not None and self._thread is not None:
            asyncio.run_coroutine_threadsafe(self.generator.stop(), self._loop).result()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop = self._thread = None
        return self.generator.stats()
