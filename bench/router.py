"""The built-in router against HAProxy, side by side in one invocation (not a test).

    python bench/router.py [--duration 5] [--runs 3] [--switches 100] [--backends 1000]
                            [--fresh 6] [--impl builtin,haproxy-hinotori] [--switch-only]
                            [--probe-gap 0.5]

Same two backends (bench/backend.py), same load generator (wrk, 50 keep-alive connections),
each configuration run --runs times interleaved so machine noise hits all alike; medians are
printed with ratios. Configurations: straight to one backend (the floor), the built-in router
with 1 and 2 workers, HAProxy (Debian package) with 1 and 2 threads; hinotori's data planes
serve hosts switched to from others, as after a deploy. Then the switch latency:
from the call to apply() to the first response from the new backend set, seen by a client
process of its own (bench/probe.py: keep-alive requests --probe-gap ms apart), p50/p99 over
--switches switches in each of --runs runs (the data planes interleaved, every run's p99
printed: the goal holds in every run or not at all), with the time each switch's processes
spent runnable waiting for a CPU (schedstat: controller, data plane, backends, client): with
2 backends per set, then with --backends per set (a blue-green switch of a 1,000-host fleet:
set A is N backends of release 1, set B N of release 2, every one its own port of one more
bench/backend.py process, so the router holds 2N distinct addresses, as with real hosts).
Switches between A and B are a rollback or a blue-green back and forth; then --fresh switches
each to hosts never served (new host ids and release on the same ports), each prepared first
(``router.prepare``, as `deploy` does while the new hosts warm; its time printed apart). Also
printed: how long ``apply`` took to return, what a deploy's `switch N ms` says, and the full
(generation-2) garbage collections during the timed switches, in this process (the controller's
side) and in the built-in worker (hinotori/gcheap.py keeps them out of switches).

``--impl`` picks the data plane(s) measured: ``builtin`` (hinotori.router.builtin, the default)
and/or ``haproxy-hinotori`` is HAProxy driven by HaproxyRouter (hinotori.router.
haproxy: generated config, Runtime API), with 1 and 2 threads beside the hand-written config
with as many: as configured by default (the latency log sampled down to LATENCY_LOG_RATE lines
a second), logging every request, and without the latency log (the log's cost); a thread
reads the latency logs meanwhile and sets their sampling, as the controller would.
Everything started here is stopped on exit, Ctrl-C and SIGTERM included.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from results import record  # bench/ is sys.path[0] when this runs as a script

from hinotori import gcheap
from hinotori.model import Backend, RoutingTable, ServiceRoute
from hinotori.processes import cpu_seconds
from hinotori.router.base import Router, prepare
from hinotori.router.builtin import BuiltinRouter, control
from hinotori.router.haproxy import HaproxyRouter

IMPLS = ("builtin", "haproxy-hinotori")
HAPROXY_IMPL = "haproxy-hinotori"



HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port}")


def wrk(port: int, duration: float, connections: int = 50) -> dict[str, float]:
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{round(duration)}s", "--latency",
                          f"http://127.0.0.1:{port}/"], capture_output=True, text=True,
                         check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors", out)

    def pct(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        assert m, out
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    total = float(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return {"rps": rps, "p50": pct("50"), "p99": pct("99"), "errors": 1.0 if errors else 0.0,
            "requests": total}


def haproxy_config(port: int, backends: list[int], threads: int, path: Path,
                   bind_options: str = "") -> Path:
    """The hand-written peer's config (``bind_options``: e.g. TLS, appended to the bind)."""
    servers = "\n".join(f"  server b{i} 127.0.0.1:{p}" for i, p in enumerate(backends))
    path.write_text(f"""global
  nbthread {threads}
  maxconn 4096
defaults
  mode http
  timeout connect 2s
  timeout client 75s
  timeout server 60s
  option http-keep-alive
frontend bench
  bind 127.0.0.1:{port}{bind_options}
  default_backend app
backend app
  balance roundrobin
{servers}
""")
    return path


async def switch_latency(router: Router, port: int, a: list[Backend], b: list[Backend],
                         switches: int, first_version: int = 2,
                         cpu: list[float] | None = None, acked: list[float] | None = None,
                         sets: list[tuple[list[Backend], bytes]] | None = None,
                         prepared: list[float] | None = None,
                         watch: dict[str, list[int]] | None = None,
                         waits: list[dict[str, float]] | None = None,
                         gap: float = 0.0) -> list[float]:
    """Time from the apply call to the first response from the new set, per switch (ms).

    One client, a process of its own (bench/probe.py: not the controller's event loop, as an
    operator's clients are not), sends back-to-back keep-alive requests and reports when the
    set answering changed; this process waits on its pipe (no polling: on a small machine a
    spinning waiter steals the CPU that the router and the backends need). ``watch``/
    ``waits``: per switch, how long each group of processes waited for a CPU (schedstat).
    ``acked``: how long each apply took to return (what a deploy's `switch N ms` says).
    ``sets``: the backends (and the X-Backend name) of each switch, instead of a and b in
    turn; ``prepared``: have the router prepare each table first (untimed by the switch; its
    ms appended here), as a deploy does while the new hosts warm.
    """
    probe = await asyncio.create_subprocess_exec(
        sys.executable, str(HERE / "probe.py"), str(port), str(gap), stdout=subprocess.PIPE)
    assert probe.stdout is not None
    try:
        await asyncio.wait_for(probe.stdout.readline(), 10)  # its first response
        if watch is not None:
            watch = {**watch, "client": [probe.pid]}
        return await _switches(router, probe.stdout, a, b, switches, first_version, cpu,
                               acked, sets, prepared, watch, waits)
    finally:
        with contextlib.suppress(ProcessLookupError):
            probe.kill()
        await probe.wait()


async def _switches(router: Router, changes: asyncio.StreamReader, a: list[Backend],
                    b: list[Backend], switches: int, first_version: int,
                    cpu: list[float] | None, acked: list[float] | None,
                    sets: list[tuple[list[Backend], bytes]] | None,
                    prepared: list[float] | None, watch: dict[str, list[int]] | None,
                    waits: list[dict[str, float]] | None) -> list[float]:
    results = []
    turns = sets or [(a, b"a"), (b, b"b")] * ((switches + 1) // 2)
    for i in range(switches):
        backends, name = turns[i % len(turns)]  # (the other set than the live one first)
        table = RoutingTable(version=first_version + i, routes=(
            ServiceRoute(service="bench", backends=tuple(backends)),))
        if prepared is not None:
            await router.stats()  # as the controller's monitor does: HAProxy's sweep
            began = time.perf_counter()
            await prepare(router, table)
            prepared.append((time.perf_counter() - began) * 1000)
        await asyncio.sleep(0.005)
        before = {g: schedstat(p) for g, p in (watch or {}).items()}
        started = time.perf_counter_ns()
        cpu_before = time.process_time()  # this process: the controller's side of a switch
        await router.apply(table)
        if acked is not None:
            acked.append((time.perf_counter_ns() - started) / 1e6)
        if cpu is not None:
            cpu.append((time.process_time() - cpu_before) * 1000)
        # The probe's next line: the first response from another set than the last one.
        line = await asyncio.wait_for(changes.readline(), 10)
        if not line or line.startswith(b"!"):
            raise SystemExit(f"switch {i}: the probe got {line.decode().strip() or 'no answer'}")
        seen, at = line.split()
        if seen != name or int(at) < started:
            raise SystemExit(f"switch {i}: the probe saw {seen!r} at {at}, not {name!r} "
                             f"after {started}")
        results.append((int(at) - started) / 1e6)
        if waits is not None:
            waits.append({g: (schedstat(p)[1] - before[g][1]) / 1e6
                          for g, p in (watch or {}).items()})
    return results


class FullCollections:
    """The generation-2 collections this process makes while inside ``with`` (their ms):
    the controller's side of the switches here. Each stops the event loop: the apply, and the
    bench's client too."""

    def __init__(self) -> None:
        self.ms: list[float] = []
        self._began = 0.0

    def __enter__(self) -> FullCollections:
        gc.callbacks.append(self._seen)
        return self

    def __exit__(self, *_: object) -> None:
        gc.callbacks.remove(self._seen)

    def _seen(self, phase: str, info: dict[str, int]) -> None:
        if info["generation"] == 2:
            if phase == "start":
                self._began = time.perf_counter()
            else:
                self.ms.append((time.perf_counter() - self._began) * 1000)


def worker_full_collections(router: Router) -> int:
    """The built-in worker's generation-2 collections so far (its ping says); 0 for HAProxy."""
    if not isinstance(router, BuiltinRouter):
        return 0
    answer = control.ping_sync(router.state_dir / "router-0.sock") or {}
    return int(answer.get("gc", {}).get("collections", [0, 0, 0])[2])


def schedstat(pids: list[int]) -> tuple[int, int]:
    """(CPU ns, ns spent runnable waiting for a CPU) of every thread of ``pids``
    (/proc/<pid>/task/<tid>/schedstat); a negative pid: that process's main thread only."""
    cpu = wait = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{abs(pid)}/task") if pid > 0 else [str(-pid)]:
                pid = abs(pid)
                with contextlib.suppress(OSError, ValueError):
                    with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                        ran, waited, _ = f.read().split()
                    cpu += int(ran)
                    wait += int(waited)
    return cpu, wait


async def plane_pids(router: Router) -> list[int]:
    """The data plane's processes: the built-in worker(s), or HAProxy's worker."""
    if isinstance(router, HaproxyRouter):
        assert router.supervisor is not None
        return [int((await router.supervisor.worker_info())["Pid"])]
    assert isinstance(router, BuiltinRouter)
    return [int((router.state_dir / f"router-{i}.pid").read_text())
            for i in range(router.workers)]


def slow_waits(lat: list[float], waits: list[dict[str, float]], over: float) -> str:
    """How long the switches over ``over`` ms waited for a CPU, by process group."""
    slow = [(ms, w) for ms, w in zip(lat, waits, strict=True) if ms > over]
    if not slow:
        return f"no switch over {over:g} ms"
    half = sum(1 for ms, w in slow if sum(w.values()) >= ms / 2)
    groups = ", ".join(f"{g} {statistics.median(w[g] for _, w in slow):.1f}"
                       for g in slow[0][1])
    return (f"{len(slow)} switches over {over:g} ms: {half} waited for a CPU at least half "
            f"their time; median ms waited: {groups}")


def percentile(sorted_ms: list[float], p: float) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, round(p / 100 * (len(sorted_ms) - 1)))]


def label(impl: str, workers: int) -> str:
    if impl == HAPROXY_IMPL:
        return f"hinotori haproxy, {workers} thread{'s' * (workers > 1)}"
    return f"hinotori {impl}, {workers} worker{'s' * (workers > 1)}"


def no_log(threads: int) -> str:
    return f"{label(HAPROXY_IMPL, threads)}, no log"


def every_request(threads: int) -> str:
    return f"{label(HAPROXY_IMPL, threads)}, log all"


class LogReader:
    """Reads HaproxyRouter latency logs in a thread of its own while wrk runs (the
    controller's event loop would do this), so their cost is in the numbers: the loop's
    thread and the one its dumps of the ring run in (its default executor)."""

    def __init__(self, routers: list[HaproxyRouter]) -> None:
        self.routers = routers
        self.idents: list[int] = []  # the loop's thread and its executor's
        self.loop = asyncio.new_event_loop()
        self.loop.set_default_executor(ThreadPoolExecutor(
            1, initializer=lambda: self.idents.append(threading.get_ident())))
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.idents.append(self.thread.ident)  # type: ignore[arg-type]
        asyncio.run_coroutine_threadsafe(self._attach(), self.loop).result(30)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    async def _attach(self) -> None:
        for r in self.routers:
            await r.log.attach()  # type: ignore[union-attr]

    def lines(self) -> int:
        return sum(r.log.lines for r in self.routers)  # type: ignore[union-attr]

    def counted(self) -> int:
        return sum(r.log.counted for r in self.routers)  # type: ignore[union-attr]

    def cpu(self) -> float:
        """CPU seconds the reading threads have used."""
        return sum(time.clock_gettime(time.pthread_getcpuclockid(i)) for i in self.idents)

    def settle(self) -> None:
        """Read what the last run logged now, so that it costs that run and not the next."""
        async def poll() -> None:
            for r in self.routers:
                await r.log.poll()  # type: ignore[union-attr]
        asyncio.run_coroutine_threadsafe(poll(), self.loop).result(30)

    def close(self) -> None:
        if not self.thread.is_alive():
            return

        async def close() -> None:
            for r in self.routers:
                r.log.close()  # type: ignore[union-attr]
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def stop_all(reader: LogReader | None, routers: dict[str, BuiltinRouter | HaproxyRouter],
             procs: list[subprocess.Popen[bytes]],
             work: Path) -> None:
    """Whatever a bench started, stopped: the latency reader, hinotori's routers, the peers'
    processes (SIGTERM, then SIGKILL after 5 s), the scratch directory."""
    if reader is not None:
        reader.close()
    for router in routers.values():
        with contextlib.suppress(Exception):
            asyncio.run(router.stop())
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    ap.add_argument("--runs", type=int, default=3,
                    help="runs per configuration (medians), and of the switches")
    ap.add_argument("--switches", type=int, default=100,
                    help="switches timed per run (--runs runs, interleaved)")
    ap.add_argument("--backends", type=int, default=1000,
                    help="backends per set in the large switch case (0: skip it)")
    ap.add_argument("--fresh", type=int, default=6,
                    help="switches to a new set, each prepared first (as a deploy does)")
    ap.add_argument("--switch-only", action="store_true", help="skip the throughput runs")
    ap.add_argument("--probe-gap", type=float, default=0.5,
                    help="ms the switch probe waits after a response before its next request "
                         "(0: back to back; see bench/probe.py)")
    ap.add_argument("--impl", default="builtin",
                    help="comma-separated data planes to measure: builtin, "
                         "haproxy-hinotori")
    args = ap.parse_args()
    impls = [i.strip() for i in args.impl.split(",") if i.strip()]
    if not impls or any(i not in IMPLS for i in impls):
        sys.exit(f"--impl: choose from {', '.join(IMPLS)} (comma-separated)")
    for tool in ("wrk", "haproxy"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is not installed: apt-get install {tool}")
    # SIGTERM takes the same way out as Ctrl-C, through the cleanup below.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    work = Path(tempfile.mkdtemp(prefix="hinotori-bench-router-"))
    procs: list[subprocess.Popen[bytes]] = []
    routers: dict[str, BuiltinRouter | HaproxyRouter] = {}
    reader: LogReader | None = None
    try:
        ports = [free_port() for _ in range(4)]  # a0, a1 (set A) and b0, b1 (set B)
        procs.append(subprocess.Popen([sys.executable, str(HERE / "backend.py"),
                                       str(ports[0]), "a", str(ports[1]), "a",
                                       str(ports[2]), "b", str(ports[3]), "b"],
                                      stdout=subprocess.DEVNULL))
        for p in ports:
            wait_port(p)
        set_a = [Backend(f"a{i}", f"127.0.0.1:{p}", 1) for i, p in enumerate(ports[:2])]
        set_b = [Backend(f"b{i}", f"127.0.0.1:{p}", 2) for i, p in enumerate(ports[2:])]
        # Measured as after a deploy: set A is switched to from set B, so its hosts are new
        # to the router (HAProxy: servers added at run time, not written in its cfg).
        before = RoutingTable(version=1, routes=(ServiceRoute(service="bench",
                                                              backends=tuple(set_b)),))
        table = RoutingTable(version=2, routes=(ServiceRoute(service="bench",
                                                             backends=tuple(set_a)),))
        targets: dict[str, int] = {"direct (one backend)": ports[0]}
        cpu: dict[str, Callable[[], float]] = {}
        for impl in impls:
            # (name, workers, latency log, its most lines a second: None for the default)
            variants: list[tuple[str, int, bool, int | None]] = [
                (label(impl, n), n, True, None) for n in (1, 2)]
            if impl == HAPROXY_IMPL:
                variants += [(every_request(n), n, True, 0) for n in (1, 2)]
                variants += [(no_log(n), n, False, None) for n in (1, 2)]
            for name, workers, log, rate in variants:
                port = free_port()
                router: BuiltinRouter | HaproxyRouter
                if impl == HAPROXY_IMPL:
                    options = {} if rate is None else {"latency_log_rate": rate}
                    router = HaproxyRouter(work / f"{impl}{workers}{log}{rate}",
                                           f"127.0.0.1:{port}", workers=workers,
                                           latency_log=log, **options)
                else:
                    router = BuiltinRouter(work / f"{impl}{workers}", f"127.0.0.1:{port}",
                                                workers=workers)
                routers[name] = router
                asyncio.run(router.start())
                asyncio.run(router.apply(before))
                asyncio.run(router.apply(table))
                targets[name] = port
        if HAPROXY_IMPL in impls:
            reader = LogReader([r for r in routers.values()
                                if isinstance(r, HaproxyRouter) and r.log is not None])
        for threads in (1, 2):
            port = free_port()
            cfg = haproxy_config(port, ports[:2], threads, work / f"haproxy{threads}.cfg")
            # In a session of its own, as hinotori runs both its data planes: on a busy machine
            # with the kernel's autogroup scheduling, a proxy sharing wrk's session answered
            # 25-35% more req/s at ~20% less CPU per request than the same proxy in its own.
            procs.append(subprocess.Popen(["haproxy", "-db", "-f", str(cfg)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          start_new_session=True))
            wait_port(port)
            name = f"haproxy, {threads} thread{'s' * (threads > 1)}"
            targets[name] = port
            cpu[name] = lambda pid=procs[-1].pid: cpu_seconds(pid)
        for name, router in routers.items():
            if isinstance(router, BuiltinRouter):
                pids = [int((router.state_dir / f"router-{i}.pid").read_text())
                        for i in range(router.workers)]
                cpu[name] = lambda pids=pids: sum(cpu_seconds(p) for p in pids)
            if isinstance(router, HaproxyRouter):
                assert router.supervisor is not None
                pid = int(asyncio.run(router.supervisor.worker_info())["Pid"])
                reading = reader if reader is not None and router.log is not None else None
                cpu[name] = lambda pid=pid, r=reading: cpu_seconds(pid) + (r.cpu() if r else 0)
        if not args.switch_only:
            throughput(targets, impls, args.duration, args.runs,
                       reader.settle if reader is not None else lambda: None, cpu)
            if reader is not None:
                print(f"latency log lines read while wrk ran: {reader.lines()}; "
                      f"requests they stand for: {reader.counted()}")
            unqueued(targets, impls, args.duration, args.runs)
        if reader is not None:
            reader.close()

        if args.switches > 0:  # (0: throughput only)
            switches(args, impls, routers, targets, set_a, set_b, procs)
    except KeyboardInterrupt:
        print("interrupted; cleaning up", file=sys.stderr)
    finally:
        stop_all(reader, routers, procs, work)


def switches(args: argparse.Namespace, impls: list[str],
             routers: dict[str, BuiltinRouter | HaproxyRouter], targets: dict[str, int],
             set_a: list[Backend], set_b: list[Backend],
             procs: list[subprocess.Popen[bytes]]) -> None:
    """Switch latency on each data plane's 1-worker router, with 2 backends per set and then
    with --backends per set, in the same run (the same machine weather for all)."""
    cases = [(2, set_a, set_b, procs[0].pid)]
    if args.backends > 0:
        n = args.backends
        for attempt in range(3):  # a port picked here may be taken before the backend binds
            ports: list[int] = []
            while len(ports) < 2 * n:  # the kernel may hand out a just-closed port again
                if (p := free_port()) not in ports:
                    ports.append(p)
            argv = [sys.executable, str(HERE / "backend.py")]
            for i, p in enumerate(ports):
                argv += [str(p), "a" if i < n else "b"]
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            procs.append(proc)
            if proc.stdout is not None and proc.stdout.readline().strip() == b"ready":
                break
            if attempt == 2:
                raise SystemExit(f"the {2 * n} bench backends did not start")
        cases.append((n, [Backend(f"a{i}", f"127.0.0.1:{p}", 1) for i, p in enumerate(ports[:n])],
                      [Backend(f"b{i}", f"127.0.0.1:{p}", 2) for i, p in enumerate(ports[n:])],
                      proc.pid))
    # Every case and data plane once per run, interleaved: machine weather hits all alike.
    got: dict[tuple[int, str], list[Measured]] = {}
    for run in range(args.runs):
        for count, a, b, backend_pid in cases:
            for impl in impls:
                got.setdefault((count, impl), []).append(asyncio.run(measure(
                    args, impl, routers[label(impl, 1)], targets[label(impl, 1)], a, b,
                    backend_pid, 100_000 * (run + 1))))
    for count, *_ in cases:
        print(f"switch latency (apply call -> first response from the new set), "
              f"{args.switches} switches x {args.runs} run(s), 1 worker, {count} backends per "
              "set:")
        for impl in impls:
            report(count, impl, got[(count, impl)], args.switches)


class Measured:
    """One run of timed switches on one data plane."""

    def __init__(self) -> None:
        self.lat: list[float] = []      # apply call -> first response from the new set (ms)
        self.cpu: list[float] = []      # this process's CPU per apply (the controller's side)
        self.cold: list[float] = []     # the first apply of the second set
        self.acked: list[float] = []    # apply returned
        self.fresh: list[float] = []    # switches to a new set, prepared first
        self.prepared: list[float] = []
        self.full_ms: list[float] = []  # this process's full collections in the timed switches
        self.in_worker = 0              # the worker's
        self.waits: list[dict[str, float]] = []  # per timed switch: ms waited for a CPU


async def measure(args: argparse.Namespace, impl: str, first: Router, port: int,
                  a: list[Backend], b: list[Backend], backend_pid: int,
                  version: int) -> Measured:
    m = Measured()
    # A new router object adopts the running worker: a fresh control connection, and for
    # HAProxy a full read of its state on the first apply (a restart).
    router: Router
    if impl == HAPROXY_IMPL:
        assert isinstance(first, HaproxyRouter)
        router = HaproxyRouter(first.state_dir, first.listen, workers=1)
    else:
        assert isinstance(first, BuiltinRouter)
        router = BuiltinRouter(first.state_dir, first.listen, workers=1)
    await router.start()
    watch = {"controller": [-os.getpid()], "data plane": await plane_pids(router),
             "backends": [backend_pid]}
    # Both sets applied once first (what is timed is switches between sets the router
    # knows, as a rollback or a blue-green back and forth; a first switch to N new hosts
    # also adds them: timed once, printed apart).
    await router.apply(RoutingTable(version=version, routes=(
        ServiceRoute(service="bench", backends=tuple(a)),)))
    started = time.perf_counter()
    await router.apply(RoutingTable(version=version + 1, routes=(
        ServiceRoute(service="bench", backends=tuple(b)),)))
    m.cold.append((time.perf_counter() - started) * 1000)
    # This process plays the controller, which settles its heap (gcheap) after start-up
    # and after each prepare: what it made for these two tables is frozen by then, as a
    # deploy's prepare froze it before a rollback.
    gcheap.settle()
    before = worker_full_collections(router)
    with FullCollections() as full:
        m.lat = await switch_latency(router, port, a, b, args.switches,
                                     first_version=version + 2, cpu=m.cpu, acked=m.acked,
                                     watch=watch, waits=m.waits, gap=args.probe_gap)
    m.full_ms = full.ms
    m.in_worker = worker_full_collections(router) - before
    # A blue-green deploy: each switch to hosts never served (new ids and a new release on
    # the same ports), prepared first as `deploy` does.
    turns = [(a, b"a"), (b, b"b")]  # the other set than the live one first
    order = turns if args.switches % 2 == 0 else turns[::-1]
    sets = [([Backend(f"n{i}-{x.host_id}", x.address, 3 + i) for x in s], name)
            for i, (s, name) in enumerate(order * ((args.fresh + 1) // 2))]
    m.fresh = await switch_latency(router, port, a, b, args.fresh,
                                   first_version=version + 50_000, sets=sets,
                                   prepared=m.prepared, gap=args.probe_gap)
    if isinstance(router, HaproxyRouter):
        router.disconnect()  # the next run adopts HAProxy with an object of its own
    return m


def report(count: int, impl: str, runs: list[Measured], switches: int) -> None:
    """The printed lines and the recorded figures of one case and data plane."""
    goal = "< 5" if count == 2 else "< 10"
    lat = sorted(x for m in runs for x in m.lat)
    p50, p99 = percentile(lat, 50), percentile(lat, 99)
    acked = sorted(x for m in runs for x in m.acked)
    fresh = sorted(x for m in runs for x in m.fresh)
    prepared = [x for m in runs for x in m.prepared]
    full_ms = [x for m in runs for x in m.full_ms]
    in_worker = sum(m.in_worker for m in runs)
    per_run = [percentile(sorted(m.lat), 99) for m in runs]
    print(f"  {impl:<16} p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {lat[-1]:.2f} ms; "
          f"controller CPU per apply p50 {statistics.median(x for m in runs for x in m.cpu):.2f}"
          f" ms; first apply of the new set {runs[0].cold[0]:.1f} ms")
    print(f"  {'':<16} p99 per run: {', '.join(f'{x:.2f}' for x in per_run)} ms (worst "
          f"{max(per_run):.2f})")
    print(f"  {'':<16} apply returned p50 {percentile(acked, 50):.2f} ms, p99 "
          f"{percentile(acked, 99):.2f} ms; to a new set after prepare "
          f"({len(fresh)} switches): p50 {percentile(fresh, 50):.2f} ms, max "
          f"{fresh[-1]:.2f} ms, prepare p50 {statistics.median(prepared):.1f} ms")
    print(f"  {'':<16} " + slow_waits([x for m in runs for x in m.lat],
                                       [w for m in runs for w in m.waits], 5.0))
    print(f"  {'':<16} full gc collections in those {switches * len(runs)} switches: "
          f"controller side {len(full_ms)} (longest {max(full_ms, default=0):.1f} ms)"
          + (f", worker {in_worker}" if impl != HAPROXY_IMPL else ""))
    what = f"switch {{}}, {impl}, {count} backends per set"
    if count > 2:
        record("router", f"full gc collections in the timed switches, {impl}, {count} "
               "backends per set", len(full_ms) + in_worker,
               detail=f"controller side {len(full_ms)}, longest "
                      f"{max(full_ms, default=0):.1f} ms"
                      + (f"; worker {in_worker}" if impl != HAPROXY_IMPL else ""))
    record("router", what.format("p99"), p99, unit="ms", goal=goal,
           detail=f"{len(lat)} switches in {len(runs)} run(s)")
    record("router", what.format("p99 of the worst run"), max(per_run), unit="ms", goal=goal,
           detail="p99 per run: " + ", ".join(f"{x:.2f}" for x in per_run))
    record("router", what.format("max"), lat[-1], unit="ms")
    if count > 2:
        record("router", what.format("p50"), p50, unit="ms", goal=goal)
        record("router", f"switch to a new set after prepare, p50, {impl}, {count} "
               "backends per set", percentile(fresh, 50), unit="ms",
               detail=f"{len(fresh)} switches; prepare p50 "
                      f"{statistics.median(prepared):.1f} ms")
    record("router", what.format("apply returned p99"), percentile(acked, 99),
           unit="ms", detail="what a deploy's `switch N ms` says")


def throughput(targets: dict[str, int], impls: list[str], duration: float, runs: int,
               settle: Callable[[], None], cpu: dict[str, Callable[[], float]]) -> None:
    """wrk against every target, interleaved; ``cpu[name]()`` is the CPU seconds the proxy
    serving ``name`` has used (for hinotori's HAProxy, its reader's too), read around each run
    and the reader catching up after it: CPU per request does not depend on how the noisy
    machine shared its cores during a run, which req/s does."""
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
    order = list(targets.items())
    shuffle = random.Random(1).shuffle
    for _ in range(runs):  # interleaved, so machine noise hits every configuration alike,
        shuffle(order)     # and in a new order each round, so no place in it is favoured
        for name, port in order:
            used = cpu.get(name, lambda: 0.0)
            before = used()
            result = wrk(port, duration)
            settle()
            result["cpu_us"] = (used() - before) / result["requests"] * 1e6
            samples[name].append(result)
    med = {name: {k: statistics.median(s[k] for s in got) for k in got[0]}
           for name, got in samples.items()}
    print(f"wrk -t1 -c50 -d{duration:g}s, medians of {runs} interleaved runs, 2 backends")
    print(f"{'target':<36}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'CPU us/req':>12}")
    for name, m in med.items():
        cpu_us = f"{m['cpu_us']:>12.2f}" if name in cpu else f"{'':>12}"
        print(f"{name:<36}{m['rps']:>10.0f}{m['p50']:>9.2f}{m['p99']:>9.2f}{cpu_us}"
              + ("  (errors!)" if m["errors"] else ""))
    direct = med["direct (one backend)"]
    for impl in impls:
        for n in (1, 2):
            ours, theirs = med[label(impl, n)], med[f"haproxy, {n} thread{'s' * (n > 1)}"]
            unit = "thread(s)" if impl == HAPROXY_IMPL else "worker(s)"
            ratio, p99_ratio = ours["rps"] / theirs["rps"], ours["p99"] / theirs["p99"]
            added = ours["p50"] - direct["p50"]
            print(f"{impl}/haproxy req/s, {n} {unit} vs {n} thread(s): "
                  f"{ratio:.2f}x, p99 {p99_ratio:.2f}x; "
                  f"added p50 over direct: {impl} "
                  f"{added:+.2f} ms, haproxy "
                  f"{theirs['p50'] - direct['p50']:+.2f} ms")
            if impl == "builtin":
                what = f"{n} worker{'s' * (n > 1)} vs {n} thread{'s' * (n > 1)}"
                record("router", f"builtin/haproxy req/s, {what}", ratio, unit="x",
                       goal=">= 0.75")
                record("router", f"builtin added p50 over direct, {n} worker{'s' * (n > 1)}",
                       added, unit="ms", goal="< 0.3")
                record("router", f"builtin/haproxy p99, {what}", p99_ratio, unit="x",
                       goal="<= 1.5")
                record("router", f"builtin/haproxy CPU per request, {what}",
                       ours["cpu_us"] / theirs["cpu_us"], unit="x",
                       detail=f"{ours['cpu_us']:.1f} vs {theirs['cpu_us']:.1f} us")
        if impl == HAPROXY_IMPL:
            for n in (1, 2):
                hand = med[f"haproxy, {n} thread{'s' * (n > 1)}"]
                for key, what in (("rps", "req/s"), ("cpu_us", "requests per CPU-second")):
                    ratios = [(hand[key] / med[name][key]) ** (-1 if key == "rps" else 1)
                              for name in (label(impl, n), every_request(n), no_log(n))]
                    print(f"{impl} vs hand-written {what}, {n} thread(s): latency log sampled "
                          f"(default) {ratios[0]:.2f}x, every request logged {ratios[1]:.2f}x, "
                          f"no latency log {ratios[2]:.2f}x")
                    record("router", f"{impl}/hand-written {what}, {n} thread(s), latency "
                           "log sampled", ratios[0], unit="x", goal=">= 0.95")


UNQUEUED = (1, 10)  # connections: below what saturates the proxy (50 does, on 2 cores)


def unqueued(targets: dict[str, int], impls: list[str], duration: float, runs: int) -> None:
    """Added p50 when requests do not queue: wrk with 1 and 10 connections against direct, each
    data plane's 1-worker/1-thread configuration and hand-written HAProxy, interleaved.

    With 50 connections a proxy runs flat out, and by Little's law its p50 is about
    connections / req/s: the 50-connection "added p50" above is a throughput figure (below
    0.3 ms it asks for ~90k req/s through a proxy sharing 2 cores with wrk and the backend,
    which neither data plane reaches here). These lines give what one request pays for the hop
    itself."""
    names = ["direct (one backend)", *(label(impl, 1) for impl in impls), "haproxy, 1 thread"]
    p50: dict[tuple[str, int], list[float]] = {(n, c): [] for n in names for c in UNQUEUED}
    for _ in range(runs):
        for c in UNQUEUED:
            for name in names:
                p50[(name, c)].append(wrk(targets[name], duration, c)["p50"])
    med = {key: statistics.median(got) for key, got in p50.items()}
    added = {(n, c): med[(n, c)] - med[(names[0], c)] for n in names[1:] for c in UNQUEUED}
    shown = ", ".join(f"{n.split(',')[0]} " + " / ".join(f"{added[(n, c)]:+.3f}"
                                                          for c in UNQUEUED) + " ms"
                      for n in names[1:])
    print(f"added p50 over direct without queueing, wrk -c{' / -c'.join(map(str, UNQUEUED))}, "
          f"1 worker/thread, medians of {runs}: {shown} (direct "
          + " / ".join(f"{med[(names[0], c)]:.3f}" for c in UNQUEUED) + " ms)")
    for impl in impls:
        for c in UNQUEUED:
            record("router", f"{impl} added p50 over direct, 1 worker, {c} connection"
                   f"{'s' * (c > 1)} (no queueing)", added[(label(impl, 1), c)], unit="ms",
                   goal="< 0.3", detail=f"haproxy {added[('haproxy, 1 thread', c)]:+.3f} ms")


if __name__ == "__main__":
    main()
