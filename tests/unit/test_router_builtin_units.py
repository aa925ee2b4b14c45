"""The built-in router's pure parts: table compilation and matching, weighted schedules, release
selection, HTTP/1.1 head building. No sockets (the integration tests cover those)."""

from __future__ import annotations

import asyncio
import functools
import json
import math
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from hinotori.errors import RouterError
from hinotori.model import Backend, RoutingTable, ServiceRoute
from hinotori.router.builtin import BuiltinRouter, http1
from hinotori.router.builtin.listener import parse_address
from hinotori.router.builtin.table import Counters, compile_table, smooth_schedule
from hinotori.router.builtin.upstream import Pool


def compiled(*routes: ServiceRoute):  # type: ignore[no-untyped-def]
    counters: dict[str, Counters] = {}
    return compile_table(RoutingTable(1, routes), Pool,
                         lambda h: counters.setdefault(h, Counters()))


def b(name: str, weight: int = 100, release: int = 1, port: int = 9000) -> Backend:
    return Backend(name, f"127.0.0.1:{port}", release, weight)


def test_smooth_schedule_interleaves_and_is_exact() -> None:
    order = smooth_schedule([5, 1, 1])
    assert Counter(order) == {0: 5, 1: 1, 2: 1}
    assert order[:3] != [0, 0, 0] or order[3:5] != [0, 0]  # not five in a row
    assert smooth_schedule([300, 100]) == smooth_schedule([3, 1])  # reduced by the gcd
    assert smooth_schedule([0, 0]) == []


def _nginx_order(weights: list[int]) -> list[int]:
    """nginx's smooth weighted round-robin, step by step over every backend (the reference
    the grouped simulation in table.py must equal)."""
    g = math.gcd(*weights)
    if g == 0:
        return []
    reduced = [w // g for w in weights]
    total = sum(reduced)
    current = [0] * len(reduced)
    order = []
    for _ in range(total):
        for i, w in enumerate(reduced):
            current[i] += w
        best = max(range(len(reduced)), key=current.__getitem__)
        current[best] -= total
        order.append(best)
    return order


def test_smooth_schedule_is_nginx_s_order_exactly() -> None:
    rng = random.Random(7)
    for _ in range(300):
        weights = [rng.choice([0, 1, 2, 3, 5, 7, 10, 100, 300])
                   for _ in range(rng.randint(1, 12))]
        assert smooth_schedule(weights) == _nginx_order(weights), weights
    many = [100] * 100 + [10] * 10  # many backends: a canary at a tenth of the weight
    assert smooth_schedule(many) == _nginx_order(many)


def test_most_specific_route_wins() -> None:
    t = compiled(ServiceRoute("root", (b("r"),)),
                 ServiceRoute("static", (b("s"),), path_prefix="/static"),
                 ServiceRoute("api", (b("a"),), hosts=("API.test:8080",)),
                 ServiceRoute("api2", (b("a2"),), hosts=("api.test",), path_prefix="/v2"))
    assert t.match(b"api.test", b"/v2/x").service == "api2"
    assert t.match(b"api.test", b"/static/x").service == "api"
    assert t.match(b"other", b"/static/x").service == "static"
    assert t.match(b"", b"/x").service == "root"
    assert compiled(ServiceRoute("api", (b("a"),), hosts=("a",))).match(b"b", b"/") is None


def test_weight_zero_gets_no_share_but_can_be_asked_for_by_release() -> None:
    t = compiled(ServiceRoute("web", (b("stable", 100, 1), b("canary", 0, 2, 9001)), canary=2,
                              sticky=True))
    r = t.match(b"", b"/")
    assert {r.pick().host_id for _ in range(50)} == {"stable"}
    assert r.wanted(b"canary", None) == 2 and r.wanted(b"stable", None) == 1
    assert r.wanted(None, b"v2") == 2 and r.wanted(b"v7", b"garbage") is None
    assert r.pick_release(2, set()).host_id == "canary"
    assert r.pick_release(2, {"127.0.0.1:9001"}) is None


@pytest.mark.parametrize("bad", [
    ServiceRoute("x", (b("a", -1),)),
    ServiceRoute("x", (Backend("a", "nohost", 1),)),
    ServiceRoute("x", (b("a"),), path_prefix="api"),
])
def test_invalid_tables_are_refused_with_the_route_named(bad: ServiceRoute) -> None:
    with pytest.raises(ValueError, match="route 'x'"):
        compiled(bad)


def test_parse_address() -> None:
    assert parse_address("127.0.0.1:80") == ("127.0.0.1", 80)
    assert parse_address("[::1]:8080") == ("::1", 8080)
    for bad in ("8080", "host:", "host:99999", ":80"):
        with pytest.raises(ValueError, match=r"HOST:PORT|port"):
            parse_address(bad)


def test_request_head_strips_hop_by_hop_and_sets_forwarding() -> None:
    head = http1.build_request_head(b"POST", b"/p?q=1", [
        (b"Host", b"Shop.Test:8080"), (b"Connection", b"keep-alive, X-Hop"), (b"X-Hop", b"1"),
        (b"TE", b"trailers"), (b"Transfer-Encoding", b"chunked"), (b"X-Forwarded-For", b"1.2.3.4"),
        (b"X-Forwarded-Proto", b"https"), (b"Expect", b"100-continue"),
        (b"X-Hinotori-Release", b"canary"), (b"Cookie", b"a=1"), (b"Cookie", b"b=2")],
        b"10.0.0.9", b"127.0.0.1:80")
    text = head.data.decode()
    assert text.startswith("POST /p?q=1 HTTP/1.1\r\n") and text.endswith("\r\n\r\n")
    for gone in ("Connection:", "X-Hop:", "TE:", "Expect:", "https"):
        assert gone not in text
    assert "X-Forwarded-For: 1.2.3.4, 10.0.0.9\r\n" in text
    assert "X-Forwarded-Proto: http\r\n" in text and "X-Forwarded-Host: Shop.Test:8080\r\n" in text
    assert "Transfer-Encoding: chunked\r\n" in text  # re-chunked by the router
    assert (head.host, head.path, head.chunked, head.expect_continue) == \
        (b"shop.test", b"/p", True, True)
    assert head.release == b"canary" and http1.cookie_value(head.cookie, b"b") == b"2"


def test_absolute_form_becomes_origin_form_and_a_missing_host_is_filled() -> None:
    head = http1.build_request_head(b"GET", b"http://api.test:81/x", [(b"Host", b"ignored")],
                                    b"1.1.1.1", b"127.0.0.1:80")
    assert head.data.startswith(b"GET /x HTTP/1.1\r\n") and b"Host: api.test:81\r\n" in head.data
    assert head.host == b"api.test"
    head = http1.build_request_head(b"GET", b"/", [], b"1.1.1.1", b"127.0.0.1:80")
    assert b"Host: 127.0.0.1:80\r\n" in head.data and head.host == b""


def test_two_different_hosts_are_refused_and_a_repeated_one_is_sent_once() -> None:
    with pytest.raises(http1.BadRequest) as bad:
        http1.build_request_head(b"GET", b"/", [(b"Host", b"a.test"), (b"host", b"b.test")],
                                 b"1.1.1.1", b"127.0.0.1:80")
    assert bad.value.status == 400
    head = http1.build_request_head(b"GET", b"/", [(b"Host", b"a.test"), (b"HOST", b"A.test ")],
                                    b"1.1.1.1", b"127.0.0.1:80")
    assert head.data.lower().count(b"\r\nhost:") == 1 and head.host == b"a.test"


def test_response_headers_filtered_and_framing_reported() -> None:
    r = http1.filter_response_headers([(b"Content-Length", b"5"), (b"Connection", b"X-A"),
                                       (b"X-A", b"1"), (b"Keep-Alive", b"t=5"), (b"X-B", b"2")])
    assert r.lines == [b"Content-Length: 5\r\n", b"X-B: 2\r\n"] and r.has_length
    r = http1.filter_response_headers([(b"Transfer-Encoding", b"chunked"),
                                       (b"Content-Length", b"5")])
    assert r.lines == [] and r.chunked == b"chunked" and not r.has_length


def test_counters_observe_status_classes_and_latency_buckets() -> None:
    c = Counters()
    for status, ms in ((200, 0.5), (302, 3.0), (404, 12.0), (503, 99999.0), (101, 1.0)):
        c.observe(status, ms)
    d = c.to_dict()
    assert d["statuses"] == {"2xx": 2, "3xx": 1, "4xx": 1, "5xx": 1}
    assert d["requests"] == 5 and sum(d["latency"]) == 5 and d["latency"][-1] == 1


# -- the controller's switch path ------------------------------------------------------------

@pytest.mark.parametrize("workers", [1, 2])
def test_a_switch_line_leaves_before_what_else_the_loop_has_ready(
        tmp_path: Path, workers: int) -> None:
    """With one worker the switch's line is written in the very step that called ``apply``,
    not after every callback the controller's loop had ready (a task would wait for them);
    with several, every worker still gets it and a refusal is still reported."""
    router = BuiltinRouter(tmp_path, "127.0.0.1:1", workers=workers)
    order: list[str] = []

    async def request(message: dict[str, Any] | bytes, timeout: float,
                      i: int = 0) -> dict[str, Any]:
        order.append(f"line {i}")
        assert isinstance(message, bytes) and b'"op": "switch"' in message
        await asyncio.sleep(0)  # the answer comes later
        version = json.loads(message)["version"]
        return {"ok": True, "version": version} if version != 13 else {"ok": False,
                                                                        "error": "no"}

    for i, client in enumerate(router._clients):
        client.request = functools.partial(request, i=i)  # type: ignore[method-assign]
    table = RoutingTable(12, (ServiceRoute("web", (Backend("a", "127.0.0.1:9000", 1),)),))

    async def main() -> None:
        asyncio.get_running_loop().call_soon(order.append, "other")
        await router.apply(table)
        with pytest.raises(RouterError, match="not acknowledged by every router worker"):
            await router.apply(RoutingTable(13, table.routes))

    asyncio.run(main())
    if workers == 1:
        assert order[:2] == ["line 0", "other"]
    assert sorted(order[:workers + 1]) == sorted(["other", *(f"line {i}" for i in
                                                              range(workers))])
    assert len(order) == 2 * workers + 1
