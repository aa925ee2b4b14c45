"""``HaproxyRouter``: HAProxy as the data plane, driven through its Runtime API.

``apply(table)`` plans the table (config.py), then either

* the shape is unchanged (the usual case: a deployment, a switch, a canary step, a drain): it
  converges the running worker to the plan with Runtime API commands, in an order that never
  leaves a request without a server: new servers added and made ready, release maps updated,
  weights set, and only then the servers that left put in maintenance (no new requests; those
  in flight finish), deleted once idle by a later ``stats()``. Only what changed is sent
  (converge.py diffs against what this object's last apply left, down one kept-open CLI
  connection), and the files are written after the switch; a blue-green switch is one entry
  of the live map (config.py). No reload: the worker's pid and uptime do not change. Or
* the shape changed (a new service, new Host/path rules, more release slots): it writes the
  new cfg and map files, reloads seamlessly through the master, and converges the new worker.

Backends the table names ``lost`` (their machine is seen down) are not drained: their servers go
into maintenance and the sessions established to them are shut down at once (``show sess``,
``shutdown session``), so HAProxy answers those requests now rather than at the server timeout:
with ``retry_unanswered`` an idempotent one is re-sent to another server (``retry-on
empty-response`` covers a killed session), otherwise, and for the rest, 502. A session still
connecting is left alone: killing it closes a keep-alive client connection unanswered, while
its 1 s connect timeout redispatches it. Not done in a worker a reload replaced (it refuses
server commands: "Proxy is disabled"): its sessions end at the server timeout or
hard-stop-after.

Either way it returns once HAProxy acknowledged every command. Dynamic servers (``add server``,
HAProxy >= 2.4), not ``server-template`` slots: no cap on hosts per backend, and a server's name
says its host and release (stats and the sticky cookie need it; a slot changes identity).

State kept in ``state_dir``: haproxy.cfg and haproxy-maps/ (always the last applied table, so a
reload or a fresh start serves it), haproxy-state.json (the table, the release slots, and the
counters of retired workers and deleted servers), haproxy.pid, the two sockets, haproxy.log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

from hinotori.errors import RouterError
from hinotori.model import LATENCY_LOG_RATE, BackendStats, RoutingTable
from hinotori.router import sched
from hinotori.router.base import RouterContext
from hinotori.router.haproxy import config, converge, plans, retired, runtime
from hinotori.router.haproxy import tls as tls_files
from hinotori.router.haproxy.cli import Cli
from hinotori.router.haproxy.files import Files, flush, signature, write_sample
from hinotori.router.haproxy.plans import Entry, PlanCache, state_text, table_text
from hinotori.router.haproxy.process import Supervisor, find_binary
from hinotori.router.haproxy.stats import (
    Counts,
    LatencyLog,
    by_host,
    combine,
    parse_servers,
    set_sample,
)
from hinotori.router.tls import CertPair, load_all, pairs_of
from hinotori.statefiles import private_dir
from hinotori.statefiles import socket_dir as private_socket_dir

_SOCKET_PATH_MAX = 90  # HAProxy allows 97 bytes; it binds "<path>.<pid>.tmp" first


class HaproxyRouter:
    """HAProxy (master-worker, Runtime API) as the ``Router`` protocol."""

    kind = "haproxy"

    @classmethod
    def create(cls, ctx: RouterContext) -> HaproxyRouter:
        """From the spec's [router] table (how router/registry.py builds it)."""
        r = ctx.settings
        return cls(ctx.router_dir, r.listen, workers=r.workers, haproxy=r.haproxy,
                   maxconn=r.maxconn, latency_log_rate=r.latency_log_rate,
                   retry_unanswered=r.retry_unanswered,
                   preview_listen=getattr(r, "preview_listen", None),
                   tls_listen=getattr(r, "tls_listen", None),
                   certs=pairs_of(r, ctx.root), redirect_http=getattr(r, "redirect_http", False))

    def __init__(self, state_dir: Path, listen: str, workers: int = 1, *,
                 haproxy: str = "haproxy", maxconn: int = 4096, latency_log: bool = True,
                 latency_log_rate: int = LATENCY_LOG_RATE, hard_stop_after: float = 60.0,
                 retry_unanswered: bool = False,
                 request_timeout: float = config.REQUEST_TIMEOUT,
                 preview_listen: str | None = None, tls_listen: str | None = None,
                 certs: list[CertPair] | None = None, redirect_http: bool = False) -> None:
        self.state_dir = Path(state_dir).absolute()
        host, sep, port = listen.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise RouterError(f"router listen must be host:port, got {listen!r}",
                              hint="fix [router] listen in hinotori.toml")
        self.listen = listen
        self.haproxy = haproxy
        sock_dir = socket_dir(self.state_dir)
        sockets = {name: sock_dir / name for name in ("haproxy.sock", "haproxy-master.sock")}
        self.cfg = self.state_dir / "haproxy.cfg"
        self.state_file = self.state_dir / "haproxy-state.json"
        self.certs_dir = self.state_dir / "haproxy-certs"  # TLS: crt-list and PEM files
        self.settings = config.Settings(
            listen=listen, stats_socket=sockets["haproxy.sock"],
            maps_dir=self.state_dir / "haproxy-maps", threads=workers, maxconn=maxconn,
            latency_log=latency_log, hard_stop_after=hard_stop_after,
            retry_unanswered=retry_unanswered, request_timeout=request_timeout,
            preview_listen=preview_listen,
            tls_listen=tls_listen, certs_dir=self.certs_dir,
            redirect_port=int(tls_listen.rpartition(":")[2]) if tls_listen and redirect_http
            else None)
        self.certs = list(certs or [])  # TLS: the (cert, key) pairs, the default first
        self.log_map = config.sample_file(self.settings)  # the latency map: N
        self.log = LatencyLog(sockets["haproxy.sock"], config.LATENCY_RING, sample_map=self.log_map,
                              max_rate=latency_log_rate, set_sample=self._set_sample) \
            if latency_log else None
        self.supervisor: Supervisor | None = None
        self._master_socket = sockets["haproxy-master.sock"]
        self._locks: dict[int, asyncio.Lock] = {}
        # What HAProxy holds after this object's last apply (converge.py), trusted only while
        # the state file is as this object last wrote it (another router object on the same
        # HAProxy saves it too: a sweep, an apply, a reload); else read back in full.
        self._held: converge.Held | None = None
        self._saved: tuple[int, int, int] | None = None
        self._state: dict[str, Any] | None = None  # what _save last wrote
        self._files = Files(self.settings, self.cfg, self.state_file)  # written in a thread
        self._plans = PlanCache()
        self._table_json: tuple[object, str] | None = None  # (state["table"], its JSON text)
        self._cli = Cli(self.stats_socket)  # kept open for switches; dropped with _held

    def __repr__(self) -> str:
        return f"HaproxyRouter({str(self.state_dir)!r}, {self.listen!r})"

    @property
    def stats_socket(self) -> Path:
        return self.settings.stats_socket

    def _lock(self) -> asyncio.Lock:
        """One lock per event loop (a router object may be driven from several asyncio.run)."""
        loop = id(asyncio.get_running_loop())
        return self._locks.setdefault(loop, asyncio.Lock())

    def _sup(self) -> Supervisor:
        if self.supervisor is None:
            self.supervisor = Supervisor(
                find_binary(self.haproxy), self.cfg, self._master_socket, self.stats_socket,
                self.state_dir / "haproxy.pid", self.state_dir / "haproxy.log")
        return self.supervisor

    # -- saved state ---------------------------------------------------------------------------

    def _load(self) -> dict[str, Any]:
        if self._state is not None and (self._files.mine() or self._trusted()):
            return dict(self._state)  # as saved (callers replace keys, never edit values)
        try:
            return json.loads(self.state_file.read_text())  # type: ignore[no-any-return]
        except (OSError, ValueError):
            return {}

    def _save(self, state: dict[str, Any], files: Entry | None = None) -> None:
        """Write the state file (and the map files and cfg of ``files``, after a switch) in
        the files' thread (files.py): the switch never waits for the disk."""
        table, known = state.get("table"), self._table_json
        text = state_text(state, known[1] if known is not None and known[0] is table else
                          plans.json_of(table))
        self._state = dict(state)
        if files is None:
            self._files.write_later(text)
        else:
            self._files.write_later(text, files.plan, self._plans.cfg(files, self._render))

    async def _settle(self) -> None:
        """Wait for this object's writes (what a reload, a start or a reader needs)."""
        saved = await self._files.settle()
        if saved is not None:
            self._saved = saved

    def _trusted(self) -> bool:
        """Is the state file as this object last wrote it?"""
        saved = self._files.finished()
        if saved is not None:
            self._saved = saved
        return self._saved is not None and self._saved == signature(self.state_file)

    def _forget_if_changed(self) -> None:
        """Drop what this object remembers of HAProxy and its files if another object saved
        the state since this one did (it may have applied, swept or reloaded)."""
        if not (self._files.mine() or self._trusted()):
            self._held = None
            self._files.forget()
            self._cli.close()  # HAProxy may have been reloaded: talk to the current worker

    def _render(self, plan: config.Plan) -> str:
        return config.render(self.settings, plan, loaded=True)

    def _plan(self, table: RoutingTable, state: dict[str, Any]) -> Entry:
        try:
            return self._plans.get(table, plans.slots_of(state), plans.shapes_of(state))
        except ValueError as exc:
            raise RouterError(f"routing table v{table.version} refused: {exc}") from None

    # -- Router protocol -----------------------------------------------------------------------

    async def start(self) -> None:
        """Adopt the HAProxy running from ``state_dir`` if it answers; else start it with the
        last applied table. Idempotent."""
        private_dir(self.state_dir)
        sup = self._sup()
        certs = load_all(self.certs) if self.settings.tls_listen else []  # a bad file: named
        async with self._lock():
            await flush()  # another object's last switch: its state file is written
            await self._settle()
            self._held = None  # read back on the first apply, whoever ran HAProxy meanwhile
            self._cli.close()
            self._files.forget()
            state = self._load()
            served = len(tls_files.on_disk(self.certs_dir))
            renewed = tls_files.write(self.certs_dir, certs) if certs else []
            table = plans.table_of(state)
            plan = config.plan(table or RoutingTable(0), plans.slots_of(state),
                               plans.shapes_of(state))
            adopt = await sup.adoptable()
            changed = self._files.write_now(plan, config.render(
                self.settings, plan, loaded=table is not None), fresh=not adopt)
            if adopt:
                if changed or (renewed and served != len(certs)):  # settings changed since
                    await self._reload(state)
                    self._save(state)
                elif renewed:  # certificates renewed while no controller watched
                    await tls_files.replace(self.stats_socket, self.certs_dir, certs, renewed)
            else:
                await sup.stop()  # a half-dead master (no answering worker) must not linger
                await sup.spawn()
                state["base"] = {}  # a fresh HAProxy counts from zero
                state["shapes"] = [vars(s) for s in plan.shapes]
                self._save(state)
            await self._settle()
            with contextlib.suppress(RouterError):  # router/sched.py; a reload's worker inherits
                sched.hint(*filter(None, [sup.master_pid(), *(await sup.workers())[0]]))
        if self.log is not None:
            await self.log.attach()

    async def apply(self, table: RoutingTable) -> None:
        """Serve ``table``: Runtime API commands only, unless its shape changed (then one
        seamless reload). Returns once HAProxy acknowledged it all."""
        async with self._lock():
            self._forget_if_changed()
            state = self._load()
            entry = self._plan(table, state)
            plan = entry.plan
            reshaped = plan.shapes != plans.shapes_of(state)
            if reshaped:  # the new worker must load the new cfg and maps
                await self._settle()  # the last switch's writes first
                self._files.write_now(plan, self._plans.cfg(entry, self._render))
                state["shapes"] = [vars(s) for s in plan.shapes]
                await self._reload(state)
            await self._converge(plan)
            state["table"] = table  # not its dict: 1,000 new dicts per switch lived on (gcheap)
            self._table_json = (table, table_text(table, entry))
            state["slots"] = {svc: {str(r): s for r, s in m.items()}
                              for svc, m in plan.slots.items()}
            # After the switch: the files are for a reload or a restart (a reshaped one
            # wrote them before its reload).
            self._save(state, None if reshaped else entry)

    async def prepare(self, table: RoutingTable) -> None:
        """Ready the servers ``table`` will send requests to, where no request goes yet (the
        new release's slot backend, converge.ahead), so that applying it is a few map
        entries. Nothing is served differently until then; a table whose shape differs (a
        reload's business) is left to ``apply``."""
        async with self._lock():
            self._forget_if_changed()
            state = self._load()
            plan = self._plan(table, state).plan
            if plan.shapes != plans.shapes_of(state):
                return
            held = self._held
            if held is None:
                held = await self._read_held(list(self._files.targets(plan)))
            changes, after = converge.ahead(plan, held)
            self._held = None  # until HAProxy acknowledged every command
            runtime.check(changes.commands, await self._cli.run(changes.commands))
            self._held = after
            # What another router object remembers of HAProxy is stale now.
            self._save(state)

    async def reload_certs(self) -> list[dict[str, Any]]:
        """Serve the certificate files as they are now: changed ones replaced through the
        Runtime API (no reload; new handshakes get them, established connections keep theirs),
        a changed count through a seamless reload. A bad file raises CertificateError and
        changes nothing."""
        if not self.settings.tls_listen:
            return []
        certs = load_all(self.certs)
        d = self.certs_dir
        async with self._lock():
            await self._settle()
            served = len(tls_files.on_disk(d))
            renewed = tls_files.write(d, certs)
            if renewed and served != len(certs):
                state = self._load()
                await self._reload(state)
                self._save(state)
            elif renewed:
                await tls_files.replace(self.stats_socket, d, certs, renewed)
        return [c.view() for c in certs]

    async def current(self) -> RoutingTable | None:
        if not await self._sup().adoptable():
            raise RouterError(f"HAProxy is not running from {self.state_dir}",
                              hint="start the router (the controller does it on start)")
        await flush()  # any object's switch in this process: its state file is written
        await self._settle()
        return plans.table_of(self._load())

    async def stats(self) -> dict[str, BackendStats]:
        if self.log is not None:
            await self.log.attach()  # and count every line logged until now
        async with self._lock():
            state = self._load()
            servers = await self._server_counts()
            servers = await self._sweep(servers, state)
            counts = by_host(servers)
            for host, d in (state.get("base") or {}).items():
                counts.setdefault(host, Counts()).add(Counts.from_dict(d), active=False)
            for host, active in (await self._old_workers_active()).items():
                counts.setdefault(host, Counts()).active += active
        return combine(counts, self.log)

    def disconnect(self) -> None:
        """Let go of the kept Runtime API connection, HAProxy running on (cli.py)."""
        self._cli.close()

    async def stop(self) -> None:
        self._cli.close()
        async with self._lock():
            await self._settle()
        try:
            if self.log is not None:
                self.log.close()
        finally:
            await self._sup().stop()
            sock_dir = self.stats_socket.parent
            if sock_dir != self.state_dir:  # the private /tmp one: gone with its sockets
                with contextlib.suppress(OSError):
                    sock_dir.rmdir()

    # -- runtime state -------------------------------------------------------------------------

    async def _set_sample(self, n: int) -> None:
        """Log 1 request in ``n`` from now on (stats.set_sample: no reload); the map file
        follows HAProxy (a reload keeps it), never leads it."""
        await set_sample(self.stats_socket, self.log_map, n, config.mark_socket(self.settings))
        write_sample(self.settings, n)

    async def _server_counts(self) -> dict[tuple[str, str], Counts]:
        (text,) = await runtime.run(self.stats_socket, ["show stat"])
        return parse_servers(text)

    async def _reload(self, state: dict[str, Any]) -> None:
        """Seamless reload; the old worker's counters become part of the base first."""
        try:
            servers = await self._server_counts()
        except RouterError:
            servers = {}
        state["base"] = retired.added(state.get("base"), by_host(servers), gone_at=None)
        self._save(state)  # before the reload: a crash after it must not count twice
        if self.log is not None:  # the old worker's ring: the next dump is the new one's
            await self.log.poll()
        await self._settle()
        self._held = None
        self._cli.close()  # the old worker would keep answering on it
        await self._sup().reload()

    async def _read_held(self, files: list[Path]) -> converge.Held:
        """What HAProxy holds: every server, and the entries of ``files`` (one round trip)."""
        state, *maps = await runtime.run(self.stats_socket, [
            "show servers state", *(f"show map {f}" for f in files)])
        return converge.Held(converge.parse_servers_state(state),
                             {f: converge.parse_map(m) for f, m in zip(files, maps, strict=True)})

    async def _converge(self, plan: config.Plan) -> None:
        """Make HAProxy serve ``plan``: the commands from what it holds (this object's last
        apply, or read back) to the plan, in one round trip."""
        maps = self._files.targets(plan)
        held = self._held
        for attempt in (1, 2):
            if held is None:
                held = await self._read_held(list(maps))
            changes, after = converge.diff(plan, maps, held)
            self._held = None  # until HAProxy acknowledged every command
            try:
                runtime.check(changes.commands, await self._cli.run(changes.commands))
            except RouterError:
                if attempt == 2:
                    raise
                held = None  # HAProxy did not hold what we thought: read it, converge again
                continue
            self._held = after
            break
        if changes.lost:
            (sessions,) = await runtime.run(self.stats_socket, ["show sess"])
            await runtime.run(self.stats_socket, [  # one may have ended since: answers vary
                f"shutdown session {s}"
                for s in runtime.established_sessions(sessions, changes.lost)])

    async def _sweep(self, servers: dict[tuple[str, str], Counts],
                     state: dict[str, Any]) -> dict[tuple[str, str], Counts]:
        """Delete idle servers in maintenance (their counters join the base). Returns the
        servers still there. A server that still has connections stays for the next sweep."""
        (text,) = await runtime.run(self.stats_socket, ["show servers state"])
        actual = converge.parse_servers_state(text)
        idle = [(be, name) for be, rows in actual.items() if be != config.LIVE_FLAGS for name, row
                in rows.items() if row.maint and servers.get((be, name), Counts()).active == 0]
        kept, deleted = dict(servers), dict[tuple[str, str], Counts]()
        if idle:
            answers = await runtime.run(self.stats_socket, [f"del server {s}" for s in map(
                "/".join, idle)])
            for key, answer in zip(idle, answers, strict=True):
                if answer.strip() == "Server deleted.":
                    deleted[key] = kept.pop(key, None) or Counts()
                    if self._held is not None:
                        self._held.servers.get(key[0], {}).pop(key[1], None)
        base = retired.updated(state.get("base"), by_host(deleted), time.time(), lambda: {
            config.host_of(name) for rows in actual.values() for name in rows})
        if base is not None:
            state["base"] = base
            self._save(state)
        return kept

    async def _old_workers_active(self) -> dict[str, int]:
        """Requests still in flight in workers a reload replaced (they finish them)."""
        try:
            _, old = await self._sup().workers()
        except RouterError:
            return {}
        out: dict[str, int] = {}
        for pid in old:
            with contextlib.suppress(RouterError):
                text = await runtime.master(self._master_socket, f"@!{pid} show stat", 2.0)
                for host, c in by_host(parse_servers(text)).items():
                    if c.active:
                        out[host] = out.get(host, 0) + c.active
        return out


def socket_dir(state_dir: Path) -> Path:
    """Where HAProxy's sockets go (see router/sockets.py)."""
    return private_socket_dir(state_dir, "haproxy-master.sock", _SOCKET_PATH_MAX)
