"""Normal clients beside hostile ones, through the built-in router and HAProxy (not a test).

    python bench/hostile.py [--runs 3] [--duration 15] [--clients 20] [--slowloris 200]
                            [--attacks none,flood,slowloris]

Both data planes run side by side in one invocation (the built-in router with 1 worker and
HAProxy driven by HaproxyRouter with 1 thread, same backend: bench/backend.py, default request
timeouts: 10 s). For each router and each attack, for --duration seconds:

* ``flood``: one attacker sends ``GET`` with a single header 64 MB long and no CRLF, again and
  again on new connections (what the router answers, and after how many bytes, is reported);
* ``slowloris``: --slowloris connections send a request head one byte a second, reconnecting
  whenever the router closes one;
* ``none``: no attacker, the reference.

Meanwhile --clients normal clients each send ``GET /`` on a new connection, one after the other
with a 50 ms pause. Printed per router and attack, medians over --runs: the normal clients' p50,
p99 and max latency, how many were answered (of how many sent), how many waited over 0.5 s (goal:
all answered, none over 0.5 s), and the router worker's peak RSS. The attacker runs in its own
process, so its own CPU use does not stall the clients' event loop; each scenario gets freshly
started routers, so a peak RSS is that attack's own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from results import record  # bench/results.py, beside this script
from router import free_port, wait_port  # bench/router.py, beside this script

from hinotori.model import Backend, RoutingTable, ServiceRoute
from hinotori.router.builtin import BuiltinRouter
from hinotori.router.haproxy import HaproxyRouter

HERE = Path(__file__).resolve().parent
ATTACKS = ("none", "flood", "slowloris")
GOAL_MS = 500.0
FLOOD_BYTES = 64 << 20
REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
SLOW_HEAD = b"GET / HTTP/1.1\r\nHost: bench\r\nX-Slow: "


def status_of(data: bytes) -> str:
    return data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/1.") else "none"


# -- attackers (run in a child process: python bench/hostile.py --attack KIND --port P) -------

def flood(port: int, duration: float) -> dict[str, object]:
    deadline = time.monotonic() + duration
    answers: Counter[str] = Counter()
    accepted: list[int] = []
    piece = b"a" * (1 << 20)
    while time.monotonic() < deadline:
        sent = 0
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            try:
                s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nX-Flood: ")
                while sent < FLOOD_BYTES and time.monotonic() < deadline:
                    s.sendall(piece)
                    sent += len(piece)
            except OSError:
                pass
            try:
                answers[status_of(s.recv(200))] += 1
            except OSError:
                answers["reset"] += 1
        accepted.append(sent)
    return {"floods": len(accepted), "answers": dict(answers),
            # what send() took before the refusal: the router's reads plus kernel buffers
            "median MB sent before refused": round(statistics.median(accepted) / 2**20, 1)}


async def slowloris(port: int, duration: float, connections: int) -> dict[str, object]:
    deadline = time.monotonic() + duration
    answers: Counter[str] = Counter()
    longest: list[float] = []

    async def one() -> None:
        while time.monotonic() < deadline:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.1)
                continue
            opened = time.monotonic()
            writer.write(SLOW_HEAD)
            got = b""
            with contextlib.suppress(OSError):
                while time.monotonic() < deadline:
                    try:
                        got = await asyncio.wait_for(reader.read(200), 1.0)
                        break  # an answer or EOF: the router let go of us
                    except TimeoutError:
                        writer.write(b"a")
            if time.monotonic() < deadline:
                answers[status_of(got) if got else "closed"] += 1
                longest.append(time.monotonic() - opened)
            writer.transport.abort()

    await asyncio.gather(*(one() for _ in range(connections)))
    return {"answers": dict(answers),
            "longest held s": round(max(longest), 1) if longest else None}


def attacker_main(kind: str, port: int, duration: float, connections: int) -> None:
    if kind == "flood":
        result = flood(port, duration)
    else:
        result = asyncio.run(slowloris(port, duration, connections))
    print(json.dumps(result), flush=True)


# -- the normal clients and the measurement ----------------------------------------------------

async def normal_clients(port: int, clients: int, duration: float) -> tuple[list[float], int]:
    """(latencies in ms of the answered requests, requests sent)."""
    deadline = time.monotonic() + duration
    latencies: list[float] = []
    sent = 0

    async def one() -> None:
        nonlocal sent
        while time.monotonic() < deadline:
            sent += 1
            start = time.perf_counter()
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port), 5.0)
                writer.write(REQUEST)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
                if head.startswith(b"HTTP/1.1 200"):
                    latencies.append((time.perf_counter() - start) * 1000)
                writer.transport.abort()
            except (OSError, TimeoutError, asyncio.IncompleteReadError):
                pass
            await asyncio.sleep(0.05)

    await asyncio.gather(*(one() for _ in range(clients)))
    return latencies, sent


class PeakRss:
    """The highest VmRSS of a process, sampled every 20 ms in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak_kb = pid, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError), open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        self.peak_kb = max(self.peak_kb, int(line.split()[1]))
            self._stop.wait(0.02)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_kb / 1024


def scenario(port: int, pid: int, attack: str, args: argparse.Namespace) -> dict[str, object]:
    rss = PeakRss(pid)
    attacker = None
    if attack != "none":
        attacker = subprocess.Popen(
            [sys.executable, __file__, "--attack", attack, "--port", str(port),
             "--duration", str(args.duration + 1), "--slowloris", str(args.slowloris)],
            stdout=subprocess.PIPE, text=True)
        time.sleep(1.0)  # the attack is under way before the normal clients start
    latencies, sent = asyncio.run(normal_clients(port, args.clients, args.duration))
    seen: object = None
    if attacker is not None:
        out, _ = attacker.communicate(timeout=60)
        seen = json.loads(out) if out.strip() else None
    peak = rss.stop()
    lat = sorted(latencies)
    return {"answered": len(lat), "sent": sent,
            "p50": lat[len(lat) // 2] if lat else float("nan"),
            "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else float("nan"),
            "max": lat[-1] if lat else float("nan"),
            "over": sum(1 for x in lat if x > GOAL_MS) + sent - len(lat),
            "rss": peak, "attacker": seen}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=float, default=15.0,
                    help="seconds per scenario (above the 10 s request timeout, so that "
                         "slowloris connections meet it)")
    ap.add_argument("--clients", type=int, default=20, help="normal clients")
    ap.add_argument("--slowloris", type=int, default=200, help="slowloris connections")
    ap.add_argument("--attacks", default=",".join(ATTACKS))
    ap.add_argument("--attack", choices=("flood", "slowloris"), help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.attack:
        attacker_main(args.attack, args.port, args.duration, args.slowloris)
        return
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    if not attacks or any(a not in ATTACKS for a in attacks):
        sys.exit(f"--attacks: choose from {', '.join(ATTACKS)}")
    if not shutil.which("haproxy"):
        sys.exit("haproxy is not installed: apt-get install haproxy")
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    work = Path(tempfile.mkdtemp(prefix="hinotori-bench-hostile-"))
    backend: subprocess.Popen[bytes] | None = None
    try:
        bport = free_port()
        backend = subprocess.Popen([sys.executable, str(HERE / "backend.py"), str(bport), "a"],
                                   stdout=subprocess.DEVNULL)
        wait_port(bport)
        table = RoutingTable(1, (ServiceRoute("bench", (Backend("a", f"127.0.0.1:{bport}", 1),)),))
        results: dict[tuple[str, str], list[dict[str, object]]] = {}
        for run in range(args.runs):
            for attack in attacks:
                for name in ("builtin", "haproxy"):
                    # A fresh router each time: a peak RSS is this attack's, not a leftover.
                    with serving(name, work / f"{name}-{run}-{attack}", table) as (port, pid):
                        r = scenario(port, pid, attack, args)
                    results.setdefault((attack, name), []).append(r)
                    print(f"run {run + 1} {attack:<9} {name:<8} answered {r['answered']}/"
                          f"{r['sent']}, p99 {r['p99']:.1f} ms, max {r['max']:.1f} ms, "
                          f"peak RSS {r['rss']:.0f} MB; attacker: {r['attacker']}", flush=True)
        report(results, args)
    except KeyboardInterrupt:
        print("interrupted; cleaning up", file=sys.stderr)
    finally:
        if backend is not None:
            backend.terminate()
            backend.wait(5)
        shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def serving(name: str, state: Path, table: RoutingTable) -> Iterator[tuple[int, int]]:
    """(port, worker pid) of a router of kind ``name`` serving ``table``; stopped on exit."""
    port = free_port()
    router: BuiltinRouter | HaproxyRouter
    if name == "haproxy":
        router = HaproxyRouter(state, f"127.0.0.1:{port}", latency_log=False)
    else:
        router = BuiltinRouter(state, f"127.0.0.1:{port}")
    try:
        asyncio.run(router.start())
        asyncio.run(router.apply(table))
        if isinstance(router, HaproxyRouter):
            assert router.supervisor is not None
            pid = int(asyncio.run(router.supervisor.worker_info())["Pid"])
        else:
            pid = int((state / "router-0.pid").read_text())
        yield port, pid
    finally:
        with contextlib.suppress(Exception):
            asyncio.run(router.stop())


def report(results: dict[tuple[str, str], list[dict[str, object]]],
           args: argparse.Namespace) -> None:
    print(f"\nmedians over {args.runs} runs; {args.clients} normal clients, {args.duration:.0f} s "
          f"per scenario (goal: all answered, none over {GOAL_MS:.0f} ms)")
    print(f"{'attack':<10} {'router':<8} {'answered':>13} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'max ms':>8} {'>0.5 s':>7} {'peak RSS MB':>12}")
    for (attack, name), rs in results.items():
        def med(key: str, rs: list[dict[str, object]] = rs) -> float:
            return statistics.median(float(r[key]) for r in rs)  # type: ignore[arg-type]
        answered = f"{med('answered'):.0f}/{med('sent'):.0f}"
        print(f"{attack:<10} {name:<8} {answered:>13} {med('p50'):>8.1f} {med('p99'):>8.1f} "
              f"{med('max'):>8.1f} {med('over'):>7.0f} {med('rss'):>12.0f}")
        # The goal holds for every run, so the worst run is the one held against it.
        who = f"{'no attacker' if attack == 'none' else attack}, {name}"
        record("hostile", f"{who}: normal requests unanswered or over 0.5 s (worst run)",
               max(float(r["over"]) for r in rs),  # type: ignore[arg-type]
               goal="== 0", detail=f"of {med('sent'):.0f} sent")
        record("hostile", f"{who}: normal clients' p99", med("p99"), unit="ms")
        record("hostile", f"{who}: router worker's peak RSS", med("rss"), unit="MB")


if __name__ == "__main__":
    main()
