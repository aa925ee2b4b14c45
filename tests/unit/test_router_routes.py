"""hinotori.router.proxy.routes: the compiled routing table of the built-in data plane.

Pure: no sockets. Pins the choice (smooth weighted round-robin, exact over a window, weight 0
and excluded backends never picked) and the match (host beats no host, longest prefix wins,
Host compared without its port, IPv6 literals kept whole).
"""

from __future__ import annotations

from collections import Counter

import pytest

from hinotori.model import LATENCY_BUCKETS_MS, Backend, RoutingTable, ServiceRoute
from hinotori.router.proxy.routes import CompiledRoute, CompiledTable, Counters


def b(name: str, weight: int = 100, release: int = 1) -> Backend:
    return Backend(name, f"127.0.0.1:{9000 + sum(map(ord, name)) % 1000}", release, weight)


def picks(route: CompiledRoute, n: int, **kw: object) -> list[str]:
    got = []
    for _ in range(n):
        backend = route.pick(**kw)  # type: ignore[arg-type]
        assert backend is not None
        got.append(backend.host_id)
    return got


# -- choice ------------------------------------------------------------------------------------

@pytest.mark.parametrize("weights", [(3, 1), (90, 10), (5, 1, 1), (1, 1, 1, 1), (7, 13, 80)])
def test_smooth_wrr_is_exact_over_every_window_of_one_period(weights: tuple[int, ...]) -> None:
    route = CompiledRoute(ServiceRoute("s", tuple(b(f"h{i}", w) for i, w in enumerate(weights))))
    period = sum(weights)
    got = picks(route, period * 5)
    want = {f"h{i}": w for i, w in enumerate(weights)}
    # Not only over the whole run: every window of one period, starting anywhere, is exact.
    for start in range(0, len(got) - period + 1):
        assert Counter(got[start:start + period]) == want, start


def test_smooth_wrr_interleaves_instead_of_bursting() -> None:
    route = CompiledRoute(ServiceRoute("s", (b("a", 3), b("b", 1))))
    assert picks(route, 8) == ["a", "a", "b", "a"] * 2  # A A B A, not A A A B
    route = CompiledRoute(ServiceRoute("s", (b("a", 5), b("b", 1), b("c", 1))))
    got = picks(route, 7)
    assert "aaaaa" not in "".join(got) and Counter(got) == {"a": 5, "b": 1, "c": 1}


def test_weight_zero_is_never_picked_and_alone_means_none() -> None:
    route = CompiledRoute(ServiceRoute("s", (b("on", 1), b("off", 0))))
    assert set(picks(route, 50)) == {"on"}
    assert CompiledRoute(ServiceRoute("s", (b("off", 0),))).pick() is None
    assert CompiledRoute(ServiceRoute("s")).pick() is None


def test_excluded_backends_are_skipped_and_the_rest_keep_their_ratio() -> None:
    route = CompiledRoute(ServiceRoute("s", (b("a", 2), b("b", 1), b("c", 1))))
    got = picks(route, 300, exclude={"a"})
    assert Counter(got) == {"b": 150, "c": 150}
    assert route.pick(exclude={"a", "b", "c"}) is None
    # After excluding, the full set is again exact over a period (a retry does not skew it).
    assert Counter(picks(route, 4 * 10)) == {"a": 20, "b": 10, "c": 10}


def test_release_choice_counts_weight_zero_as_one() -> None:
    route = CompiledRoute(ServiceRoute("s", (b("s1", 100, 1), b("c1", 0, 2), b("c2", 0, 2)),
                                       canary=2))
    assert Counter(picks(route, 10, release=2)) == {"c1": 5, "c2": 5}
    assert set(picks(route, 10)) == {"s1"}  # without a release, weight 0 is out
    assert route.pick(release=3) is None


# -- match -------------------------------------------------------------------------------------

def table(*routes: ServiceRoute) -> CompiledTable:
    return CompiledTable(RoutingTable(1, routes))


def test_host_route_beats_any_host_and_longest_prefix_wins() -> None:
    t = table(ServiceRoute("default", (b("d"),)),
              ServiceRoute("static", (b("s"),), path_prefix="/static"),
              ServiceRoute("static-img", (b("i"),), path_prefix="/static/img"),
              ServiceRoute("api", (b("a"),), hosts=("API.example.com",)),
              ServiceRoute("api2", (b("a2"),), hosts=("api.example.com",), path_prefix="/v2"))
    cases = [("api.example.com", "/v2/users", "api2"),
             ("api.example.com", "/users", "api"),
             ("api.example.com", "/static/x.css", "api"),  # a host match beats a longer prefix
             ("other.test", "/static/img/a.png", "static-img"),
             ("other.test", "/static/x.css", "static"),
             ("other.test", "/stat", "default"),
             (None, "/", "default")]  # HTTP/1.0 without Host: only host-less routes
    for host, path, want in cases:
        route = t.match(host, path)
        assert route is not None and route.service == want, (host, path)


def test_no_match_is_none() -> None:
    t = table(ServiceRoute("api", (b("a"),), hosts=("api.example.com",)),
              ServiceRoute("v1", (b("v"),), path_prefix="/v1"))
    assert t.match("other.test", "/") is None
    assert t.match(None, "/v2") is None
    assert t.match("api.example.com", "/anything") is not None


def test_host_is_compared_without_port_and_case() -> None:
    t = table(ServiceRoute("api", (b("a"),), hosts=("api.example.com",)))
    for host in ("api.example.com", "API.Example.COM", "api.example.com:8080",
                 "API.EXAMPLE.COM:443"):
        assert t.match(host, "/") is not None, host


def test_ipv6_literal_host_keeps_its_colons() -> None:
    t = table(ServiceRoute("v6", (b("six"),), hosts=("[::1]", "[fe80::1]")),
              ServiceRoute("v4", (b("four"),), hosts=("127.0.0.1",)))
    for host, want in (("[::1]", "v6"), ("[::1]:8080", "v6"), ("[FE80::1]:80", "v6"),
                       ("127.0.0.1:8080", "v4")):
        route = t.match(host, "/")
        assert route is not None and route.service == want, host
    assert t.match("[::2]:8080", "/") is None


def test_table_addresses_cover_every_backend_including_weight_zero() -> None:
    t = table(ServiceRoute("a", (b("x", 1), b("y", 0))), ServiceRoute("b", (b("z"),),
                                                                     path_prefix="/z"))
    assert t.addresses == {b("x").address, b("y").address, b("z").address}
    assert t.version == 1


# -- counters ----------------------------------------------------------------------------------

def test_counters_bucket_statuses_and_latency() -> None:
    c = Counters()
    for status, ms in ((200, 0.5), (204, 3), (302, 12), (404, 1), (503, 99999), (101, 1)):
        c.observe(status, ms)
    assert c.requests == 6
    assert c.statuses == {"2xx": 3, "3xx": 1, "4xx": 1, "5xx": 1}  # 1xx counts as 2xx
    assert sum(c.latency) == 6 and len(c.latency) == len(LATENCY_BUCKETS_MS) + 1
    assert c.latency[-1] == 1  # beyond the last bucket
    assert c.latency[0] == 3  # 0.5, 1 and 1 ms are all within 1 ms
    d = c.to_dict()
    assert d["requests"] == 6 and d["latency_sum_ms"] == pytest.approx(100016.5)
