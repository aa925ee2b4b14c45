"""Prepared switches on real data planes: ``prepare`` changes nothing served, the switch after it
serves exactly the table, and whatever restarted in between (a worker, the controller, another
router object) still ends with the right table."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from hinotori.router.builtin import BuiltinRouter
from hinotori.router.haproxy import HaproxyRouter, config, converge, runtime
from tests.support import free_port, require
from tests.support_backends import Backends, Conn, route, table

pytestmark = pytest.mark.integration


def port_of(r: BuiltinRouter | HaproxyRouter) -> int:
    return int(r.listen.rpartition(":")[2])


async def seen(port: int, n: int) -> Counter[str]:
    conn = await Conn.open(port)
    out: Counter[str] = Counter()
    for _ in range(n):
        r = await conn.request()
        assert r.status == 200, (r.status, r.body)
        out[r.backend or "?"] += 1
    conn.close()
    return out


def test_builtin_prepare_serves_nothing_new_and_survives_a_worker_restart(
        tmp_path: Path, backends: Backends) -> None:
    a, b = backends.add("pa"), backends.add("pb")
    router = BuiltinRouter(tmp_path / "router", f"127.0.0.1:{free_port()}")
    port = port_of(router)
    t_a = table(1, route(a.backend()))
    t_b = table(2, route(b.backend(release=2)))

    async def run() -> None:
        await router.start()
        await router.apply(t_a)
        await router.prepare(t_b)
        assert set(await seen(port, 4)) == {"pa"}  # prepared, not served
        # The worker dies between prepare and switch: restarted, it serves its table file.
        pid = int((router.state_dir / "router-0.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while await router._ping(0, 0.3) is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await router.start()
        assert set(await seen(port, 4)) == {"pa"}
        await router.apply(t_b)  # it lacks the prepared route: sent again, whole
        assert await router.current() == t_b
        assert set(await seen(port, 4)) == {"pb"}
        await router.apply(table(3, *t_a.routes))  # held again (it served before)
        assert set(await seen(port, 4)) == {"pa"}
        # A new controller (a new router object) names routes its own way: sent whole.
        again = BuiltinRouter(router.state_dir, router.listen)
        await again.start()
        await again.apply(table(4, *t_b.routes))
        assert await again.current() == table(4, *t_b.routes)
        assert set(await seen(port, 4)) == {"pb"}

    try:
        asyncio.run(run())
    finally:
        asyncio.run(router.stop())


HAVE_HAPROXY = shutil.which("haproxy") is not None


async def servers_in(r: HaproxyRouter, backend: str) -> dict[str, bool]:
    """Server name -> ready, in ``backend``."""
    (text,) = await runtime.run(r.stats_socket, ["show servers state"])
    return {n: not s.maint for n, s in converge.parse_servers_state(text).get(backend, {}).items()}


async def live_backend(r: HaproxyRouter) -> str:
    (text,) = await runtime.run(r.stats_socket, [f"show map {config.live_file(r.settings)}"])
    return converge.parse_map(text)["svc"]


def test_haproxy_prepare_readies_the_new_slot_and_the_switch_is_map_entries(
        tmp_path: Path, backends: Backends) -> None:
    require(HAVE_HAPROXY, "haproxy is not installed (apt-get install haproxy)")
    a1, a2, b1, b2 = (backends.add(n) for n in ("ha1", "ha2", "hb1", "hb2"))
    router = HaproxyRouter(tmp_path / "router", f"127.0.0.1:{free_port()}")
    port = port_of(router)
    t_a = table(1, route(a1.backend(), a2.backend()))
    t_b = table(2, route(b1.backend(release=2), b2.backend(release=2)))

    async def run() -> None:
        await router.start()
        await router.apply(t_a)
        live = await live_backend(router)
        await router.prepare(t_b)
        slot = config.slot_backend("svc", 2 if live.endswith("r1") else 1)
        assert await servers_in(router, slot) == {"v2_hb1": True, "v2_hb2": True}
        assert await live_backend(router) == live  # nothing served differently
        assert set(await seen(port, 6)) == {"ha1", "ha2"}
        commands: list[list[str]] = []
        real_run = router._cli.run

        async def spy(cmds: list[str], timeout: float = runtime.CALL_TIMEOUT) -> list[str]:
            commands.append(list(cmds))
            return await real_run(cmds, timeout)
        router._cli.run = spy  # type: ignore[method-assign]
        await router.apply(t_b)
        # Map entries, and the catch-all route's switches (flags.py): one on, one off.
        assert commands and all(c.split()[1] == "map" or
                                c.startswith(f"set server {config.LIVE_FLAGS}/")
                                for c in commands[-1]), commands
        assert set(await seen(port, 6)) == {"hb1", "hb2"}
        router._cli.run = real_run  # type: ignore[method-assign]
        # A restarted controller (a new object) reads HAProxy back and applies whole.
        again = HaproxyRouter(router.state_dir, router.listen, latency_log=False)
        await again.start()
        assert await again.current() == t_b
        await again.prepare(table(3, *t_a.routes))
        await again.apply(table(3, *t_a.routes))
        assert set(await seen(port, 6)) == {"ha1", "ha2"}
        assert await router.current() == table(3, *t_a.routes)  # its files are written
        await router.apply(table(4, *t_b.routes))  # the other's write: read back, right
        assert set(await seen(port, 6)) == {"hb1", "hb2"}

    try:
        asyncio.run(run())
    finally:
        asyncio.run(router.stop())
