"""The HAProxy router (hinotori.router.haproxy) against a real HAProxy, then end to end.

First the router object on its own: routine changes (weights, switches, drains, servers added
and removed, canary release maps) go through the Runtime API without a reload, which the
master's worker pid and the worker's own ``show info`` Pid/Uptime prove; a new service is a
seamless reload under load; a fresh router object adopts the running HAProxy; stats are counted
per host. Then through the real CLI with ``[router] kind = "haproxy"``: deploys and rollbacks
under keep-alive load with zero failed requests, and a bad canary rolled back by an analysis
that reads HAProxy's stats.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hinotori.errors import RouterError
from hinotori.loadgen import BackgroundLoad
from hinotori.model import LATENCY_BUCKETS_MS, Backend, RoutingTable, ServiceRoute
from hinotori.router import sched
from hinotori.router.base import Router
from hinotori.router.haproxy import HaproxyRouter, config, converge, retired, runtime
from hinotori.router.haproxy.router import socket_dir
from tests.support import (
    CANARY_SPEC,
    CliProject,
    free_port,
    make_project,
    require,
    teardown,
    wait_until,
)
from tests.support_backends import (
    AppBackend,
    Backends,
    Conn,
    Response,
    fetch,
    route,
    table,
)

pytestmark = pytest.mark.integration

HAVE_HAPROXY = shutil.which("haproxy") is not None


# -- fixtures and helpers ----------------------------------------------------------------------

@pytest.fixture
def router(tmp_path: Path) -> Iterator[HaproxyRouter]:
    require(HAVE_HAPROXY, "haproxy is not installed (apt-get install haproxy)")
    r = HaproxyRouter(tmp_path / "router", f"127.0.0.1:{free_port()}")
    asyncio.run(r.start())
    yield r
    asyncio.run(r.stop())


_versions = iter(range(1000, 10**6))


def apply(r: HaproxyRouter, *routes: ServiceRoute) -> RoutingTable:
    t = table(next(_versions), *routes)
    asyncio.run(r.apply(t))
    return t


def port_of(r: HaproxyRouter) -> int:
    return int(r.listen.rpartition(":")[2])


async def identity(r: HaproxyRouter) -> tuple[int | None, list[int], str, int]:
    """(master pid, current workers from the master, worker's own Pid, its Uptime_sec)."""
    sup = r.supervisor
    assert sup is not None
    current, _ = await sup.workers()
    info = await sup.worker_info()
    return sup.master_pid(), current, info["Pid"], int(info["Uptime_sec"])


async def servers_in(r: HaproxyRouter, backend: str) -> set[str]:
    (text,) = await runtime.run(r.stats_socket, [f"show servers state {backend}"])
    return {line.split()[3] for line in text.splitlines()
            if line[:1].isdigit() and len(line.split()) > 4}


async def live_backend(r: HaproxyRouter, service: str) -> str:
    """The backend the live map sends ``service``'s ordinary requests to (config.py)."""
    (text,) = await runtime.run(r.stats_socket, [f"show map {config.live_file(r.settings)}"])
    return converge.parse_map(text).get(service, service)


async def in_maintenance(r: HaproxyRouter) -> set[str]:
    (text,) = await runtime.run(r.stats_socket, ["show servers state"])
    return {f"{be}/{name}" for be, servers in converge.parse_servers_state(text).items()
            if be != config.LIVE_FLAGS for name, srv in servers.items() if srv.maint}


def backends_seen(port: int, n: int, headers: list[str] | None = None) -> Counter[str]:
    async def run() -> Counter[str]:
        conn = await Conn.open(port)
        seen: Counter[str] = Counter()
        for _ in range(n):
            r = await conn.request(headers=headers)
            assert r.status == 200, (r.status, r.body)
            seen[r.backend or "?"] += 1
        conn.close()
        return seen
    return asyncio.run(run())


# -- the router object -------------------------------------------------------------------------

def test_implements_the_router_protocol(router: HaproxyRouter) -> None:
    assert isinstance(router, Router)
    assert router.kind == "haproxy"
    assert asyncio.run(router.current()) is None
    assert asyncio.run(fetch(port_of(router))).status == 503  # no table yet


def test_the_kept_runtime_connection_is_shut_from_a_later_event_loop(router: HaproxyRouter,
                                                                     backends: Backends) -> None:
    """A CLI command or a test runs each call in its own event loop; the kept Runtime API
    connection of one that ended must still be shut by the next (``stop`` included): an open
    CLI session kept a soft-stopping HAProxy worker alive until SIGTERM, 15 s later."""
    a1 = backends.add("a1")
    apply(router, route(a1.backend(100)))
    apply(router, route(a1.backend(200)))  # a weight: a command down the kept connection

    def cli_sessions() -> int:
        (text,) = asyncio.run(runtime.run(router.stats_socket, ["show sess"]))
        return sum("proto=unix_stream" in line for line in text.splitlines())

    assert cli_sessions() == 2  # the kept one and this question's own

    # Held, as a reference cycle or a traceback may hold it: the shut must not wait for the
    # garbage collector to close the socket.
    held = router._cli._conn
    assert held is not None

    async def close_kept() -> None:  # what stop() does first, in a loop of its own
        router._cli.close()

    asyncio.run(close_kept())
    assert wait_until(lambda: cli_sessions() == 1, 5, 0.05), cli_sessions()
    del held


def test_routine_changes_never_reload(router: HaproxyRouter, backends: Backends) -> None:
    a1, a2, b1, b2, c1 = (backends.add(n) for n in ("a1", "a2", "b1", "b2", "c1"))
    port = port_of(router)
    # A canary service's tables all say sticky (the spec's strategy does): the cookie rule is
    # part of the shape, set by the first table.
    apply(router, route(a1.backend(), a2.backend(), sticky=True))
    before = asyncio.run(identity(router))
    assert before[0] is not None and before[1] == [int(before[2])]

    for _ in range(3):
        # weights
        apply(router, route(a1.backend(300), a2.backend(100), sticky=True))
        seen = backends_seen(port, 40)
        assert 25 <= seen["a1"] <= 35 and seen["a1"] + seen["a2"] == 40, seen
        # blue-green switch to release 2
        apply(router, route(b1.backend(release=2), b2.backend(release=2), sticky=True))
        assert set(backends_seen(port, 10)) == {"b1", "b2"}
        # canary: release 3 at weight 0 but selectable by header; stable = 2
        apply(router, route(b1.backend(release=2), b2.backend(release=2),
                            c1.backend(0, release=3), canary=3, sticky=True))
        assert set(backends_seen(port, 10)) == {"b1", "b2"}
        assert set(backends_seen(port, 5, ["X-Hinotori-Release: canary"])) == {"c1"}
        assert set(backends_seen(port, 5, ["X-Hinotori-Release: stable"])) == {"b1", "b2"}
        assert set(backends_seen(port, 5, ["X-Hinotori-Release: v3"])) == {"c1"}
        assert set(backends_seen(port, 5, ["Cookie: hinotori-svc=v3"])) == {"c1"}
        # drain one host (removed), add one back
        apply(router, route(b1.backend(release=2), sticky=True))
        assert set(backends_seen(port, 6)) == {"b1"}
        apply(router, route(b1.backend(release=2), b2.backend(release=2), sticky=True))
        assert set(backends_seen(port, 6)) == {"b1", "b2"}
        # and back to release 1
        apply(router, route(a1.backend(), a2.backend(), sticky=True))
        assert set(backends_seen(port, 6)) == {"a1", "a2"}

    after = asyncio.run(identity(router))
    assert after[:3] == before[:3], "a routine change reloaded HAProxy"
    assert after[3] >= before[3]
    # Servers that left were deleted once idle; the backend ordinary requests go to (release
    # 1's slot: it takes all the traffic) holds the live ones only.
    assert wait_until(lambda: asyncio.run(router.stats()) is not None and  # sweeps
                      not asyncio.run(in_maintenance(router)), 10, 0.2)
    live = asyncio.run(live_backend(router, "svc"))
    assert live.startswith("svc.r")
    assert asyncio.run(servers_in(router, live)) == {"v1_a1", "v1_a2"}
    assert asyncio.run(router.current()) is not None
    assert asyncio.run(router.current()).route("svc").backends[0].host_id == "a1"  # type: ignore[union-attr]


def test_host_and_path_rules_and_404(router: HaproxyRouter, backends: Backends) -> None:
    api, www, other = backends.add("api"), backends.add("www"), backends.add("other")
    apply(router,
          route(api.backend(), service="api", hosts=("svc.test",), prefix="/api"),
          route(www.backend(), service="www", hosts=("svc.test", "WWW.test:8080")),
          route(other.backend(), service="other", prefix="/other"))
    port = port_of(router)

    async def run() -> None:
        assert (await fetch(port, "/api/x")).backend == "api"
        assert (await fetch(port, "/")).backend == "www"
        assert (await fetch(port, "/", host="www.test:1234")).backend == "www"
        assert (await fetch(port, "/other/1", host="nope.test")).backend == "other"
        # a host route beats a no-host route even with a shorter prefix
        assert (await fetch(port, "/other/1")).backend == "www"
        assert (await fetch(port, "/", host="nope.test")).status == 404
    asyncio.run(run())


def test_in_flight_request_finishes_across_a_switch(router: HaproxyRouter,
                                                   backends: Backends) -> None:
    old, new = backends.add("old"), backends.add("new")
    apply(router, route(old.backend()))
    port = port_of(router)

    async def run() -> None:
        slow = asyncio.create_task(fetch(port, "/slow?ms=800"))
        await asyncio.sleep(0.2)
        await router.apply(table(next(_versions), route(new.backend(release=2))))
        assert (await fetch(port)).backend == "new"
        stats = await router.stats()
        assert stats["old"].active == 1  # draining: still finishing
        # Ordinary requests go to release 2's slot, which holds the new server only; release
        # 1's slot keeps its server (nothing points to it) for a switch back.
        live = await live_backend(router, "svc")
        assert await servers_in(router, live) == {"v2_new"}
        assert "v1_old" in await servers_in(router, "svc.r1" if live != "svc.r1" else "svc.r2")
        r = await slow
        assert (r.status, r.backend) == (200, "old")
        assert (await router.stats())["old"].active == 0
    asyncio.run(run())


def test_haproxy_asks_to_wake_up_soon_and_a_reload_s_worker_too(router: HaproxyRouter,
                                                                backends: Backends) -> None:
    """The master and its workers have the short time slice of router/sched.py; a worker a
    reload forks inherits it from the master."""
    if sched.slice_of(os.getpid()) is None:
        pytest.skip("this kernel shows no se.slice")

    def hinted(pid: int) -> bool:
        threads = os.listdir(f"/proc/{pid}/task")
        return bool(threads) and all(sched.slice_of(int(t)) == sched.SLICE_NS for t in threads)

    a, b = backends.add("sa"), backends.add("sb")
    apply(router, route(a.backend()))
    master, workers, *_ = asyncio.run(identity(router))
    assert master is not None and workers and all(map(hinted, [master, *workers]))
    apply(router, route(a.backend()), route(b.backend(), service="other", hosts=("o.test",)))
    _, after, *_ = asyncio.run(identity(router))
    assert after != workers and all(map(hinted, after))


def test_new_service_is_a_seamless_reload_under_load(router: HaproxyRouter,
                                                    backends: Backends) -> None:
    a, b = backends.add("ra"), backends.add("rb")
    apply(router, route(a.backend()))
    port = port_of(router)
    before = asyncio.run(identity(router))

    async def run() -> tuple[int, list[str], int]:
        stop = asyncio.Event()
        ok, failures, reconnects = 0, [], 0

        async def client() -> None:
            nonlocal ok, reconnects
            conn = await Conn.open(port)
            while not stop.is_set():
                try:
                    r = await conn.request("/")
                except (asyncio.IncompleteReadError, ConnectionError):
                    # The old worker closed an idle keep-alive connection as it stopped; like
                    # every HTTP client, resend an idempotent request on a new connection.
                    conn.close()
                    conn = await Conn.open(port)
                    reconnects += 1
                    r = await conn.request("/")
                if r.status == 200 and r.backend == "ra":
                    ok += 1
                else:
                    failures.append(f"{r.status} {r.backend}")
                if (r.header("connection") or "").lower() == "close":
                    conn.close()
                    conn = await Conn.open(port)
            conn.close()

        tasks = [asyncio.create_task(client()) for _ in range(8)]
        await asyncio.sleep(0.3)
        await router.apply(table(next(_versions), route(a.backend()),
                                 route(b.backend(), service="reports", prefix="/reports")))
        assert (await fetch(port, "/reports/1")).backend == "rb"
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.gather(*tasks)
        return ok, failures, reconnects

    before_stats = asyncio.run(router.stats())["ra"].requests
    ok, failures, reconnects = asyncio.run(run())
    after = asyncio.run(identity(router))
    assert ok > 100 and failures == [], failures
    assert reconnects <= 8, reconnects  # at most once per client connection, at the handover
    assert after[0] == before[0] and after[2] != before[2], "expected one reload by the master"
    # Counters carry over the reload: they only grow. What the old worker answers between the
    # router's last read before the reload and its own exit is not counted (a known gap, see
    # DESIGN.md), and under this load that is up to a few tenths of the total.
    assert asyncio.run(router.stats())["ra"].requests >= before_stats + ok * 0.5


def test_idle_runtime_connections_of_others_do_not_lock_the_router_out(
        router: HaproxyRouter, backends: Backends) -> None:
    """HAProxy serves 10 Runtime API connections at once unless told otherwise; past that a
    connection is accepted and never answered. Twelve idle ones (abandoned router objects'
    kept connections, an operator's socat) leave a switch and a stats read working."""
    a1, a2 = backends.add("a1"), backends.add("a2")
    apply(router, route(a1.backend()))
    idle = []
    try:
        for _ in range(12):
            s = socket.socket(socket.AF_UNIX)
            s.connect(str(router.stats_socket))
            s.sendall(b"prompt\n")
            idle.append(s)
        apply(router, route(a2.backend()))
        assert set(asyncio.run(router.stats())) >= {"a2"}
        assert backends_seen(port_of(router), 4) == Counter({"a2": 4})
    finally:
        for s in idle:
            s.close()
    dropped = HaproxyRouter(router.state_dir, router.listen)

    async def adopt_and_let_go() -> None:
        await dropped.start()
        await dropped.apply(table(next(_versions), route(a1.backend())))
        dropped.disconnect()
        dropped.log.close()  # type: ignore[union-attr]
    asyncio.run(adopt_and_let_go())

    def cli_sessions() -> int:
        (text,) = asyncio.run(runtime.run(router.stats_socket, ["show sess"]))
        return sum("proto=unix_stream" in line for line in text.splitlines())
    assert wait_until(lambda: cli_sessions() <= 2, 5, 0.05), cli_sessions()


def test_a_fresh_router_object_adopts_the_running_haproxy(router: HaproxyRouter,
                                                         backends: Backends) -> None:
    x = backends.add("x")
    t = apply(router, route(x.backend()))
    before = asyncio.run(identity(router))
    again = HaproxyRouter(router.state_dir, router.listen)

    async def run() -> None:
        await again.start()
        assert await again.current() == t
        y = backends.add("y")
        await again.apply(table(next(_versions), route(x.backend(), y.backend())))
        assert await identity(again) == (*before[:3], (await identity(again))[3])
        assert {(await fetch(port_of(router))).backend for _ in range(4)} == {"x", "y"}
        again.log.close()  # type: ignore[union-attr]
    asyncio.run(run())


def test_switches_are_deltas_yet_a_restart_or_another_writer_reads_haproxy_back(
        router: HaproxyRouter, backends: Backends) -> None:
    """An apply sends only what changed since this object's last one. A new router object (a
    controller restart) reads HAProxy back in full, so it repairs what nobody recorded; and an
    object that another one wrote behind (the state file changed) reads it back too."""
    p, q = backends.add("p"), backends.add("q")
    port = port_of(router)
    apply(router, route(p.backend(), q.backend()))
    live = asyncio.run(live_backend(router, "svc"))

    def meddle() -> None:  # HAProxy changed behind every router object's back
        asyncio.run(runtime.run_checked(router.stats_socket,
                                        [f"set server {live}/v1_q state maint"]))

    meddle()
    apply(router, route(p.backend(), q.backend()))  # trusted memory: nothing to send
    assert set(backends_seen(port, 6)) == {"p"}
    restarted = HaproxyRouter(router.state_dir, router.listen, latency_log=False)
    asyncio.run(restarted.start())
    apply(restarted, route(p.backend(), q.backend()))  # the full read finds the meddling
    assert set(backends_seen(port, 6)) == {"p", "q"}
    meddle()
    apply(restarted, route(q.backend(), p.backend()))  # a table written by it ...
    apply(router, route(p.backend(), q.backend()))  # ... so this one's memory is stale
    assert set(backends_seen(port, 6)) == {"p", "q"}


def test_stats_count_per_host_with_latency(router: HaproxyRouter, backends: Backends) -> None:
    fast, slow = backends.add("fast"), backends.add("slow")
    apply(router, route(fast.backend(), slow.backend(0, release=2), canary=2))
    port = port_of(router)

    async def run() -> None:
        for _ in range(10):
            assert (await fetch(port, "/")).backend == "fast"
        for _ in range(3):
            r = await fetch(port, "/slow?ms=120", headers=["X-Hinotori-Release: canary"])
            assert r.backend == "slow"
        assert (await fetch(port, "/nothing", host="x", headers=["Content-Length: x"])).status \
            == 400
        await asyncio.sleep(0.1)  # the log datagrams are read by this loop
    asyncio.run(run())
    stats = asyncio.run(router.stats())
    assert stats["fast"].requests == 10 and stats["fast"].statuses == {"2xx": 10}
    assert stats["slow"].requests == 3 and stats["slow"].active == 0
    assert sum(stats["fast"].latency) == 10
    slow_bucket = next(i for i, bound in enumerate(LATENCY_BUCKETS_MS) if bound >= 120)
    # At least 120 ms each (more on a loaded machine): none in a faster bucket.
    assert sum(stats["slow"].latency[slow_bucket:]) == 3, stats["slow"].latency
    assert stats["slow"].latency_sum_ms >= 3 * 120


def test_latency_log_is_sampled_under_load_and_still_counts_every_request(
        tmp_path: Path, backends: Backends) -> None:
    """Above latency_log_rate lines a second, HAProxy logs a sample (N set through its map,
    without a reload) whose lines count for N each; when traffic falls, every request again."""
    require(HAVE_HAPROXY, "haproxy is not installed (apt-get install haproxy)")
    r = HaproxyRouter(tmp_path / "router", f"127.0.0.1:{free_port()}", latency_log_rate=50)
    host = backends.add("sampled")

    async def run() -> None:
        try:
            await r.start()
            await r.apply(table(next(_versions), route(host.backend())))
            before = await identity(r)
            assert r.log is not None
            conn = await Conn.open(port_of(r))
            sent, until = 0, time.monotonic() + 2.5  # hundreds a second: far above 50
            while time.monotonic() < until:
                assert (await conn.request()).status == 200
                sent += 1
            await asyncio.sleep(0.3)
            sample_map = config.sample_file(r.settings)
            (text,) = await runtime.run(r.stats_socket, [f"show map {sample_map}"])
            assert r.log.sample is not None and r.log.sample > 1, (sent, r.log.sample)
            assert text.split()[-1] == str(r.log.sample)  # what HAProxy uses, set at runtime
            assert sample_map.read_text() == config.map_text(config.sample_entries(r.log.sample))
            stats = (await r.stats())["sampled"]
            assert stats.requests == sent  # exact: counted by HAProxy, not from the log
            assert r.log.lines < 0.8 * sent, (r.log.lines, sent)
            assert 0.6 * sent <= sum(stats.latency) <= 1.4 * sent, (sum(stats.latency), sent)

            await asyncio.sleep(2.5)  # idle: the reader goes back to every request
            assert r.log.sample == 1
            counted = r.log.counted
            for _ in range(20):
                assert (await conn.request()).status == 200
            conn.close()
            await wait_for(lambda: r.log is not None and r.log.counted - counted >= 20)
            assert r.log.counted - counted == 20
            assert (await identity(r))[:3] == before[:3]  # all of it without a reload
        finally:
            await r.stop()
    asyncio.run(run())


async def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


def test_5xx_and_dead_backends_are_counted(router: HaproxyRouter, backends: Backends) -> None:
    dead = Backend("dead", f"127.0.0.1:{free_port()}", 1)  # nothing listens
    apply(router, route(dead))
    r = asyncio.run(fetch(port_of(router)))
    assert r.status == 503
    stats = asyncio.run(router.stats())
    assert stats["dead"].errors >= 1


def test_retries_connect_failures_always_and_unanswered_requests_only_if_idempotent(
        tmp_path: Path, backends: Backends) -> None:
    require(HAVE_HAPROXY, "haproxy is not installed (apt-get install haproxy)")
    router = HaproxyRouter(tmp_path / "retrying", f"127.0.0.1:{free_port()}",
                           retry_unanswered=True)  # [router] retry_unanswered = true
    asyncio.run(router.start())
    try:
        _retries(router, backends)
    finally:
        asyncio.run(router.stop())


def test_by_default_only_connect_failures_are_retried(router: HaproxyRouter,
                                                      backends: Backends) -> None:
    alive, dying = backends.add("alive"), backends.add("dying", mode="die")
    dead = Backend("dead", f"127.0.0.1:{free_port()}", 1, 100)  # nothing listens
    apply(router, route(dead, alive.backend()))
    for _ in range(4):  # refused: no app saw it, so it goes to another host
        assert asyncio.run(fetch(port_of(router))).status == 200
    apply(router, route(dying.backend(), alive.backend()))
    statuses = [asyncio.run(fetch(port_of(router))).status for _ in range(6)]
    assert statuses.count(502) == dying.count("GET") >= 1  # taken, unanswered: not re-sent
    assert "empty-response" not in router.cfg.read_text()


def _retries(router: HaproxyRouter, backends: Backends) -> None:
    alive, dying = backends.add("alive"), backends.add("dying", mode="die")
    dead = Backend("dead", f"127.0.0.1:{free_port()}", 1, 100)  # nothing listens
    apply(router, route(dead, alive.backend()))

    async def run(method: str, n: int = 6) -> list[tuple[int, str | None]]:
        got = []
        for _ in range(n):
            r = await fetch(port_of(router), method=method,
                            body=b"payload" if method == "POST" else None)
            got.append((r.status, r.backend))
        return got

    # Connection refused: no app saw the request, so even a POST goes to another host.
    assert asyncio.run(run("POST")) == [(200, "alive")] * 6
    apply(router, route(dying.backend(), alive.backend()))
    posts = asyncio.run(run("POST"))
    failed = [p for p in posts if p[0] != 200]
    assert failed, "no POST reached the dying backend"
    assert len(failed) == dying.count("POST"), "a POST that reached a backend was re-sent"
    gets = asyncio.run(run("GET"))
    assert gets == [(200, "alive")] * 6
    assert dying.count("GET") >= 1, "no GET was re-sent from the dying backend"


@contextlib.contextmanager
def syn_dropping_port() -> Iterator[int]:
    """A port whose accept queue is full (one connection waits in it, never accepted): the
    kernel drops every further SYN, so a connect hangs, as to a machine cut off the network."""
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        filler.connect(listener.getsockname())
        yield listener.getsockname()[1]


@pytest.mark.parametrize("retry_unanswered", [True, False])
def test_a_lost_backend_s_sessions_end_at_once_without_a_reload(
        tmp_path: Path, backends: Backends, retry_unanswered: bool) -> None:
    """Its machine seen down, a backend is `lost`: its server goes into maintenance and the
    sessions it holds are shut down at once instead of draining. With retry_unanswered,
    HAProxy's L7 retry (`empty-response` covers a killed session) re-sends the held GETs to
    another backend and the POST fails; without it, all three fail with 502. Either way at
    once, not at the server timeout, and with no reload. A request still connecting to a lost
    backend is left to its 1 s connect timeout, then redispatched: killing it would close its
    keep-alive client connection unanswered."""
    require(HAVE_HAPROXY, "haproxy is not installed (apt-get install haproxy)")
    router = HaproxyRouter(tmp_path / "lost", f"127.0.0.1:{free_port()}",
                           retry_unanswered=retry_unanswered)
    asyncio.run(router.start())
    silent, alive = backends.add("silent", mode="silent"), backends.add("alive3")
    try:
        with syn_dropping_port() as cut_port:
            cut = Backend("cut", f"127.0.0.1:{cut_port}", 1, 100)
            apply(router, route(alive.backend()))
            before = asyncio.run(identity(router))
            got, took = asyncio.run(_held_then_lost(router, silent, alive, cut))
        statuses = [(r.status, r.backend) if isinstance(r, Response) else r for r in got]
        if retry_unanswered:
            assert statuses == [(200, "alive3"), (200, "alive3"), (502, None), (200, "alive3")]
            assert [s.method for s in alive.seen] == ["GET"] * 3
        else:
            assert statuses == [(502, None), (502, None), (502, None), (200, "alive3")]
            assert [s.method for s in alive.seen] == ["GET"]
        assert took < 3, f"the held requests took {took:.1f}s to end"  # not timeout server 75s
        assert silent.count() == 3  # nothing went back to it
        after = asyncio.run(identity(router))
        assert after[:3] == before[:3], "ending a lost backend's sessions reloaded HAProxy"
        # No session left on it: the server is deleted, its counters kept.
        assert wait_until(lambda: asyncio.run(router.stats()) is not None and  # sweeps
                          asyncio.run(servers_in(router, "svc")) == {"v1_alive3"}, 10, 0.2)
        stats = asyncio.run(router.stats())  # what failed there is counted on it
        assert stats["silent"].errors == sum(1 for r in got if getattr(r, "status", 0) == 502)
        assert stats["alive3"].requests == 1 + len(alive.seen)  # and the first, cleared
    finally:
        asyncio.run(router.stop())


async def _held_then_lost(router: HaproxyRouter, silent: AppBackend, alive: AppBackend,
                          cut: Backend) -> tuple[list[Response | BaseException], float]:
    """GET, GET, POST held by ``silent``, then a GET (not the first of its keep-alive
    connection) connecting to ``cut``; then both lost. Their outcomes, and how long it took."""
    port = port_of(router)
    keep = await Conn.open(port)
    assert (await keep.request()).status == 200  # its next request is not its first
    alive.seen.clear()
    await router.apply(table(next(_versions), route(silent.backend())))
    conns = [await Conn.open(port) for _ in range(3)]
    held = [asyncio.create_task(c.request(method=m, body=b"x" if m == "POST" else None))
            for c, m in zip(conns, ("GET", "GET", "POST"), strict=True)]
    await wait_for(lambda: len(silent.seen) == 3)  # all three reached it
    assert len(silent.seen) == 3 and not any(h.done() for h in held)
    await router.apply(table(next(_versions), route(cut)))  # silent's sessions drain
    held.append(asyncio.create_task(keep.request()))
    await asyncio.sleep(0.2)  # connecting (the SYN dropped), within its first 1 s attempt
    start = time.monotonic()
    await router.apply(RoutingTable(version=next(_versions), routes=(route(alive.backend()),),
                                    lost=(silent.address, cut.address)))
    got = await asyncio.gather(*(asyncio.wait_for(h, 10) for h in held),
                               return_exceptions=True)
    for c in [*conns, keep]:
        c.close()
    return got, time.monotonic() - start


def test_missing_haproxy_and_bad_tables_are_clear_errors(tmp_path: Path,
                                                         router: HaproxyRouter) -> None:
    r = HaproxyRouter(tmp_path / "none", f"127.0.0.1:{free_port()}",
                      haproxy="/nonexistent/haproxy")
    with pytest.raises(RouterError) as err:
        asyncio.run(r.start())
    assert "not installed" in str(err.value) and "apt-get install haproxy" in (err.value.hint
                                                                             or "")
    with pytest.raises(RouterError, match="host id"):
        apply(router, route(Backend("bad host", "127.0.0.1:1", 1)))
    with pytest.raises(RouterError, match="weight"):
        apply(router, route(Backend("w", "127.0.0.1:1", 1, -1)))


def test_stop_stops_haproxy(tmp_path: Path) -> None:
    require(HAVE_HAPROXY, "haproxy is not installed (apt-get install haproxy)")
    r = HaproxyRouter(tmp_path / "r", f"127.0.0.1:{free_port()}")
    asyncio.run(r.start())
    pid = r.supervisor.master_pid()  # type: ignore[union-attr]
    assert pid is not None
    asyncio.run(r.stop())
    assert not os.path.exists(f"/proc/{pid}") or "Z" in Path(f"/proc/{pid}/stat").read_text()
    with pytest.raises(OSError):
        asyncio.run(fetch(port_of(r)))


# -- end to end through the CLI ----------------------------------------------------------------

def haproxy_project(tmp_path: Path, extra: str = "") -> CliProject:
    require(HAVE_HAPROXY, "haproxy is not installed (apt-get install haproxy)")
    p = make_project(tmp_path, extra=extra)
    spec = p.path / "hinotori.toml"
    spec.write_text(spec.read_text().replace("[router]\n", '[router]\nkind = "haproxy"\n', 1))
    return p


def hello(address: str, headers: dict[str, str] | None = None) -> str:
    req = urllib.request.Request(f"http://{address}/", headers=headers or {})
    with urllib.request.urlopen(req, timeout=10) as r:
        r.read()
        return r.headers["X-Hello-Version"]


def worker_pid(p: CliProject) -> str:
    async def ask() -> str:
        sock = socket_dir(p.path / ".hinotori" / "router") / "haproxy.sock"
        (text,) = await runtime.run(sock, ["show info"])
        return runtime.parse_info(text)["Pid"]
    return asyncio.run(ask())


def test_deploys_and_rollbacks_under_load_drop_nothing(tmp_path: Path) -> None:
    p = haproxy_project(tmp_path)
    try:
        p.cli("up", "-d")
        p.cli("bake", "web")
        p.cli("deploy", "web")  # v1
        p.set_version("2")
        p.cli("bake", "web")
        worker = worker_pid(p)
        load = BackgroundLoad(p.router, clients=50, rate=300, record_header="x-hello-version")
        load.start()
        try:
            for _ in range(4):
                assert "now serves v2" in p.cli("deploy", "web", "--release", "v2").stdout
                assert "now serves v1" in p.cli("rollback", "web").stdout
        finally:
            stats = load.stop()
        assert stats.total > 500
        assert stats.failed == 0, stats.failures
        assert set(stats.by_header) == {"1", "2"}
        assert worker_pid(p) == worker, "a deploy reloaded HAProxy"
        assert hello(p.router) == "1"
    finally:
        teardown(p)


CANARY = CANARY_SPEC.format(steps="[10, 50, 100]", pause="1s", deadline="3s")


def test_bad_canary_is_rolled_back_from_haproxy_stats(tmp_path: Path) -> None:
    p = haproxy_project(tmp_path, CANARY)
    try:
        p.cli("up", "-d")
        p.cli("bake", "web")
        p.cli("deploy", "web")  # v1, blue-green: nothing to compare with yet
        load = BackgroundLoad(p.router, clients=20, rate=300, record_header="x-hello-version")
        load.start()
        try:
            time.sleep(0.5)
            result = p.cli("deploy", "web", "--env", "HELLO_ERROR_RATE=0.5", "--env",
                           "HELLO_VERSION=2", check=False)
            time.sleep(0.5)
        finally:
            stats = load.stop()
        assert result.returncode == 1, result.stdout
        assert "failed its canary analysis at 10%" in result.stderr
        assert "rolled back to stable" in result.stdout
        assert 0 < stats.by_header["2"] < stats.by_header["1"]
        assert all(h["release_name"] == "v1" for h in p.json("hosts"))  # type: ignore[union-attr]
        assert wait_until(lambda: hello(p.router) == "1")
    finally:
        teardown(p)


def test_controller_sigkill_and_restart_adopts_haproxy(tmp_path: Path) -> None:
    p = haproxy_project(tmp_path)
    try:
        p.cli("up", "-d")
        p.cli("bake", "web")
        p.cli("deploy", "web")
        master = (p.path / ".hinotori" / "router" / "haproxy.pid").read_text()
        worker = worker_pid(p)
        load = BackgroundLoad(p.router, clients=20, rate=200)
        load.start()
        try:
            os.kill(p.controller_pid(), signal.SIGKILL)
            p.cli("up", "-d")
            assert (p.path / ".hinotori" / "router" / "haproxy.pid").read_text() == master
            assert worker_pid(p) == worker  # adopted as it was: no restart, no reload
            p.set_version("2")
            p.cli("bake", "web")
            assert "now serves v2" in p.cli("deploy", "web").stdout
        finally:
            stats = load.stop()
        assert stats.failed == 0, stats.failures
        assert worker_pid(p) == worker
        assert hello(p.router) == "2"
    finally:
        teardown(p)


def test_a_deleted_servers_counters_are_kept_a_while_then_forgotten(
        router: HaproxyRouter, backends: Backends, monkeypatch: pytest.MonkeyPatch) -> None:
    """A host whose servers were all deleted keeps its counts in stats (the metrics sampler
    and its destroy-time read count them) for retired.KEPT_FOR, then leaves the state file:
    otherwise every host ever deleted stays in the state that every switch writes."""
    old, new, other = backends.add("old"), backends.add("new"), backends.add("other")
    apply(router, route(old.backend()))
    port = port_of(router)
    assert set(backends_seen(port, 5)) == {"old"}
    apply(router, route(new.backend(release=2)))
    # Two releases weighted: the main backend serves again, and old leaves it and its slot.
    apply(router, route(new.backend(release=2), other.backend(50, release=3)))
    assert asyncio.run(router.stats())["old"].requests == 5  # idle in maintenance: deleted
    assert "old" not in str(asyncio.run(runtime.run(router.stats_socket,
                                                    ["show servers state"])))

    def base() -> dict[str, dict[str, object]]:
        asyncio.run(router.current())  # the state file is written (in the files' thread)
        return json.loads(router.state_file.read_text())["base"]

    assert base()["old"]["requests"] == 5 and base()["old"]["gone"] > 0
    assert asyncio.run(router.stats())["old"].requests == 5  # kept: not old enough
    monkeypatch.setattr(retired, "KEPT_FOR", 0.0)
    time.sleep(0.01)
    stats = asyncio.run(router.stats())
    assert "old" not in stats and "old" not in base()
    assert "old" not in set(backends_seen(port, 6))


def test_a_host_added_at_run_time_keeps_its_connections_alive(router: HaproxyRouter,
                                                               backends: Backends) -> None:
    """Servers a switch adds through the Runtime API (every host a deploy brings) keep idle
    connections as servers of the cfg do: a keep-alive client's requests reuse one
    connection to the host, not a new connection (closed with a reset) per request."""
    first, added = backends.add("first"), backends.add("added")
    apply(router, route(first.backend()))
    apply(router, route(added.backend(release=2)))  # added with `add server`
    assert "v2_added" in str(asyncio.run(runtime.run(router.stats_socket,
                                                     ["show servers state"])))
    client = http.client.HTTPConnection("127.0.0.1", port_of(router), timeout=5)
    for _ in range(30):
        client.request("GET", "/")
        response = client.getresponse()
        assert response.status == 200 and response.read()
    client.close()
    assert added.count() == 30
    assert added.accepted <= 2, added.accepted  # one, or one more if HAProxy let one go
