"""Canary: how fast a bad canary is taken out, and what the router's metrics cost (not a test).

    python bench/canary.py [--runs 5] [--interval 0.5] [--duration 5]

(a) Time from the onset of errors in a canary to traffic fully back on stable: a real
    controller, router and hosts in a throwaway project; v1 serves, then a canary whose
    every answer is a 500 is deployed under steady load. A client loop timestamps every
    response; the time is from the first 500 a client saw from the canary to the last canary
    response. Goal: at most one analysis interval + 10 ms. Median over --runs deployments.
(b) Router requests/s with metrics on versus off (same backends, wrk, interleaved runs,
    medians). Goal: metrics cost under 10%.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from hinotori.cli import controlcmds
from hinotori.controller.client import ControllerClient
from hinotori.examples import example_dir
from hinotori.model import Backend, RoutingTable, ServiceRoute
from hinotori.project import Project
from hinotori.releases import bake_service, config_with_env, ensure_release
from hinotori.router.builtin import BuiltinRouter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import record
from router import free_port, wait_port, wrk

CANARY = """
[services.web.strategy]
kind = "canary"
steps = [20, 100]
pause = "30s"

[services.web.strategy.analysis]
interval = "{interval}s"
min_requests = 10
max_error_rate = 0.05
"""


def client_loop(address: str, stop: threading.Event, log: list[tuple[float, str, int]]) -> None:
    import http.client

    host, _, port = address.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    while not stop.is_set():
        try:
            conn.request("GET", "/")
            r = conn.getresponse()
            r.read()
            log.append((time.perf_counter(), r.headers.get("X-Hello-Version", "?"), r.status))
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection(host, int(port), timeout=10)
        time.sleep(0.001)


def bad_canary_times(runs: int, interval: float) -> list[float]:
    directory = Path(tempfile.mkdtemp(prefix="hinotori-bench-canary-"))
    shutil.copytree(example_dir("hello"), directory, dirs_exist_ok=True)
    spec = directory / "hinotori.toml"
    spec.write_text(spec.read_text().replace("127.0.0.1:8080", f"127.0.0.1:{free_port()}")
                    .replace("replicas = 3", "replicas = 2")
                    + CANARY.format(interval=interval))
    project = Project.load(directory)
    times = []
    try:
        controlcmds._start_detached(project)
        client = ControllerClient(project)
        bake_service(project, "web")
        client.follow(client.start_deployment("web", "deploy", strategy="blue-green"),  # type: ignore[arg-type]
                      lambda _: None)
        for i in range(runs):
            bad = ensure_release(project, "web", config=config_with_env(
                project, "web", {"HELLO_ERROR_RATE": "1", "HELLO_VERSION": f"bad{i}"}),
                reason="bench: a canary that fails every request").release
            log: list[tuple[float, str, int]] = []
            stop = threading.Event()
            loops = [threading.Thread(target=client_loop,
                                      args=(project.spec.router.listen, stop, log))
                     for _ in range(8)]
            for t in loops:
                t.start()
            dep = client.follow(client.start_deployment("web", "deploy", release=bad.number),  # type: ignore[arg-type]
                                lambda _: None)
            time.sleep(0.3)
            stop.set()
            for t in loops:
                t.join()
            assert dep["state"] == "failed", dep
            canary = sorted(t for t, version, _ in log if version == f"bad{i}")
            onset = min(t for t, version, status in log if version == f"bad{i}"
                        and status == 500)
            times.append((canary[-1] - onset) * 1000)
        client.close()
    finally:
        controlcmds.down(spec=directory)
        shutil.rmtree(directory, ignore_errors=True)
    return times


def metrics_cost(runs: int, duration: float) -> tuple[float, float]:
    work = Path(tempfile.mkdtemp(prefix="hinotori-bench-metrics-"))
    ports = [free_port(), free_port()]
    backend = subprocess.Popen([sys.executable, str(Path(__file__).parent / "backend.py"),
                                str(ports[0]), "a", str(ports[1]), "b"])
    routers = []
    try:
        for p in ports:
            wait_port(p)
        table = RoutingTable(1, (ServiceRoute("bench", tuple(
            Backend(f"b{i}", f"127.0.0.1:{p}", 1) for i, p in enumerate(ports))),))
        for metrics in (True, False):
            r = BuiltinRouter(work / str(metrics), f"127.0.0.1:{free_port()}", metrics=metrics)
            asyncio.run(r.start())
            asyncio.run(r.apply(table))
            routers.append(r)
        on, off = [], []
        for _ in range(runs):
            on.append(wrk(int(routers[0].listen.rpartition(":")[2]), duration)["rps"])
            off.append(wrk(int(routers[1].listen.rpartition(":")[2]), duration)["rps"])
        return statistics.median(on), statistics.median(off)
    finally:
        for r in routers:
            asyncio.run(r.stop())
        backend.terminate()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--interval", type=float, default=0.5)
    ap.add_argument("--duration", type=float, default=5.0)
    args = ap.parse_args()
    times = sorted(bad_canary_times(args.runs, args.interval))
    goal = args.interval * 1000 + 10
    print(f"(a) onset of canary errors -> traffic fully back on stable, {len(times)} canaries, "
          f"analysis interval {args.interval * 1000:.0f} ms:")
    print(f"    median {statistics.median(times):.0f} ms, max {times[-1]:.0f} ms "
          f"(goal <= {goal:.0f} ms): {'met' if statistics.median(times) <= goal else 'MISSED'}")
    record("canary", "onset of canary errors -> traffic back on stable, median",
           statistics.median(times), unit="ms", goal=f"<= {goal:.0f}",
           detail=f"{len(times)} canaries, analysis interval {args.interval * 1000:.0f} ms")
    record("canary", "onset of canary errors -> traffic back on stable, max", times[-1],
           unit="ms")
    on, off = metrics_cost(args.runs, args.duration)
    print(f"(b) router req/s, wrk -c50, medians of {args.runs}: metrics on {on:.0f}, off {off:.0f}"
          f" -> metrics cost {(1 - on / off) * 100:.1f}% (goal < 10%)")
    record("canary", "router req/s with metrics on", on, unit="req/s")
    record("canary", "what the router's metrics cost in req/s", (1 - on / off) * 100, unit="%",
           goal="< 10")


if __name__ == "__main__":
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: apt-get install wrk")
    main()
