"""Deploys and reads at fleet scale, on the fakes: boots run in parallel but never more than
the fleet's bound at once, a failed boot among many still leaves traffic where it was, and the
batched store writes and counted reads say exactly what the one-by-one ones said."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path
from typing import Any

from hinotori.deploy import bluegreen
from hinotori.errors import DeployError
from hinotori.model import Host, HostState
from hinotori.providers.base import BootRequest
from hinotori.providers.fake import FakeProvider
from hinotori.providers.ports import PortPool, ephemeral_start
from hinotori.spec import parse_spec
from hinotori.store import Store
from tests.support import spec_error
from tests.support_fakes import World, world


class CountingProvider(FakeProvider):
    """A fake whose boots take a moment, counting how many run at once."""

    def __init__(self) -> None:
        super().__init__(name="process")
        self.running = 0
        self.most = 0

    async def boot(self, req: BootRequest) -> Host:
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await asyncio.sleep(0.002)  # every other boot gets its chance to start meanwhile
            return await super().boot(req)
        finally:
            self.running -= 1


def counting_world(tmp_path: Path, replicas: int, bound: int) -> tuple[World, CountingProvider]:
    w = world(tmp_path, replicas=replicas)
    provider = CountingProvider()
    w.fleet.providers["process"] = provider
    w.fleet.prober = provider.probe
    w.fleet.boot_parallel = bound
    w.provider = provider
    return w, provider


def test_thirty_hosts_boot_in_parallel_never_more_than_the_bound(tmp_path: Path) -> None:
    w, provider = counting_world(tmp_path, replicas=30, bound=4)
    summary = asyncio.run(bluegreen.deploy(w.fleet, w.release(), w.progress))
    assert len(summary["hosts"]) == 30
    assert len(w.router.serving("web")) == 30
    assert provider.most == 4  # parallel up to the bound, and never beyond it
    assert [s for s, _ in w.steps].count("host.ready") == 30


def test_a_failed_boot_among_thirty_leaves_traffic_and_no_host(tmp_path: Path) -> None:
    w, provider = counting_world(tmp_path, replicas=30, bound=4)
    v1 = w.release()
    asyncio.run(bluegreen.deploy(w.fleet, v1, w.progress))
    serving = sorted(w.router.serving("web"))
    v2 = w.release()
    provider.unhealthy.add(v2.number)
    try:
        asyncio.run(bluegreen.deploy(w.fleet, v2, w.progress))
    except DeployError:
        pass
    else:
        raise AssertionError("an unhealthy release was deployed")
    assert sorted(w.router.serving("web")) == serving
    assert w.live_releases() == [v1.number] * 30
    assert provider.most <= 4


def host(n: int, state: HostState = HostState.BOOTING) -> Host:
    return Host(id=f"web-{n:04x}", service="web", release=1, provider="process", state=state,
                born_at=float(n), address=f"127.0.0.1:{20000 + n}")


def events(store: Store) -> list[tuple[str, str, dict[str, Any]]]:
    return [(e.action, e.subject, e.detail) for e in store.events(limit=1000)]


def test_save_hosts_records_what_save_host_one_by_one_records(tmp_path: Path) -> None:
    one, many = Store(tmp_path / "one.db"), Store(tmp_path / "many.db")
    for store in (one, many):
        store.save_host(host(1, HostState.SERVING), actor="t")
    batch = [host(n, HostState.SERVING) for n in range(1, 6)]  # host 1: no change, no event
    for h in batch:
        one.save_host(h, actor="t", why="switch")
    many.save_hosts(batch, actor="t", why="switch")
    assert events(one) == events(many)
    assert [h.view() for h in one.hosts()] == [h.view() for h in many.hosts()]


def test_host_counts_count_live_hosts_by_state(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    states = [HostState.SERVING] * 3 + [HostState.WARM] * 2 + [HostState.DESTROYED] * 4 + \
        [HostState.FAILED, HostState.DRAINING]
    for n, state in enumerate(states):
        store.save_host(host(n, state), actor="t")
    store.save_host(Host(id="api-1", service="api", release=1, provider="process",
                         state=HostState.SERVING, born_at=0.0), actor="t")
    expected: dict[str, int] = {}
    for h in store.hosts("web"):
        if h.state.alive:
            expected[str(h.state)] = expected.get(str(h.state), 0) + 1
    assert store.host_counts("web") == expected
    assert expected == {"serving": 3, "warm": 2, "draining": 1}


def test_steps_are_appended_in_order_and_read_from_any_index(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    number = store.create_deployment("web", strategy="blue-green", kind="deploy",
                                     from_release=None, to_release=1, actor="t")
    other = store.create_deployment("web", strategy="blue-green", kind="deploy",
                                    from_release=1, to_release=2, actor="t")
    for i in range(50):
        store.add_deployment_step(number, {"step": "host.ready", "i": i})
        if i % 10 == 0:
            store.add_deployment_step(other, {"step": "note", "i": i})
    steps = store.deployment(number)["steps"]
    assert [s["i"] for s in steps] == list(range(50))
    assert store.deployment(number, steps_after=47)["steps"] == steps[47:]
    assert store.deployment(number, steps_after=50)["steps"] == []
    listed = {d["id"]: d["steps"] for d in store.deployments()}
    assert listed[number] == steps
    assert [s["i"] for s in listed[other]] == [0, 10, 20, 30, 40]


def test_steps_written_before_the_steps_table_come_first(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    number = store.create_deployment("web", strategy="blue-green", kind="deploy",
                                     from_release=None, to_release=1, actor="t")
    with store.transaction() as db:  # as an older hinotori left it: steps in the column
        db.execute("UPDATE deployments SET steps = ? WHERE id = ?",
                   ('[{"ts": 1, "step": "boot"}]', number))
    store.add_deployment_step(number, {"step": "switched"})
    assert [s["step"] for s in store.deployment(number)["steps"]] == ["boot", "switched"]
    assert [s["step"] for s in store.deployment(number, 1)["steps"]] == ["switched"]
    assert store.deployment(number, 2)["steps"] == []
    store.add_deployment_step(number, {"step": "drained"})
    assert [s["step"] for s in store.deployment(number, 2)["steps"]] == ["drained"]

    def last(n: int) -> list[str]:
        return [s["step"] for s in store.deployments(last_steps=n)[-1]["steps"]]

    assert last(2) == ["switched", "drained"] and last(3) == last(9) == ["boot", *last(2)]
    assert last(1) == ["drained"] and last(0) == []
    assert [s["step"] for s in store.deployments()[-1]["steps"]] == last(3)


def test_last_steps_take_as_many_legacy_steps_as_are_missing(tmp_path: Path) -> None:
    """Three legacy steps and two in the table: the last four are the legacy column's last two
    and the table's two, the last six or nine all five."""
    store = Store(tmp_path / "state.db")
    number = store.create_deployment("web", strategy="blue-green", kind="deploy",
                                     from_release=None, to_release=1, actor="t")
    with store.transaction() as db:
        db.execute("UPDATE deployments SET steps = ? WHERE id = ?",
                   ('[{"step": "a"}, {"step": "b"}, {"step": "c"}]', number))
    store.add_deployment_step(number, {"step": "d"})
    store.add_deployment_step(number, {"step": "e"})

    def last(n: int) -> list[str]:
        return [s["step"] for s in store.deployments(last_steps=n)[-1]["steps"]]

    assert last(4) == ["b", "c", "d", "e"]
    assert last(6) == last(9) == ["a", "b", "c", "d", "e"]
    assert last(2) == ["d", "e"] and last(0) == []


def test_host_ports_come_from_below_the_ephemeral_range_and_skip_taken_ones() -> None:
    pool = PortPool(low=20_000, high=21_000)
    pool._next = 20_500  # a known start; a bound port on the way must be skipped
    with socket.socket() as taken:
        with contextlib.suppress(OSError):  # someone else holds it: skipped all the same
            taken.bind(("127.0.0.1", 20_501))
        ports = [pool.take() for _ in range(20)]
    assert len(set(ports)) == 20
    assert all(20_000 <= p < 21_000 for p in ports)
    assert 20_501 not in ports
    assert ephemeral_start() >= 1024


def test_a_service_may_have_a_thousand_replicas_and_no_more() -> None:
    spec = 'command = ["app"]\nreplicas = {n}\n'
    assert parse_spec(f"[services.web]\n{spec.format(n=1000)}").services["web"].replicas == 1000
    spec_error(f"[services.web]\n{spec.format(n=1001)}")
