"""The health monitor's schedule (Healing.run/watch), on the fakes and a virtual clock: each
serving host is looked at once per its service's interval, the looks spread over the interval,
and a host failing its checks is out of the table within ``unhealthy x interval``. Virtual
time: what is proved is the schedule, never how fast this machine runs it."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import Counter
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from hinotori.controller.healing import Healing, slice_count
from hinotori.deploy.base import Control, StrategyRun
from hinotori.deploy.locks import ServiceLocks
from hinotori.deploy.strategies import STRATEGIES
from hinotori.model import HealthCheck, HostState, ProbeResult
from tests.support_fakes import World, world


class VirtualTime:
    """asyncio.sleep and a clock on virtual time: ``run_until`` lets every ready task run,
    then wakes the earliest sleeper at its time, until ``end``."""

    def __init__(self) -> None:
        self.now = 100.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + delay, next(self._seq), future))
        await future

    async def run_until(self, end: float) -> None:
        while True:
            for _ in range(50):  # whatever is ready runs (the fakes answer without I/O)
                await asyncio.sleep(0)
            if not self._sleepers or self._sleepers[0][0] > end:
                self.now = end
                return
            when, _, future = heapq.heappop(self._sleepers)
            self.now = max(self.now, when)
            if not future.done():
                future.set_result(None)


async def deploy(w: World) -> None:
    await STRATEGIES["blue-green"]().run(StrategyRun(fleet=w.fleet, release=w.release(),
                                                     progress=w.progress, spec=None,
                                                     control=Control()))


def no_heal(coro: Coroutine[Any, Any, Any], name: str) -> None:
    coro.close()  # these tests look at the monitor's looks and take-outs only


def set_health(w: World, **changes: Any) -> None:
    svc = w.fleet.spec.services["web"]
    w.fleet.spec.services["web"] = svc.model_copy(
        update={"health": svc.health.model_copy(update=changes)})


def monitor(w: World, vt: VirtualTime, interval: float) -> tuple[Healing, list[tuple[float, str]]]:
    """A Healing on ``vt`` whose probes are recorded as (virtual time, address)."""
    set_health(w, interval=interval)
    looks: list[tuple[float, str]] = []
    answer = w.provider.probe

    async def recorded(address: str, check: HealthCheck) -> ProbeResult:
        looks.append((vt.now, address))
        return await answer(address, check)

    w.fleet.prober = recorded
    return Healing(w.fleet, ServiceLocks(), spawn=no_heal, sleep=vt.sleep, clock=vt.clock), looks


@pytest.mark.parametrize(("replicas", "interval"), [(200, 0.5), (100, 0.2), (7, 0.2), (1, 0.05)])
def test_each_host_is_looked_at_once_per_interval_spread_over_it(
        tmp_path: Path, replicas: int, interval: float) -> None:
    w = world(tmp_path, replicas=replicas)
    vt = VirtualTime()

    async def scenario() -> list[tuple[float, str]]:
        await deploy(w)
        healing, looks = monitor(w, vt, interval)
        watch = asyncio.create_task(healing.watch("web"))
        await vt.run_until(vt.now + interval * 11.5)  # a random phase, then 10 rounds
        watch.cancel()
        return looks

    looks = asyncio.run(scenario())
    addresses = {h.address for h in w.store.hosts("web", [HostState.SERVING])}
    first = looks[0][0]
    rounds: list[list[str]] = [[] for _ in range(13)]
    for t, a in looks:  # the round each look belongs to (float sums of intervals: rounded)
        rounds[int((t - first) / interval + 1e-6)].append(a)
    rounds = rounds[:10]
    for seen in rounds:  # every round: each host exactly once
        assert Counter(seen) == Counter(addresses), seen
    slices = slice_count(replicas, interval)
    times = sorted({round(t - first, 9) for t, _ in looks if t < first + interval - 1e-6})
    assert len(times) == slices  # spread: one wakeup per slice, not one burst
    assert all(b - a == pytest.approx(interval / slices) for a, b in itertools.pairwise(times))


@pytest.mark.parametrize("unhealthy", [1, 3])
def test_a_failing_host_is_out_within_unhealthy_times_interval(
        tmp_path: Path, unhealthy: int) -> None:
    """From the instant its check starts failing: out of the table (and failed) by
    ``unhealthy x interval``, whatever the phase of its looks."""
    interval = 0.2
    w = world(tmp_path, replicas=10)
    set_health(w, unhealthy=unhealthy)
    vt = VirtualTime()

    async def scenario() -> tuple[float, float | None, str]:
        await deploy(w)
        healing, _ = monitor(w, vt, interval)
        victim = w.store.hosts("web", [HostState.SERVING])[4]
        looked = w.fleet.prober
        switched: list[float] = []
        switch = w.fleet.switch

        async def timed_switch(*args: Any, **kwargs: Any) -> Any:
            switched.append(vt.now)
            return await switch(*args, **kwargs)

        w.fleet.switch = timed_switch  # type: ignore[method-assign]
        failing_from = vt.now + 1.013  # any instant inside a round
        failing = False

        async def victim_fails(address: str, check: HealthCheck) -> ProbeResult:
            result = await looked(address, check)
            if address == victim.address and failing:
                return ProbeResult(False, "status 500")
            return result

        w.fleet.prober = victim_fails
        watch = asyncio.create_task(healing.watch("web"))
        await vt.run_until(failing_from)
        failing = True
        await vt.run_until(failing_from + unhealthy * interval + 1.0)
        watch.cancel()
        return failing_from, switched[0] if switched else None, victim.id

    failing_from, out_at, victim = asyncio.run(scenario())
    assert out_at is not None and out_at - failing_from <= unhealthy * interval + 1e-9
    assert victim not in w.router.serving("web")
    assert w.store.host(victim).state in (HostState.FAILED, HostState.DESTROYED)
    assert len(w.router.serving("web")) == 9


def test_a_dead_host_is_out_at_its_next_look(tmp_path: Path) -> None:
    interval = 0.5
    w = world(tmp_path, replicas=20)
    vt = VirtualTime()

    async def scenario() -> str:
        await deploy(w)
        healing, _ = monitor(w, vt, interval)
        watch = asyncio.create_task(healing.watch("web"))
        await vt.run_until(vt.now + 2.0)
        victim = w.store.hosts("web", [HostState.SERVING])[11].id
        w.provider.die(victim)
        await vt.run_until(vt.now + interval)
        watch.cancel()
        return victim

    victim = asyncio.run(scenario())
    assert victim not in w.router.serving("web")
    assert len(w.router.serving("web")) == 19


def test_a_locked_service_is_not_looked_at_and_a_hung_host_holds_only_its_own_look(
        tmp_path: Path) -> None:
    interval = 0.1
    w = world(tmp_path, replicas=5)
    vt = VirtualTime()

    async def scenario() -> tuple[Counter[str], Counter[str], str]:
        await deploy(w)
        healing, looks = monitor(w, vt, interval)
        hung = w.store.hosts("web", [HostState.SERVING])[0].address or ""
        recorded = w.fleet.prober

        async def one_hangs(address: str, check: HealthCheck) -> ProbeResult:
            result = await recorded(address, check)
            if address == hung:
                await vt.sleep(0.45)  # answers only after 4.5 intervals
            return result

        w.fleet.prober = one_hangs
        watch = asyncio.create_task(healing.watch("web"))
        await vt.run_until(vt.now + 1.0)
        counted = Counter(a for _, a in looks)
        async with healing.locks.hold("web", "a deployment"):
            looks.clear()
            await vt.run_until(vt.now + 1.0)
            during = Counter(a for _, a in looks)
        watch.cancel()
        return counted, during, hung

    counted, during, hung = asyncio.run(scenario())
    assert not during  # a deployment owns the hosts: no look at all
    others = [n for a, n in counted.items() if a != hung]
    assert len(others) == 4 and min(others) >= 9  # ~10 looks in 1 s, the hung one aside
    assert counted[hung] <= 3  # never a second look while one is in flight


def test_run_watches_every_service_on_its_own_interval(tmp_path: Path) -> None:
    w = world(tmp_path, replicas=4)
    vt = VirtualTime()

    async def scenario() -> Counter[str]:
        await deploy(w)
        healing, looks = monitor(w, vt, 0.25)
        run = asyncio.create_task(healing.run())
        await vt.run_until(vt.now + 5.0)  # run's own rescans use asyncio's clock: real, short
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        return Counter(a for _, a in looks)

    looks = asyncio.run(scenario())
    assert set(looks) == {h.address for h in w.store.hosts("web", [HostState.SERVING])}
    assert all(19 <= n <= 21 for n in looks.values()), looks  # 5 s / 0.25 s


def test_the_reaper_burns_exactly_the_expired_warm_hosts(tmp_path: Path) -> None:
    """Burning.reap_once reads the host cache: what it burns is what the store says expired,
    also after the store changed under the cache."""
    from hinotori.controller.burning import Burning

    w = world(tmp_path, replicas=3)

    async def scenario() -> tuple[set[str], set[str]]:
        await deploy(w)
        await deploy(w)  # v1 stays warm for keep_previous
        burning = Burning(w.fleet, ServiceLocks(), start_deployment=no_deploy)
        await burning.reap_once()
        warm = w.store.hosts("web", [HostState.WARM])
        assert len(warm) == 3  # not expired yet: all kept
        for host in warm[:2]:
            host.warm_until = 1.0  # long past
            w.store.save_host(host, actor="test")
        await burning.reap_once()
        return {h.id for h in warm[:2]}, {h.id for h in w.store.hosts("web", [HostState.WARM])}

    async def no_deploy(*args: Any, **kwargs: Any) -> None:
        return None

    expired, still_warm = asyncio.run(scenario())
    assert len(still_warm) == 1 and not expired & still_warm
    assert all(w.store.host(i).state == HostState.DESTROYED for i in expired)


def test_a_host_whose_provider_tells_of_its_end_is_out_at_once(tmp_path: Path) -> None:
    """A provider with an ``exit_watch`` (the process provider's pidfds) says a host ended:
    out of the table at that instant, not at its next look; never while a deployment holds
    the service, nor once the monitor stopped."""
    interval = 0.5
    w = world(tmp_path, replicas=6)
    vt = VirtualTime()
    listeners: list[Any] = []
    w.provider.exit_watch = type("Watch", (), {"listeners": listeners})()  # type: ignore[attr-defined]

    async def scenario() -> str:
        await deploy(w)
        healing, looks = monitor(w, vt, interval)
        locks: ServiceLocks = healing.locks
        victim, other = w.store.hosts("web", [HostState.SERVING])[2:4]
        for pid, host in ((4242, victim), (4343, other)):
            host.pid = pid
            w.store.save_host(host, actor="test")
        run = asyncio.create_task(healing.run())
        await vt.run_until(vt.now + 2.0)
        assert len(listeners) == 1  # heard from the first look on
        async with locks.hold("web", "a deployment"):
            listeners[0](4343)  # a deployment owns the hosts now: not the monitor's to act on
            await vt.run_until(vt.now)
        died_at = vt.now + 0.013
        await vt.run_until(died_at)
        before = len(looks)
        listeners[0](4242)
        await vt.run_until(died_at)  # no virtual time passes: no look happens meanwhile
        assert len(looks) == before
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        healing.close()
        assert listeners == []
        return victim.id

    victim = asyncio.run(scenario())
    serving = w.router.serving("web")
    assert victim not in serving and len(serving) == 5
    assert w.store.host(victim).state in (HostState.FAILED, HostState.DESTROYED)
