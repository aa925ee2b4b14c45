"""One data-plane worker process: the shared state of the proxy and its life cycle.

The worker owns what every connection reads: the live ``CompiledTable`` (swapped whole on
``apply``), the connection pools by backend address, the counters by host id, and a coarse clock.
Connections hold a reference to the worker, not copies, so a swap is seen by the very next
request.

A one-second sweep keeps timing off the hot path: it advances the clock, answers 408 to clients
whose request head is not whole within ``request_timeout``, closes client connections idle past
``CLIENT_IDLE_TIMEOUT``, answers 504 for backends silent past ``BACKEND_TIMEOUT`` (a request in
the fast lane too), closes pooled connections idle too long, and counts the 2xx latencies the
hot path only appended (``Counters.fold``; a stats read counts them too). No per-request timers.

Life cycle: load the last table from the table file (a restarted worker serves what it served
before), bind the listener (SO_REUSEPORT; see ``listener``), then the control socket, which is the
readiness signal. Each apply rewrites the table file right after its acknowledgement, with the
file system calls in a thread: disk latency never reaches the event loop.

On SIGTERM/SIGINT or the ``shutdown`` op: stop accepting, close idle client connections, let
in-flight requests finish for up to ``DRAIN_TIMEOUT``, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from pathlib import Path
from typing import Any

from hinotori import gcheap
from hinotori.model import RoutingTable
from hinotori.router.base import KEEP_ALIVE_TIMEOUT, REQUEST_TIMEOUT
from hinotori.router.builtin import control
from hinotori.router.builtin.downstream import ClientProtocol
from hinotori.router.builtin.listener import open_listener, parse_address
from hinotori.router.builtin.prepared import Prepared
from hinotori.router.builtin.retention import CounterRetention
from hinotori.router.builtin.table import CompiledTable, Counters, Target, compile_table
from hinotori.router.builtin.tls import Certificates, HttpsClient
from hinotori.router.builtin.upstream import Pool
from hinotori.statefiles import write_private

log = logging.getLogger("hinotori.router")

CLIENT_IDLE_TIMEOUT = KEEP_ALIVE_TIMEOUT  # also: a client silent this long mid-request
BACKEND_TIMEOUT = 60.0      # backend silent this long after the request -> 504
DRAIN_TIMEOUT = 10.0        # graceful shutdown bound for in-flight requests
ERROR_LOG_INTERVAL = 5.0    # at most one log line per backend address per interval
LISTEN_BACKLOG = 2048       # bursts of new connections wait in the kernel, not get refused


class Worker:
    def __init__(self, listen: str, control_path: Path, table_file: Path,
                 loop: asyncio.AbstractEventLoop, *, metrics: bool = True,
                 request_timeout: float = REQUEST_TIMEOUT,
                 preview_listen: str | None = None, tls_listen: str | None = None,
                 tls_certs: Path | None = None, redirect_http: bool = False) -> None:
        self.listen = listen
        self.preview_listen = preview_listen  # a second listener: held releases answer there
        # HTTPS (tls.py): a second listener; the plain one may answer 308 to it.
        self.tls_listen = tls_listen
        self.tls_certs = tls_certs
        self.tls_port = parse_address(tls_listen)[1] if tls_listen else 0
        self.redirect_http = redirect_http and tls_listen is not None
        self.certs: Certificates | None = None
        self.request_timeout = request_timeout
        self.metrics = metrics  # statuses and latency per backend; off only to measure its cost
        self.listen_bytes = listen.encode()
        self.control_path = control_path
        self.table_file = table_file
        self.loop = loop
        self.clock = loop.time()
        self.clients: set[ClientProtocol] = set()
        self.table: CompiledTable | None = None
        self.pools: dict[str, Pool] = {}
        # Pools that left the table with requests still on them (drains): a later table that
        # names their address lost must reach those requests too.
        self.leaving: dict[str, Pool] = {}
        self.counters: dict[str, Counters] = {}
        self.retention = CounterRetention()  # counters of hosts no route names are dropped
        self.stopping = False
        self._stop = asyncio.Event()
        self._error_logged: dict[str, float] = {}
        self._persist_next: dict[str, Any] | bytes | None = None  # applied, not yet in file
        self.prepared = Prepared()  # routes compiled ahead of their switch
        self._writing: asyncio.Future[None] | None = None  # a table file write in progress

    # -- the routing table ---------------------------------------------------------------------

    def apply(self, table: RoutingTable, *, persist: bool = True,
              wire: dict[str, Any] | None = None) -> None:
        """Swap in ``table`` (ValueError if invalid; then nothing changes).

        ``wire`` is the table as it arrived (saves re-serialising it for the table file).
        """
        compiled = compile_table(table, self._pool_for, self._counters_for)
        self.prepared.serving(())
        self.install(compiled, (wire if wire is not None else table.to_dict()) if persist
                     else None)

    def install(self, compiled: CompiledTable, persist: dict[str, Any] | bytes | None) -> None:
        """Swap in a compiled table (``apply``, or a switch to prepared routes: control.py);
        ``persist``: what the table file is to hold (its JSON form, or the bytes)."""
        table = compiled.table
        old_pools = self.pools
        self.table = compiled  # the swap: the next request sees the new table
        self.pools = compiled.pools
        leaving = self.leaving
        for address, pool in old_pools.items():
            if address not in compiled.pools:
                pool.retire()  # in-flight requests finish; idle connections close now
                if pool.conns:
                    leaving[address] = pool
        for address in table.lost:  # nothing will answer there: re-send what may be re-sent
            pool = old_pools.get(address)
            if pool is not None:
                pool.fail_all()
            pool = leaving.pop(address, None)
            if pool is not None:
                pool.fail_all()
        log.info("table v%d applied (%d routes, %d backend addresses)",
                 table.version, len(table.routes), len(compiled.pools))
        if persist is not None:
            self._persist_next = persist
            self.loop.call_soon(self.flush_table_file)  # if the caller does not flush first

    def _pool_for(self, address: str) -> Pool:
        pool = self.pools.get(address)
        return pool if pool is not None else Pool(address)

    def _counters_for(self, host_id: str) -> Counters:
        c = self.counters.get(host_id)
        if c is None:
            c = self.counters[host_id] = Counters()
        return c

    def table_dict(self) -> dict[str, Any] | None:
        return self.table.table.to_dict() if self.table is not None else None

    def stats(self) -> dict[str, dict[str, object]]:
        return {host_id: c.to_dict() for host_id, c in self.counters.items()}

    def describe(self) -> dict[str, Any]:
        version = self.table.table.version if self.table is not None else None
        return {"pid": os.getpid(), "version": version, "listen": self.listen,
                "preview_listen": self.preview_listen,
                "tls_listen": self.tls_listen, "redirect_http": self.redirect_http,
                "certs": self.certs.describe() if self.certs is not None else [],
                "gc": gcheap.describe()}

    def reload_certs(self) -> list[dict[str, Any]]:
        """Serve the certificate files as they are now (CertificateError: nothing changed)."""
        if self.certs is None:
            return []
        return [c.view() for c in self.certs.load()]

    def report_backend_error(self, target: Target, why: str) -> None:
        now = self.loop.time()
        if now - self._error_logged.get(target.address, -ERROR_LOG_INTERVAL) >= ERROR_LOG_INTERVAL:
            self._error_logged[target.address] = now
            log.warning("backend %s (%s): %s", target.host_id, target.address, why)

    # -- the table file ------------------------------------------------------------------------

    def _load_table_file(self) -> None:
        try:
            text = self.table_file.read_text()
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("cannot read table file %s: %s; starting without a table",
                        self.table_file, exc)
            return
        try:
            self.apply(RoutingTable.from_dict(json.loads(text)), persist=False)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("ignoring unreadable table file %s: %r", self.table_file, exc)

    def flush_table_file(self) -> None:
        """Start writing the table of the last apply to the table file (coalesced).

        The control server calls this right after sending the apply's acknowledgement, so the
        controller never waits for the disk. The JSON is made here (one C call); only the file
        system calls run in a thread: they release the GIL and run next to no Python, so the
        thread cannot hold the GIL for a whole switch interval (5 ms) and stall requests right
        after a switch, as it did when it serialised the table itself. A write in progress is
        followed by one more with the newest table, never by a queue of stale ones.
        """
        if self._persist_next is None or self._writing is not None:
            return  # nothing new, or the running write's callback will come back here
        data = self._persist_next
        if not isinstance(data, bytes):
            data = json.dumps(data).encode()
        self._persist_next = None
        self._writing = self.loop.run_in_executor(None, write_table_file, self.table_file, data,
                                                  self.control_path.stem)
        self._writing.add_done_callback(self._written)

    def _written(self, fut: asyncio.Future[None]) -> None:
        self._writing = None
        exc = fut.exception()
        if exc is not None:
            log.error("cannot write table file %s: %s", self.table_file, exc)
        self.flush_table_file()

    async def _finish_table_file(self) -> None:
        """On stop: wait for the table file to hold the last applied table."""
        self.flush_table_file()
        while self._writing is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._writing)
            await asyncio.sleep(0)  # let _written run (it may start the final write)

    # -- life cycle ----------------------------------------------------------------------------

    def request_stop(self) -> None:
        self._stop.set()

    def _sibling_serves(self, key: str = "listen") -> bool:
        """Does a sibling worker (a control socket next to ours) serve our listen address (or,
        ``key="preview_listen"``/``"tls_listen"``, our preview or HTTPS address)?"""
        for sock in self.control_path.parent.glob("*.sock"):
            if sock != self.control_path:
                info = control.ping_sync(sock)
                if info is not None and info.get(key) == getattr(self, key):
                    return True
        return False

    async def run(self) -> int:
        if self.control_path.exists() and control.ping_sync(self.control_path) is not None:
            raise control.ControlSocketBusy(
                f"a router worker already answers on {self.control_path}")
        self._load_table_file()
        sock = open_listener(self.listen, self._sibling_serves, backlog=LISTEN_BACKLOG)
        # create_server listens again with its own backlog (default 100): pass ours.
        server = await self.loop.create_server(lambda: ClientProtocol(self), sock=sock,
                                               backlog=LISTEN_BACKLOG)
        servers = [server]
        if self.preview_listen:
            psock = open_listener(self.preview_listen,
                                  lambda: self._sibling_serves("preview_listen"),
                                  backlog=LISTEN_BACKLOG)
            servers.append(await self.loop.create_server(
                lambda: ClientProtocol(self, preview=True), sock=psock, backlog=LISTEN_BACKLOG))
        if self.tls_listen is not None and self.tls_certs is not None:
            self.certs = Certificates(self.tls_certs)  # bad files: the worker does not start
            tls_sock = open_listener(self.tls_listen, lambda: self._sibling_serves("tls_listen"),
                                     backlog=LISTEN_BACKLOG)
            servers.append(await self.loop.create_server(
                lambda: HttpsClient(self), sock=tls_sock, backlog=LISTEN_BACKLOG,
                ssl=self.certs.front, ssl_handshake_timeout=self.request_timeout))
        # What start-up made (modules, the table file's table) is never scanned again: the
        # collector's full collections stay short (gcheap). Before the control socket, which
        # is the readiness signal.
        gcheap.settle()
        ctl = await control.start_server(self, self.control_path)
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.request_stop)
        sweeper = self.loop.create_task(self._sweep())
        version = self.table.table.version if self.table is not None else None
        log.info("worker pid %d serving %s (table v%s)", os.getpid(), self.listen, version)
        try:
            await self._stop.wait()
            log.info("stopping: draining %d client connections", len(self.clients))
            await self._drain(*servers)
        finally:
            sweeper.cancel()
            ctl.close()
            with contextlib.suppress(OSError):
                self.control_path.unlink()
            await self._finish_table_file()
        log.info("worker pid %d stopped", os.getpid())
        return 0

    async def _drain(self, *servers: asyncio.AbstractServer) -> None:
        self.stopping = True
        for server in servers:
            server.close()
        for client in list(self.clients):
            client.shutdown()
        deadline = self.loop.time() + DRAIN_TIMEOUT
        while self.clients and self.loop.time() < deadline:
            await asyncio.sleep(0.02)
        for client in list(self.clients):
            client.abort()
        for pool in self.pools.values():
            pool.retire()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.sweep(self.loop.time())

    def sweep(self, now: float) -> None:
        """The one-second pass (see the module's docstring); ``now`` is the loop's time."""
        self.clock = now
        for pool in self.pools.values():
            pool.sweep()
        for address, pool in list(self.leaving.items()):
            if not pool.conns:
                del self.leaving[address]
        for counters in self.counters.values():
            counters.fold()  # bounds the batch of latencies (read or not)
        self.retention.sweep(now, self.counters, self.table, self.prepared)
        for client in list(self.clients):
            ex = client.current
            if client.up is not None:  # a request in the fast lane (lane.py)
                if now - client.last_active > BACKEND_TIMEOUT:  # sent then
                    client.promote().on_upstream_timeout()
            elif ex is None:
                if client.head_since:  # waiting for a whole head
                    if now - client.head_since > self.request_timeout:
                        client.head_timeout()
                elif client.idle_for(now) > CLIENT_IDLE_TIMEOUT:  # keep-alive wait
                    client.expire()
            elif not ex.request_complete:
                if client.idle_for(now) > CLIENT_IDLE_TIMEOUT:  # stopped mid-request
                    client.expire()
            elif ex.upstream is not None and now - ex.upstream.last_active > BACKEND_TIMEOUT:
                ex.on_upstream_timeout()


def write_table_file(path: Path, data: bytes, writer: str) -> None:
    """Atomically replace ``path`` with ``data``: a temp file in the same directory, renamed.

    No fsync, on purpose: the file is for a worker that crashed or was killed, and the page cache
    outlives any process. fsync would only add power-loss durability (after which the controller
    applies its table again anyway) at the price of a window of up to hundreds of milliseconds
    on a busy disk, in which a killed worker would leave no table at all. ``writer`` (the
    worker's name) keeps workers' temp files apart and bounded in number.
    """
    write_private(path, data, tmp=path.with_name(f".{path.name}.{writer}.tmp"))
