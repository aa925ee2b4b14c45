"""Orchestration on the fakes: the Fleet and the three strategies against an in-memory provider
and router (hinotori/providers/fake.py, hinotori/router/fake.py), with a real SQLite store.

Each case states the starting fleet, the faults, the deployment and what must hold after it:
which release serves, which hosts are left alive, and the invariants at every table the router
was handed (never an unhealthy host, never below the floor a strategy promises). These run in
milliseconds; the integration tests prove the same on real processes, sockets and routers.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from hinotori.deploy.base import PHOENIX, ROLLBACK, Control, StrategyRun
from hinotori.deploy.canary import CanaryFailed
from hinotori.deploy.strategies import STRATEGIES
from hinotori.errors import DeployError, RouterError
from hinotori.model import HostState, Release
from hinotori.providers.base import Provider
from hinotori.providers.fake import FakeProvider
from hinotori.spec.schema import CanarySpec, RollingSpec
from tests.support_fakes import World, world


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def deploy(w: World, strategy: str, release: Release, spec: Any = None, *,
                 kind: str = "deploy", control: Control | None = None,
                 only: set[str] | None = None) -> dict[str, Any]:
    """A deployment as the controller starts one: the strategy by name, one call signature."""
    return await STRATEGIES[strategy]().run(StrategyRun(
        fleet=w.fleet, release=release, progress=w.progress, spec=spec,
        control=control or Control(), kind=kind,
        only=frozenset(only) if only is not None else None))


async def serve_first(w: World) -> Release:
    """v1 serving on every replica: the starting point of most cases."""
    v1 = w.release()
    await deploy(w, "blue-green", v1)
    return v1


def test_the_fake_is_a_provider() -> None:
    assert isinstance(FakeProvider(), Provider)


def assert_only_healthy_routed(w: World) -> None:
    """Invariant 2 over the whole history: no table ever routed to an unhealthy release."""
    hosts = {h.id: h for h in w.store.hosts("web")}
    for table in w.router.applied:
        route = table.route("web")
        for b in route.backends if route else ():
            assert hosts[b.host_id].release not in w.provider.unhealthy, table


# -- blue-green ------------------------------------------------------------------------------
@pytest.mark.parametrize("fault", [
    "none", "boot fails", "one boot fails", "unhealthy", "slow health", "apply fails"])
def test_blue_green(tmp_path: Path, fault: str) -> None:
    w = world(tmp_path)

    async def scenario() -> None:
        await serve_first(w)
        v2 = w.release()
        if fault == "boot fails":
            w.provider.fail_boot.add(2)
        elif fault == "one boot fails":
            w.provider.boot_failures_left = 1
        elif fault == "unhealthy":
            w.provider.unhealthy.add(2)
        elif fault == "slow health":
            w.provider.slow_health = 3
        elif fault == "apply fails":
            w.router.fail_applies = 1
        if fault in ("none", "slow health"):
            summary = await deploy(w, "blue-green", v2)
            assert summary["release"] == "v2"
            assert w.serving_releases() == [2, 2, 2]
            assert w.store.service_releases("web") == (2, 1)
            # The old release stays warm for an instant rollback; nothing else is left.
            assert [h.release for h in w.store.hosts("web", [HostState.WARM])] == [1, 1, 1]
            assert w.live_releases() == [1, 1, 1, 2, 2, 2]
        else:
            with pytest.raises((DeployError, RouterError)):
                await deploy(w, "blue-green", v2)
            # A failed deployment leaves traffic where it was and leaks no host (invariant 3).
            assert w.serving_releases() == [1, 1, 1]
            assert w.store.service_releases("web") == (1, None)
            assert w.live_releases() == [1, 1, 1]
            assert len(w.stored_live()) == 3
        assert_only_healthy_routed(w)

    run(scenario())


@pytest.mark.parametrize("warm", [True, False])
def test_rollback_is_instant_while_warm(tmp_path: Path, warm: bool) -> None:
    w = world(tmp_path)

    async def scenario() -> dict[str, Any]:
        await serve_first(w)
        await deploy(w, "blue-green", w.release())
        if not warm:
            await w.fleet.destroy(w.store.hosts("web", [HostState.WARM]), why="test: expired")
        return await deploy(w, "blue-green", w.store.release("web", 1), kind=ROLLBACK)

    summary = run(scenario())
    assert summary["instant"] is warm
    assert w.serving_releases() == [1, 1, 1]
    assert w.store.service_releases("web") == (1, 2)
    # Booting v1 again from its image is what a cold rollback means.
    boots = [c for c in w.provider.calls if c[0] == "boot"]
    assert len(boots) == (6 if warm else 9)


# -- canary ----------------------------------------------------------------------------------
CANARY = CanarySpec.model_validate({
    "kind": "canary", "steps": [10, 50, 100], "pause": "0s",
    "analysis": {"interval": "1ms", "min_requests": 20, "max_error_rate": 0.05,
                 "deadline": "50ms"}})


@pytest.mark.parametrize(("canary_errors", "traffic", "outcome"), [
    (0.0, 1000, "promoted"),
    (0.5, 1000, "rolled back"),   # the canary answers half its requests with a 5xx
    (0.0, 0, "rolled back"),      # no traffic: inconclusive at the deadline, never a pass
])
def test_canary(tmp_path: Path, canary_errors: float, traffic: int, outcome: str) -> None:
    w = world(tmp_path)
    w.router.traffic = traffic

    async def scenario() -> None:
        await serve_first(w)
        v2 = w.release()
        w.provider.error_rate[2] = canary_errors
        if outcome == "promoted":
            await deploy(w, "canary", v2, CANARY)
            assert w.serving_releases() == [2, 2, 2]
            assert w.store.canary("web") is None
            assert w.store.service_releases("web") == (2, 1)
            weights = [s[1]["weight"] for s in w.steps if s[0] == "step"]
            assert weights == [10, 50]
        else:
            with pytest.raises(CanaryFailed):
                await deploy(w, "canary", v2, CANARY)
            assert w.serving_releases() == [1, 1, 1]
            assert set(w.router.serving("web").values()) == {100}  # weights restored
            assert w.store.canary("web") is None
            assert w.live_releases() == [1, 1, 1]  # canary hosts burned

    run(scenario())


def test_a_step_is_judged_one_interval_after_its_switch(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The interval counts from the step's switch, not from after the step's first stats
    read: here that read takes 10 s (a clock of the test's own), so a failing canary is
    judged at once, 10 s into a 5 s interval."""
    import time
    import types

    from hinotori.deploy import canary

    w = world(tmp_path)
    w.router.traffic = 1000
    offset = [0.0]
    clock = types.SimpleNamespace(monotonic=lambda: time.monotonic() + offset[0],
                                  perf_counter=time.perf_counter)
    stats = w.router.stats

    async def slow_first_read():  # type: ignore[no-untyped-def]
        if w.store.canary("web") is not None and not offset[0]:
            offset[0] = 10.0  # the step's base read
        return await stats()

    async def scenario() -> None:
        await serve_first(w)
        v2 = w.release()
        w.provider.error_rate[2] = 0.5
        monkeypatch.setattr(w.router, "stats", slow_first_read)
        monkeypatch.setattr(canary, "time", clock)
        spec = CanarySpec.model_validate({
            "kind": "canary", "steps": [10, 100], "pause": "0s",
            "analysis": {"interval": "5s", "min_requests": 20, "max_error_rate": 0.05}})
        with pytest.raises(CanaryFailed):
            await asyncio.wait_for(deploy(w, "canary", v2, spec), 3)

    run(scenario())
    (first, *_) = [d for step, d in w.steps if step == "analysis"]
    assert first["outcome"] == "fail" and first["elapsed_s"] >= 10


def test_canary_split_is_exact_at_each_step(tmp_path: Path) -> None:
    w = world(tmp_path, replicas=2)
    w.router.traffic = 1000

    async def scenario() -> None:
        await serve_first(w)
        await deploy(w, "canary", w.release(), CANARY)

    run(scenario())
    hosts = {h.id: h for h in w.store.hosts("web")}
    shares = []
    for table in w.router.applied:
        backends = table.route("web").backends  # type: ignore[union-attr]
        total = sum(b.weight for b in backends)
        to_canary = sum(b.weight for b in backends if hosts[b.host_id].release == 2)
        shares.append(round(100 * to_canary / total))
    assert shares == [0, 10, 50, 100]


# -- rolling ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("surge", "unavailable"), [(1, 0), (0, 1), (2, 1), (3, 0)])
def test_rolling_never_leaves_its_bounds(tmp_path: Path, surge: int, unavailable: int) -> None:
    w = world(tmp_path, replicas=3)
    strategy = RollingSpec(kind="rolling", max_surge=surge, max_unavailable=unavailable)
    live_counts: list[int] = []
    apply = w.router.apply

    async def counting_apply(table: Any) -> None:
        live_counts.append(len(w.provider.live()))
        await apply(table)

    async def scenario() -> None:
        await serve_first(w)
        w.router.apply = counting_apply  # type: ignore[method-assign]
        await deploy(w, "rolling", w.release(), strategy)

    run(scenario())
    assert w.serving_releases() == [2, 2, 2]
    assert w.live_releases() == [2, 2, 2]  # rolling burns what it replaces
    for table in w.router.applied[1:]:
        assert len(table.route("web").backends) >= 3 - unavailable  # type: ignore[union-attr]
    assert max(live_counts) <= 3 + surge


def test_rolling_batch_failure_rolls_the_stable_release_forward_again(tmp_path: Path) -> None:
    w = world(tmp_path, replicas=3)
    strategy = RollingSpec(kind="rolling", max_surge=1, max_unavailable=0)

    async def scenario() -> None:
        await serve_first(w)
        v2 = w.release()
        boots = 0
        boot = w.provider.boot

        async def second_batch_fails(req: Any) -> Any:
            nonlocal boots
            boots += 1
            if req.release.number == 2 and boots == 2:
                w.provider.unhealthy.add(2)
            return await boot(req)

        w.provider.boot = second_batch_fails  # type: ignore[method-assign]
        with pytest.raises(DeployError, match="rolled back to v1"):
            await deploy(w, "rolling", v2, strategy)

    run(scenario())
    assert w.serving_releases() == [1, 1, 1]
    assert w.live_releases() == [1, 1, 1]
    assert w.store.service_releases("web") == (1, None)


def test_phoenix_replaces_only_the_named_hosts(tmp_path: Path) -> None:
    w = world(tmp_path, replicas=3)

    async def scenario() -> set[str]:
        v1 = await serve_first(w)
        old = w.store.hosts("web", [HostState.SERVING])
        aged = {old[0].id}
        await deploy(w, "rolling", v1, kind=PHOENIX, only=aged)
        return aged

    aged = run(scenario())
    serving = set(w.router.serving("web"))
    assert len(serving) == 3 and not serving & aged
    assert w.serving_releases() == [1, 1, 1]


# -- the fleet itself ------------------------------------------------------------------------
def test_a_failed_switch_changes_neither_traffic_nor_state(tmp_path: Path) -> None:
    w = world(tmp_path)

    async def scenario() -> None:
        await serve_first(w)
        before = {h.id: h.state for h in w.store.hosts("web")}
        new = await w.fleet.boot_healthy("web", w.release(), 3)
        w.router.fail_applies = 1
        with pytest.raises(RouterError):
            await w.fleet.switch("web", new, w.store.hosts("web", [HostState.SERVING]), why="t")
        assert w.serving_releases() == [1, 1, 1]
        after = {h.id: h.state for h in w.store.hosts("web") if h.id in before}
        assert after == before
        # The hosts booted for it would serve nobody: burned, not leaked (invariant 3).
        assert {w.store.host(h.id).state for h in new} == {HostState.DESTROYED}
        assert w.live_releases() == [1, 1, 1]

    run(scenario())


def test_a_host_dying_while_booting_fails_the_boot_at_once(tmp_path: Path) -> None:
    w = world(tmp_path)
    w.provider.slow_health = 10**6  # never healthy: only death can end the wait early

    async def scenario() -> None:
        boot = w.provider.boot

        async def dies(req: Any) -> Any:
            host = await boot(req)
            w.provider.die(host.id)
            return host

        w.provider.boot = dies  # type: ignore[method-assign]
        with pytest.raises(DeployError, match="process exited"):
            await w.fleet.boot_healthy("web", w.release(), 2)

    run(scenario())
    assert w.provider.live() == [] and w.stored_live() == []
