"""What an ordinary request meets in hinotori's haproxy.cfg, and that the cheaper forms keep
every behaviour: maintenance through the live map (for requests asking for a release too), the
latency sample as an int-range map, the cookie rule only on sticky routes."""

from __future__ import annotations

from pathlib import Path

import pytest

from hinotori.model import Backend, Maintenance, RoutingTable, ServiceRoute
from hinotori.router.haproxy import HaproxyRouter, config, converge
from hinotori.router.haproxy.stats import MAX_SAMPLE
from tests.support import haproxy_checks_config


def web(*releases: int, maintenance: Maintenance | None = None, sticky: bool = False,
        **kw: object) -> ServiceRoute:
    return ServiceRoute("web", tuple(Backend(f"h{r}", f"127.0.0.1:{9000 + r}", r)
                                     for r in releases),
                        maintenance=maintenance, sticky=sticky, **kw)  # type: ignore[arg-type]


def settings(tmp_path: Path, **kw: object) -> config.Settings:
    return config.Settings(listen="127.0.0.1:8080", stats_socket=tmp_path / "s.sock",
                           maps_dir=tmp_path / "maps", **kw)  # type: ignore[arg-type]


def frontend_rules(text: str, frontend: str = config.FRONTEND) -> list[str]:
    block = text.split(f"frontend {frontend}\n", 1)[1].split("\n\n", 1)[0]
    return [line.strip() for line in block.splitlines() if "use_backend" in line]


def backend_block(text: str, name: str) -> str:
    return text.split(f"backend {name}\n", 1)[1].split("\n\n", 1)[0]


def test_maintenance_is_the_live_maps_value_and_lifts_back() -> None:
    up = config.plan(RoutingTable(1, (web(1),)), {})
    down = config.plan(RoutingTable(2, (web(1, maintenance=Maintenance("brb", 30)),)),
                       up.slots, up.shapes)
    assert up.live["web"] == "web.r1"
    assert down.live["web"] == config.maint_backend("web") == "web.maint"
    assert down.shapes == up.shapes  # no reload to go into maintenance
    assert down.maintenance["maintenance"] == {"web": "30"}
    # The slot keeps its servers (a release map still points to it): lifting is one entry.
    assert "web.r1" not in down.idle and down.servers["web.r1"] == up.servers["web.r1"]
    lifted = config.plan(RoutingTable(3, (web(1),)), down.slots, down.shapes)
    assert lifted.live == up.live and lifted.maintenance == up.maintenance


def test_only_the_maintenance_backend_answers_503_and_release_requests_check_it(
        tmp_path: Path) -> None:
    s = settings(tmp_path, preview_listen="127.0.0.1:8081")
    text = config.render(s, config.plan(RoutingTable(1, (web(1, sticky=True),)), {}),
                         loaded=True)
    for name in ("web", "web.r1", "web.r2"):
        assert "status 503" not in backend_block(text, name)  # nothing per ordinary request
    assert backend_block(text, "web.maint").count("http-request return status 503") == 2
    guard = f"!{{ str(web),map({config.live_file(s)}) -m str web.maint }}"
    main, preview = frontend_rules(text), frontend_rules(text, config.PREVIEW_FRONTEND)
    # the slots' switches (flags.py), then header, cookie, live; on
    # the preview frontend: header, held release, live
    assert main[:2] == [
        "use_backend web.r1 if { srv_is_up(_live/web.r1) }",
        "use_backend web.r2 if { srv_is_up(_live/web.r2) }"]
    main = main[2:]
    # header and cookie: one rule per slot; live: the slots, the main backend, maintenance,
    # then the main one as the live map's default
    assert len(main) == 2 + 2 + 4 + 1 and len(preview) == 3
    for rule in (*main[:4], *preview[:2]):
        assert rule.endswith(guard), rule
    assert main[4:] == [f"use_backend {be} if {{ srv_is_up(_live/{be}_live) }}"
                        for be in ("web.r1", "web.r2", "web", "web.maint")] + ["use_backend web"]
    assert "if" not in preview[2]  # ordinary: one live-map lookup


def test_the_cookie_rule_is_only_on_sticky_routes_and_a_part_of_the_shape(
        tmp_path: Path) -> None:
    s = settings(tmp_path)
    plain = config.plan(RoutingTable(1, (web(1),)), {})
    sticky = config.plan(RoutingTable(2, (web(1, sticky=True),)), plain.slots, plain.shapes)
    assert not any("req.cook(" in r for r in frontend_rules(config.render(s, plain, loaded=True)))
    assert any("req.cook(hinotori-web)" in r
               for r in frontend_rules(config.render(s, sticky, loaded=True)))
    assert sticky.shapes != plain.shapes  # the flag (the spec's strategy) changes: a reload
    # and it survives the state file: a restarted router does not see a new shape
    saved = [vars(shape) for shape in sticky.shapes]
    assert tuple(config.Shape.from_dict(d) for d in saved) == sticky.shapes
    older = {k: v for k, v in saved[0].items() if k != "sticky"}  # written before the flag
    assert config.Shape.from_dict(older) == plain.shapes[0]


@pytest.mark.parametrize("n", [1, 2, 7, 20, 999, MAX_SAMPLE])
def test_the_latency_map_logs_one_request_in_n(n: int) -> None:
    ((key, value),) = config.sample_entries(n).items()
    start, _, end = key.partition(":")
    assert start == "0" and value == str(n)
    logged = (int(end) + 1) / config.SAMPLE_RANGE  # rand(R) falls in 0..end with this chance
    assert abs(logged * n - 1) < 1e-4


def test_an_old_latency_map_is_recognised_and_rewritten(tmp_path: Path) -> None:
    f = tmp_path / "latency.map"
    f.write_text("n 20\n")  # what an older hinotori wrote: would not load as map_int
    assert not config.sample_current(f)
    assert not config.sample_current(tmp_path / "missing.map")
    f.write_text(config.map_text(config.sample_entries(20)))
    assert config.sample_current(f)


def test_maintenance_answers_are_in_place_before_the_live_map_leads_to_them(
        tmp_path: Path) -> None:
    r = HaproxyRouter(tmp_path / "r", "127.0.0.1:8080")
    up = config.plan(RoutingTable(1, (web(1),)), {})
    down = config.plan(RoutingTable(2, (web(1, maintenance=Maintenance("brb", 30)),)),
                       up.slots, up.shapes)
    held_up = converge.diff(up, r._files.targets(up), converge.Held())[1]
    going, held_down = converge.diff(down, r._files.targets(down), held_up)
    live = str(config.live_file(r.settings))
    maps = going.maps
    switch = next(i for i, c in enumerate(maps) if c.startswith(f"set map {live} web"))
    assert all(i < switch for i, c in enumerate(maps) if c.startswith("add map")), maps
    coming, _ = converge.diff(up, r._files.targets(up), held_down)
    maps = coming.maps
    back = next(i for i, c in enumerate(maps) if c.startswith(f"set map {live} web"))
    assert all(i > back for i, c in enumerate(maps) if c.startswith("del map")), maps
    assert any(c.startswith("del map") for c in maps)


def test_the_config_loads_in_haproxy(tmp_path: Path) -> None:
    p = config.plan(RoutingTable(1, (web(1, 2, sticky=True, canary=2,
                                         maintenance=Maintenance("brb", 5)),)), {})
    haproxy_checks_config(settings(tmp_path, preview_listen="127.0.0.1:8081"), p, tmp_path)
