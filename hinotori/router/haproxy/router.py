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

Either way it returns once HAProxy acknowledged every command. Why dynamic servers (``add
server``/``del server``, HAProxy >= 2.4) rather than pre-provisioned ``server-template`` slots:
no cap on hosts per backend, and each server keeps a name that says which host and release it
is, which the stats and the sticky cookie need; a slot would change identity with every
deployment.

State kept in ``state_dir``: haproxy.cfg and haproxy-maps/ (always the last applied table, so a
reload or a fresh start serves it), haproxy-state.json (the table, the release slots, and the
counters of retired workers and deleted servers), haproxy.pid, the two sockets, haproxy.log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

from hinotori.errors import RouterError
from hinotori.model import LATENCY_LOG_RATE, BackendStats, RoutingTable
from hinotori.router.base import RouterContext
from hinotori.router.haproxy import config, converge, runtime
from hinotori.router.haproxy import tls as tls_files
from hinotori.router.haproxy.cli import Cli
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
from hinotori.statefiles import private_dir, write_private
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
        self.log = LatencyLog(sockets["haproxy.sock"], config.LATENCY_RING,
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
        self._written: dict[Path, str] = {}  # file -> text this object last wrote there
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
        if self._state is not None and self._saved == _signature(self.state_file):
            return dict(self._state)  # as saved (callers replace keys, never edit values)
        try:
            return json.loads(self.state_file.read_text())  # type: ignore[no-any-return]
        except (OSError, ValueError):
            return {}

    def _save(self, state: dict[str, Any]) -> None:
        write_private(self.state_file, json.dumps(state, sort_keys=True),
                      tmp=self.state_file.with_suffix(".tmp"))
        self._saved = _signature(self.state_file)
        self._state = dict(state)

    def _forget_if_changed(self) -> None:
        """Drop what this object remembers of HAProxy and its files if another object saved
        the state since this one did (it may have applied, swept or reloaded)."""
        if self._saved != _signature(self.state_file):
            self._held = None
            self._written.clear()
            self._cli.close()  # HAProxy may have been reloaded: talk to the current worker

    @staticmethod
    def _table(state: dict[str, Any]) -> RoutingTable | None:
        return RoutingTable.from_dict(state["table"]) if state.get("table") else None

    @staticmethod
    def _slots(state: dict[str, Any]) -> dict[str, dict[int, int]]:
        return {svc: {int(r): int(s) for r, s in m.items()}
                for svc, m in (state.get("slots") or {}).items()}

    @staticmethod
    def _shapes(state: dict[str, Any]) -> tuple[config.Shape, ...]:
        return tuple(config.Shape.from_dict(s) for s in state.get("shapes") or ())

    def _write(self, plan: config.Plan, loaded: bool, *, fresh: bool = False) -> bool:
        """Write the map files and haproxy.cfg for ``plan``; True if the cfg text changed.
        ``fresh``: for a new HAProxy, which logs every request until the reader sees traffic."""
        private_dir(self.settings.maps_dir)
        if fresh or not config.sample_current(config.sample_file(self.settings)):
            self._write_sample(1)
        for f, entries in self._map_targets(plan).items():
            self._write_once(f, config.map_text(entries))
        text = config.render(self.settings, plan, loaded=loaded)
        try:
            changed = self.cfg.read_text() != text
        except OSError:
            changed = True
        if changed:
            _write_text(self.cfg, text)
        return changed

    def _write_once(self, path: Path, text: str) -> None:
        """Write ``path`` unless this object last wrote the same text there (a rename is
        slow on some filesystems; most applies change one map file, if any)."""
        if self._written.get(path) != text or not path.exists():
            _write_text(path, text)
            self._written[path] = text

    def _map_targets(self, plan: config.Plan) -> dict[Path, dict[str, str]]:
        """The plan's map files and their entries, in the order they are converged."""
        maps = {config.map_file(self.settings, svc): entries
                for svc, entries in plan.maps.items()}
        maps[config.sticky_file(self.settings)] = {svc: "1" for svc in plan.sticky}
        # The maintenance answer before the live map leads a service to it (config.py), and
        # removed after the live map leads elsewhere (removals go in the reverse order).
        for name in reversed(config.MAINTENANCE_MAPS):
            maps[config.maintenance_file(self.settings, name)] = plan.maintenance.get(name, {})
        # After the release maps (a header for the new release works as soon as it serves),
        # and after the servers of a backend it points to are ready (converge.py).
        maps[config.live_file(self.settings)] = plan.live
        return maps

    # -- Router protocol -----------------------------------------------------------------------

    async def start(self) -> None:
        """Adopt the HAProxy running from ``state_dir`` if it answers; else start it with the
        last applied table. Idempotent."""
        private_dir(self.state_dir)
        sup = self._sup()
        certs = load_all(self.certs) if self.settings.tls_listen else []  # a bad file: named
        async with self._lock():
            self._held = None  # read back on the first apply, whoever ran HAProxy meanwhile
            self._cli.close()
            state = self._load()
            served = len(tls_files.on_disk(self.certs_dir))
            renewed = tls_files.write(self.certs_dir, certs) if certs else []
            table = self._table(state)
            plan = config.plan(table or RoutingTable(0), self._slots(state), self._shapes(state))
            adopt = await sup.adoptable()
            changed = self._write(plan, loaded=table is not None, fresh=not adopt)
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
        if self.log is not None:
            await self.log.attach()

    async def apply(self, table: RoutingTable) -> None:
        """Serve ``table``: Runtime API commands only, unless its shape changed (then one
        seamless reload). Returns once HAProxy acknowledged it all."""
        async with self._lock():
            self._forget_if_changed()
            state = self._load()
            try:
                plan = config.plan(table, self._slots(state), self._shapes(state))
            except ValueError as exc:
                raise RouterError(f"routing table v{table.version} refused: {exc}") from None
            reshaped = plan.shapes != self._shapes(state)
            if reshaped:  # the new worker must load the new cfg and maps
                self._write(plan, loaded=True)
                state["shapes"] = [vars(s) for s in plan.shapes]
                await self._reload(state)
            await self._converge(plan)
            if not reshaped:  # after the switch: the files are for a reload or a restart
                self._write(plan, loaded=True)
            state["table"] = table.to_dict()
            state["slots"] = {svc: {str(r): s for r, s in m.items()}
                              for svc, m in plan.slots.items()}
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
        return self._table(self._load())

    async def stats(self) -> dict[str, BackendStats]:
        if self.log is not None:
            await self.log.attach()
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

    async def stop(self) -> None:
        self._cli.close()
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
        """Log 1 request in ``n`` from now on (no reload), kept in the map file for a reload.
        The file follows HAProxy: a refused or timed-out change leaves both as they were."""
        await set_sample(self.stats_socket, config.sample_file(self.settings), n)
        self._write_sample(n)

    def _write_sample(self, n: int) -> Path:
        """The latency map file holding ``n`` (what a new or reloaded worker loads)."""
        sample = config.sample_file(self.settings)
        _write_text(sample, config.map_text(config.sample_entries(n)))
        return sample

    async def _server_counts(self) -> dict[tuple[str, str], Counts]:
        (text,) = await runtime.run(self.stats_socket, ["show stat"])
        return parse_servers(text)

    async def _reload(self, state: dict[str, Any]) -> None:
        """Seamless reload; the old worker's counters become part of the base first."""
        try:
            servers = await self._server_counts()
        except RouterError:
            servers = {}
        base = {h: Counts.from_dict(d) for h, d in (state.get("base") or {}).items()}
        for host, c in by_host(servers).items():
            base.setdefault(host, Counts()).add(c, active=False)
        state["base"] = {h: c.to_dict() for h, c in base.items()}
        self._save(state)  # before the reload: a crash after it must not count twice
        self._held = None
        self._cli.close()  # the old worker would keep answering on it
        await self._sup().reload()
        if self.log is not None:  # let the old worker go; read the new one's ring
            self.log.reconnect()

    async def _read_held(self, files: list[Path]) -> converge.Held:
        """What HAProxy holds: every server, and the entries of ``files`` (one round trip)."""
        state, *maps = await runtime.run(self.stats_socket, [
            "show servers state", *(f"show map {f}" for f in files)])
        return converge.Held(converge.parse_servers_state(state),
                             {f: converge.parse_map(m) for f, m in zip(files, maps, strict=True)})

    async def _converge(self, plan: config.Plan) -> None:
        """Make HAProxy serve ``plan``: the commands from what it holds (this object's last
        apply, or read back) to the plan, in one round trip."""
        maps = self._map_targets(plan)
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
        idle = [(be, name) for be, rows in actual.items() for name, row in rows.items()
                if row.maint and servers.get((be, name), Counts()).active == 0]
        if not idle:
            return servers
        answers = await runtime.run(self.stats_socket, [f"del server {be}/{n}" for be, n in idle])
        base = {h: Counts.from_dict(d) for h, d in (state.get("base") or {}).items()}
        kept = dict(servers)
        for key, answer in zip(idle, answers, strict=True):
            if answer.strip() == "Server deleted.":
                gone = kept.pop(key, None)
                if self._held is not None:
                    self._held.servers.get(key[0], {}).pop(key[1], None)
                if gone is not None:
                    base.setdefault(config.host_of(key[1]), Counts()).add(gone, active=False)
        state["base"] = {h: c.to_dict() for h, c in base.items()}
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


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _write_text(path: Path, text: str) -> None:
    write_private(path, text, tmp=path.with_name(path.name + ".tmp"))
