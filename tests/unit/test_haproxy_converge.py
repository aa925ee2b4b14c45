"""HAProxy's runtime state converged as deltas (router/haproxy/converge.py): the state the router
remembers after an apply is the state the commands really produce, and it serves the table,
over random sequences of tables; the release slots and the live map behind O(1) switches."""

from __future__ import annotations

import copy
import random
from pathlib import Path

import pytest

from hinotori.model import Backend, Maintenance, RoutingTable, ServiceRoute
from hinotori.router.haproxy import config, converge, flags
from hinotori.router.haproxy.converge import Held, Server
from hinotori.router.haproxy.slots import assign_slots

MAPS = Path("/maps")


def map_targets(plan: config.Plan) -> dict[Path, dict[str, str]]:
    """As HaproxyRouter._map_targets orders them."""
    maps = {MAPS / f"{svc}.map": dict(e) for svc, e in plan.maps.items()}
    maps[MAPS / "sticky.map"] = {svc: "1" for svc in plan.sticky}
    maps[MAPS / "live.map"] = dict(plan.live)
    for name in reversed(config.MAINTENANCE_MAPS):
        maps[MAPS / f"{name}.map"] = dict(plan.maintenance.get(name, {}))
    return maps


def simulate(held: Held, commands: list[str],
             allowed: dict[str, set[str]] | None = None) -> Held:
    """What HAProxy holds after ``commands`` (as the Runtime API does them; a command it would
    refuse fails the test). ``allowed``: backend -> the servers that may take requests there
    at any moment (the old table's and the new one's), checked after every command."""
    out = held.copy()
    for c in commands:
        if allowed is not None:
            _check_step(out, allowed, c)
        w = c.split()
        if w[:2] == ["add", "server"]:
            be, name = w[2].split("/")
            assert name not in out.servers.setdefault(be, {}), c
            host, _, port = w[3].rpartition(":")
            out.servers[be][name] = Server(host, port, w[w.index("weight") + 1], True)
        elif w[:2] == ["set", "server"]:
            be, name = w[2].split("/")
            s = out.servers[be][name]  # KeyError: no such server
            if w[3:5] == ["state", "ready"]:
                s = Server(s.host, s.port, s.weight, False)
            elif w[3:5] == ["state", "maint"]:
                s = Server(s.host, s.port, s.weight, True)
            elif w[3] == "weight":
                s = Server(s.host, s.port, w[4], s.maint)
            else:
                assert w[3] == "addr" and w[5] == "port", c
                s = Server(w[4], w[6], s.weight, s.maint)
            out.servers[be][name] = s
        elif w[1] == "map":
            entries = out.maps.setdefault(Path(w[2]), {})
            if w[0] == "add":
                assert w[3] not in entries, c
                entries[w[3]] = w[4]
            elif w[0] == "set":
                assert w[3] in entries, c
                entries[w[3]] = w[4]
            else:
                del entries[w[3]]
        else:
            raise AssertionError(f"unexpected command {c!r}")
    return out


def _check_step(now: Held, allowed: dict[str, set[str]], command: str) -> None:
    pointed = {v for m in now.maps.values() for v in m.values() if v in allowed}
    for be in pointed:
        ready = {n for n, s in now.servers.get(be, {}).items() if not s.maint}
        assert ready <= allowed[be], (command, be, ready - allowed[be])


def reloaded(plan: config.Plan) -> Held:
    """What a worker started from the rendered cfg and map files holds."""
    servers = {be: {n: Server(s.host, str(s.port), str(s.weight), False) for n, s in srv.items()}
               for be, srv in plan.servers.items()}
    servers[flags.LIVE_FLAGS] = {n: Server("127.0.0.1", "1", "1", n not in (plan.flags or ()))
                                 for names in flags.declared(plan.shapes).values() for n in names}
    return Held(servers, map_targets(plan))


def serving(plan: config.Plan, held: Held) -> dict[str, dict[str, str]]:
    """Per backend a map points to (or the live default): its servers taking requests."""
    pointed = {v for m in held.maps.values() for v in m.values() if v in plan.servers}
    return {be: {n: s.weight for n, s in held.servers.get(be, {}).items() if not s.maint}
            for be in pointed | {sh.service for sh in plan.shapes
                                 if sh.service not in held.maps.get(MAPS / "live.map", {})}}


def wanted(plan: config.Plan, held: Held) -> dict[str, dict[str, str]]:
    pointed = serving(plan, held)
    return {be: {n: str(s.weight) for n, s in plan.servers[be].items()} for be in pointed}


def random_table(rng: random.Random, version: int, releases: list[int]) -> RoutingTable:
    routes = []
    for svc in rng.sample(["web", "api"], rng.randint(1, 2)):
        live = rng.sample(releases, rng.randint(1, min(2, len(releases)))) if releases else []
        backends = []
        for r in live:
            for h in rng.sample(range(6), rng.randint(0, 4)):
                port = 9000 + h + 10 * rng.randint(0, 1)  # an address may change
                backends.append(Backend(f"h{h}", f"127.0.0.1:{port}", r,
                                        rng.choice([0, 1, 50, 100, 100, 300])))
        routes.append(ServiceRoute(
            svc, tuple(backends), canary=max(live) if len(live) > 1 and rng.random() < .5
            else None, sticky=rng.random() < 0.3,
            preview=min(live) if len(live) > 1 and rng.random() < 0.2 else None,
            maintenance=Maintenance("down", 30) if rng.random() < 0.1 else None))
    lost = ("127.0.0.1:9001",) if rng.random() < 0.1 else ()
    return RoutingTable(version, tuple(routes), lost=lost)


@pytest.mark.parametrize("seed", range(40))
def test_deltas_leave_haproxy_as_a_full_apply_would(seed: int) -> None:
    rng = random.Random(seed)
    slots: dict[str, dict[int, int]] = {}
    shapes: tuple[config.Shape, ...] = ()
    held = Held()
    old_table: RoutingTable | None = None
    for version in range(1, 30):
        table = random_table(rng, version, rng.sample(range(1, 6), rng.randint(0, 3)))
        plan = config.plan(table, slots, shapes)
        if plan.shapes != shapes:
            held = reloaded(plan) if version == 1 else _reload(plan, held)
        maps = map_targets(plan)
        kept = copy.deepcopy(held)
        changes, after = converge.diff(plan, maps, held)
        # diff copies only what changes (own): what it was given is left as it was.
        assert held == kept and held.converged == kept.converged
        before = config.plan(old_table, slots, shapes) if old_table else plan
        allowed = {be: set(plan.servers[be]) | set(before.servers.get(be, {}))
                   for be in plan.servers}
        real = simulate(held, changes.commands, allowed)
        assert real == after  # what the router remembers is what HAProxy holds
        # ... and what a fresh read of it gives: converged, nothing left to do
        assert converge.diff(plan, maps, real)[0].commands == []
        # Every backend requests can reach serves exactly the plan's servers and weights.
        assert serving(plan, real) == wanted(plan, real)
        assert real.maps == {**held.maps, **maps}
        # An ordinary request of a catch-all route: the first switch on, else the live map.
        switches = real.servers[flags.LIVE_FLAGS]
        for svc, names in flags.declared(plan.shapes).items():
            on = [n for n in names if not switches[n].maint]
            assert len(on) <= 1, on
            assert (on[:1] or [real.maps[MAPS / "live.map"][svc]])[0] == plan.live[svc]
        for servers in real.servers.values():  # a lost backend takes nothing, anywhere
            for s in servers.values():
                assert s.maint or f"{s.host}:{s.port}" not in plan.lost
        held, slots, shapes, old_table = real, plan.slots, plan.shapes, table


def _reload(plan: config.Plan, held: Held) -> Held:
    """A seamless reload: the new worker starts from the cfg (the plan's servers, files)."""
    return reloaded(plan)


def test_a_switch_between_warm_releases_is_one_map_entry_and_nothing_else() -> None:
    a = tuple(Backend(f"a{i}", f"127.0.0.1:{10000 + i}", 1, 100) for i in range(1000))
    b = tuple(Backend(f"b{i}", f"127.0.0.1:{20000 + i}", 2, 100) for i in range(1000))
    slots: dict[str, dict[int, int]] = {}
    shapes: tuple[config.Shape, ...] = ()
    held = Held()
    counts = []
    for version, backends in enumerate([a, b, a, b, a], 1):
        plan = config.plan(RoutingTable(version, (ServiceRoute("web", backends),)), slots, shapes)
        slot = plan.slots["web"][backends[0].release]
        assert plan.live["web"] == config.slot_backend("web", slot)
        changes, held = converge.diff(plan, map_targets(plan), held)
        counts.append(len([c for c in changes.commands if "server" in c]))
        slots, shapes = plan.slots, plan.shapes
    # The first two bring 1,000 servers each into a slot; then no server command at all.
    assert counts == [2000, 2000, 0, 0, 0]


def test_slots_alternate_and_never_grow_the_shape_when_a_slot_is_free() -> None:
    assert assign_slots([2], {1: 1}, 2) == {2: 2}  # not the slot release 1 just left
    assert assign_slots([3], {2: 2}, 2) == {3: 1}
    assert assign_slots([1, 3], {1: 1}, 2) == {1: 1, 3: 2}
    assert assign_slots([5], {3: 1, 4: 2}, 2) == {5: 1}  # both recent: reuse, no reload
    assert assign_slots([5, 6, 7], {}, 2) == {5: 1, 6: 2, 7: 3}  # only then grow


def test_the_live_map_names_a_slot_only_when_it_serves_exactly_the_main_backend() -> None:
    def live(*backends: Backend, sticky: bool = False, canary: int | None = None) -> str:
        route = ServiceRoute("web", backends, sticky=sticky, canary=canary)
        return config.plan(RoutingTable(1, (route,)), {}).live["web"]

    one, two = Backend("x", "127.0.0.1:1", 1, 100), Backend("y", "127.0.0.1:2", 1, 300)
    held = Backend("z", "127.0.0.1:3", 2, 0)
    assert live(one, two) == "web.r1"
    assert live(one, two, held) == "web.r1"  # a weight-0 release never takes traffic
    assert live(one, Backend("w", "127.0.0.1:4", 1, 0)) == "web"  # the slot would count it 1
    assert live(one, Backend("c", "127.0.0.1:5", 2, 10), canary=2) == "web"  # a split
    assert live(one, held, sticky=True, canary=2) == "web"  # the main backend sets the cookie
    assert live() == "web"
