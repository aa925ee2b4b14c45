"""MaintenanceMode on the fakes (in-memory provider and router, a real store): every table the
router gets while a service is in maintenance carries it, a deployment's switches included;
the hosts are never touched; a router that refuses the table leaves the store as it was."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hinotori.controller.maintenance import MaintenanceMode
from hinotori.deploy.base import Control, StrategyRun
from hinotori.deploy.strategies import STRATEGIES
from hinotori.errors import NotFound, RouterError, UnknownName
from hinotori.model import Maintenance
from tests.support_fakes import World, world


async def deploy(w: World) -> None:
    await STRATEGIES["blue-green"]().run(StrategyRun(
        fleet=w.fleet, release=w.release(), progress=w.progress, spec=None,
        control=Control(), kind="deploy", only=None))


def test_on_is_in_every_table_until_off_and_hosts_stay(tmp_path: Path) -> None:
    w = world(tmp_path, replicas=2)
    mode = MaintenanceMode(w.fleet)

    async def scenario() -> None:
        await deploy(w)
        hosts = sorted(h.id for h in w.provider.live())
        before = len(w.router.applied)
        view = await mode.on("web", message="db move", retry_after=120, actor="token",
                             reason="migration")
        assert view["maintenance"] is True and view["actor"] == "token"
        assert len(w.router.applied) == before + 1  # returned after the router took it
        assert w.router.applied[-1].route("web").maintenance == Maintenance("db move", 120)
        assert sorted(h.id for h in w.provider.live()) == hosts  # no host touched

        await deploy(w)  # a deployment during maintenance: each of its switches keeps it
        tables = w.router.applied[before:]  # ours, then the deployment's switch
        assert len(tables) == 2 and all(t.route("web").maintenance for t in tables)
        assert w.serving_releases() == [2, 2]

        view = await mode.off("web", actor="dashboard:abc")
        assert view == {"service": "web", "maintenance": False}
        assert w.router.applied[-1].route("web").maintenance is None
        applied = len(w.router.applied)
        await mode.off("web", actor="token")  # already off: nothing to apply
        assert len(w.router.applied) == applied

    asyncio.run(scenario())
    actions = [(e.action, e.actor) for e in w.store.events(subject="web",
                                                          action="service.maintenance")]
    assert actions == [("service.maintenance-on", "token"),
                       ("service.maintenance-off", "dashboard:abc")]


def test_a_refused_table_leaves_the_store_as_the_router_serves(tmp_path: Path) -> None:
    w = world(tmp_path, replicas=1)
    mode = MaintenanceMode(w.fleet)

    async def scenario() -> None:
        await deploy(w)
        w.router.fail_applies = 1
        with pytest.raises(RouterError):
            await mode.on("web", actor="token")
        assert w.store.maintenance("web") is None
        assert w.router.applied[-1].route("web").maintenance is None
        await mode.on("web", actor="token")
        w.router.fail_applies = 1
        with pytest.raises(RouterError):
            await mode.off("web", actor="token")
        assert w.store.maintenance("web") == Maintenance()  # still on, as the router says
        with pytest.raises((NotFound, UnknownName)):
            await mode.on("nope", actor="token")

    asyncio.run(scenario())
