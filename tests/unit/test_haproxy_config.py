"""The HAProxy router's planning and config writing (pure functions; the real HAProxy runs in
tests/integration/test_router_haproxy.py)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest
from pydantic import ValidationError

from hinotori.model import LATENCY_BUCKETS_MS, Backend, RoutingTable, ServiceRoute
from hinotori.router.haproxy import config
from hinotori.router.haproxy.runtime import established_sessions, parse_proc
from hinotori.router.haproxy.stats import (
    ADAPT_EVERY,
    MAX_SAMPLE,
    LatencyLog,
    next_sample,
    parse_servers,
    sample_for,
)
from hinotori.spec.schema import RouterSpec


def route(*backends: Backend, **kw: object) -> ServiceRoute:
    return ServiceRoute("web", tuple(backends), **kw)  # type: ignore[arg-type]


def b(host: str, release: int, weight: int = 100, port: int = 9000) -> Backend:
    return Backend(host, f"127.0.0.1:{port}", release, weight)


def test_releases_keep_their_slot_and_new_ones_take_a_free_one() -> None:
    first = config.plan(RoutingTable(1, (route(b("a", 1), sticky=True),)), {})
    assert first.slots == {"web": {1: 1}}
    canary = config.plan(RoutingTable(2, (route(b("a", 1), b("c", 2, 0), canary=2,
                                                sticky=True),)), first.slots, first.shapes)
    assert canary.slots == {"web": {1: 1, 2: 2}}
    assert canary.shapes == first.shapes  # two slots from the start: a canary is no reload
    assert canary.maps["web"] == {"v1": "web.r1", "v2": "web.r2", "canary": "web.r2",
                                  "stable": "web.r1"}
    assert canary.sticky == {"web"}
    # weight 0 gets no ordinary traffic, but counts as 1 when asked for by release
    assert canary.servers["web"]["v2_c"].weight == 0
    assert canary.servers["web.r2"]["v2_c"].weight == 1
    switched = config.plan(RoutingTable(3, (route(b("c", 2), sticky=True),)), canary.slots,
                           canary.shapes)
    assert switched.slots == {"web": {2: 2}} and switched.shapes == first.shapes
    assert switched.sticky == set()  # one release: nothing to stick to
    third = config.plan(RoutingTable(4, (route(b("c", 2), b("d", 3), sticky=True),)),
                        switched.slots, switched.shapes)
    assert third.slots == {"web": {2: 2, 3: 1}} and third.shapes == first.shapes
    many = config.plan(RoutingTable(5, (route(b("c", 2), b("d", 3), b("e", 4), sticky=True),)),
                       third.slots, third.shapes)
    assert many.shapes[0].slots == 3  # only more releases than slots changes the shape


def test_weights_are_scaled_into_haproxy_range_keeping_ratios() -> None:
    assert config.scaled([100, 100, 0]) == [100, 100, 0]
    assert config.scaled([900, 100, 1, 0]) == [256, 28, 1, 0]


@pytest.mark.parametrize("bad, message", [
    (route(b("a b", 1)), "host id"),
    (route(b("a", 1, -1)), "weight"),
    (route(Backend("a", "nowhere", 1)), "host:port"),
    (route(b("a", 1), path_prefix="api"), "path_prefix"),
    (route(b("a", 1), hosts=("a b",)), "bad host"),
])
def test_bad_routes_are_refused_by_name(bad: ServiceRoute, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        config.plan(RoutingTable(1, (bad,)), {})


def settings(tmp_path: Path) -> config.Settings:
    return config.Settings(listen="127.0.0.1:8080", stats_socket=tmp_path / "s.sock",
                           maps_dir=tmp_path / "maps")


def test_host_routes_come_first_then_longest_prefix(tmp_path: Path) -> None:
    table = RoutingTable(1, (
        ServiceRoute("any", (b("x", 1),)),
        ServiceRoute("docs", (b("y", 1),), path_prefix="/docs"),
        ServiceRoute("site", (b("z", 1),), hosts=("Example.COM:80",)),
    ))
    text = config.render(settings(tmp_path), config.plan(table, {}), loaded=True)
    # Ordinary requests: the backend the live map names, the main one if it names none.
    plain = [line.split()[1] for line in text.splitlines()
             if line.startswith("  use_backend ") and " if " not in line.replace(" if r", "")
             and "live.map" not in line and "srv_is_up" not in line]
    assert plain == ["site", "docs", "any"]
    # No sample expression in the main frontend (HAProxy would copy every request's URI).
    main = text.split(f"frontend {config.FRONTEND}\n", 1)[1].split("\n\n", 1)[0]
    assert "%[" not in main and "%rt" not in main
    assert "req.hdr(host),field(1,:),lower -m str example.com" in text
    assert "server v1_x 127.0.0.1:9000 weight 100" in text


def test_the_written_config_is_valid_haproxy(tmp_path: Path) -> None:
    binary = shutil.which("haproxy")
    if binary is None:
        pytest.skip("haproxy is not installed; the integration tests need it")
    s = settings(tmp_path)
    p = config.plan(RoutingTable(1, (route(b("a", 1), b("c", 2, 10), canary=2, sticky=True),
                                      ServiceRoute("api", (b("x", 1),), hosts=("api.test",),
                                                   path_prefix="/v1"))), {})
    s.maps_dir.mkdir()
    for svc, entries in p.maps.items():
        config.map_file(s, svc).write_text(config.map_text(entries))
    config.sticky_file(s).write_text(config.map_text({"web": "1"}))
    config.live_file(s).write_text(config.map_text(p.live))
    config.sample_file(s).write_text(config.map_text(config.sample_entries(7)))
    for name, entries in p.maintenance.items():  # maintenance mode's maps
        config.maintenance_file(s, name).write_text(config.map_text(entries))
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(config.render(s, p, loaded=True))
    result = subprocess.run([binary, "-c", "-f", str(cfg)], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr


def test_client_timeouts_match_the_builtin_router(tmp_path: Path) -> None:
    text = config.render(settings(tmp_path), config.Plan(), loaded=False)
    assert "  timeout http-request 10s\n" in text and "  timeout http-keep-alive 75s\n" in text
    fast = config.Settings(listen="127.0.0.1:8080", stats_socket=tmp_path / "s.sock",
                           maps_dir=tmp_path, request_timeout=1.5)
    assert "  timeout http-request 1500ms\n" in config.render(fast, config.Plan(), loaded=False)


def test_connect_timeout_is_1s_as_the_builtin_router(tmp_path: Path) -> None:
    """A machine cut off drops SYNs: a request that picked it moves on after 1 s."""
    text = config.render(settings(tmp_path), config.Plan(), loaded=False)
    assert "  timeout connect 1s\n" in text
    assert "  option redispatch 1\n" in text and "  retries 3\n" in text


def test_lost_backends_are_left_out_of_the_plan() -> None:
    """A table may name a lost address in a route too; it is never served, and the plan
    carries the lost addresses as HAProxy shows a server's (for ending its sessions)."""
    lost = Backend("gone", "[::1]:9001", 1, 100)
    p = config.plan(RoutingTable(1, (route(b("a", 1), lost, b("c", 2, port=9002), canary=2),),
                                 lost=("[::1]:9001", "10.0.0.9:80")), {})
    assert set(p.servers["web"]) == {"v1_a", "v2_c"}
    assert all("v1_gone" not in servers for servers in p.servers.values())
    assert p.lost == frozenset({"::1:9001", "10.0.0.9:80"})
    assert config.plan(RoutingTable(1, (route(b("a", 1)),)), {}).lost == frozenset()


def test_established_sessions_are_picked_from_show_sess() -> None:
    """Only streams on the named servers whose server connection is up (scb state 8); one still
    connecting (5) is left to its connect timeout (HAProxy 2.6 `show sess` lines)."""
    text = (
        "0x55764ed468c0: proto=tcpv4 src=127.0.0.1:33854 fe=_front be=svc srv=v1_silent ts=00 "
        "epoch=0 age=0s calls=2 rate=0 cpu=0 lat=0 rq[f=49c40080h,i=0,an=8000h,rx=,wx=,ax=] "
        "rp[f=80400000h,i=0,an=1400000h,rx=1m14s,wx=,ax=] scf=[8,80h,fd=10] scb=[8,11h,fd=13] "
        "exp=1s rc=0 c_exp=\n"
        "0x55764ed25930: proto=tcpv4 src=127.0.0.1:33862 fe=_front be=svc srv=v1_cut ts=00 "
        "epoch=0 age=0s calls=1 rate=0 cpu=0 lat=0 rq[f=4dc00000h,i=16306,an=8000h,rx=,wx=,ax=] "
        "rp[f=80000000h,i=0,an=00h,rx=,wx=,ax=] scf=[8,80h,fd=11] scb=[5,11h,fd=14] exp=1s\n"
        "0x55764edee030: proto=tcpv4 src=127.0.0.1:33876 fe=_front be=svc srv=v1_other ts=00 "
        "epoch=0 age=0s calls=2 rate=0 cpu=0 lat=0 rq[f=48c40080h,i=0,an=8000h,rx=,wx=,ax=] "
        "rp[f=80400000h,i=0,an=1400000h,rx=1m14s,wx=,ax=] scf=[8,0h,fd=12] scb=[8,11h,fd=15]\n"
        "0x55764ee24a80: proto=unix_stream src=unix:1 fe=GLOBAL be=<NONE> srv=<none> ts=00 "
        "scf=[8,0h,fd=16] scb=[8,1h,fd=-1] exp=10m rc=0 c_exp=\n")
    assert established_sessions(text, {"svc/v1_silent", "svc/v1_cut"}) == ["0x55764ed468c0"]
    assert established_sessions(text, {"svc.r1/v1_silent"}) == []
    assert established_sessions("", {"svc/v1_silent"}) == []


def test_parsers() -> None:
    proc = ("#<PID> <type> <reloads> <uptime> <version>\n1 master 0 [failed: 0] 0d 2.6\n"
            "# workers\n3 worker 1 0d 2.6\n# old workers\n2 worker 0 0d 2.6\n# programs\n")
    assert parse_proc(proc) == (1, [3], [2])
    csv = ("# pxname,svname,qcur,scur,econ,eresp,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,"
           "hrsp_5xx,hrsp_other\n_front,FRONTEND,,5,,,0,9,0,0,0,0\n"
           "web,v1_a,0,2,1,0,0,7,0,1,2,0\nweb,BACKEND,0,2,1,0,0,7,0,1,2,0\n")
    counts = parse_servers(csv)
    assert list(counts) == [("web", "v1_a")]
    c = counts[("web", "v1_a")]
    assert (c.active, c.requests, c.errors, c.statuses) == (2, 10, 1,
                                                           {"2xx": 7, "4xx": 1, "5xx": 2})
    log = LatencyLog(Path("/nonexistent"), "ring")
    log.record(b"7 1 v1_a 3 1\n7 2 v2_b 150 1\n7 1 v1_a 3 1\n8 1 v1_a 0 1\n7 3 <NOSRV> -1 1\n"
               b"noise\n")
    assert log.lines == 3  # the repeated (pid 7, request 1) counts once
    assert sum(log.latency["a"]) == 2 and log.latency_sum_ms["b"] == 150


def test_a_sampled_latency_line_counts_for_its_n() -> None:
    log = LatencyLog(Path("/nonexistent"), "ring")
    log.record(b"7 1 v1_a 3 40\n7 2 v1_a 12 40\n7 3 v1_a 12\n")  # the last: no N, counts 1
    assert (log.lines, log.counted) == (3, 81)
    assert log.latency["a"][LATENCY_BUCKETS_MS.index(5)] == 40  # 3 ms: the (2, 5] bucket
    assert log.latency["a"][LATENCY_BUCKETS_MS.index(20)] == 41
    assert log.latency_sum_ms["a"] == 3 * 40 + 12 * 40 + 12


def test_sample_for_keeps_the_line_rate_near_the_cap() -> None:
    assert sample_for(0, 1000) == 1
    assert sample_for(1000, 1000) == 1  # every request up to the cap
    assert sample_for(1001, 1000) == 2
    assert sample_for(35_000, 1000) == 35
    assert sample_for(10**9, 1000) == MAX_SAMPLE
    assert sample_for(10**6, 0) == 1  # no cap: every request


def test_next_sample_rises_at_once_and_falls_by_half() -> None:
    assert next_sample(None, 7) == 7
    assert next_sample(1, 2) == 2
    assert next_sample(20, 24) == 20 and next_sample(20, 16) == 20  # within a quarter: kept
    assert next_sample(20, 400) == 400
    assert next_sample(400, 1) == 200 and next_sample(3, 1) == 1


def test_the_reader_sets_n_from_the_rate_it_reads() -> None:
    chosen: list[int] = []

    async def set_sample(n: int) -> None:
        chosen.append(n)

    async def scenario() -> None:
        log = LatencyLog(Path("/nonexistent"), "ring", max_rate=100, set_sample=set_sample)
        t = log._window[0]
        await log.adapt(t + ADAPT_EVERY / 2)  # within the first window: no choice yet
        assert chosen == []
        t += ADAPT_EVERY
        log.record(b"".join(b"7 %d v1_a 1 1\n" % i for i in range(200)))  # 800 requests/s
        await log.adapt(t)
        assert chosen == [8]
        t += ADAPT_EVERY
        log.record(b"".join(b"7 %d v1_a 1 8\n" % i for i in range(200, 226)))  # 832/s: kept
        await log.adapt(t)
        assert chosen == [8]
        for _ in range(3):  # quiet: halved each time, down to every request
            t += ADAPT_EVERY
            await log.adapt(t)
        assert chosen == [8, 4, 2, 1]

    asyncio.run(scenario())


def test_haproxy_keys_only_with_kind_haproxy() -> None:
    assert RouterSpec(kind="haproxy", maxconn=100).maxconn == 100
    assert RouterSpec(kind="haproxy", latency_log_rate=0).latency_log_rate == 0
    with pytest.raises(ValidationError, match="only applies"):
        RouterSpec(maxconn=100)
    with pytest.raises(ValidationError, match="latency_log_rate only applies"):
        RouterSpec(latency_log_rate=10)
