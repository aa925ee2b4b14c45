"""The catch-all route's switches (router/haproxy/flags.py): on only when the header, cookie and
live-map rules they skip would choose the same backend; in the cfg for catch-all routes only;
flipped through the Runtime API in an order that never leaves an ordinary request without its
backend; and a config with them loads in HAProxy and routes by them."""

from __future__ import annotations

from pathlib import Path

import pytest

from hinotori.model import Backend, Maintenance, RoutingTable, ServiceRoute
from hinotori.router.haproxy import config, converge, flags
from hinotori.router.haproxy.converge import Held, Server
from hinotori.router.haproxy.files import Files
from hinotori.router.haproxy.stats import parse_servers
from tests.support import haproxy_checks_config


def web(*releases: int, weight: int = 100, **kw: object) -> ServiceRoute:
    return ServiceRoute("web", tuple(Backend(f"h{r}", f"127.0.0.1:{9000 + r}", r, weight)
                                     for r in releases), **kw)  # type: ignore[arg-type]


def plan_of(*routes: ServiceRoute) -> config.Plan:
    return config.plan(RoutingTable(1, routes), {})


def settings(tmp_path: Path) -> config.Settings:
    return config.Settings(listen="127.0.0.1:8080", stats_socket=tmp_path / "s.sock",
                           maps_dir=tmp_path / "maps")


def fast(on: frozenset[str] | None) -> set[str]:
    """The catch-all routes' switches among ``on`` (not the live map's, flags.live_flags)."""
    return {n for n in on or () if not n.endswith("_live")}


def test_one_release_everywhere_turns_its_slots_switch_on() -> None:
    p = plan_of(web(1))
    assert p.live["web"] == "web.r1" and p.flags == frozenset({"web.r1", "web.r1_live"})


def test_the_live_maps_switch_is_on_for_the_backend_it_names_and_only_that_one() -> None:
    for route in (web(1), web(1, 2, canary=2), web(1, maintenance=Maintenance("brb", 30)),
                  ServiceRoute("api", (Backend("a", "127.0.0.1:1", 1),), hosts=("api.x",))):
        p = plan_of(route)
        svc, slots = route.service, p.shapes[0].slots
        assert set(flags.live_flags(svc, slots)) & (p.flags or frozenset()) == \
            {flags.live_flag(p.live[svc])}


@pytest.mark.parametrize("route", [
    web(1, 2, canary=2),                          # a split: the main backend, header: canary
    web(1, 2, preview=2),                         # a held release the header can ask for
    ServiceRoute("web", (Backend("a", "127.0.0.1:1", 1, 100),
                         Backend("b", "127.0.0.1:2", 2, 0))),  # another release to ask for
    web(1, 2, sticky=True),                       # the cookie chooses
    web(1, maintenance=Maintenance("brb", 30)),   # the maintenance backend answers
    ServiceRoute("web", (Backend("a", "127.0.0.1:1", 1, 100),
                         Backend("b", "127.0.0.1:2", 1, 0))),  # weight 0: the main backend
    ServiceRoute("web", ()),                      # nothing serves
], ids=["canary", "preview", "other-release", "sticky", "maintenance", "weight-0", "empty"])
def test_the_switch_is_off_when_another_rule_could_decide_differently(
        route: ServiceRoute) -> None:
    assert fast(plan_of(route).flags) == set()


def test_only_catch_all_routes_get_switches_and_the_live_backend(tmp_path: Path) -> None:
    s = settings(tmp_path)
    hosts = ServiceRoute("api", (Backend("a", "127.0.0.1:1", 1),), hosts=("api.example",))
    path = ServiceRoute("img", (Backend("b", "127.0.0.1:2", 1),), path_prefix="/img")
    p = plan_of(hosts, path, web(3))
    assert fast(p.flags) == {"web.r1"}
    text = config.render(s, p, loaded=True)
    front = text.split(f"frontend {config.FRONTEND}\n", 1)[1].split("\n\n", 1)[0]
    assert "srv_is_up(_live/api.r1)" not in front and "srv_is_up(_live/img.r1)" not in front
    rules = [line.strip() for line in front.splitlines() if "use_backend" in line]
    web_rules = [r for r in rules if "web" in r]
    # The switches come before the header rule of their route.
    assert web_rules[:2] == ["use_backend web.r1 if { srv_is_up(_live/web.r1) }",
                             "use_backend web.r2 if { srv_is_up(_live/web.r2) }"]
    assert "x-hinotori-release" in web_rules[2]
    live = text.split(f"backend {flags.LIVE_FLAGS}\n", 1)[1].split("\n\n", 1)[0]
    assert live.splitlines()[:2] == [f"  server web.r1 {flags.FLAG_ADDRESS}",
                                     f"  server web.r2 {flags.FLAG_ADDRESS} disabled"]
    assert sorted(n.split()[1] for n in live.splitlines()[2:] if "disabled" not in n) == \
        ["api.r1_live", "img.r1_live", "web.r1_live"]  # the live map's switches
    text = config.render(s, plan_of(hosts, path), loaded=True)
    assert "srv_is_up(_live/api.r1)" not in text and "srv_is_up(_live/img.r1)" not in text


def ordinary(held: Held, shapes: tuple[config.Shape, ...], live_map: Path) -> dict[str, str]:
    """Where an ordinary request of each service goes: the first switch on in rule order, else
    the first of the live map's switches on (which must agree with the live map), else the
    main backend."""
    switches = held.servers.get(flags.LIVE_FLAGS, {})
    out = {}
    for shape in shapes:
        svc = shape.service
        names = flags.declared(shapes).get(svc, [])
        on = [n for n in names if n in switches and not switches[n].maint]
        lives = [n.removesuffix("_live") for n in flags.live_flags(svc, shape.slots)
                 if n in switches and not switches[n].maint]
        out[svc] = on[0] if on else lives[0] if lives else svc
    return out


def test_switches_flip_after_the_maps_and_every_step_serves_the_old_or_new_backend(
        tmp_path: Path) -> None:
    files = Files(settings(tmp_path), tmp_path / "haproxy.cfg", tmp_path / "state")
    live_map = config.live_file(files.settings)
    tables = [web(1), web(1, 2, canary=2), web(2), web(3), web(3, 4, preview=4), web(4),
              web(4, maintenance=Maintenance("brb", 5)), web(4), web(1)]
    p = plan_of(tables[0])
    declared = [*(n for names in flags.declared(p.shapes).values() for n in names),
                *flags.live_flags("web", p.shapes[0].slots)]
    held = Held({flags.LIVE_FLAGS: {n: Server("127.0.0.1", "1", "1", n not in (p.flags or ()))
                                    for n in declared}}, {})
    held = converge.diff(p, files.targets(p), held)[1]
    switched = 0
    for route in tables[1:]:
        nxt = config.plan(RoutingTable(2, (route,)), p.slots, p.shapes)
        assert nxt.shapes == p.shapes  # none of these reloads
        changes, after = converge.diff(nxt, files.targets(nxt), held)
        before = ordinary(held, p.shapes, live_map)["web"]
        now = held
        for command in changes.commands:
            now = simulate_one(now, command)
            assert ordinary(now, p.shapes, live_map)["web"] in (before, nxt.live["web"]), command
        assert now == after
        assert ordinary(after, p.shapes, live_map)["web"] == nxt.live["web"] == \
            after.maps[live_map]["web"]
        on = {n for n, s in after.servers[flags.LIVE_FLAGS].items() if not s.maint}
        assert on == set(nxt.flags or ())
        switched += sum("_live/" in c for c in changes.commands)
        # A switch on: the release map has nothing a header could ask for elsewhere.
        for name in fast(frozenset(on)):
            assert set(after.maps[config.map_file(files.settings, "web")].values()) == {name}
        # Done: nothing left to send; a prepare never touches the switches.
        assert converge.diff(nxt, files.targets(nxt), after)[0].commands == []
        assert not any("_live/" in c for c in converge.ahead(nxt, held)[0].commands)
        p, held = nxt, after
    assert switched > 0


def simulate_one(held: Held, command: str) -> Held:
    out = held.copy()
    w = command.split()
    if w[:2] == ["set", "server"] and w[3] == "state":
        be, name = w[2].split("/")
        s = out.servers[be][name]
        out.servers[be][name] = Server(s.host, s.port, s.weight, w[4] == "maint")
    elif w[:2] == ["add", "server"]:
        be, name = w[2].split("/")
        host, _, port = w[3].rpartition(":")
        out.servers.setdefault(be, {})[name] = Server(host, port, w[w.index("weight") + 1], True)
    elif w[:2] == ["set", "server"]:
        return out  # weights, addresses: not what this test follows
    elif w[1] == "map":
        entries = out.maps.setdefault(Path(w[2]), {})
        if w[0] == "del":
            del entries[w[3]]
        else:
            entries[w[3]] = w[4]
    else:
        raise AssertionError(command)
    return out


def test_switches_are_neither_counted_nor_swept_nor_lost() -> None:
    csv = ("# pxname,svname,scur,qcur,hrsp_2xx\n"
           "web.r1,v1_h1,0,0,5\n_live,web.r1,0,0,0\n_live,BACKEND,0,0,0\n")
    assert set(parse_servers(csv)) == {("web.r1", "v1_h1")}
    p = config.plan(RoutingTable(1, (web(1),), lost=(flags.FLAG_ADDRESS,)), {})
    held = Held({flags.LIVE_FLAGS: {"web.r1": Server("127.0.0.1", "1", "1", False),
                                    "web.r2": Server("127.0.0.1", "1", "1", True)}}, {})
    changes, after = converge.diff(p, {}, held)
    assert not changes.lost and not any("_live/" in c for c in changes.commands)
    assert after.servers[flags.LIVE_FLAGS] == held.servers[flags.LIVE_FLAGS]


def test_a_config_with_switches_loads_in_haproxy(tmp_path: Path) -> None:
    haproxy_checks_config(settings(tmp_path), plan_of(web(1)), tmp_path)
