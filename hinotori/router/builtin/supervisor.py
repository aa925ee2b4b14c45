"""``BuiltinRouter``: the control plane's handle on the data-plane workers.

Files in ``state_dir`` per worker i: ``router-{i}.sock`` (control), ``router-{i}.pid``,
``router-{i}.log`` (the worker's stdout/stderr), and one ``router-table.json`` shared by all
(every worker writes the same table to it; a restarted worker loads it).

Workers are detached: a new session, no inherited stdin/stdout, so they outlive the controller,
even its SIGKILL. ``start`` therefore first asks whether a worker already answers on its socket
and adopts it; only otherwise does it spawn one. Worker 0 starts first, the others after it,
because a worker decides whether a taken port is a sibling's (fine) or a stranger's (error) by
asking the sockets next to its own.

The controller reaps the workers it spawned (a waiter thread per child), so a worker that exits
while the controller lives never lingers as a zombie. Workers adopted from a previous controller
are not our children; their parent is init.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from hinotori.errors import CertificateError, RouterError
from hinotori.model import BackendStats, RoutingTable
from hinotori.processes import log_tail, pid_alive
from hinotori.router import tls
from hinotori.router.base import REQUEST_TIMEOUT, RouterContext
from hinotori.router.builtin.client import ControlClient, ControlError
from hinotori.router.builtin.listener import parse_address
from hinotori.router.builtin.sent import Sent
from hinotori.statefiles import open_private, private_dir, socket_dir, write_private

START_TIMEOUT = 10.0   # spawn -> answering ping
APPLY_TIMEOUT = 5.0    # apply -> every worker acknowledged
CALL_TIMEOUT = 5.0     # get, stats, shutdown
STOP_TIMEOUT = 15.0    # shutdown -> exit (workers drain for up to 10 s), then SIGKILL
_WORKER_MODULE = "hinotori.router.builtin"
_SOCKET_PATH_MAX = 107  # sun_path is 108 bytes with the terminating NUL


class BuiltinRouter:
    """The built-in asyncio data plane, as the ``Router`` protocol (``hinotori.router.base``)."""

    kind = "builtin"

    @classmethod
    def create(cls, ctx: RouterContext) -> BuiltinRouter:
        """From the spec's [router] table (how router/registry.py builds it)."""
        return cls(ctx.router_dir, ctx.settings.listen, workers=ctx.settings.workers,
                   preview_listen=getattr(ctx.settings, "preview_listen", None),
                   tls_listen=getattr(ctx.settings, "tls_listen", None),
                   certs=tls.pairs_of(ctx.settings, ctx.root),
                   redirect_http=getattr(ctx.settings, "redirect_http", False))

    def __init__(self, state_dir: Path, listen: str, workers: int = 1, *,
                 metrics: bool = True, request_timeout: float = REQUEST_TIMEOUT,
                 preview_listen: str | None = None, tls_listen: str | None = None,
                 certs: list[tls.CertPair] | None = None, redirect_http: bool = False) -> None:
        try:
            parse_address(listen)
        except ValueError as exc:
            raise RouterError(str(exc), hint="fix [router] listen in hinotori.toml") from None
        if not isinstance(workers, int) or workers < 1:
            raise RouterError(f"router workers must be an integer >= 1, got {workers!r}",
                              hint="fix [router] workers in hinotori.toml")
        self.state_dir = Path(state_dir).absolute()
        self.listen = listen
        self.preview_listen = preview_listen  # a second listener where held releases answer
        self.workers = workers
        self.metrics = metrics
        self.request_timeout = request_timeout  # workers spawned here; adopted ones keep theirs
        self.tls_listen = tls_listen
        self.certs = list(certs or [])
        self.redirect_http = redirect_http and tls_listen is not None
        self.certs_file = self.state_dir / "router-tls.json"
        # The control sockets: in the state dir, or a short private one when it is too deep.
        self.socket_dir = socket_dir(self.state_dir, f"router-{workers + 8}.sock",
                                     _SOCKET_PATH_MAX)
        self.table_file = self.state_dir / "router-table.json"
        self._clients = [ControlClient(self._sock(i)) for i in range(workers)]
        self._sent = Sent(workers)  # route ids, and which each worker holds
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    def __repr__(self) -> str:
        return f"BuiltinRouter({str(self.state_dir)!r}, {self.listen!r}, workers={self.workers})"

    # -- paths ---------------------------------------------------------------------------------

    def _sock(self, i: int) -> Path:
        return self.socket_dir / f"router-{i}.sock"

    def _pidfile(self, i: int) -> Path:
        return self.state_dir / f"router-{i}.pid"

    def _log(self, i: int) -> Path:
        return self.state_dir / f"router-{i}.log"

    def _client(self, i: int) -> ControlClient:
        return self._clients[i] if i < self.workers else ControlClient(self._sock(i))

    # -- Router protocol -----------------------------------------------------------------------

    async def start(self) -> None:
        """Adopt the workers answering on their sockets; spawn the missing ones. Idempotent."""
        private_dir(self.state_dir)
        if self.tls_listen is not None:  # a bad file stops `up` here, naming it
            tls.load_all(self.certs)
            write_private(self.certs_file, tls.pairs_json(self.certs))
        extra = self._leftover_indices()
        if extra:  # from a run with more workers: they would serve a stale table forever
            await asyncio.gather(*(self._stop_worker(i) for i in extra))
        await self._ensure(0)
        if self.workers > 1:
            await asyncio.gather(*(self._ensure(i) for i in range(1, self.workers)))
        if self.tls_listen is not None:  # adopted workers: the files may have changed since
            await self.reload_certs()

    async def reload_certs(self) -> list[dict[str, Any]]:
        """Serve the certificate files as they are now, in every worker, for new connections
        (established ones keep theirs). A bad file raises CertificateError and changes nothing.
        Returns the served certificates (tls.Certificate.view)."""
        if self.tls_listen is None:
            return []
        certs = tls.load_all(self.certs)  # checked here first: the error names the file
        write_private(self.certs_file, tls.pairs_json(self.certs))
        answers = await asyncio.gather(*(self._call(i, {"op": "tls"}, CALL_TIMEOUT)
                                         for i in range(self.workers)))
        refused = [f"worker {i}: {a.get('error')}" for i, a in enumerate(answers)
                   if not a.get("ok")]
        if refused:  # the files changed between our check and the workers' read
            raise CertificateError("router workers refused the certificates: "
                                   + "; ".join(refused),
                                   hint="the previous certificates keep serving; fix the files")
        return [c.view() for c in certs]

    async def apply(self, table: RoutingTable) -> None:
        """Send ``table`` to every worker at once; return when all acknowledged it. Routes a
        worker holds already (prepared, or served before) go by id only (sent.py)."""
        ids = self._sent.ids(table.routes)
        answers: list[dict[str, Any] | BaseException]
        if self.workers == 1:  # no task: the line leaves now, not after what else is ready
            try:
                answers = [await self._switch(0, table, ids)]
            except Exception as exc:  # as gather's return_exceptions gives it
                answers = [exc]
        else:
            answers = await asyncio.gather(
                *(self._switch(i, table, ids) for i in range(self.workers)),
                return_exceptions=True)
        problems = []
        for i, answer in enumerate(answers):
            if isinstance(answer, BaseException):
                problems.append(f"worker {i}: {answer}")
            elif not answer.get("ok") or answer.get("version") != table.version:
                problems.append(f"worker {i}: {answer.get('error', answer)}")
        if problems:
            raise RouterError(
                f"routing table v{table.version} was not acknowledged by every router worker: "
                + "; ".join(problems),
                hint="traffic may be split between tables; apply again, or restart the router")

    async def prepare(self, table: RoutingTable) -> None:
        """Have every worker compile ``table``'s routes now, so that applying it later is a
        line of route ids. Nothing is served differently until then."""
        ids = self._sent.ids(table.routes)
        answers = await asyncio.gather(*(self._call(i, self._sent.line(i, "prepare", ids),
                                                    APPLY_TIMEOUT)
                                         for i in range(self.workers)))
        for i, answer in enumerate(answers):
            self._ok(i, answer)
            self._sent.holds(i, ids)

    async def _switch(self, i: int, table: RoutingTable, ids: list[str]) -> dict[str, Any]:
        answer = await self._call(i, self._sent.line(i, "switch", ids, table.version,
                                                     table.lost), APPLY_TIMEOUT)
        if not answer.get("ok") and answer.get("missing"):  # it restarted, or dropped some
            self._sent.forget(i)
            answer = await self._call(i, self._sent.line(i, "switch", ids, table.version,
                                                         table.lost), APPLY_TIMEOUT)
        if answer.get("ok"):
            self._sent.holds(i, ids)
        return answer

    async def current(self) -> RoutingTable | None:
        """The table every worker serves; None if there is none yet, or if workers disagree
        (an apply failed half-way: the caller should apply its table again)."""
        answers = await asyncio.gather(*(self._call(i, {"op": "get"}, CALL_TIMEOUT)
                                         for i in range(self.workers)))
        tables = [self._ok(i, a).get("table") for i, a in enumerate(answers)]
        if tables[0] is None or any(t != tables[0] for t in tables[1:]):
            return None
        return RoutingTable.from_dict(tables[0])

    async def stats(self) -> dict[str, BackendStats]:
        answers = await asyncio.gather(*(self._call(i, {"op": "stats"}, CALL_TIMEOUT)
                                         for i in range(self.workers)))
        return sum_stats([self._ok(i, a).get("backends") or {} for i, a in enumerate(answers)])

    async def stop(self) -> None:
        """Stop every worker gracefully (SIGKILL after STOP_TIMEOUT) and remove their files."""
        indices = sorted(set(range(self.workers)) | set(self._leftover_indices()))
        await asyncio.gather(*(self._stop_worker(i) for i in indices))

    # -- workers -------------------------------------------------------------------------------

    async def _ping(self, i: int, timeout: float = 1.0) -> dict[str, Any] | None:
        try:
            answer = await self._client(i).request({"op": "ping"}, timeout)
        except ControlError:
            return None
        return answer if answer.get("ok") else None

    async def _ensure(self, i: int) -> None:
        info = await self._ping(i)
        if info is not None and info.get("listen") == self.listen and \
                info.get("preview_listen") == self.preview_listen and \
                info.get("tls_listen") == self.tls_listen and \
                bool(info.get("redirect_http")) == self.redirect_http:
            write_private(self._pidfile(i), f"{info['pid']}\n")
            return
        if info is not None:  # the configured addresses changed: replace the worker
            await self._stop_worker(i)
        await self._spawn(i)

    async def _spawn(self, i: int) -> None:
        sock, log_path = self._sock(i), self._log(i)
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()  # stale: nobody answered on it
        argv = [sys.executable, "-m", _WORKER_MODULE, "--listen", self.listen,
                "--control", str(sock), "--table-file", str(self.table_file)]
        if self.preview_listen:
            argv += ["--preview-listen", self.preview_listen]
        if not self.metrics:
            argv.append("--no-metrics")
        if self.tls_listen is not None:
            argv += ["--tls-listen", self.tls_listen, "--tls-certs", str(self.certs_file)]
            if self.redirect_http:
                argv.append("--redirect-http")
        if self.request_timeout != REQUEST_TIMEOUT:
            argv += ["--request-timeout", repr(float(self.request_timeout))]
        # The worker must import hinotori even when it is not installed (run from a checkout).
        root = str(Path(__file__).resolve().parents[3])  # the directory holding hinotori/
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        with open_private(log_path, "ab") as log:
            log_offset = log.tell()
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    cwd=self.state_dir, env=env)
        self._children[i] = proc
        threading.Thread(target=proc.wait, name=f"reap-router-{i}", daemon=True).start()
        write_private(self._pidfile(i), f"{proc.pid}\n")

        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while True:
            if proc.returncode is not None:
                raise RouterError(
                    f"router worker {i} exited during start (exit code {proc.returncode}): "
                    f"{log_tail(log_path, log_offset, empty='(the worker wrote nothing)')}",
                    hint=f"the worker's log is {log_path}")
            info = await self._ping(i, timeout=0.5)
            if info is not None and info.get("pid") == proc.pid:
                return
            if loop.time() > deadline:
                proc.kill()
                raise RouterError(
                    f"router worker {i} did not answer on {sock} within {START_TIMEOUT:g}s: "
                    f"{log_tail(log_path, log_offset, empty='(the worker wrote nothing)')}",
                    hint=f"the worker's log is {log_path}")
            await asyncio.sleep(0.02)

    async def _stop_worker(self, i: int) -> None:
        sock = self._sock(i)
        client = self._client(i)
        pid: int | None = None
        info = await self._ping(i)
        if info is not None:
            pid = int(info["pid"])
            with contextlib.suppress(ControlError):
                await client.request({"op": "shutdown"}, CALL_TIMEOUT)
        else:  # not answering: a hung or half-started worker may still hold the port
            pid = self._pid_from_file(i)
            if pid is not None and self._is_our_worker(pid, sock):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            else:
                pid = None
        client.close()
        if pid is not None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + STOP_TIMEOUT
            while self._alive(i, pid) and loop.time() < deadline:
                await asyncio.sleep(0.02)
            if self._alive(i, pid) and self._is_our_worker(pid, sock):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                while self._alive(i, pid) and loop.time() < deadline + 5:
                    await asyncio.sleep(0.02)
        self._children.pop(i, None)
        for path in (sock, self._pidfile(i)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _leftover_indices(self) -> list[int]:
        found = set()
        for path in [*self.socket_dir.glob("router-*.sock"), *self.state_dir.glob("router-*.pid")]:
            index = path.stem.removeprefix("router-")
            if index.isdigit() and int(index) >= self.workers:
                found.add(int(index))
        return sorted(found)

    def _pid_from_file(self, i: int) -> int | None:
        try:
            return int(self._pidfile(i).read_text().strip())
        except (OSError, ValueError):
            return None

    def _alive(self, i: int, pid: int) -> bool:
        child = self._children.get(i)
        if child is not None and child.pid == pid:
            return child.returncode is None  # our waiter thread sets it when the child exits
        return pid_alive(pid)

    @staticmethod
    def _is_our_worker(pid: int, sock: Path) -> bool:
        """Guard against pid reuse: only signal a process that is this worker."""
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return pid_alive(pid) and not Path("/proc").is_dir()  # no procfs: trust the file
        return _WORKER_MODULE.encode() in cmdline and os.fsencode(sock) in cmdline

    # -- control calls -------------------------------------------------------------------------

    async def _call(self, i: int, message: dict[str, Any] | bytes,
                    timeout: float) -> dict[str, Any]:
        try:
            return await self._client(i).request(message, timeout)
        except ControlError as exc:
            raise RouterError(f"router worker {i} is not reachable: {exc}",
                              hint="start the router (the controller does it on start)") from None

    @staticmethod
    def _ok(i: int, answer: dict[str, Any]) -> dict[str, Any]:
        if not answer.get("ok"):
            raise RouterError(f"router worker {i} refused: {answer.get('error', answer)}")
        return answer


def sum_stats(per_worker: list[dict[str, dict[str, Any]]]) -> dict[str, BackendStats]:
    """Add up the workers' per-backend counters."""
    total: dict[str, dict[str, Any]] = {}
    for backends in per_worker:
        for host_id, c in backends.items():
            t = total.setdefault(host_id, {"active": 0, "requests": 0, "errors": 0,
                                           "statuses": {}, "latency": [], "latency_sum_ms": 0.0})
            for key in ("active", "requests", "errors"):
                t[key] += int(c.get(key, 0))
            for cls, n in (c.get("statuses") or {}).items():
                t["statuses"][cls] = t["statuses"].get(cls, 0) + int(n)
            lat = list(c.get("latency") or ())
            t["latency"] = [a + b for a, b in zip(t["latency"] or [0] * len(lat), lat,
                                                  strict=True)] if lat else t["latency"]
            t["latency_sum_ms"] += float(c.get("latency_sum_ms", 0.0))
    return {host_id: BackendStats(host_id=host_id, active=t["active"], requests=t["requests"],
                                  errors=t["errors"], statuses=t["statuses"],
                                  latency=tuple(t["latency"]), latency_sum_ms=t["latency_sum_ms"])
            for host_id, t in total.items()}

