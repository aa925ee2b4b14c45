"""The health monitor's probes, a slice of hosts at a time (``BatchProber.look``).

The monitor looks at a few dozen hosts together (healing.py's slices). Probed one by one through
asyncio (``health.KeepAlive``), each look cost a task, several coroutines, a timeout's timer, a
transport with its futures and a new TCP connection's bookkeeping: ~100-150 us of CPU, more
than the kernel's part. Here a slice is one batch on plain non-blocking sockets, watched by an
epoll of the prober's own that the event loop watches as a single reader:

- one wakeup serves every reply ready by then, one timer bounds the whole batch;
- a socket is registered once, edge-triggered (connected, readable, closed) for its whole life,
  and a kept-alive connection stays registered between looks: a look on it is a send and a recv;
- kept connections let go together (``keep_only``: a deploy's switch takes a thousand hosts out
  of service) are closed a few at a time, spread over a moment, not all in one callback;
- the rules are ``health.KeepAlive``'s: one ``GET check.path``, a pass iff the status is
  ``check.status``, the whole exchange (a retry included) under ``check.timeout``; a kept
  connection that ends before any byte of a response is asked again on a fresh one; only a
  connection whose answer was exactly one whole keep-alive response is kept; bytes arriving on
  an idle kept connection close it.

Addresses that are not IP literals (a name needs a resolver) go through ``health.KeepAlive``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import functools
import ipaddress
import os
import select
import socket
import struct
from _socket import socket as _socket
from collections.abc import Collection, Sequence

import httptools

from hinotori.health import (
    MAX_RESPONSE,
    KeepAlive,
    ResponseCallbacks,
    answered,
    failed,
    refused_path,
    request_bytes,
    split_address,
)
from hinotori.model import HealthCheck, ProbeResult

_WATCH = select.EPOLLIN | select.EPOLLOUT | select.EPOLLRDHUP | select.EPOLLET
_CONNECTED = select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP
_READABLE = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLERR | select.EPOLLHUP
_ANSWER = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET
_RECV = 65536  # a shorter read drained the socket: nothing of a second message is left behind
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset (see _close)
# Kept connections let go, closed LET_GO_AT_ONCE every LET_GO_EVERY seconds. A close with a
# FIN costs ~60 us here (its trip through the loopback) and wakes the host to close its end;
# a blue-green switch of 1,000 keep-alive hosts let go of 1,000 at once, which stopped the
# event loop for 60-70 ms, inside the next rollback's switch. Closed a chunk per turn of the
# loop, the hosts woken together still took the machine's CPUs from it for 30-40 ms. Spread,
# 1,000 take ~160 ms, and a switch meanwhile waits for one chunk at most.
LET_GO_AT_ONCE = 32
LET_GO_EVERY = 0.005


# What httptools found in an answer that came whole in one read, by its bytes: (status,
# whether the connection may be kept, body). Answers bigger than this are parsed each time.
_MEMO_BYTES = 4096
_MEMO_ENTRIES = 256


class _Answers:
    """Answers parsed before, by their exact bytes: a parse is a function of the bytes
    alone (a fresh parser, one feed), so equal bytes mean an equal outcome."""

    __slots__ = ("hits", "known")

    def __init__(self) -> None:
        self.known: dict[bytes, tuple[int, bool, bytes]] = {}
        self.hits = 0

    def remember(self, data: bytes, status: int, keep: bool, body: bytes | bytearray) -> None:
        if len(data) <= _MEMO_BYTES:
            if len(self.known) >= _MEMO_ENTRIES:
                self.known.clear()  # the Date header moves on every second: start afresh
            self.known[data] = (status, keep, bytes(body))


@functools.lru_cache(maxsize=8192)
def _sockaddr(address: str) -> tuple[socket.AddressFamily, tuple[bytes, int]] | None:
    """Where to connect for ``address``, if it is an IP literal (else None). The host as
    bytes: the socket module then skips its IDNA conversion on every connect."""
    try:
        host, port = split_address(address)
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return (socket.AF_INET6 if ip.version == 6 else socket.AF_INET), (host.encode(), port)


class _Batch:
    __slots__ = ("done", "pending", "probes")

    def __init__(self, done: asyncio.Future[None]) -> None:
        self.done = done
        self.pending = 0
        self.probes: list[_Probe] = []


class _Conn:
    """One socket of ours, and the probe waiting on it (None while it is kept idle)."""

    __slots__ = ("address", "connected", "fd", "probe", "round", "sock")

    def __init__(self, sock: _socket, address: str, round_: int) -> None:
        self.sock = sock
        self.round = round_  # the events round it was opened in
        self.fd = sock.fileno()
        self.address = address
        self.connected = False
        self.probe: _Probe | None = None


class _Probe(ResponseCallbacks):
    """One look at one address; httptools calls its ``on_*`` methods."""

    __slots__ = ("address", "batch", "body", "check", "complete", "conn", "fresh", "index",
                 "keep_alive", "messages", "parser", "received", "result", "short")

    def __init__(self, batch: _Batch, index: int, address: str, check: HealthCheck) -> None:
        self.batch, self.index, self.address, self.check = batch, index, address, check
        self.conn: _Conn | None = None
        self.fresh = True  # on a connection opened for it (else a kept one)
        self.parser: httptools.HttpResponseParser | None = None
        self.body = bytearray()
        self.received = self.messages = 0
        self.complete = self.keep_alive = False
        self.short = True  # the last read drained the socket
        self.result: ProbeResult | None = None


class BatchProber:
    """A Prober (``await prober(address, check)``) that also looks at many addresses at once
    (``look``), keeping one connection per address open between looks (see the module
    docstring). ``keep_only`` and ``close`` as ``health.KeepAlive``'s."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ep: select.epoll | None = None
        self._conns: dict[int, _Conn] = {}  # fd -> every socket open (all registered)
        self._kept: dict[str, _Conn] = {}  # address -> its idle kept connection
        self._letting_go: collections.deque[_Conn] = collections.deque()  # to close (keep_only)
        self._let_go_soon: asyncio.TimerHandle | None = None
        # Events of one poll apply only to sockets opened before it: a socket closed while
        # they are handled may give its fd number to a new one, which they are not about.
        self._round = 0
        self._fallback = KeepAlive()
        self._answers = _Answers()

    def __len__(self) -> int:
        return len(self._kept) + len(self._fallback)

    async def __call__(self, address: str, check: HealthCheck) -> ProbeResult:
        return (await self.look([address], check))[0]

    async def look(self, addresses: Sequence[str], check: HealthCheck) -> list[ProbeResult]:
        """One probe of ``check`` against each of ``addresses``, all at once; never raises
        (but for cancellation). Results in the order of ``addresses``."""
        if (refused := refused_path(check)) is not None:
            return [refused] * len(addresses)
        loop = self._ready_loop()
        results: list[ProbeResult | None] = [None] * len(addresses)
        batch = _Batch(loop.create_future())
        named = []
        for i, address in enumerate(addresses):
            if _sockaddr(address) is None:
                named.append(i)
            else:
                probe = _Probe(batch, i, address, check)
                batch.probes.append(probe)
                batch.pending += 1
                self._start(probe)
        if batch.pending:
            timer = loop.call_later(check.timeout, self._expire, batch)
            try:
                await batch.done
            finally:
                timer.cancel()
                self._expire(batch, cancelled=True)  # what is left (cancelled): let it go
        for probe in batch.probes:
            results[probe.index] = probe.result
        if named:
            found = await asyncio.gather(*(self._fallback(addresses[i], check) for i in named))
            for i, result in zip(named, found, strict=True):
                results[i] = result
        return [r or ProbeResult(False, "not probed") for r in results]

    def keep_only(self, addresses: Collection[str]) -> None:
        """Let go of the kept connections to any other address: none is used again from now,
        and they are closed (with a FIN) LET_GO_AT_ONCE at a time, LET_GO_EVERY apart."""
        for address in [a for a in self._kept if a not in addresses]:
            self._letting_go.append(self._kept.pop(address))
        if self._let_go_soon is None:  # (else the closing goes on, at its pace)
            self._let_go()
        self._fallback.keep_only(addresses)

    def _let_go(self) -> None:
        self._let_go_soon = None
        for _ in range(min(LET_GO_AT_ONCE, len(self._letting_go))):
            self._close(self._letting_go.popleft(), graceful=True)
        if self._letting_go:
            if self._loop is None or self._loop.is_closed():
                while self._letting_go:  # no loop to come back on: all of them now
                    self._close(self._letting_go.popleft(), graceful=True)
            else:
                self._let_go_soon = self._loop.call_later(LET_GO_EVERY, self._let_go)

    def close(self) -> None:
        if self._let_go_soon is not None:
            self._let_go_soon.cancel()
            self._let_go_soon = None
        for conn in list(self._conns.values()):  # (those letting go are still among them)
            self._close(conn, graceful=True)
        self._kept.clear()
        self._letting_go.clear()
        self._fallback.close()
        if self._ep is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._ep.fileno())
            self._ep.close()
        self._ep = self._loop = None

    # -- the machinery -------------------------------------------------------------------
    def _ready_loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # first use, or a new event loop: start afresh there
            self.close()
            self._ep = select.epoll()
            loop.add_reader(self._ep.fileno(), self._events)
            self._loop = loop
        return loop

    def _start(self, probe: _Probe) -> None:
        kept = self._kept.pop(probe.address, None)
        if kept is not None:
            probe.fresh = False
            self._send(kept, probe)
        else:
            self._connect(probe)

    def _connect(self, probe: _Probe) -> None:
        probe.fresh = True
        family, where = _sockaddr(probe.address)  # type: ignore[misc]
        try:
            sock = _socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        except OSError as e:
            self._finish(probe, failed(e))
            return
        conn = _Conn(sock, probe.address, self._round)
        conn.probe, probe.conn = probe, conn
        self._conns[conn.fd] = conn
        err = sock.connect_ex(where)
        if err not in (0, errno.EINPROGRESS):
            self._fail(conn, OSError(err, os.strerror(err)))
            return
        # On loopback the handshake is done by now: send at once, and register for the
        # answer alone; else (or a TCP check) wait to be told the connection is up.
        mask = _WATCH
        if probe.check.path is not None and self._send(conn, probe, early=True):
            conn.connected = True
            mask = _ANSWER
        elif conn.probe is not probe:
            return  # the send failed, and _fail has dealt with it
        try:
            self._ep.register(conn.fd, mask)  # type: ignore[union-attr]
        except OSError as e:
            self._fail(conn, e)

    def _events(self) -> None:
        assert self._ep is not None
        self._round += 1
        for fd, ev in self._ep.poll(0):
            conn = self._conns.get(fd)
            if conn is None or conn.round == self._round:
                continue
            if conn.connected:
                if ev & _READABLE:
                    self._readable(conn)
                continue
            if not ev & _CONNECTED:
                continue
            # Connected, or failed: an HTTP check's send says which (it raises the
            # connect's error); a TCP check asks.
            probe = conn.probe
            if probe is not None and probe.check.path is None and \
                    (err := conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)):
                self._fail(conn, OSError(err, os.strerror(err)))
                continue
            conn.connected = True
            if probe is None:
                continue
            if probe.check.path is None:
                self._close(conn)
                self._finish(probe, ProbeResult(True, "TCP connect ok"))
            elif self._send(conn, probe) and ev & _READABLE:
                self._readable(conn)  # edge-triggered: this event is the answer's only one

    def _send(self, conn: _Conn, probe: _Probe, early: bool = False) -> bool:
        """Send the request; False if it failed (dealt with) or, ``early``, the connection
        is not up yet (nothing done)."""
        conn.probe, probe.conn = probe, conn
        request = request_bytes(probe.check.path or "/", probe.address, True)
        try:
            sent = conn.sock.send(request)
        except BlockingIOError as e:  # not connected yet
            if not early:
                self._fail(conn, e)
            return False
        except OSError as e:
            self._fail(conn, e)
            return False
        if sent != len(request):  # ~100 bytes into an empty buffer: never, but not a pass
            self._fail(conn, OSError(errno.EAGAIN, "request not sent whole"))
            return False
        return True

    def _readable(self, conn: _Conn) -> None:
        probe = conn.probe
        sock = conn.sock
        while True:
            try:
                data = sock.recv(_RECV)
            except BlockingIOError:
                return
            except OSError as e:
                self._fail(conn, e)
                return
            if probe is None:  # an idle kept connection spoke or ended: never reuse it
                self._close(conn)
                return
            if not data:
                self._answered(conn, probe, closed=True)
                return
            if not probe.received and probe.parser is None:
                known = self._answers.known.get(data)
                if known is not None:  # these very bytes were parsed before
                    self._answers.hits += 1
                    probe.received = len(data)
                    self._known(conn, probe, *known)
                    return
                probe.parser = httptools.HttpResponseParser(probe)
            probe.received += len(data)
            probe.short = len(data) < _RECV
            try:
                probe.parser.feed_data(data)  # type: ignore[union-attr]
            except httptools.HttpParserError as e:
                self._close(conn)
                self._finish(probe, failed(e))
                return
            if probe.complete or probe.received >= MAX_RESPONSE:
                whole = probe.received == len(data)  # one read held all of it
                status = self._answered(conn, probe, closed=False)
                if whole and status and probe.complete:
                    self._answers.remember(data, status, self._reusable(probe), probe.body)
                return

    def _stale(self, probe: _Probe) -> bool:
        """A kept connection that ended before any byte of an answer: the host closed it
        since the last look, so a fresh connection decides."""
        if probe.fresh or probe.received:
            return False
        self._connect(probe)
        return True

    def _fail(self, conn: _Conn, e: OSError) -> None:
        probe = conn.probe
        self._close(conn)
        if probe is not None and not self._stale(probe):
            self._finish(probe, failed(e))

    @staticmethod
    def _reusable(probe: _Probe) -> bool:
        return probe.complete and probe.messages == 1 and probe.keep_alive and probe.short

    def _answered(self, conn: _Conn, probe: _Probe, *, closed: bool) -> int:
        """The answer has ended; its status (0: none)."""
        parser, probe.parser = probe.parser, None
        if closed and self._stale(probe):
            self._close(conn)
            return 0
        status = 0
        if parser is not None and probe.received:
            with contextlib.suppress(httptools.HttpParserError):
                status = parser.get_status_code()
        self._known(conn, probe, status, not closed and self._reusable(probe), probe.body)
        return status

    def _known(self, conn: _Conn, probe: _Probe, status: int, reusable: bool,
               body: bytes | bytearray) -> None:
        """The answer is ``status`` (and ``body``): keep the connection or close it."""
        if reusable and status:
            conn.probe = None
            if (old := self._kept.pop(probe.address, None)) is not None:
                self._close(old, graceful=True)
            self._kept[probe.address] = conn
        else:
            self._close(conn)
        self._finish(probe, answered(status, probe.check, body))

    def _close(self, conn: _Conn, graceful: bool = False) -> None:
        """Close a socket (which takes it out of the epoll too). Once a look is over (the
        host answered, ended the connection, or failed), with a reset: neither side keeps
        the connection in TIME_WAIT for a minute, and a firewall's conntrack (any machine
        with NAT rules: Docker, Podman) forgets it in 10 s instead of 120 s. A host that
        closes after each answer (busybox httpd), looked at twice a second by a thousand,
        otherwise fills the conntrack table, and the kernel then drops new connections,
        the router's among them. HAProxy's own checks end the same way. ``graceful``: an
        idle kept connection let go (the host may still be serving), a FIN as usual."""
        conn.probe = None
        if self._conns.get(conn.fd) is conn:
            del self._conns[conn.fd]
        if self._kept.get(conn.address) is conn:
            del self._kept[conn.address]
        if not graceful:
            with contextlib.suppress(OSError):
                conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        conn.sock.close()

    def _finish(self, probe: _Probe, result: ProbeResult) -> None:
        if probe.result is not None:
            return
        probe.result, probe.conn = result, None
        batch = probe.batch
        batch.pending -= 1
        if batch.pending == 0 and not batch.done.done():
            batch.done.set_result(None)

    def _expire(self, batch: _Batch, cancelled: bool = False) -> None:
        """The batch's time is up: every probe not answered fails, its connection closed."""
        for probe in batch.probes:
            if probe.result is None:
                if probe.conn is not None and probe.conn.probe is probe:
                    self._close(probe.conn)
                self._finish(probe, ProbeResult(
                    False, "cancelled" if cancelled else
                    f"timed out after {probe.check.timeout:g}s"))
