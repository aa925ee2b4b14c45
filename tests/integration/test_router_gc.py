"""A real built-in router worker keeps its long-lived objects out of the collector's way
(hinotori/gcheap.py, issue 17): what start-up made is frozen before the worker answers, and a
``prepare`` freezes the routes it compiled, so no full collection scans them in a switch. The
controller freezes what its start-up made too (serve.py; `/v1/status` says)."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from hinotori.model import Backend, RoutingTable, ServiceRoute
from hinotori.router.builtin import BuiltinRouter, control
from tests.support import CliProject, free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BuiltinRouter]:
    r = BuiltinRouter(tmp_path_factory.mktemp("router"), f"127.0.0.1:{free_port()}")
    asyncio.run(r.start())
    yield r
    asyncio.run(r.stop())


def gc_of(r: BuiltinRouter) -> dict[str, Any]:
    answer = control.ping_sync(r.state_dir / "router-0.sock")
    assert answer is not None
    return answer["gc"]  # type: ignore[no-any-return]


def test_the_worker_freezes_start_up_and_prepared_routes(router: BuiltinRouter) -> None:
    started = gc_of(router)
    assert started["frozen"] > 0  # before its control socket answered
    big = RoutingTable(version=2, routes=(ServiceRoute(service="web", backends=tuple(
        Backend(f"h{i}", f"127.0.0.1:{20000 + i}", 1) for i in range(500))),))
    asyncio.run(router.prepare(big))
    prepared = gc_of(router)
    # ~10 objects per backend compiled, all frozen; the settle was a full collection.
    assert prepared["frozen"] > started["frozen"] + 2000
    assert prepared["collections"][2] > started["collections"][2]
    asyncio.run(router.apply(big))  # the prepared routes serve: a switch of ids
    assert asyncio.run(router.current()) == big


def test_the_controller_freezes_what_start_up_made(project: CliProject) -> None:
    project.cli("up", "-d")
    info = json.loads((project.path / ".hinotori" / "controller.json").read_text())
    token = (project.path / ".hinotori" / "token").read_text().strip()
    req = urllib.request.Request(f"http://{info['address']}/v1/status",
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        status = json.loads(r.read())
    assert status["pid"] == info["pid"]
    assert status["gc"]["frozen"] > 10_000  # modules, the API, the adopted fleet
