"""Held deployments (`deploy --hold`) without sockets: the blue-green hold on the fakes (every
table the router was handed keeps live traffic on v1 until promoted), the routing of a held
release in the built-in router's compiled table and in HAProxy's plan and config, the store's
held state, the spec keys and the CLI's `--hold [DURATION]`."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from hinotori.cli.holdview import hold_value, optional_value, state_text
from hinotori.deploy.base import Control, StrategyRun
from hinotori.deploy.hold import Hold
from hinotori.deploy.strategies import STRATEGIES
from hinotori.errors import DeployError, HoldEnded, SpecError
from hinotori.model import Backend, HostState, Release, RoutingTable, ServiceRoute, deployment_view
from hinotori.router.builtin.table import compile_table
from hinotori.router.haproxy import config
from hinotori.spec import parse_spec
from tests.support_fakes import World, world


# -- the strategy on the fakes ----------------------------------------------------------------
def live(w: World) -> list[int]:
    """Releases of the hosts live traffic can reach (weight > 0) in the last table."""
    hosts = {h.id: h for h in w.store.hosts("web")}
    return sorted(hosts[i].release for i, weight in w.router.serving("web").items() if weight)


class Held:
    """A Hold whose ``ready`` records what it was given (and may fail, as a pre_switch hook)."""

    def __init__(self, timeout: float | None = None, fail: bool = False) -> None:
        self.seen: list[tuple[Release, list[str]]] = []
        self.ready = asyncio.Event()
        self.fail = fail
        self.hold = Hold(timeout=timeout, ready=self._ready)

    async def _ready(self, release: Release, hosts: list[Any]) -> None:
        self.seen.append((release, [h.id for h in hosts]))
        if self.fail:
            raise DeployError("pre_switch hook failed (test)")
        self.ready.set()


async def start(w: World, held: Held, control: Control) -> asyncio.Task[dict[str, Any]]:
    await STRATEGIES["blue-green"]().run(StrategyRun(fleet=w.fleet, release=w.release(),
                                                     progress=w.progress, spec=None))  # v1
    v2 = w.release()
    run = StrategyRun(fleet=w.fleet, release=v2, progress=w.progress, spec=None,
                      control=control, hold=held.hold)
    return asyncio.ensure_future(STRATEGIES["blue-green"]().run(run))


def assert_v1_live_throughout(w: World, until: int | None = None) -> None:
    hosts = {h.id: h for h in w.store.hosts("web")}
    for table in w.router.applied[:until]:
        route = table.route("web")
        assert route is not None
        assert {hosts[b.host_id].release for b in route.backends if b.weight} <= {1}, table


def test_a_held_release_is_routed_for_preview_only_until_promoted(tmp_path: Path) -> None:
    w = world(tmp_path)

    async def scenario() -> dict[str, Any]:
        control, held = Control(), Held()
        task = await start(w, held, control)
        await held.ready.wait()
        table = w.router.applied[-1]
        route = table.route("web")
        assert route is not None and route.preview == 2
        assert sorted(b.weight for b in route.backends if b.release == 2) == [0, 0, 0]
        assert live(w) == [1, 1, 1]
        assert [h.release for h in w.store.hosts("web", [HostState.READY])] == [2, 2, 2]
        assert w.fleet.previews["web"][0] == 2
        before_promote = len(w.router.applied)
        control.request("promote")
        summary = await task
        assert_v1_live_throughout(w, before_promote)
        return summary

    summary = asyncio.run(scenario())
    assert summary["release"] == "v2" and "held_s" in summary
    assert live(w) == [2, 2, 2] and w.store.service_releases("web") == (2, 1)
    assert w.router.applied[-1].route("web").preview is None  # type: ignore[union-attr]
    assert "web" not in w.fleet.previews
    assert [s for s, _ in w.steps].count("preview") == 1


@pytest.mark.parametrize("end", ["abort", "expiry", "hook fails", "cancelled",
                                 "unhealthy at promote"])
def test_a_hold_that_ends_otherwise_burns_the_held_release(tmp_path: Path, end: str) -> None:
    w = world(tmp_path)

    async def scenario() -> BaseException:
        control = Control()
        held = Held(timeout=0.01 if end == "expiry" else None, fail=end == "hook fails")
        task = await start(w, held, control)
        if end == "abort":
            await held.ready.wait()
            control.request("abort")
        elif end == "cancelled":  # the controller stopped
            await held.ready.wait()
            task.cancel()
        elif end == "unhealthy at promote":  # a held host went bad while held
            await held.ready.wait()
            w.provider.unhealthy.add(2)
            control.request("promote")
        try:
            await task
        except BaseException as e:  # what it raised is what is checked
            return e
        raise AssertionError("the hold did not end")

    error = asyncio.run(scenario())
    if end in ("hook fails", "unhealthy at promote"):
        assert isinstance(error, DeployError) and not isinstance(error, HoldEnded)
    elif end == "cancelled":
        assert isinstance(error, asyncio.CancelledError)
    else:
        assert isinstance(error, HoldEnded) and error.expired is (end == "expiry")
    assert_v1_live_throughout(w)
    assert live(w) == [1, 1, 1] and w.store.service_releases("web") == (1, None)
    assert w.router.applied[-1].route("web").preview is None  # type: ignore[union-attr]
    assert w.live_releases() == [1, 1, 1]  # the held hosts are gone
    assert not w.store.hosts("web", [HostState.READY])


# -- the built-in router's table --------------------------------------------------------------
def held_route(sticky: bool = False) -> ServiceRoute:
    return ServiceRoute(service="web", sticky=sticky, preview=2, backends=(
        Backend("a", "127.0.0.1:1001", 1, 100), Backend("b", "127.0.0.1:1002", 1, 100),
        Backend("c", "127.0.0.1:1003", 2, 0), Backend("d", "127.0.0.1:1004", 2, 0)))


def compiled(route: ServiceRoute) -> Any:
    from hinotori.router.builtin.table import Counters

    table = compile_table(RoutingTable(1, (route,)), lambda _: None,  # type: ignore[arg-type, return-value]
                          lambda _: Counters())
    return table.match(b"x", b"/")


def test_the_builtin_table_reaches_a_held_release_only_by_asking() -> None:
    r = compiled(held_route())
    assert {r.pick().host_id for _ in range(50)} == {"a", "b"}  # live traffic: v1 only
    assert r.selects_release and r.preview == 2
    assert r.wanted(b"preview", None) == 2 and r.wanted(b"V2", None) == 2
    assert r.wanted(b"stable", None) == 1  # the held release is not "stable"
    assert [r.pick_release(2, set()).host_id for _ in range(4)] in (list("cdcd"), list("dcdc"))
    assert r.pick_release(2, {"127.0.0.1:1003"}).host_id == "d"  # a retry goes elsewhere


def test_a_held_release_never_makes_a_route_sticky() -> None:
    assert compiled(held_route(sticky=True)).sticky is False


# -- HAProxy's plan and config ----------------------------------------------------------------
def test_haproxy_maps_preview_to_the_held_slot_and_stable_to_the_live_one(tmp_path: Path) -> None:
    plan = config.plan(RoutingTable(1, (held_route(sticky=True),)), {})
    keys, slots = plan.maps["web"], plan.slots["web"]
    assert keys["preview"] == keys["v2"] == config.slot_backend("web", slots[2])
    assert keys["stable"] == keys["v1"] == config.slot_backend("web", slots[1])
    assert plan.servers["web"]["v2_c"].weight == 0  # the main backend never picks it
    assert plan.servers[keys["v2"]]["v2_c"].weight == 1
    assert "web" not in plan.sticky
    settings = config.Settings(listen="127.0.0.1:8080", stats_socket=tmp_path / "s",
                               maps_dir=tmp_path / "maps")
    assert f"frontend {config.PREVIEW_FRONTEND}" not in config.render(settings, plan, loaded=True)
    settings = config.Settings(listen="127.0.0.1:8080", stats_socket=tmp_path / "s",
                               maps_dir=tmp_path / "maps", preview_listen="127.0.0.1:8081")
    cfg = config.render(settings, plan, loaded=True)
    front = cfg[cfg.index(f"frontend {config.PREVIEW_FRONTEND}"):]
    assert "bind 127.0.0.1:8081" in front
    assert f"str(preview),map({tmp_path / 'maps' / 'web.map'})" in front
    assert front.index("str(preview)") < front.index("use_backend %[str(web),map(")


# -- store, spec, CLI -------------------------------------------------------------------------
def test_the_store_keeps_a_holds_state_and_record(tmp_path: Path) -> None:
    w = world(tmp_path)
    number = w.store.create_deployment("web", strategy="blue-green", kind="deploy",
                                       from_release=1, to_release=2, actor="test")
    assert deployment_view(w.store.deployment(number))["hold"] is None
    info = {"release": "v2", "preview": "http://127.0.0.1:8081/", "expires_at": None}
    w.store.hold_deployment(number, info, actor="test")
    view = deployment_view(w.store.deployment(number))
    assert view["state"] == "held" and view["hold"] == info
    assert state_text(view) == "held"
    w.store.unhold_deployment(number, actor="test", why="promote")
    assert w.store.deployment(number)["state"] == "running"
    assert [e.action for e in w.store.events()][-2:] == ["deploy.held", "deploy.unheld"]


def test_spec_keys() -> None:
    spec = parse_spec('[router]\npreview_listen = "127.0.0.1:8081"\n[services.web]\n'
                      'command = ["app"]\nhooks = { pre_switch = ["check"] }\n')
    assert spec.router.preview_listen == "127.0.0.1:8081"
    assert spec.services["web"].hooks.pre_switch == ["check"]
    assert parse_spec('[services.web]\ncommand = ["app"]\n').router.preview_listen is None
    with pytest.raises(SpecError, match="must differ"):
        parse_spec('[router]\nlisten = "127.0.0.1:8080"\npreview_listen = "127.0.0.1:8080"\n')
    with pytest.raises(SpecError, match="preview_listen"):
        parse_spec('[router]\npreview_listen = "nowhere"\n')


def test_hold_option_takes_an_optional_duration() -> None:
    assert optional_value(["deploy", "web", "--hold"], "--hold") == ["deploy", "web", "--hold="]
    assert optional_value(["deploy", "web", "--hold", "--json"], "--hold")[2] == "--hold="
    assert optional_value(["deploy", "web", "--hold", "30m"], "--hold")[2:] == ["--hold", "30m"]
    assert hold_value("") == 0.0 and hold_value("30m") == 1800.0
    for bad in ("0s", "abc", "31d"):
        with pytest.raises(ValueError):
            hold_value(bad)
