"""The controller's adoption after a crash and its healing, on the fakes beside the protocols
(in-memory provider and router, a real SQLite store): the same code a real controller runs,
without a process or a socket. The integration tests prove the same on real hosts."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hinotori.controller import adoption
from hinotori.controller.healing import Healing
from hinotori.deploy.base import Control, StrategyRun
from hinotori.deploy.fleet import LIVE_STATES
from hinotori.deploy.locks import ServiceLocks
from hinotori.deploy.strategies import STRATEGIES
from hinotori.model import HostState, ProbeResult
from hinotori.providers.base import BootRequest
from tests.support_fakes import World, world


@dataclass
class ProjectView:
    """What adoption reads of a project: its store and state directory."""

    store: Any
    state_dir: Path


async def deploy(w: World, strategy: str = "blue-green") -> None:
    await STRATEGIES[strategy]().run(StrategyRun(fleet=w.fleet, release=w.release(),
                                                 progress=w.progress, spec=None,
                                                 control=Control()))


@pytest.mark.parametrize(("crash", "expected_serving", "expected_live"), [
    # Died before the switch: the new hosts are unrouted, burned; v1 keeps serving.
    ("booted", [1, 1, 1], [1, 1, 1]),
    # Died after the switch, before the store knew: the store's truth (v1) is routed again.
    ("nothing", [1, 1, 1], [1, 1, 1]),
    # A serving host died with the controller: found dead, burned; healing will replace it.
    ("host died", [1, 1], [1, 1]),
])
def test_adoption_after_a_crash(tmp_path: Path, crash: str, expected_serving: list[int],
                                expected_live: list[int]) -> None:
    w = world(tmp_path)

    async def scenario() -> None:
        await deploy(w)
        if crash == "booted":
            await w.fleet.boot_healthy("web", w.release(), 3)  # READY, never routed
        elif crash == "host died":
            w.provider.die(w.store.hosts("web", [HostState.SERVING])[0].id)
        w.router.applied.clear()  # a new controller: the router's state is what it adopts
        await adoption.adopt(ProjectView(w.store, tmp_path / "state"),  # type: ignore[arg-type]
                             w.fleet)

    asyncio.run(scenario())
    assert w.serving_releases() == expected_serving
    assert w.live_releases() == expected_live
    assert sorted(h.release for h in w.store.hosts("web", LIVE_STATES)) == expected_live


def test_adoption_burns_orphans_and_rolls_back_an_abandoned_canary(tmp_path: Path) -> None:
    w = world(tmp_path)
    w.router.traffic = 1000

    async def scenario() -> None:
        await deploy(w)
        stable = w.store.hosts("web", [HostState.SERVING])
        canary = await w.fleet.boot_healthy("web", w.release(), 3)
        await w.fleet.switch("web", stable + canary, [], why="canary at 50%", canary=2)
        orphan = await w.provider.boot(BootRequest(  # booted, never recorded in the store
            "web-orphan", w.store.release("web", 1), tmp_path / "image", tmp_path / "orphan"))
        assert orphan.id in {h.id for h in w.provider.live()}
        await adoption.adopt(ProjectView(w.store, tmp_path / "state"),  # type: ignore[arg-type]
                             w.fleet)

    asyncio.run(scenario())
    assert w.serving_releases() == [1, 1, 1] and w.store.canary("web") is None
    assert w.live_releases() == [1, 1, 1]  # the canary hosts and the orphan are burned
    assert "web-orphan" not in w.provider.hosts


def spawner() -> tuple[list[asyncio.Task[Any]], Any]:
    tasks: list[asyncio.Task[Any]] = []

    def spawn(coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        tasks.append(task)
        return task

    return tasks, spawn


@pytest.mark.parametrize("fault", ["dies", "turns unhealthy"])
def test_healing_takes_a_bad_host_out_and_replaces_it(tmp_path: Path, fault: str) -> None:
    w = world(tmp_path)
    tasks, spawn = spawner()
    healing = Healing(w.fleet, ServiceLocks(), spawn=spawn)

    async def scenario() -> str:
        await deploy(w)
        victim = w.store.hosts("web", [HostState.SERVING])[0].id
        if fault == "dies":
            w.provider.die(victim)
            await healing.monitor_once()
        else:  # its health answers 500 from now on: out after `unhealthy` (3) failures in a row
            answer = w.provider.probe

            async def victim_fails(address: str, check: Any) -> Any:
                return ProbeResult(False, "status 500") if address == f"fake-{victim}:80" \
                    else await answer(address, check)

            w.fleet.prober = victim_fails
            for _ in range(3):
                await healing.monitor_once()
        await asyncio.gather(*tasks)
        return victim

    victim = asyncio.run(scenario())
    serving = w.store.hosts("web", [HostState.SERVING])
    assert len(serving) == 3 and victim not in {h.id for h in serving}
    assert w.store.host(victim).state in (HostState.FAILED, HostState.DESTROYED)
    assert victim not in w.router.serving("web")
    assert [e.action for e in w.store.events(action="service.healed")] == ["service.healed"]


def test_healing_never_empties_a_service(tmp_path: Path) -> None:
    """Every host failing its check at once: nobody is taken out (a 503 for all is worse)."""
    w = world(tmp_path)
    tasks, spawn = spawner()
    healing = Healing(w.fleet, ServiceLocks(), spawn=spawn)

    async def scenario() -> None:
        await deploy(w)
        w.provider.unhealthy.add(1)
        for _ in range(4):
            await healing.monitor_once()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(scenario())
    assert w.serving_releases() == [1, 1, 1]


def test_one_monitor_pass_takes_every_dead_host_of_a_big_service_out(tmp_path: Path) -> None:
    """At 50 hosts, looked at concurrently: one pass finds every dead host and routes the
    rest; healing brings the service back to its replicas."""
    w = world(tmp_path, replicas=50)
    tasks, spawn = spawner()
    healing = Healing(w.fleet, ServiceLocks(), spawn=spawn)

    async def scenario() -> set[str]:
        await deploy(w)
        victims = {h.id for h in w.store.hosts("web", [HostState.SERVING])[::10]}
        for victim in victims:
            w.provider.die(victim)
        await healing.monitor_once()
        assert not victims & set(w.router.serving("web"))  # out after one pass
        await asyncio.gather(*tasks)
        return victims

    victims = asyncio.run(scenario())
    serving = {h.id for h in w.store.hosts("web", [HostState.SERVING])}
    assert len(serving) == 50 and not victims & serving
    assert all(w.store.host(v).state in (HostState.FAILED, HostState.DESTROYED)
               for v in victims)


def test_a_bad_host_found_answering_again_during_a_take_out_is_still_burned(
        tmp_path: Path) -> None:
    """Two hosts out of the table in one take-out; while the first is destroyed, a look still
    in flight finds the second answering again. It is out of every table: it must be burned,
    not left serving in the store (where a heal would count it) with nothing routed to it."""
    w = world(tmp_path, replicas=4)
    tasks, spawn = spawner()
    healing = Healing(w.fleet, ServiceLocks(), spawn=spawn)

    async def scenario() -> list[str]:
        await deploy(w)
        bad = w.store.hosts("web", [HostState.SERVING])[:2]
        addresses = {h.address for h in bad}
        answer = w.provider.probe

        async def bad_fail(address: str, check: Any) -> Any:
            return ProbeResult(False, "status 500") if address in addresses \
                else await answer(address, check)

        w.fleet.prober = bad_fail
        destroy = w.fleet.destroy

        async def a_late_look_meanwhile(hosts: list[Any], why: str) -> None:
            addresses.clear()  # both answer again, and a look at the second one ends now
            await healing._slice("web", [bad[1]], w.fleet.service("web").health.check())
            await destroy(hosts, why=why)

        for _ in range(2):
            await healing.monitor_once()
        w.fleet.destroy = a_late_look_meanwhile  # type: ignore[method-assign]
        await healing.monitor_once()  # the third failure in a row: both out
        await asyncio.gather(*tasks)
        return [h.id for h in bad]

    bad = asyncio.run(scenario())
    assert all(w.store.host(b).state in (HostState.FAILED, HostState.DESTROYED) for b in bad)
    assert not set(bad) & set(w.router.serving("web"))
    serving = {h.id for h in w.store.hosts("web", [HostState.SERVING])}
    assert serving == set(w.router.serving("web")) and len(serving) == 4  # healed, in step


def test_a_take_out_decided_before_a_deployment_switched_does_not_undo_it(
        tmp_path: Path) -> None:
    """A dead host's take-out decided from release 1's hosts, whose switch comes only after a
    deployment switched to release 2: it changes nothing (it would route to release 1)."""
    w = world(tmp_path)
    tasks, spawn = spawner()
    healing = Healing(w.fleet, ServiceLocks(), spawn=spawn)

    async def scenario() -> None:
        await deploy(w)
        w.provider.die(w.store.hosts("web", [HostState.SERVING])[0].id)
        switch = w.fleet.switch

        async def deployment_first(*args: Any, **kwargs: Any) -> float:
            w.fleet.switch = switch  # type: ignore[method-assign]
            await deploy(w)  # release 2 serves: its switch goes first
            return await switch(*args, **kwargs)

        w.fleet.switch = deployment_first  # type: ignore[method-assign]
        await healing.monitor_once()
        await asyncio.gather(*tasks)

    asyncio.run(scenario())
    assert w.serving_releases() == [2, 2, 2]
    serving = {h.id for h in w.store.hosts("web", [HostState.SERVING])}
    assert serving == set(w.router.serving("web"))
