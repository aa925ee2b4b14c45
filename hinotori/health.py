"""Health probes: is a host fit for traffic, and is a serving host still fit?

Three layers, smallest first:

- ``probe(address, check)``: one check, one fresh connection, never raises. An HTTP check sends
  one ``GET check.path`` with ``Connection: close`` and passes iff the status is
  ``check.status``; a check whose ``path`` is None only opens a TCP connection. The whole probe
  (connect, send, read) is bounded by ``check.timeout``.
- ``wait_healthy(address, check, deadline=…, alive=…)``: probes every ``check.interval`` until
  ``check.healthy`` consecutive passes, the deadline, or the host's process is gone (``alive``
  lets a boot fail fast instead of waiting out the deadline against a dead process).
- ``HealthMonitor``: for hosts already serving. Feeds probe results into per-host counters and
  reports *transitions*: a healthy host turns unhealthy after ``check.unhealthy`` consecutive
  failures, and back after ``check.healthy`` consecutive passes. One failed probe is noise; the
  caller acts only when ``observe`` says the state changed.

Probes use a raw asyncio connection and the httptools parser rather than an HTTP client: a
probe is one short request, and a fresh connection closed by us each time can never leak or be
confused with a connection the host closed earlier. That is right for a boot's few probes;
the health monitor of a large fleet probes every serving host every pass, and there a new TCP
connection per probe (connect, accept, close on both sides) is most of the cost. So
``KeepAlive`` (and the monitor's batches, controller/batchprobe.py, which keep its rules)
keeps one HTTP/1.1 connection per address open between probes (hand-written on
the same parser, not an HTTP client: a pooled client costs more Python per request than the
connect it saves, and the probe must keep its exact rules: one request, status match, the
whole exchange under ``check.timeout``). A kept connection the host has closed meanwhile is
retried once on a fresh one, so a stale connection never turns into a failed check; a host
that answers ``Connection: close`` (or HTTP/1.0) simply gets a fresh connection each time.
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, replace

import httptools

from hinotori.model import HealthCheck, ProbeResult

# One health check against one address: ``probe`` below, or a fake in tests.
Prober = Callable[[str, HealthCheck], Awaitable[ProbeResult]]

_SAFE_PATH = re.compile(r"/[!-~]*")  # no space, control or non-ASCII character
MAX_RESPONSE = 64 * 1024  # more than any health answer; a bigger one is cut, not an error


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


class ResponseCallbacks:
    """httptools' response callbacks a probe needs (this one and the controller's batch
    prober): the messages begun, the body up to MAX_RESPONSE, and whether the answer keeps
    the connection. The class using it holds the attributes (slots or not)."""

    __slots__ = ()
    messages: int
    body: bytearray
    complete: bool
    keep_alive: bool
    parser: httptools.HttpResponseParser | None

    def on_message_begin(self) -> None:
        self.messages += 1

    def on_body(self, body: bytes) -> None:
        if len(self.body) < MAX_RESPONSE:
            self.body += body

    def on_message_complete(self) -> None:
        self.complete = True
        if self.parser is not None:
            self.keep_alive = self.parser.should_keep_alive()


class _Exchange(ResponseCallbacks, asyncio.Protocol):
    """One connection, one HTTP exchange at a time, on the loop's callbacks (no streams): a
    probe costs a protocol object, a parser and a future, where streams added a reader, a
    writer, their protocol and a future per read. httptools calls the ``on_*`` methods."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False  # the connection ended (either side)
        self.dirty = False  # bytes arrived while no exchange was waiting: never reuse it
        self.done: asyncio.Future[None] | None = None
        self.parser: httptools.HttpResponseParser | None = None
        self.body = bytearray()
        self.received = 0
        self.messages = 0
        self.complete = False
        self.keep_alive = False  # what the parser said at the message's end

    # -- the exchange ---------------------------------------------------------------------
    def send(self, request: bytes) -> asyncio.Future[None]:
        """Write ``request``; the future is done at the response's end (or the connection's,
        with its error)."""
        assert self.transport is not None
        self.done = asyncio.get_running_loop().create_future()
        self.parser = httptools.HttpResponseParser(self)
        self.body = bytearray()
        self.received = self.messages = 0
        self.complete = self.keep_alive = False
        self.transport.write(request)
        return self.done

    def _finish(self, error: BaseException | None = None) -> None:
        if self.done is not None and not self.done.done():
            if error is None:
                self.done.set_result(None)
            else:
                self.done.set_exception(error)

    # -- asyncio.Protocol -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.done is None or self.done.done() or self.parser is None:
            self.dirty = True  # not an answer to anything we asked
            return
        self.received += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._finish(e)
            return
        if self.complete or self.received >= MAX_RESPONSE:
            self._finish()

    def eof_received(self) -> bool:
        self._finish()
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._finish(exc)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class _Stale(Exception):
    """A kept connection gave no response at all: the host closed it since the last probe."""


@functools.lru_cache(maxsize=4096)
def request_bytes(path: str, address: str, keep: bool) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: {address}\r\n"
            f"Connection: {'keep-alive' if keep else 'close'}\r\n"
            "User-Agent: hinotori-health\r\nAccept: */*\r\n\r\n").encode()


async def _exchange(conn: _Exchange, address: str, check: HealthCheck, *, keep: bool
                    ) -> tuple[ProbeResult, bool]:
    """One request on an open connection: (result, whether the connection can be used again).
    With ``keep``, a connection that ends before any byte of a response raises _Stale."""
    assert check.path is not None
    try:
        await conn.send(request_bytes(check.path, address, keep))
    except (ConnectionResetError, BrokenPipeError):
        if keep and not conn.received:
            raise _Stale() from None
        raise
    parser, conn.parser = conn.parser, None  # no cycle left behind; later bytes are "dirty"
    if keep and not conn.received:
        raise _Stale()
    assert parser is not None
    try:
        status = parser.get_status_code()
    except httptools.HttpParserError:
        status = 0
    # Bytes past the response (a second message begun) are not ours: never reuse such a one.
    reusable = (keep and conn.complete and conn.messages == 1 and conn.keep_alive
                and not conn.closed and not conn.dirty)
    if not status:
        return answered(0, check, b""), False
    return answered(status, check, conn.body), reusable


@functools.lru_cache(maxsize=64)
def _passed(status: int) -> ProbeResult:
    return ProbeResult(True, f"HTTP {status}")  # frozen: one object per status serves all


def answered(status: int, check: HealthCheck, body: bytes | bytearray) -> ProbeResult:
    """What a response with ``status`` (0: none came) and ``body`` says of ``check``."""
    if not status:
        return ProbeResult(False, "connection closed before a response")
    if status == check.status:
        return _passed(status)
    text = bytes(body).decode("utf-8", "replace").strip()[:200]
    return ProbeResult(False, f"HTTP {status}: {text}" if text else f"HTTP {status}")


async def _connect(address: str) -> _Exchange:
    host, port = split_address(address)
    _, conn = await asyncio.get_running_loop().create_connection(_Exchange, host, port)
    return conn


async def _http(address: str, check: HealthCheck) -> ProbeResult:
    conn = await _connect(address)
    try:
        return (await _exchange(conn, address, check, keep=False))[0]
    finally:
        conn.close()


async def _tcp(address: str) -> ProbeResult:
    (await _connect(address)).close()
    return ProbeResult(True, "TCP connect ok")


def refused_path(check: HealthCheck) -> ProbeResult | None:
    if check.path is not None and not _SAFE_PATH.fullmatch(check.path):
        # Defence in depth (the spec refuses these): CR/LF would split the request line.
        return ProbeResult(False, f"refused to send health path {check.path!r}: only '/' and "
                                  "visible ASCII characters may go into a request line")
    return None


async def probe(address: str, check: HealthCheck) -> ProbeResult:
    """Run ``check`` once against ``address`` ("host:port"). Never raises."""
    if (refused := refused_path(check)) is not None:
        return refused
    return await _bounded(check, _tcp(address) if check.path is None else _http(address, check))


async def _bounded(check: HealthCheck, attempt: Awaitable[ProbeResult]) -> ProbeResult:
    """``attempt`` under ``check.timeout``, its failures as results."""
    try:
        async with asyncio.timeout(check.timeout):
            return await attempt
    except TimeoutError:
        return ProbeResult(False, f"timed out after {check.timeout:g}s")
    except (OSError, ValueError, httptools.HttpParserError) as e:
        return failed(e)


def failed(e: BaseException) -> ProbeResult:
    """What an exchange that raised ``e`` says (a refused or reset connection, an answer
    that is not HTTP, any other connection error)."""
    if isinstance(e, ConnectionRefusedError):
        return ProbeResult(False, "connection refused")
    if isinstance(e, ConnectionResetError):
        return ProbeResult(False, "connection reset")
    if isinstance(e, httptools.HttpParserError):
        return ProbeResult(False, f"bad HTTP response: {e}")
    return ProbeResult(False, f"connection error: {e}")


class KeepAlive:
    """A Prober that keeps one HTTP/1.1 connection per address open between probes (see the
    module docstring). ``keep_only(addresses)`` closes the connections to any other address
    (hosts that left service: nothing of ours may hold them open while they drain);
    ``close()`` closes them all. A TCP check has nothing to keep: it connects each time."""

    def __init__(self) -> None:
        self._conns: dict[str, _Exchange] = {}

    def __len__(self) -> int:
        return len(self._conns)

    async def __call__(self, address: str, check: HealthCheck) -> ProbeResult:
        if check.path is None or refused_path(check) is not None:
            return await probe(address, check)
        return await _bounded(check, self._http(address, check))

    async def _http(self, address: str, check: HealthCheck) -> ProbeResult:
        kept = self._conns.pop(address, None)
        if kept is not None:
            if kept.closed or kept.dirty:
                kept.close()  # closed by the host since the last probe: known without asking
            else:
                try:
                    return await self._on(kept, address, check)
                except (_Stale, OSError):
                    pass  # closed by the host as we asked: a fresh connection decides
        try:
            return await self._on(await _connect(address), address, check)
        except _Stale:
            return answered(0, check, b"")

    async def _on(self, conn: _Exchange, address: str, check: HealthCheck) -> ProbeResult:
        reusable = False
        try:
            result, reusable = await _exchange(conn, address, check, keep=True)
            return result
        finally:
            if reusable:
                self._conns[address] = conn
            else:
                conn.close()

    def keep_only(self, addresses: Collection[str]) -> None:
        for address in [a for a in self._conns if a not in addresses]:
            self._conns.pop(address).close()

    def close(self) -> None:
        self.keep_only(())


async def wait_healthy(address: str, check: HealthCheck, *, deadline: float,
                       alive: Callable[[], Awaitable[bool]] | None = None,
                       prober: Prober | None = None) -> ProbeResult:
    """Probe until ``check.healthy`` consecutive passes (the passing result is returned), the
    ``deadline`` (seconds from now) passes (the last failure, prefixed "not healthy after Xs: "),
    or ``alive()`` turns False (ProbeResult(False, "process exited"))."""
    end = time.monotonic() + deadline
    passes, last = 0, None
    while True:
        if alive is not None and not await alive():
            return ProbeResult(False, "process exited")
        left = end - time.monotonic()
        # Never let one probe overshoot the deadline by a whole timeout.
        result = await (prober or probe)(
            address, replace(check, timeout=max(0.05, min(check.timeout, left))))
        if result.ok:
            passes += 1
            if passes >= check.healthy:
                return result
        else:
            passes, last = 0, result
        left = end - time.monotonic()
        if left <= 0:
            why = last.detail if last else (
                f"only {passes} of {check.healthy} consecutive checks passed")
            return ProbeResult(False, f"not healthy after {deadline:g}s: {why}")
        await asyncio.sleep(min(check.interval, left))


@dataclass
class HostHealth:
    """What the monitor knows of one host."""

    healthy: bool = True  # hosts are watched once they passed wait_healthy
    failures: int = 0  # consecutive
    passes: int = 0  # consecutive
    last: ProbeResult | None = None


class HealthMonitor:
    """Per-host failure counting for serving hosts; reports only state transitions.

    ``record(host_id, result, check)`` is the pure core (no I/O, easy to test and to feed from
    elsewhere, e.g. router error counts turned into results); ``observe`` probes and records;
    ``observe_all`` probes many hosts concurrently. Each returns whether the state flipped, so
    the caller acts once per transition rather than on every probe. ``forget`` a host once it
    leaves service, or the monitor keeps its counters forever.
    """

    def __init__(self) -> None:
        self._hosts: dict[str, HostHealth] = {}

    def status(self, host_id: str) -> HostHealth:
        return self._hosts.setdefault(host_id, HostHealth())

    def healthy(self, host_id: str) -> bool:
        return self.status(host_id).healthy

    def forget(self, host_id: str) -> None:
        self._hosts.pop(host_id, None)

    def record(self, host_id: str, result: ProbeResult, check: HealthCheck) -> bool:
        """Count one result; True if the host just turned unhealthy or healthy again."""
        h = self.status(host_id)
        h.last = result
        if result.ok:
            h.passes, h.failures = h.passes + 1, 0
            if not h.healthy and h.passes >= check.healthy:
                h.healthy = True
                return True
        else:
            h.passes, h.failures = 0, h.failures + 1
            if h.healthy and h.failures >= check.unhealthy:
                h.healthy = False
                return True
        return False

    async def observe(self, host_id: str, address: str, check: HealthCheck) -> bool:
        """Probe the host once and record the result; True if its state changed."""
        return self.record(host_id, await probe(address, check), check)

    async def observe_all(self, targets: Mapping[str, tuple[str, HealthCheck]]) -> dict[str, bool]:
        """Probe every ``host_id -> (address, check)`` at once; returns ``host_id -> healthy``
        for the hosts whose state changed."""
        ids = list(targets)
        changed = await asyncio.gather(*(self.observe(i, *targets[i]) for i in ids))
        return {i: self._hosts[i].healthy for i, c in zip(ids, changed, strict=True) if c}
