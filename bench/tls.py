"""HTTPS through hinotori's routers against a hand-written HAProxy, side by side (not a test).

    python bench/tls.py [--duration 5] [--runs 3] [--workers 1,2]

One certificate (ECDSA P-256, signed by a throwaway CA) serves every configuration; the same two
backends (bench/backend.py) sit behind all of them. Per configuration, interleaved over --runs
rounds so machine noise hits all alike, medians printed with ratios:

* keep-alive HTTPS: ``wrk -t1 -c50 --latency`` (req/s, p50, p99): the cost of the TLS record
  layer, handshakes amortised;
* new connections: ``hey -c 50 -disable-keepalive`` (one TCP connection and one full TLS
  handshake per request: the handshake rate).

Beside req/s, the proxy's CPU time per request (its processes' CPU seconds read around each
run): on a shared 2-core machine req/s swings with whatever else runs, CPU per request much
less, so the ratios of requests per CPU-second are the steadier comparison.

Configurations: the built-in router (hinotori.router.builtin) with N workers, HAProxy driven by
HaproxyRouter (generated config, crt-list, Runtime API; its latency log read by a thread as
the controller would) with N threads, the same without the latency log (to tell its cost from
TLS's), and a hand-written HAProxy config with N threads and ``bind ... ssl crt <pem>``.
Plain HTTP through the built-in router is printed for scale.
Everything started here is stopped on exit, Ctrl-C and SIGTERM included.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from results import record  # bench/results.py, beside
from router import (  # bench/router.py, beside
    LogReader,
    free_port,
    haproxy_config,
    stop_all,
    wait_port,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hinotori.model import Backend, RoutingTable, ServiceRoute  # noqa: E402
from hinotori.processes import cpu_seconds  # noqa: E402
from hinotori.router.builtin import BuiltinRouter  # noqa: E402
from hinotori.router.haproxy import HaproxyRouter  # noqa: E402
from hinotori.router.tls import CertPair  # noqa: E402
from tests.support import make_ca, make_leaf  # noqa: E402

HERE = Path(__file__).resolve().parent
NAME = "bench.test"
NO_LOG = "haproxy (no latency log)"  # hinotori's HAProxy without its latency log: its cost


def make_certs(work: Path) -> tuple[Path, Path, Path]:
    """A CA and a leaf for NAME: (leaf cert with its chain, leaf key, cert+key combined for
    HAProxy), made by the tests' own helpers."""
    ca = make_ca(work / "ca")
    cert, key, combined = work / "leaf.pem", work / "leaf.key", work / "combined.pem"
    make_leaf(ca, [NAME], cert, key, days=7)
    cert.write_bytes(cert.read_bytes() + ca[2].read_bytes())  # the chain, as served
    combined.write_bytes(cert.read_bytes() + key.read_bytes())
    for path in (cert, key, combined):
        path.chmod(0o600)
    return cert, key, combined


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url: str, duration: float) -> dict[str, float]:
    out = subprocess.run(["wrk", "-t1", "-c50", f"-d{round(duration)}s", "--latency", url],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    pct = {p: re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M) for p in ("50", "99")}
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    total = float(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return {"rps": rps, "p50": _ms(*pct["50"].groups()),  # type: ignore[union-attr]
            "p99": _ms(*pct["99"].groups()),  # type: ignore[union-attr]
            "errors": 1.0 if bad else 0.0, "requests": total}


def hey(url: str, duration: float) -> dict[str, float]:
    """New connection (and full TLS handshake) per request."""
    out = subprocess.run(["hey", "-z", f"{round(duration)}s", "-c", "50", "-disable-keepalive",
                          url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%+ in ([\d.]+) secs", out)
    codes = dict(re.findall(r"\[(\d+)\]\s+(\d+) responses", out))
    errors = sum(int(n) for c, n in codes.items() if c != "200") + \
        (1 if "Error distribution" in out else 0)
    return {"rps": rps, "p99": float(p99.group(1)) * 1000 if p99 else 0.0,
            "errors": float(errors), "requests": float(sum(int(n) for n in codes.values()))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per run")
    ap.add_argument("--runs", type=int, default=3, help="runs per configuration (medians)")
    ap.add_argument("--workers", default="1,2", help="worker/thread counts to compare")
    args = ap.parse_args()
    counts = [int(n) for n in args.workers.split(",") if n.strip()]
    for tool in ("wrk", "hey", "haproxy"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is not installed: apt-get install {tool}")
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    work = Path(tempfile.mkdtemp(prefix="hinotori-bench-tls-"))
    procs: list[subprocess.Popen[bytes]] = []
    routers: dict[str, BuiltinRouter | HaproxyRouter] = {}
    reader: LogReader | None = None
    try:
        cert, key, combined = make_certs(work)
        ports = [free_port() for _ in range(2)]
        procs.append(subprocess.Popen([sys.executable, str(HERE / "backend.py"),
                                       str(ports[0]), "a", str(ports[1]), "a"],
                                      stdout=subprocess.DEVNULL))
        for p in ports:
            wait_port(p)
        table = RoutingTable(version=1, routes=(ServiceRoute(service="bench", backends=tuple(
            Backend(f"a{i}", f"127.0.0.1:{p}", 1) for i, p in enumerate(ports))),))
        targets: dict[str, str] = {}  # name -> URL
        for n in counts:
            for kind in ("builtin", "haproxy", NO_LOG):
                port, tls_port = free_port(), free_port()
                options = {"tls_listen": f"127.0.0.1:{tls_port}",
                           "certs": [CertPair(cert, key)]}
                router: BuiltinRouter | HaproxyRouter = (
                    BuiltinRouter(work / f"b{n}", f"127.0.0.1:{port}", workers=n, **options)
                    if kind == "builtin" else
                    HaproxyRouter(work / f"h{n}{kind == NO_LOG}", f"127.0.0.1:{port}", workers=n,
                                  latency_log=kind != NO_LOG, **options))
                name = f"hinotori {kind}, {n}"
                routers[name] = router
                asyncio.run(router.start())
                asyncio.run(router.apply(table))
                targets[name] = f"https://127.0.0.1:{tls_port}/"
                if kind == "builtin" and n == counts[0]:
                    targets[f"(plain HTTP) builtin, {n}"] = f"http://127.0.0.1:{port}/"
            port = free_port()
            cfg = haproxy_config(port, ports, n, work / f"haproxy{n}.cfg",
                                 f" ssl crt {combined} alpn http/1.1")
            procs.append(subprocess.Popen(["haproxy", "-db", "-f", str(cfg)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            wait_port(port)
            targets[f"hand-written haproxy, {n}"] = f"https://127.0.0.1:{port}/"
        reader = LogReader([r for r in routers.values()
                            if isinstance(r, HaproxyRouter) and r.log is not None])
        cpu = cpu_meters(routers, procs, counts, reader)
        measure(targets, counts, args.duration, args.runs, reader.settle, cpu)
    except KeyboardInterrupt:
        print("interrupted; cleaning up", file=sys.stderr)
    finally:
        stop_all(reader, routers, procs, work)


def cpu_meters(routers: dict[str, BuiltinRouter | HaproxyRouter],
               procs: list[subprocess.Popen[bytes]], counts: list[int],
               reader: LogReader) -> dict[str, Callable[[], float]]:
    """Per target, the CPU seconds its proxy has used so far: every built-in worker; HAProxy's
    worker plus the latency-log reader thread (as the controller would run it); the
    hand-written HAProxy's process. CPU per request does not depend on how the busy machine
    shared its cores during a run, which req/s does."""
    out: dict[str, Callable[[], float]] = {}
    for name, r in routers.items():
        if isinstance(r, HaproxyRouter):
            assert r.supervisor is not None
            pid = int(asyncio.run(r.supervisor.worker_info())["Pid"])
            out[name] = lambda pid=pid: cpu_seconds(pid) + reader.cpu()
        else:
            pids = [int(f.read_text()) for f in r.state_dir.glob("router-*.pid")]
            out[name] = lambda pids=pids: sum(cpu_seconds(p) for p in pids)
            out[f"(plain HTTP) builtin, {r.workers}"] = out[name]
    for n, proc in zip(counts, procs[1:], strict=True):  # procs[0] is the backends
        out[f"hand-written haproxy, {n}"] = lambda pid=proc.pid: cpu_seconds(pid)
    return out


def measure(targets: dict[str, str], counts: list[int], duration: float, runs: int,
            settle: Callable[[], None], cpu: dict[str, Callable[[], float]]) -> None:
    keep: dict[str, list[dict[str, float]]] = {n: [] for n in targets}
    new: dict[str, list[dict[str, float]]] = {n: [] for n in targets}
    order = list(targets.items())
    shuffle = random.Random(1).shuffle
    for _ in range(runs):
        shuffle(order)
        for name, url in order:
            for tool, samples in ((wrk, keep), (hey, new)):
                before = cpu[name]()
                result = tool(url, duration)
                settle()
                result["cpu_us"] = (cpu[name]() - before) / max(1.0, result["requests"]) * 1e6
                samples[name].append(result)

    def med(samples: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, float]]:
        return {n: {k: statistics.median(s[k] for s in got) for k in got[0]}
                for n, got in samples.items()}

    mk, mn = med(keep), med(new)
    print(f"medians of {runs} interleaved runs of {duration:g}s, 2 backends, 1 ECDSA P-256 "
          f"certificate; N = router workers / HAProxy threads")
    print(f"{'target':<34}{'keep-alive req/s':>17}{'p50 ms':>8}{'p99 ms':>8}{'CPU us':>8}"
          f"{'new conn/s':>12}{'p99 ms':>8}{'CPU us':>8}")
    for name in targets:
        k, n = mk[name], mn[name]
        flag = "  (errors!)" if k["errors"] or n["errors"] else ""
        print(f"{name:<34}{k['rps']:>17.0f}{k['p50']:>8.2f}{k['p99']:>8.2f}{k['cpu_us']:>8.1f}"
              f"{n['rps']:>12.0f}{n['p99']:>8.1f}{n['cpu_us']:>8.0f}{flag}")
    for c in counts:
        hand_k, hand_n = mk[f"hand-written haproxy, {c}"], mn[f"hand-written haproxy, {c}"]
        for kind in ("builtin", "haproxy", NO_LOG):
            k, n = mk[f"hinotori {kind}, {c}"], mn[f"hinotori {kind}, {c}"]
            print(f"hinotori {kind} / hand-written haproxy, N={c}: keep-alive req/s "
                  f"{k['rps'] / hand_k['rps']:.2f}x, p99 {k['p99'] / hand_k['p99']:.2f}x, "
                  f"requests per CPU-second {hand_k['cpu_us'] / k['cpu_us']:.2f}x; "
                  f"handshakes/s {n['rps'] / hand_n['rps']:.2f}x, handshakes per CPU-second "
                  f"{hand_n['cpu_us'] / n['cpu_us']:.2f}x")
            who = f"hinotori {kind} / hand-written HAProxy, N={c}"
            record("tls", f"{who}: keep-alive HTTPS req/s", k["rps"] / hand_k["rps"], unit="x")
            record("tls", f"{who}: keep-alive requests per CPU-second",
                   hand_k["cpu_us"] / k["cpu_us"], unit="x")
            record("tls", f"{who}: handshakes/s", n["rps"] / hand_n["rps"], unit="x")
            record("tls", f"{who}: handshakes per CPU-second", hand_n["cpu_us"] / n["cpu_us"],
                   unit="x")


if __name__ == "__main__":
    main()
