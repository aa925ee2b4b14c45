"""The built-in router (hinotori.router.builtin) against real sockets and real worker processes.

Backends are small asyncio servers in a background thread that name themselves in
``X-Backend`` and record what they received; what they do depends on the path (``/slow``,
``/echo``, ``/headers``, ``/chunked``, ``/eof``, ``/close``, ``/hop``) or on their mode
(``die``: read the request, then close without answering). Clients speak raw HTTP/1.x over
asyncio streams so every byte on the wire is under the test's control.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hinotori.errors import RouterError
from hinotori.model import Backend, RoutingTable, ServiceRoute
from hinotori.router.base import Router
from hinotori.router.builtin import BuiltinRouter
from hinotori.router.builtin.client import ControlClient
from tests.support import free_port
from tests.support_backends import (
    Backends,
    Conn,
    Response,
    fetch,
    read_response,
    route,
    table,
)

pytestmark = pytest.mark.integration


# -- fixtures ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BuiltinRouter]:
    r = BuiltinRouter(tmp_path_factory.mktemp("router"), f"127.0.0.1:{free_port()}")
    asyncio.run(r.start())
    yield r
    asyncio.run(r.stop())


def port_of(r: BuiltinRouter) -> int:
    return int(r.listen.rpartition(":")[2])


_versions = iter(range(1000, 10**6))


def apply(r: BuiltinRouter, *routes: ServiceRoute) -> RoutingTable:
    t = table(next(_versions), *routes)
    asyncio.run(r.apply(t))
    return t


# -- routing -----------------------------------------------------------------------------------

def test_implements_the_router_protocol(router: BuiltinRouter) -> None:
    assert isinstance(router, Router)
    assert router.kind == "builtin"


def test_weighted_routing_per_request_on_keep_alive(router: BuiltinRouter,
                                                    backends: Backends) -> None:
    heavy, light, off = backends.add("heavy"), backends.add("light"), backends.add("off")
    apply(router, route(heavy.backend(3), light.backend(1), off.backend(0)))

    async def run() -> list[str | None]:
        conns = [await Conn.open(port_of(router)) for _ in range(4)]
        got = []
        for _ in range(100):  # per request, not per connection: all 4 connections split 3:1
            for c in conns:
                got.append((await c.request()).backend)
        for c in conns:
            c.close()
        return got

    got = asyncio.run(run())
    assert got.count("heavy") + got.count("light") == 400
    assert 270 <= got.count("heavy") <= 330, got.count("heavy")
    assert off.count() == 0


def test_host_and_path_matching_404_and_503(router: BuiltinRouter, backends: Backends) -> None:
    api, api_v2, static, default = (backends.add(n) for n in ("api", "api_v2", "static",
                                                              "default"))
    apply(router,
          route(default.backend(), service="default"),
          route(static.backend(), service="static", prefix="/static"),
          route(api.backend(), service="api", hosts=("API.example.com",)),
          route(api_v2.backend(), service="api2", hosts=("api.example.com",), prefix="/v2"),
          route(service="empty", prefix="/empty"))
    port = port_of(router)

    async def run() -> None:
        cases = [("api.example.com:8080", "/v2/users", "api_v2"),
                 ("API.EXAMPLE.COM", "/users?x=1", "api"),
                 ("api.example.com", "/static/a.css", "api"),  # a host match beats no host
                 ("other.test", "/static/a.css", "static"),    # a longer prefix wins
                 ("other.test", "/stat", "default")]
        for host, path, want in cases:
            assert (await fetch(port, path, host=host)).backend == want, (host, path)
        r = await fetch(port, "/empty/x")
        assert r.status == 503 and r.backend is None
    asyncio.run(run())

    apply(router, route(api.backend(), service="api", hosts=("api.example.com",)))
    r = asyncio.run(fetch(port, "/", host="nobody.test"))
    assert r.status == 404 and b"no route" in r.body

    async def head_then_get() -> None:  # a router-made answer to HEAD carries no body
        conn = await Conn.open(port)
        assert (await conn.request("/", "HEAD", host="nobody.test")).status == 404
        assert (await conn.request("/", host="api.example.com")).backend == "api"
        conn.close()
    asyncio.run(head_then_get())


# -- switching ---------------------------------------------------------------------------------

def test_switch_is_atomic_under_keep_alive_load(router: BuiltinRouter,
                                                backends: Backends) -> None:
    sets = {"A": [backends.add("a1"), backends.add("a2")],
            "B": [backends.add("b1"), backends.add("b2")]}
    names = {name: {x.name for x in members} for name, members in sets.items()}
    apply(router, route(*(x.backend() for x in sets["A"])))
    Result = tuple[int, float, float, int, str | None]  # seq, sent, answered, status, backend

    async def run() -> tuple[list[Result], list[tuple[float, float, str]]]:
        results: list[Result] = []
        switches: list[tuple[float, float, str]] = [(0.0, 0.0, "A")]  # started, returned, set
        seq = iter(range(10**9))
        stop = asyncio.Event()

        async def client() -> None:
            conn = await Conn.open(port_of(router))
            while not stop.is_set():
                n = next(seq)
                sent = time.perf_counter()
                r = await conn.request(headers=[f"X-Seq: {n}"])
                results.append((n, sent, time.perf_counter(), r.status, r.backend))
            conn.close()

        tasks = [asyncio.create_task(client()) for _ in range(6)]
        for name in "BABAB":
            await asyncio.sleep(0.12)
            started = time.perf_counter()
            await router.apply(table(next(_versions), route(*(x.backend() for x in sets[name]))))
            switches.append((started, time.perf_counter(), name))
        await asyncio.sleep(0.12)
        stop.set()
        await asyncio.gather(*tasks)
        return results, switches

    results, switches = asyncio.run(run())
    assert len(results) > 100
    assert all(status == 200 for *_, status, _ in results), "a request failed during a switch"
    seen_by = {s.header("X-Seq"): x.name for m in sets.values() for x in m for s in x.seen}
    for n, sent, answered, _, name in results:
        # Allowed: the set live when the request was sent (its apply had returned), or a set
        # whose apply began before the answer came back. Never a set replaced before sending.
        live = [s for _, returned, s in switches if returned < sent][-1]
        racing = {s for started, returned, s in switches if started < answered
                  and returned >= sent}  # applies overlapping the request's lifetime
        allowed = set().union(*(names[s] for s in {live} | racing))
        assert name in allowed and seen_by[str(n)] == name, (n, name, live, racing)


def test_draining_request_finishes_and_idle_connections_close(router: BuiltinRouter,
                                                              backends: Backends) -> None:
    old, new = backends.add("old"), backends.add("new")
    apply(router, route(old.backend()))
    port = port_of(router)

    async def run() -> None:
        slow = asyncio.create_task(fetch(port, "/slow?ms=700"))
        await asyncio.sleep(0.1)
        await fetch(port)  # needs a second connection, which then idles in the pool
        assert old.open_connections == 2  # one busy, one idle
        await router.apply(table(next(_versions), route(new.backend())))
        assert (await fetch(port)).backend == "new"
        await asyncio.sleep(0.1)
        assert old.open_connections == 1, "the idle pooled connection was not closed"
        r = await slow
        assert (r.status, r.backend) == (200, "old")  # in flight: drained, not cut
        await asyncio.sleep(0.2)
        assert old.open_connections == 0, "a drained connection went back to a retired pool"
    asyncio.run(run())


# -- retries -----------------------------------------------------------------------------------

def test_connect_refused_is_retried_on_another_backend(router: BuiltinRouter,
                                                       backends: Backends) -> None:
    alive = backends.add("alive")
    dead = Backend("dead", f"127.0.0.1:{free_port()}", 1, 100)
    apply(router, route(dead, alive.backend()))

    async def run() -> list[Response]:
        conn = await Conn.open(port_of(router))
        got = [await conn.request(method=m, body=b"x" if m == "POST" else None)
               for m in ("GET", "POST") * 5]
        conn.close()
        return got

    got = asyncio.run(run())
    assert [(r.status, r.backend) for r in got] == [(200, "alive")] * 10  # POST too: no app saw it
    stats = asyncio.run(router.stats())
    assert stats["dead"].errors >= 1 and stats["dead"].requests == 0


def test_a_lost_backend_s_requests_in_flight_are_re_sent_when_idempotent(
        router: BuiltinRouter, backends: Backends) -> None:
    """Its machine seen down, a backend is `lost`: the router drops its connections at once
    instead of draining them, so the GETs it holds are answered by another backend and a POST
    that reached it fails (it may have been applied) rather than hanging."""
    silent, alive = backends.add("silent", mode="silent"), backends.add("alive2")
    apply(router, route(silent.backend()))

    async def run() -> list[Response | BaseException]:
        conns = [await Conn.open(port_of(router)) for _ in range(3)]
        held = [asyncio.create_task(c.request(method=m, body=b"x" if m == "POST" else None))
                for c, m in zip(conns, ("GET", "GET", "POST"), strict=True)]
        while len(silent.seen) < 3:  # all three reached the silent backend
            await asyncio.sleep(0.01)
        await router.apply(RoutingTable(version=next(_versions),
                                        routes=(route(alive.backend()),),
                                        lost=(silent.address,)))
        got = await asyncio.gather(*(asyncio.wait_for(h, 10) for h in held),
                                   return_exceptions=True)
        for c in conns:
            c.close()
        return got

    got = asyncio.run(run())
    assert [(r.status, r.backend) for r in got[:2]] == [(200, "alive2")] * 2  # type: ignore[union-attr]
    assert got[2].status == 502  # type: ignore[union-attr]
    assert [s.method for s in alive.seen] == ["GET", "GET"]


async def six_requests(router: BuiltinRouter, method: str) -> list[Response]:
    """Six GETs or POSTs (with a body) on one keep-alive connection."""
    conn = await Conn.open(port_of(router))
    got = [await conn.request(method=method, body=b"payload" if method == "POST" else None)
           for _ in range(6)]
    conn.close()
    return got


def test_post_is_not_resent_after_reaching_a_backend_but_get_is(router: BuiltinRouter,
                                                                backends: Backends) -> None:
    dying, healthy = backends.add("dying", mode="die"), backends.add("healthy")
    apply(router, route(dying.backend(), healthy.backend()))

    posts = asyncio.run(six_requests(router, "POST"))
    failed = [r for r in posts if r.status == 502]
    assert failed, "no POST reached the dying backend"
    assert len(failed) == dying.count("POST"), "a POST that reached a backend was re-sent"
    assert healthy.count("POST") == len(posts) - len(failed)
    assert all(r.backend == "healthy" for r in posts if r.status == 200)

    gets = asyncio.run(six_requests(router, "GET"))
    assert [(r.status, r.backend) for r in gets] == [(200, "healthy")] * 6
    assert dying.count("GET") >= 1, "no GET was re-sent from the dying backend"


def test_a_backend_dying_mid_response_has_its_get_re_sent(router: BuiltinRouter,
                                                          backends: Backends) -> None:
    """A response with a length is held until whole: a backend that dies after its head and
    part of its body sent nothing the client saw, so a GET goes to another backend and a POST
    gets a clean 502. A chunked response (maybe a stream) went out as it came: cut."""
    half, healthy = backends.add("half", mode="half"), backends.add("healthy2")
    apply(router, route(half.backend(), healthy.backend()))

    gets = asyncio.run(six_requests(router, "GET"))
    assert [(r.status, r.backend, r.body) for r in gets] == [(200, "healthy2", b"healthy2")] * 6
    assert half.count("GET") >= 1, "no GET reached the dying backend"
    posts = asyncio.run(six_requests(router, "POST"))
    assert half.count("POST") == sum(r.status == 502 for r in posts) >= 1
    assert all(r.backend == "healthy2" for r in posts if r.status == 200)
    assert asyncio.run(router.stats())["half"].errors >= half.count("GET")

    streaming = backends.add("streaming", mode="half-chunked")
    apply(router, route(streaming.backend()))

    async def cut() -> tuple[bytes, bytes]:
        conn = await Conn.open(port_of(router))
        conn.writer.write(b"GET / HTTP/1.1\r\nHost: svc.test\r\n\r\n")
        head = await conn.reader.readuntil(b"\r\n\r\n")
        try:
            rest = await asyncio.wait_for(conn.reader.read(), 5)  # up to the cut
        except ConnectionError:
            rest = b"(reset)"
        conn.close()
        return head.split(b"\r\n")[0], rest

    status, rest = asyncio.run(cut())
    assert status.startswith(b"HTTP/1.1 200 ") and rest in (b"3\r\nabc\r\n", b"(reset)")


def test_a_backend_lost_after_it_left_the_table_has_its_requests_re_sent(
        router: BuiltinRouter, backends: Backends) -> None:
    """A host out of the table (health) drains its requests in flight; when its machine is
    then seen down, the requests it still holds are re-sent rather than left to time out."""
    silent, alive = backends.add("silent2", mode="silent"), backends.add("alive3")
    apply(router, route(silent.backend()))

    async def run() -> Response:
        conn = await Conn.open(port_of(router))
        held = asyncio.create_task(conn.request())
        while not silent.seen:
            await asyncio.sleep(0.01)
        await router.apply(table(next(_versions), route(alive.backend())))  # drained, held
        await asyncio.sleep(0.2)
        assert not held.done()
        await router.apply(RoutingTable(version=next(_versions),
                                        routes=(route(alive.backend()),),
                                        lost=(silent.address,)))
        got = await asyncio.wait_for(held, 10)
        conn.close()
        return got

    got = asyncio.run(run())
    assert (got.status, got.backend) == (200, "alive3")


# -- HTTP correctness --------------------------------------------------------------------------

def test_chunked_and_content_length_bodies_both_ways(router: BuiltinRouter,
                                                     backends: Backends) -> None:
    echo = backends.add("echo")
    apply(router, route(echo.backend()))

    async def run() -> None:
        conn = await Conn.open(port_of(router))
        big = os.urandom(1024 * 1024)
        r = await conn.request("/echo", "POST", chunks=[big[:1000], big[1000:300000],
                                                        big[300000:]])
        assert r.status == 200 and r.body == big
        assert r.header("transfer-encoding") == "chunked"
        assert echo.seen[-1].body == big
        r = await conn.request("/echo", "PUT", body=b"hello, length")
        assert r.body == b"hello, length" and r.header("content-length") == "13"
        r = await conn.request("/chunked")
        assert r.body == b"".join(b"part%d\n" % i for i in range(5))
        r = await conn.request("/", "HEAD")  # Content-Length 1234, no body: must not hang
        assert r.status == 200 and r.header("content-length") == "1234"
        r = await conn.request("/eof")  # backend body ends at close: re-chunked, conn kept
        assert r.body == b"until the end" and r.header("transfer-encoding") == "chunked"
        assert (await conn.request("/")).status == 200
        conn.close()
    asyncio.run(run())


def test_connection_close_and_http10(router: BuiltinRouter, backends: Backends) -> None:
    web = backends.add("web")
    apply(router, route(web.backend()))
    port = port_of(router)

    async def run() -> None:
        conn = await Conn.open(port)
        r = await conn.request(headers=["Connection: close"])
        assert r.status == 200 and r.header("connection") == "close"
        assert await conn.closed_by_peer()

        conn = await Conn.open(port)  # the backend closing does not close the client
        assert (await conn.request("/close")).body == b"ok"
        assert (await conn.request("/")).backend == "web"
        conn.close()

        conn = await Conn.open(port)
        r = await conn.request(version="1.0")
        assert r.status == 200 and r.body == b"web"
        assert await conn.closed_by_peer()

        conn = await Conn.open(port)
        r = await conn.request(version="1.0", headers=["Connection: keep-alive"])
        assert r.header("connection") == "keep-alive"
        r = await conn.request("/chunked", version="1.0", headers=["Connection: keep-alive"])
        assert r.header("transfer-encoding") is None  # 1.0 knows no chunks: body until close
        assert r.body == b"".join(b"part%d\n" % i for i in range(5))
        conn.close()
    asyncio.run(run())


def test_hop_by_hop_headers_removed_and_forwarded_headers_set(router: BuiltinRouter,
                                                              backends: Backends) -> None:
    web = backends.add("hdr")
    apply(router, route(web.backend()))

    async def run() -> tuple[Response, Response]:
        conn = await Conn.open(port_of(router))
        r1 = await conn.request("/headers", host="shop.test:8080", headers=[
            "Connection: keep-alive, X-Client-Hop", "X-Client-Hop: secret",
            "Keep-Alive: timeout=5", "TE: trailers", "Proxy-Connection: keep-alive",
            "Upgrade: h2c", "Trailer: X-T", "X-Forwarded-For: 203.0.113.7",
            "X-Forwarded-Proto: https", "X-Keep: me"])
        r2 = await conn.request("/hop")
        conn.close()
        return r1, r2

    r1, r2 = asyncio.run(run())
    got = {k.lower(): v for k, v in json.loads(r1.body)}
    for hop in ("connection", "x-client-hop", "keep-alive", "te", "proxy-connection", "upgrade",
                "trailer"):
        assert hop not in got, hop
    assert got["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"
    assert got["x-forwarded-proto"] == "http"
    assert got["x-forwarded-host"] == "shop.test:8080"
    assert got["host"] == "shop.test:8080" and got["x-keep"] == "me"
    names = {k.lower() for k, _ in r2.headers}
    assert not names & {"keep-alive", "x-resp-hop", "proxy-connection"}
    assert r2.header("x-end") == "visible" and r2.body == b"ok"


def test_malformed_request_gets_400_and_close(router: BuiltinRouter) -> None:
    async def run() -> None:
        conn = await Conn.open(port_of(router))
        conn.writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
        r = await read_response(conn.reader)
        assert r.status == 400 and r.header("connection") == "close"
        assert await conn.closed_by_peer()
    asyncio.run(run())


def test_pipelined_requests_expect_continue_and_oversized_heads(router: BuiltinRouter,
                                                                backends: Backends) -> None:
    web = backends.add("pipe")
    apply(router, route(web.backend()))

    async def run() -> None:
        conn = await Conn.open(port_of(router))
        conn.writer.write(b"".join(b"GET /slow?ms=%d HTTP/1.1\r\nHost: x\r\nX-N: %d\r\n\r\n"
                                   % (ms, i) for i, ms in enumerate((60, 0, 30))))
        got = [await read_response(conn.reader) for _ in range(3)]
        assert [r.status for r in got] == [200, 200, 200]  # answered in order
        assert [s.header("X-N") for s in web.seen[-3:]] == ["0", "1", "2"]

        conn.writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                          b"Expect: 100-continue\r\n\r\n")
        interim = await conn.reader.readuntil(b"\r\n\r\n")
        assert interim.startswith(b"HTTP/1.1 100")
        conn.writer.write(b"hello")
        r = await read_response(conn.reader)
        assert r.body == b"hello" and web.seen[-1].header("Expect") is None
        conn.close()

        conn = await Conn.open(port_of(router))
        conn.writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n")
        assert (await read_response(conn.reader)).status == 431
        assert await conn.closed_by_peer()
    asyncio.run(run())


def test_stats_count_requests_errors_statuses_and_latency(router: BuiltinRouter,
                                                          backends: Backends) -> None:
    counted = backends.add("counted")
    dead = Backend("gone", f"127.0.0.1:{free_port()}", 1, 100)
    apply(router, route(counted.backend()), route(dead, service="down", prefix="/down"))

    async def run() -> None:
        conn = await Conn.open(port_of(router))
        for _ in range(7):
            await conn.request("/")
        assert (await conn.request("/down")).status == 502
        conn.close()

    before = asyncio.run(router.stats())
    asyncio.run(run())
    after = asyncio.run(router.stats())
    c = after["counted"]
    assert c.requests - (before["counted"].requests if "counted" in before else 0) == 7
    assert c.active == 0 and c.errors == 0 and c.statuses["2xx"] >= 7
    assert sum(c.latency) == c.requests and c.latency_sum_ms > 0
    g = after["gone"]
    assert g.errors >= 1 and g.statuses["5xx"] == 1  # a router-made 502 counts against it


def test_release_selection_header_and_sticky_cookie(router: BuiltinRouter,
                                                    backends: Backends) -> None:
    stable, canary = backends.add("stable"), backends.add("canary")
    apply(router, route(stable.backend(100, release=1), canary.backend(0, release=2),
                        canary=2, sticky=True))

    async def run() -> None:
        conn = await Conn.open(port_of(router))
        r = await conn.request()
        assert r.backend == "stable"
        assert r.header("set-cookie").startswith("hinotori-svc=v1;")  # type: ignore[union-attr]
        r = await conn.request(headers=["X-Hinotori-Release: canary"])
        assert r.backend == "canary" and r.header("set-cookie") is None
        assert (await conn.request(headers=["Cookie: a=1; hinotori-svc=v2"])).backend == "canary"
        r = await conn.request(headers=["X-Hinotori-Release: stable", "Cookie: hinotori-svc=v2"])
        assert r.backend == "stable"
        assert (await conn.request(headers=["X-Hinotori-Release: v9"])).backend == "stable"
        conn.close()
    asyncio.run(run())


# -- process life cycle ------------------------------------------------------------------------

def test_a_new_router_object_adopts_the_running_worker(router: BuiltinRouter,
                                                       backends: Backends) -> None:
    web = backends.add("adopted")
    t = apply(router, route(web.backend()))
    pid = int((router.state_dir / "router-0.pid").read_text())
    again = BuiltinRouter(router.state_dir, router.listen)  # as a restarted controller would
    asyncio.run(again.start())
    assert int((router.state_dir / "router-0.pid").read_text()) == pid
    assert asyncio.run(again.current()) == t
    assert asyncio.run(fetch(port_of(router))).backend == "adopted"


def test_worker_survives_sigkill_of_its_spawner_and_reloads_its_table(
        tmp_path: Path, backends: Backends) -> None:
    web = backends.add("survivor")
    state, listen = tmp_path / "router", f"127.0.0.1:{free_port()}"
    code = ("import asyncio, sys, time\nfrom pathlib import Path\n"
            "from hinotori.model import Backend, RoutingTable, ServiceRoute\n"
            "from hinotori.router.builtin import BuiltinRouter\n"
            "r = BuiltinRouter(Path(sys.argv[1]), sys.argv[2])\n"
            "t = RoutingTable(7, (ServiceRoute('svc', (Backend('survivor', sys.argv[3], 1),)),))\n"
            "async def main():\n    await r.start()\n    await r.apply(t)\n"
            "asyncio.run(main())\nprint('ready', flush=True)\ntime.sleep(60)\n")
    spawner = subprocess.Popen([sys.executable, "-c", code, str(state), listen, web.address],
                               stdout=subprocess.PIPE)
    adopter = BuiltinRouter(state, listen)
    try:
        assert spawner.stdout is not None and spawner.stdout.readline() == b"ready\n"
        spawner.send_signal(signal.SIGKILL)
        spawner.wait(5)
        pid = int((state / "router-0.pid").read_text())
        port = int(listen.rpartition(":")[2])
        assert asyncio.run(fetch(port)).backend == "survivor"  # still serving, orphaned

        asyncio.run(adopter.start())
        assert int((state / "router-0.pid").read_text()) == pid
        assert asyncio.run(adopter.current()).version == 7  # type: ignore[union-attr]

        os.kill(pid, signal.SIGKILL)  # a crashed worker: restarted, it serves its last table
        deadline = time.monotonic() + 5
        while asyncio.run(_pings(adopter)) and time.monotonic() < deadline:
            time.sleep(0.02)
        asyncio.run(adopter.start())
        assert int((state / "router-0.pid").read_text()) != pid
        assert asyncio.run(adopter.current()).version == 7  # type: ignore[union-attr]
        assert asyncio.run(fetch(port)).backend == "survivor"
    finally:
        spawner.kill()
        asyncio.run(adopter.stop())
    assert not list(state.glob("router-*.sock")) and not list(state.glob("router-*.pid"))


async def _pings(r: BuiltinRouter) -> bool:
    try:
        await ControlClient(r.state_dir / "router-0.sock").request({"op": "ping"}, 0.5)
        return True
    except Exception:
        return False


@pytest.mark.parametrize("reuseport", [False, True], ids=["plain", "so_reuseport"])
def test_port_in_use_is_a_clear_router_error(tmp_path: Path, reuseport: bool) -> None:
    with socket.socket() as holder:  # a stranger; with SO_REUSEPORT it is like HAProxy
        if reuseport:
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        listen = f"127.0.0.1:{holder.getsockname()[1]}"
        r = BuiltinRouter(tmp_path / "router", listen)
        with pytest.raises(RouterError) as err:
            asyncio.run(r.start())
    text = str(err.value)
    assert listen in text and "in use" in text and "[router] listen" in text


def test_two_workers_share_the_port_ack_every_apply_and_drain_on_stop(
        tmp_path: Path, backends: Backends) -> None:
    web = backends.add("pair")
    r = BuiltinRouter(tmp_path / "router", f"127.0.0.1:{free_port()}", workers=2)
    asyncio.run(r.start())
    try:
        pids = {int((r.state_dir / f"router-{i}.pid").read_text()) for i in range(2)}
        assert len(pids) == 2
        t = apply(r, route(web.backend()))
        assert asyncio.run(r.current()) == t

        async def load() -> None:
            for _ in range(30):  # new connections: SO_REUSEPORT spreads them over both
                assert (await fetch(port_of(r))).backend == "pair"
            per_worker = [await ControlClient(r.state_dir / f"router-{i}.sock").request(
                {"op": "stats"}, 2) for i in range(2)]
            assert all(w["backends"]["pair"]["requests"] > 0 for w in per_worker)
        asyncio.run(load())
        assert asyncio.run(r.stats())["pair"].requests == 30

        async def stop_while_busy() -> Response:
            slow = asyncio.create_task(fetch(port_of(r), "/slow?ms=600"))
            await asyncio.sleep(0.2)
            await r.stop()  # graceful: the in-flight request completes first
            return await slow
        assert asyncio.run(stop_while_busy()).status == 200
    finally:
        asyncio.run(r.stop())
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
