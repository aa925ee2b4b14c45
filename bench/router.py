"""The built-in router against HAProxy, side by side in one invocation (not a test).

    python bench/router.py [--duration 5] [--runs 3] [--switches 200]

Same two backends (bench/backend.py), same load generator (wrk, 50 keep-alive connections),
each configuration run --runs times interleaved so machine noise hits all alike; medians are
printed with ratios. Configurations: straight to one backend (the floor), the built-in router
with 1 and 2 workers, HAProxy (Debian package) with 1 and 2 threads. Then the switch latency:
from the call to BuiltinRouter.apply() to the first response from the new backend set, seen
by a client sending back-to-back keep-alive requests, p50/p99 over --switches switches.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hinotori.model import Backend, RoutingTable, ServiceRoute
from hinotori.router.proxy import BuiltinRouter

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


def wrk(port: int, duration: float) -> dict[str, float]:
    out = subprocess.run(["wrk", "-t1", "-c50", f"-d{round(duration)}s", "--latency",
                          f"http://127.0.0.1:{port}/"], capture_output=True, text=True,
                         check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors", out)

    def pct(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        assert m, out
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    return {"rps": rps, "p50": pct("50"), "p99": pct("99"), "errors": 1.0 if errors else 0.0}


def haproxy_config(port: int, backends: list[int], threads: int, path: Path) -> Path:
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
  bind 127.0.0.1:{port}
  default_backend app
backend app
  balance roundrobin
{servers}
""")
    return path


async def switch_latency(router: BuiltinRouter, port: int, a: list[Backend], b: list[Backend],
                         switches: int) -> list[float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
    latest: dict[str, object] = {"name": b"", "at": 0.0}
    stop = False

    async def client() -> None:
        while not stop:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
            await reader.readexactly(length)
            latest["name"] = re.search(rb"(?i)x-backend: (\w+)", head).group(1)  # type: ignore[union-attr]
            latest["at"] = time.perf_counter()

    task = asyncio.create_task(client())
    results = []
    sets = [(a, b"a"), (b, b"b")]
    for i in range(switches):
        backends, name = sets[(i + 1) % 2]
        await asyncio.sleep(0.005)
        started = time.perf_counter()
        await router.apply(RoutingTable(version=i + 2, routes=(
            ServiceRoute(service="bench", backends=tuple(backends)),)))
        while not (latest["name"] == name and latest["at"] > started):  # type: ignore[operator]
            await asyncio.sleep(0)
        results.append((latest["at"] - started) * 1000)  # type: ignore[operator]
    stop = True
    await task
    writer.close()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--switches", type=int, default=200)
    ap.add_argument("--switch-only", action="store_true", help="skip the throughput runs")
    args = ap.parse_args()
    for tool in ("wrk", "haproxy"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is not installed: apt-get install {tool}")
    work = Path(tempfile.mkdtemp(prefix="hinotori-bench-router-"))
    procs: list[subprocess.Popen[bytes]] = []
    routers: list[BuiltinRouter] = []
    try:
        ports = [free_port() for _ in range(4)]  # a0, a1 (set A) and b0, b1 (set B)
        procs.append(subprocess.Popen([sys.executable, str(HERE / "backend.py"),
                                       str(ports[0]), "a", str(ports[1]), "a",
                                       str(ports[2]), "b", str(ports[3]), "b"]))
        for p in ports:
            wait_port(p)
        set_a = [Backend(f"a{i}", f"127.0.0.1:{p}", 1) for i, p in enumerate(ports[:2])]
        set_b = [Backend(f"b{i}", f"127.0.0.1:{p}", 2) for i, p in enumerate(ports[2:])]
        table = RoutingTable(version=1, routes=(ServiceRoute(service="bench",
                                                             backends=tuple(set_a)),))
        targets: dict[str, int] = {"direct (one backend)": ports[0]}
        for workers in (1, 2):
            port = free_port()
            router = BuiltinRouter(work / f"builtin{workers}", f"127.0.0.1:{port}",
                                   workers=workers)
            asyncio.run(router.start())
            asyncio.run(router.apply(table))
            routers.append(router)
            targets[f"hinotori builtin, {workers} worker{'s' * (workers > 1)}"] = port
        for threads in (1, 2):
            port = free_port()
            cfg = haproxy_config(port, ports[:2], threads, work / f"haproxy{threads}.cfg")
            procs.append(subprocess.Popen(["haproxy", "-db", "-f", str(cfg)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            wait_port(port)
            targets[f"haproxy, {threads} thread{'s' * (threads > 1)}"] = port
        if not args.switch_only:
            samples: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
            for _ in range(args.runs):
                for name, port in targets.items():
                    samples[name].append(wrk(port, args.duration))
            med = {name: {k: statistics.median(s[k] for s in runs) for k in runs[0]}
                   for name, runs in samples.items()}
            print(f"wrk -t1 -c50 -d{args.duration:g}s, medians of {args.runs} interleaved runs, "
                  f"2 backends")
            print(f"{'target':<30}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}")
            for name, m in med.items():
                print(f"{name:<30}{m['rps']:>10.0f}{m['p50']:>9.2f}{m['p99']:>9.2f}"
                      + ("  (errors!)" if m["errors"] else ""))
            direct = med["direct (one backend)"]
            for w, t in ((1, 1), (2, 2)):
                ours = med[f"hinotori builtin, {w} worker{'s' * (w > 1)}"]
                theirs = med[f"haproxy, {t} thread{'s' * (t > 1)}"]
                print(f"builtin/haproxy req/s, {w} worker(s) vs {t} thread(s): "
                      f"{ours['rps'] / theirs['rps']:.2f}x; added p50 over direct: builtin "
                      f"{ours['p50'] - direct['p50']:+.2f} ms, haproxy "
                      f"{theirs['p50'] - direct['p50']:+.2f} ms")

        async def measure() -> list[float]:
            router = BuiltinRouter(work / "builtin1", routers[0].listen, workers=1)
            await router.start()  # adopts the running worker: a fresh control connection
            return await switch_latency(router, targets["hinotori builtin, 1 worker"], set_a,
                                        set_b, args.switches)

        lat = sorted(asyncio.run(measure()))
        p50 = lat[len(lat) // 2]
        p99 = lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))]
        print(f"switch latency (apply call -> first response from the new set), "
              f"{len(lat)} switches: p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {lat[-1]:.2f} ms")
    finally:
        for router in routers:
            with contextlib.suppress(Exception):
                asyncio.run(router.stop())
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
            if proc.poll() is None:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
