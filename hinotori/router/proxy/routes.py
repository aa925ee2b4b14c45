"""A routing table compiled for the hot path, and the per-backend counters.

Matching: a route whose ``hosts`` contain the request's Host (port stripped, lower-cased; an
IPv6 literal keeps its brackets, as in ``[::1]``) beats a route without hosts; among those, the
longest matching ``path_prefix`` wins. Routes are sorted once per table version, so a request
walks a short list.

Choice: smooth weighted round-robin (as nginx does): deterministic, spreads a weight-3 backend
as A A B A rather than A A A B, and exact over any window, which random choice is not.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from hinotori.model import LATENCY_BUCKETS_MS, Backend, RoutingTable, ServiceRoute


def split_host(host: str) -> str:
    """A Host header as routes name it: lower-case, without port; an IPv6 literal keeps its
    brackets (``[FE80::1]:80`` -> ``[fe80::1]``)."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[:end + 1] if end > 0 else host
    return host.partition(":")[0]


class CompiledRoute:
    __slots__ = ("_current", "backends", "canary", "cookie", "hosts", "prefix", "releases",
                 "service", "sticky")

    def __init__(self, route: ServiceRoute) -> None:
        self.service = route.service
        self.hosts = frozenset(h.lower() for h in route.hosts)
        self.prefix = route.path_prefix
        # Weight-0 backends stay listed: a request may still ask for their release by name.
        self.backends = list(route.backends)
        self.releases = frozenset(b.release for b in self.backends)
        self.canary = route.canary
        self.sticky = route.sticky and len(self.releases) > 1
        self.cookie = f"hinotori-{route.service}".encode()
        self._current = [0] * len(self.backends)

    def wanted(self, header: bytes | None, cookie: bytes | None) -> int | None:
        """The release a request asks for (X-Hinotori-Release, else the sticky cookie), if it
        is one this route serves."""
        for value, from_cookie in ((header, False), (cookie, True)):
            if not value or (from_cookie and not self.sticky):
                continue
            v = value.strip().lower()
            if v == b"canary":
                release = self.canary
            elif v == b"stable":
                release = next((r for r in sorted(self.releases, reverse=True)
                                if r != self.canary), None)
            else:
                digits = v.removeprefix(b"v")
                release = int(digits) if digits.isdigit() else None
            if release in self.releases:
                return release
        return None

    def matches(self, host: str, path: str) -> bool:
        return (not self.hosts or host in self.hosts) and path.startswith(self.prefix)

    def pick(self, exclude: set[str] | frozenset[str] = frozenset(),
             release: int | None = None) -> Backend | None:
        """The next backend by smooth weighted round-robin, skipping ``exclude`` (host ids);
        only backends of ``release`` when given (weight 0 then counts as 1)."""
        best, total = -1, 0
        current, backends = self._current, self.backends
        for i, b in enumerate(backends):
            if b.host_id in exclude or (release is not None and b.release != release):
                continue
            weight = b.weight or (1 if release is not None else 0)
            if not weight:
                continue
            current[i] += weight
            total += weight
            if best < 0 or current[i] > current[best]:
                best = i
        if best < 0:
            return None
        current[best] -= total
        return backends[best]


class CompiledTable:
    def __init__(self, table: RoutingTable) -> None:
        self.table = table
        self.version = table.version
        routes = [CompiledRoute(r) for r in table.routes]
        routes.sort(key=lambda r: (not r.hosts, -len(r.prefix)))
        self.routes = routes
        self.addresses = {b.address for r in routes for b in r.backends}

    def match(self, host: str | None, path: str) -> CompiledRoute | None:
        host = split_host(host or "")
        for route in self.routes:
            if route.matches(host, path):
                return route
        return None


@dataclass
class Counters:
    """What one worker counted for one backend (host id) since it started."""

    active: int = 0
    requests: int = 0
    errors: int = 0  # connection failures and router-made 502/504s
    statuses: dict[str, int] = field(default_factory=lambda: {"2xx": 0, "3xx": 0, "4xx": 0,
                                                               "5xx": 0})
    latency: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_MS) + 1))
    latency_sum_ms: float = 0.0

    def observe(self, status: int, latency_ms: float) -> None:
        self.requests += 1
        self.latency_sum_ms += latency_ms
        key = f"{min(max(status // 100, 2), 5)}xx"
        self.statuses[key] += 1
        self.latency[bisect.bisect_left(LATENCY_BUCKETS_MS, latency_ms)] += 1

    def to_dict(self) -> dict[str, object]:
        return {"active": self.active, "requests": self.requests, "errors": self.errors,
                "statuses": self.statuses, "latency": self.latency,
                "latency_sum_ms": self.latency_sum_ms}
