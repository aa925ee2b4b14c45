"""A catch-all route's switches (router/haproxy/flags.py) in a real HAProxy: what a header, a
cookie, a held release or maintenance asks for still works when it is turned on at run time,
the switches follow every apply without a reload, and a router object adopting the running
HAProxy, or a reload, keeps them right."""

from __future__ import annotations

import asyncio
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from hinotori.model import Maintenance, RoutingTable, ServiceRoute
from hinotori.router.haproxy import HaproxyRouter, config, converge, runtime
from tests.support import free_port, require
from tests.support_backends import Backends, Conn, route, table

pytestmark = pytest.mark.integration


@pytest.fixture
def router(tmp_path: Path) -> Iterator[HaproxyRouter]:
    require(shutil.which("haproxy") is not None, "haproxy is not installed")
    r = HaproxyRouter(tmp_path / "router", f"127.0.0.1:{free_port()}", preview_listen=(
        f"127.0.0.1:{free_port()}"))
    asyncio.run(r.start())
    yield r
    asyncio.run(r.stop())


_versions = iter(range(1, 10**6))


def apply(r: HaproxyRouter, *routes: ServiceRoute) -> RoutingTable:
    t = table(next(_versions), *routes)
    asyncio.run(r.apply(t))
    return t


def port_of(listen: str) -> int:
    return int(listen.rpartition(":")[2])


def switches_on(r: HaproxyRouter) -> set[str]:
    """The catch-all route's switches on; checks that the live map's switches (flags.
    live_flags) say what the live map does, one on per service."""
    (text, live) = asyncio.run(runtime.run(r.stats_socket, [
        f"show servers state {config.LIVE_FLAGS}", f"show map {config.live_file(r.settings)}"]))
    on = {n for n, s in converge.parse_servers_state(text).get(config.LIVE_FLAGS, {}).items()
          if not s.maint}
    assert {n for n in on if n.endswith("_live")} == \
        {f"{be}_live" for be in converge.parse_map(live).values()}
    return {n for n in on if not n.endswith("_live")}


def worker_pid(r: HaproxyRouter) -> str:
    assert r.supervisor is not None
    return str(asyncio.run(r.supervisor.worker_info())["Pid"])


def seen(port: int, n: int, headers: list[str] | None = None,
         host: str = "svc.test") -> tuple[Counter[str], set[int]]:
    async def run() -> tuple[Counter[str], set[int]]:
        conn = await Conn.open(port)
        out: Counter[str] = Counter()
        statuses = set()
        for _ in range(n):
            resp = await conn.request(headers=headers, host=host)
            statuses.add(resp.status)
            out[resp.backend or "?"] += 1
        conn.close()
        return out, statuses
    return asyncio.run(run())


def served(port: int, n: int = 6, headers: list[str] | None = None,
           host: str = "svc.test") -> set[str]:
    names, statuses = seen(port, n, headers, host)
    assert statuses == {200}, statuses
    return set(names)


def test_features_turned_on_at_run_time_work_and_the_switch_follows(
        router: HaproxyRouter, backends: Backends) -> None:
    a, b, c = (backends.add(n) for n in ("sw-a", "sw-b", "sw-c"))
    port = port_of(router.listen)
    assert router.settings.preview_listen is not None
    preview = port_of(router.settings.preview_listen)
    apply(router, route(a.backend()))
    pid = worker_pid(router)
    assert switches_on(router) == {"svc.r1"}  # one release: the switch carries it
    assert served(port) == {"sw-a"}
    assert served(port, headers=["X-Hinotori-Release: canary"]) == {"sw-a"}  # none: ordinary

    # A canary, turned on by an apply: the switch goes off, the header rule answers.
    apply(router, route(a.backend(), b.backend(0, release=2), canary=2))
    assert switches_on(router) == set()
    assert served(port) == {"sw-a"}
    assert served(port, headers=["X-Hinotori-Release: canary"]) == {"sw-b"}
    assert served(port, headers=["X-Hinotori-Release: v1"]) == {"sw-a"}

    # Promoted (a blue-green switch to release 2's slot): its switch on, the canary gone.
    apply(router, route(b.backend(release=2)))
    assert switches_on(router) == {"svc.r2"}
    assert served(port) == {"sw-b"}
    assert served(port, headers=["X-Hinotori-Release: v1"]) == {"sw-b"}  # not served: ordinary

    # A held release (deploy --hold): the header and the preview frontend reach it.
    apply(router, route(b.backend(release=2), c.backend(0, release=3), preview=3))
    assert switches_on(router) == set()
    assert served(port) == {"sw-b"}
    assert served(port, headers=["X-Hinotori-Release: preview"]) == {"sw-c"}
    assert served(preview) == {"sw-c"}

    # Maintenance, turned on at run time: 503 for every request, header or not.
    apply(router, route(b.backend(release=2), maintenance=Maintenance("back soon", 30)))
    assert switches_on(router) == set()
    for headers in (None, ["X-Hinotori-Release: v2"]):
        _, statuses = seen(port, 3, headers)
        assert statuses == {503}, (headers, statuses)
    apply(router, route(b.backend(release=2)))  # and lifted
    assert switches_on(router) == {"svc.r2"}
    assert served(port) == {"sw-b"}
    assert worker_pid(router) == pid, "a routine change reloaded HAProxy"

    # A sticky route with two releases (the flag is part of the shape: one reload): the
    # cookie chooses, so no switch; with one release again the switch is back.
    apply(router, route(b.backend(release=2), c.backend(release=3), sticky=True))
    assert switches_on(router) == set()
    assert served(port, headers=["Cookie: hinotori-svc=v3"]) == {"sw-c"}
    assert served(port, headers=["Cookie: hinotori-svc=v2"]) == {"sw-b"}
    apply(router, route(c.backend(release=3), sticky=True))
    assert switches_on(router) == {"svc.r1"} and served(port) == {"sw-c"}


def test_an_adopting_router_and_a_reload_keep_the_switches_right(
        router: HaproxyRouter, backends: Backends) -> None:
    a, b = backends.add("sw-d"), backends.add("sw-e")
    port = port_of(router.listen)
    apply(router, route(a.backend()))
    assert switches_on(router) == {"svc.r1"}
    # A new object (a restarted controller) reads HAProxy's state and converges from it.
    other = HaproxyRouter(router.state_dir, router.listen,
                          preview_listen=router.settings.preview_listen)
    asyncio.run(other.start())
    apply(other, route(a.backend(), b.backend(0, release=2), canary=2))
    assert switches_on(router) == set()
    assert served(port, headers=["X-Hinotori-Release: canary"]) == {"sw-e"}
    apply(other, route(b.backend(release=2)))
    assert switches_on(router) == {"svc.r2"} and served(port) == {"sw-e"}
    # A new service with a Host rule reshapes the cfg: a reload, whose new worker starts
    # from the cfg's switches; the catch-all route keeps its lane.
    pid = worker_pid(other)
    apply(other, route(b.backend(release=2)), route(a.backend(), service="api",
                                                     hosts=("api.example",)))
    assert worker_pid(other) != pid
    assert switches_on(other) == {"svc.r2"}
    assert served(port) == {"sw-e"}
    assert served(port, host="api.example") == {"sw-d"}
