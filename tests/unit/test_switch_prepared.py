"""Switches in O(changed): prepared routes (built-in router) and plans readied ahead (HAProxy)
give exactly what a table applied whole gives."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from hinotori.model import Backend, Maintenance, RoutingTable, ServiceRoute
from hinotori.router.builtin import control
from hinotori.router.builtin.prepared import Prepared
from hinotori.router.builtin.sent import Sent
from hinotori.router.builtin.table import CompiledTable, Counters, compile_table
from hinotori.router.builtin.upstream import Pool
from hinotori.router.builtin.worker import Worker
from hinotori.router.haproxy import config, converge
from hinotori.router.haproxy.plans import PlanCache, state_text, table_text


def backends(prefix: str, release: int, n: int, port: int, weight: int = 100
             ) -> tuple[Backend, ...]:
    return tuple(Backend(f"{prefix}{i}", f"127.0.0.1:{port + i}", release, weight)
                 for i in range(n))


def random_table(rng: random.Random, version: int) -> RoutingTable:
    routes = []
    for svc in rng.sample(["web", "api", "docs"], rng.randint(1, 3)):
        bs = []
        for release in rng.sample([1, 2, 3], rng.randint(1, 2)):
            for h in rng.sample(range(8), rng.randint(0, 5)):
                bs.append(Backend(f"{svc}{h}-{release}", f"127.0.0.1:{9000 + h}", release,
                                  rng.choice([0, 1, 50, 100, 300])))
        releases = sorted({b.release for b in bs})
        routes.append(ServiceRoute(
            svc, tuple(bs), hosts=tuple(rng.sample(["a.test", "b.test:8080"], rng.randint(0, 2))),
            path_prefix=rng.choice(["/", "/api", "/api/v2"]),
            canary=releases[-1] if len(releases) > 1 else None, sticky=rng.random() < 0.3,
            maintenance=Maintenance("down", 5) if rng.random() < 0.1 else None))
    return RoutingTable(version, tuple(routes),
                        lost=("127.0.0.1:9003",) if rng.random() < 0.1 else ())


# -- the built-in router -----------------------------------------------------------------------

@pytest.fixture
def worker(tmp_path: Path) -> Iterator[Worker]:
    loop = asyncio.new_event_loop()
    yield Worker("127.0.0.1:1", tmp_path / "w.sock", tmp_path / "table.json", loop)
    loop.close()


def shape(t: CompiledTable) -> object:
    """Everything requests see of a compiled table (the cursors aside)."""
    def route(r: object) -> object:
        return (r.service, r.prefix, [x.host_id for x in r.targets],  # type: ignore[attr-defined]
                [x.host_id for x in r.schedule],  # type: ignore[attr-defined]
                {rel: [(x.host_id, x.address, x.weight) for x in ts]
                 for rel, ts in r.by_release.items()},  # type: ignore[attr-defined]
                r.canary, r.sticky, r.cookie, r.maintenance, r.preview)  # type: ignore[attr-defined]
    return ({h: [route(r) for r in rs] for h, rs in t.by_host.items()},
            [route(r) for r in t.fallback], sorted(t.pools), t.table)


def switch(worker: Worker, sent: Sent, table: RoutingTable) -> dict[str, object]:
    ids = sent.ids(table.routes)
    answer, _ = control.handle(worker, json.loads(sent.line(0, "switch", ids, table.version,
                                                              table.lost)))
    if answer.get("missing"):
        sent.forget(0)
        answer, _ = control.handle(worker, json.loads(sent.line(0, "switch", ids,
                                                                  table.version, table.lost)))
    if answer.get("ok"):
        sent.holds(0, ids)
    return answer


@pytest.mark.parametrize("seed", range(12))
def test_a_prepared_then_activated_table_is_the_directly_applied_one(worker: Worker,
                                                                    seed: int) -> None:
    rng = random.Random(seed)
    sent = Sent(1)
    tables = [random_table(rng, v) for v in range(1, 8)]
    for version in range(1, 40):
        table = rng.choice(tables)
        table = RoutingTable(version, table.routes, table.lost)
        if rng.random() < 0.5:  # prepared ahead, as a deploy does while the new hosts warm
            answer, _ = control.handle(worker, json.loads(sent.line(0, "prepare",
                                                                    sent.ids(table.routes))))
            assert answer == {"ok": True}
            sent.holds(0, sent.ids(table.routes))
        assert switch(worker, sent, table) == {"ok": True, "version": version}
        live = worker.table
        assert live is not None
        direct = compile_table(table, lambda a: Pool(a), lambda h: Counters())
        assert shape(live) == shape(direct)
        # One live pool per address, none retired (but a lost one's); targets hold those.
        for r in [*live.fallback, *(r for rs in live.by_host.values() for r in rs)]:
            for ts in r.by_release.values():
                for t in ts:
                    assert t.pool is live.pools[t.address]
                    assert not t.pool.retired or t.address in table.lost
        assert worker.pools is live.pools
        # The table file gets exactly the table.
        data = worker._persist_next
        assert isinstance(data, bytes) and RoutingTable.from_dict(json.loads(data)) == table
        worker._persist_next = None


def test_a_pool_that_left_and_came_back_serves_again(worker: Worker) -> None:
    sent = Sent(1)
    a = RoutingTable(1, (ServiceRoute("web", backends("a", 1, 3, 9100)),))
    b = RoutingTable(2, (ServiceRoute("web", backends("b", 2, 3, 9200)),))
    switch(worker, sent, a)
    first = dict(worker.pools)
    switch(worker, sent, b)
    assert all(p.retired for p in first.values())  # a's idle connections closed
    switch(worker, sent, RoutingTable(3, a.routes))
    assert worker.pools == first and not any(p.retired for p in first.values())


def test_a_switch_to_held_routes_is_a_line_of_ids_and_a_restart_sends_them_again(
        tmp_path: Path, worker: Worker) -> None:
    sent = Sent(1)
    big = RoutingTable(1, (ServiceRoute("web", backends("a", 1, 1000, 20000)),))
    assert len(sent.line(0, "switch", sent.ids(big.routes), 1)) > 50_000  # first: the body
    assert switch(worker, sent, big)["ok"]
    line = sent.line(0, "switch", sent.ids(big.routes), 2)
    assert len(line) < 200 and json.loads(line)["define"] == {}
    # A worker restarted (it holds no route) answers with what it lacks; sent again.
    restarted = Worker("127.0.0.1:1", tmp_path / "x.sock", tmp_path / "x.json", worker.loop)
    answer, _ = control.handle(restarted, json.loads(line))
    assert not answer["ok"] and answer["missing"] == sent.ids(big.routes)
    assert restarted.table is None  # nothing changed
    assert switch(restarted, sent, RoutingTable(2, big.routes)) == {"ok": True, "version": 2}
    assert restarted.table is not None and restarted.table.table == RoutingTable(2, big.routes)
    # Another controller (a restart) names routes its own way: it sends them whole.
    again = Sent(1)
    assert again.ids(big.routes) != sent.ids(big.routes)
    assert json.loads(again.line(0, "switch", again.ids(big.routes), 3))["define"]


def test_prepared_routes_are_bounded_but_the_live_ones_stay(worker: Worker) -> None:
    prepared = Prepared(limit=3)
    wire = {f"r{i}": ServiceRoute(f"s{i}", backends("h", 1, 2, 9000 + 10 * i)).to_dict()
            for i in range(6)}
    prepared.define({"r0": wire["r0"]}, worker._pool_for, worker._counters_for)
    prepared.serving(["r0"])
    for i in range(1, 6):
        prepared.define({f"r{i}": wire[f"r{i}"]}, worker._pool_for, worker._counters_for)
    assert list(prepared.entries) == ["r0", "r3", "r4", "r5"]
    with pytest.raises(KeyError):
        prepared.table(1, ["r1"], ())


def test_a_bad_route_is_refused_and_nothing_is_kept(worker: Worker) -> None:
    bad = ServiceRoute("web", (Backend("h", "nowhere", 1, 1),)).to_dict()
    answer, _ = control.handle(worker, {"op": "switch", "version": 1, "routes": ["x"],
                                        "define": {"x": bad}})
    assert not answer["ok"] and "invalid" in str(answer["error"])
    assert worker.table is None and not worker.prepared.entries


# -- HAProxy -----------------------------------------------------------------------------------

MAPS = Path("/maps")


def map_targets(plan: config.Plan) -> dict[Path, dict[str, str]]:
    maps = {MAPS / f"{svc}.map": dict(e) for svc, e in plan.maps.items()}
    maps[MAPS / "live.map"] = dict(plan.live)
    return maps


@pytest.mark.parametrize("seed", range(20))
def test_readied_ahead_then_switched_holds_what_a_direct_switch_holds(seed: int) -> None:
    rng = random.Random(seed)
    plans = PlanCache()
    slots: dict[str, dict[int, int]] = {}
    shapes: tuple[config.Shape, ...] = ()
    direct = ahead = converge.Held()
    tables = [random_table(rng, v) for v in range(1, 6)]
    for version in range(1, 30):
        table = RoutingTable(version, *(lambda t: (t.routes, t.lost))(rng.choice(tables)))
        plan = plans.get(table, slots, shapes).plan
        assert plan is plans.get(RoutingTable(version + 1000, table.routes, table.lost),
                                 slots, shapes).plan  # the version is not part of a plan
        if plan.shapes != shapes:  # a reload: both start from the plan's servers
            continue
        maps = map_targets(plan)
        _, direct = converge.diff(plan, maps, direct)
        early, readied = converge.ahead(plan, ahead)
        pointed = {v for m in ahead.maps.values() for v in m.values()}
        for c in early.commands:  # nothing a request can reach now is touched
            assert "map" not in c.split()[1] and c.split()[2].split("/")[0] not in pointed, c
        assert readied.maps == ahead.maps
        _, ahead = converge.diff(plan, maps, readied)
        assert ahead == direct
        assert converge.diff(plan, maps, ahead)[0].commands == []
        slots, shapes = plan.slots, plan.shapes


def test_a_new_release_readied_ahead_switches_with_map_entries_only() -> None:
    plans = PlanCache()
    a = RoutingTable(1, (ServiceRoute("web", backends("a", 1, 1000, 20000)),))
    plan_a = plans.get(a, {}, ())
    _, held = converge.diff(plan_a.plan, map_targets(plan_a.plan), converge.Held())
    b = RoutingTable(2, (ServiceRoute("web", backends("b", 2, 1000, 30000)),))
    plan_b = plans.get(b, plan_a.plan.slots, plan_a.plan.shapes).plan
    early, held = converge.ahead(plan_b, held)
    assert len(early.commands) == 2000  # add and ready 1,000 servers, before the switch
    changes, _ = converge.diff(plan_b, map_targets(plan_b), held)
    assert changes.commands and all(" map " in f" {c} " for c in changes.commands)
    assert len(changes.commands) <= 4


def test_a_plan_found_by_identity_is_the_one_found_by_value() -> None:
    """A switch after its prepare asks for the very routes again: found without hashing them,
    and only when the rest of the key (lost addresses, slots, shapes) is the same too."""
    plans = PlanCache()
    table = RoutingTable(1, (ServiceRoute("web", backends("a", 1, 50, 9000)),))
    first = plans.get(table, {}, ())
    assert plans.get(table, {}, ()) is first  # the same routes object
    equal = RoutingTable(2, (ServiceRoute("web", backends("a", 1, 50, 9000)),))
    assert plans.get(equal, {}, ()) is first  # equal routes, by hash
    slots, shapes = first.plan.slots, first.plan.shapes
    assert slots and plans.get(table, {}, ()) is first  # (the last lookup: these routes)
    moved = plans.get(table, slots, shapes)  # the same routes from other slots: another plan
    assert moved is not first and moved.plan == config.plan(table, slots, shapes)
    lost = RoutingTable(3, table.routes, lost=("127.0.0.1:9001",))
    assert plans.get(lost, slots, shapes).plan == config.plan(lost, slots, shapes)
    assert plans.get(lost, slots, shapes).plan.lost == {"127.0.0.1:9001"}
    assert plans.get(table, {}, ()) is first


def test_route_ids_found_by_identity_are_the_ones_found_by_value() -> None:
    sent = Sent(1)
    routes = (ServiceRoute("web", backends("a", 1, 50, 9000)), ServiceRoute(
        "api", backends("b", 1, 3, 9100), hosts=("api.test",)))
    ids = sent.ids(routes)
    assert sent.ids(routes) == ids  # the same tuple: the same ids, not found again
    copy = tuple(ServiceRoute(r.service, tuple(r.backends), hosts=r.hosts) for r in routes)
    assert sent.ids(copy) == ids
    other = (routes[1], ServiceRoute("web", backends("c", 2, 50, 9000)))
    assert sent.ids(other)[0] == ids[1] and sent.ids(other)[1] not in ids
    assert sent.ids(routes) == ids
    line = json.loads(sent.line(0, "switch", sent.ids(routes), 9))
    assert line["routes"] == ids and set(line["define"]) == set(ids)


def test_state_text_is_the_json_of_the_state() -> None:
    plans = PlanCache()
    table = RoutingTable(7, (ServiceRoute("web", backends("a", 1, 3, 9000)),),
                         lost=("127.0.0.1:9001",))
    entry = plans.get(table, {}, ())
    text = table_text(table, entry)
    assert json.loads(text) == table.to_dict()
    state = {"table": table.to_dict(), "slots": {"web": {"1": 1}}, "base": {"h": {"x": 1}}}
    assert json.loads(state_text(state, text)) == state
    assert json.loads(state_text({}, None)) == {}
    assert json.loads(state_text({"table": table.to_dict()}, text)) == {"table": table.to_dict()}


def test_state_text_dumps_a_replaced_base_again_and_the_same_one_once() -> None:
    """The base (counters of deleted servers) is dumped once per dict: a sweep or a reload
    replaces it, and the next state text has the new counters."""
    def whole(state: dict[str, object]) -> str:  # the text as it was made before
        return json.dumps(state, sort_keys=True)

    base = {f"h{i}": {"requests": i, "errors": 0, "statuses": {"2xx": i}} for i in range(50)}
    state: dict[str, object] = {"slots": {"web": {"2": 1, "1": 2}}, "base": base}
    assert state_text(state, None) == whole(state)
    assert state_text({**state, "slots": {}}, None) == whole({**state, "slots": {}})
    replaced = {**base, "h0": {"requests": 7, "errors": 1, "statuses": {"5xx": 1}}}
    assert state_text({**state, "base": replaced}, None) == whole({**state, "base": replaced})
    assert state_text(state, None) == whole(state)  # and back


# -- the deploy path ---------------------------------------------------------------------------

def test_a_blue_green_deploy_prepares_the_very_table_it_then_switches_to(tmp_path: Path) -> None:
    from hinotori.deploy.base import Control, StrategyRun
    from hinotori.deploy.strategies import STRATEGIES
    from tests.support_fakes import world

    w = world(tmp_path)

    async def deploy() -> dict[str, object]:
        return await STRATEGIES["blue-green"]().run(StrategyRun(
            fleet=w.fleet, release=w.release(), progress=w.progress, spec=None,
            control=Control(), kind="deploy", only=None))

    async def scenario() -> None:
        for _ in range(2):
            summary = await deploy()
            prepared, switched = w.router.prepared[-1], w.router.applied[-1]
            assert prepared.routes == switched.routes and prepared.lost == switched.lost
            assert isinstance(summary["prepare_ms"], float) and "switch_ms" in summary

    asyncio.run(scenario())
