"""Instructions per request of HAProxy's worker: hinotori's config against the hand-written
one, under callgrind (not a test).

    python bench/haproxy_profile.py [--requests 4000] [--connections 1] [--sample 20]

Wall time and req/s on a shared machine swing with its load (and with the kernel's scheduling
of sessions); the instructions a worker executes per request do not. Both HAProxies run under
``valgrind --tool=callgrind`` (hinotori's as HaproxyRouter starts it, master and worker, its
latency log read by the router's reader, 1 request in ``--sample`` logged); a client sends
``--requests`` requests after a warm-up, counted alone; then again once the reader has
stopped (its polling is time-based: under valgrind's slow requests it weighs more per request
than at full speed). One connection (the default) gives the same count to within a few
instructions run after run; more connections batch requests per wake-up as wrk does.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import router_profile as rp  # bench/ is sys.path[0] when this runs as a script
from results import record
from router import haproxy_config

from hinotori.model import Backend, RoutingTable, ServiceRoute
from hinotori.router.haproxy import HaproxyRouter, process

HERE = Path(__file__).resolve().parent
WRAPPER = """#!/bin/sh
case "$1" in
  -W) exec valgrind --tool=callgrind --instr-atstart=no --trace-children=yes \\
        --callgrind-out-file={out}.%p {haproxy} "$@" ;;
  *) exec {haproxy} "$@" ;;
esac
"""


def count(pid: int, out: str, port: int, requests: int, connections: int) -> float:
    """Instructions per request of process ``pid`` (callgrind output files ``out.<pid>*``)."""
    asyncio.run(rp.drive(port, 500, connections))
    rp.callgrind_control("-z", pid=pid)
    rp.callgrind_control("-i", "on", pid=pid)
    asyncio.run(rp.drive(port, requests, connections))
    rp.callgrind_control("-i", "off", pid=pid)
    rp.callgrind_control("-d", pid=pid)
    dump = sorted(glob.glob(f"{out}.{pid}.*"))[-1]
    return rp.total_instructions(Path(dump)) / ((requests // connections) * connections)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=4000, help="requests counted")
    ap.add_argument("--connections", type=int, default=1)
    ap.add_argument("--sample", type=int, default=20, help="hinotori's latency log: 1 in N")
    args = ap.parse_args()
    haproxy = shutil.which("haproxy")
    if haproxy is None or not shutil.which("callgrind_control"):
        sys.exit("needs haproxy and valgrind: apt-get install haproxy valgrind")
    work = Path(tempfile.mkdtemp(prefix="hinotori-bench-hprofile-"))
    procs: list[subprocess.Popen[bytes]] = []
    router: HaproxyRouter | None = None
    try:
        ports = [rp.free_port(), rp.free_port()]
        procs.append(subprocess.Popen([sys.executable, str(HERE / "backend.py"), str(ports[0]),
                                       "a", str(ports[1]), "a"], stdout=subprocess.DEVNULL))
        port = rp.free_port()
        cfg = haproxy_config(port, ports, 1, work / "hand.cfg")
        hand = subprocess.Popen(["valgrind", "--tool=callgrind", "--instr-atstart=no",
                                 f"--callgrind-out-file={work}/hand.%p", haproxy, "-db", "-f",
                                 str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(hand)
        rp.wait_port(port, hand, 120)
        theirs = count(hand.pid, f"{work}/hand", port, args.requests, args.connections)

        wrapper = work / "haproxy-callgrind"
        wrapper.write_text(WRAPPER.format(out=work / "hinotori", haproxy=haproxy))
        wrapper.chmod(0o700)
        process.START_TIMEOUT = 120.0  # HAProxy starts slowly under valgrind
        port = rp.free_port()
        router = HaproxyRouter(work / "router", f"127.0.0.1:{port}", haproxy=str(wrapper))

        async def start() -> int:
            assert router is not None and router.log is not None
            await router.start()
            await router.apply(RoutingTable(1, (ServiceRoute("bench", tuple(
                Backend(f"a{i}", f"127.0.0.1:{p}", 1) for i, p in enumerate(ports))),)))
            router.log.set_sample = None  # N fixed: the same work in every run
            await router._set_sample(args.sample)
            assert router.supervisor is not None
            return int((await router.supervisor.worker_info())["Pid"])

        loop = asyncio.new_event_loop()  # the reader streams the log in this loop's thread
        pid = loop.run_until_complete(start())
        threading.Thread(target=loop.run_forever, daemon=True).start()
        ours = count(pid, f"{work}/hinotori", port, args.requests, args.connections)

        async def quiet() -> None:  # the reader's task ends in its own loop
            assert router is not None and router.log is not None
            router.log.close()
            await asyncio.sleep(0.1)

        asyncio.run_coroutine_threadsafe(quiet(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        # The reader asks HAProxy 4 times a second (show info, a dump at most once a second):
        # under valgrind that is a few hundred instructions per request, at wrk's rates ~10.
        alone = count(pid, f"{work}/hinotori", port, args.requests, args.connections)
        print(f"instructions per request, {args.connections} connection(s): hand-written "
              f"{theirs:,.0f}, hinotori {ours:,.0f} (latency log 1 in {args.sample}): "
              f"hand-written/hinotori {theirs / ours:.3f}x; without the reader's polling "
              f"{alone:,.0f}: {theirs / alone:.3f}x")
        record("haproxy_profile", "haproxy-hinotori/hand-written instructions per request "
               "(hand/ours)", theirs / ours, unit="x", detail=f"{ours:,.0f} vs {theirs:,.0f}")
        record("haproxy_profile", "haproxy-hinotori instructions per request", ours,
               detail=f"{alone:,.0f} without the latency reader's polling")
    finally:
        if router is not None:
            with_loop = asyncio.new_event_loop()
            with_loop.run_until_complete(router.stop())
            with_loop.close()
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
