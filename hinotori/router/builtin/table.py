"""The routing table as the hot path sees it: compiled once per ``apply``, read per request.

A ``RoutingTable`` (the wire/model form) is compiled into a ``CompiledTable``:

* routes indexed by host (lower-case, port stripped) and, within a host, ordered longest
  ``path_prefix`` first; routes without hosts form a fallback list ordered the same way. So a
  host match beats a no-host match, and a longer prefix beats a shorter one, with one dict
  lookup and a short scan.
* each backend becomes a ``Target`` that already holds its connection pool and its counters, so
  a request needs no further lookups.
* weights become a precomputed smooth-weighted-round-robin schedule (nginx's algorithm, unrolled):
  picking is an index increment, and a 90/10 split interleaves instead of sending 9 in a row.

The worker swaps the whole ``CompiledTable`` reference on ``apply``; nothing in it is mutated
afterwards except the schedule cursor and the counters.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hinotori.model import RoutingTable, ServiceRoute
from hinotori.router.builtin.http1 import split_host
from hinotori.router.builtin.listener import parse_address

if TYPE_CHECKING:
    from hinotori.router.builtin.upstream import Pool

_MAX_SCHEDULE = 10_000  # beyond this many slots, fall back to weighted random picks


class Counters:
    """Per-backend counters; plain attributes because the hot path bumps them per request."""

    __slots__ = ("active", "errors", "requests")

    def __init__(self) -> None:
        self.active = 0    # requests in flight to the backend now
        self.requests = 0  # requests sent to the backend (each attempt counts)
        self.errors = 0    # connect failures and router-generated 5xx blamed on the backend

    def to_dict(self) -> dict[str, int]:
        return {"active": self.active, "requests": self.requests, "errors": self.errors}


@dataclass(eq=False, slots=True)
class Target:
    host_id: str
    address: str
    host: str
    port: int
    weight: int
    pool: Pool
    counters: Counters


@dataclass(eq=False, slots=True)
class CompiledRoute:
    service: str
    prefix: bytes
    targets: tuple[Target, ...]           # weight > 0 only
    schedule: list[Target] = field(default_factory=list)
    cursor: int = 0

    def pick(self) -> Target | None:
        """The next backend by weight, or None when the route has none."""
        schedule = self.schedule
        if schedule:
            i = self.cursor
            self.cursor = i + 1 if i + 1 < len(schedule) else 0
            return schedule[i]
        return self.pick_other(())

    def pick_other(self, exclude: set[str] | tuple[()]) -> Target | None:
        """A backend by weight among those whose address is not in ``exclude`` (for retries)."""
        candidates = [t for t in self.targets if t.address not in exclude]
        if not candidates:
            return None
        return random.choices(candidates, weights=[t.weight for t in candidates])[0]


class CompiledTable:
    __slots__ = ("by_host", "fallback", "pools", "table")

    def __init__(self, table: RoutingTable, by_host: dict[bytes, list[CompiledRoute]],
                 fallback: list[CompiledRoute], pools: dict[str, Pool]) -> None:
        self.table = table
        self.by_host = by_host
        self.fallback = fallback
        self.pools = pools  # address -> pool, for every backend address in this table

    def match(self, host: bytes, path: bytes) -> CompiledRoute | None:
        routes = self.by_host.get(host)
        if routes is not None:
            for r in routes:
                if path.startswith(r.prefix):
                    return r
        for r in self.fallback:
            if path.startswith(r.prefix):
                return r
        return None


def smooth_schedule(weights: list[int]) -> list[int]:
    """Indices in smooth weighted round-robin order over one full cycle (empty if too long)."""
    g = 0
    for w in weights:
        g = math.gcd(g, w)
    if g == 0:
        return []
    reduced = [w // g for w in weights]
    total = sum(reduced)
    if total > _MAX_SCHEDULE:
        return []
    current = [0] * len(reduced)
    order: list[int] = []
    for _ in range(total):
        for i, w in enumerate(reduced):
            current[i] += w
        best = max(range(len(reduced)), key=current.__getitem__)
        current[best] -= total
        order.append(best)
    return order


def _check_route(route: ServiceRoute) -> None:
    if not route.path_prefix.startswith("/"):
        raise ValueError(f"route {route.service!r}: path_prefix must start with '/', "
                         f"got {route.path_prefix!r}")
    for b in route.backends:
        if not isinstance(b.weight, int) or b.weight < 0:
            raise ValueError(f"route {route.service!r}: backend {b.host_id!r} weight must be an "
                             f"integer >= 0, got {b.weight!r}")


def compile_table(table: RoutingTable, pool_for: Callable[[str], Pool],
                  counters_for: Callable[[str], Counters]) -> CompiledTable:
    """Validate and index ``table``. Raises ValueError naming the bad route or backend."""
    by_host: dict[bytes, list[CompiledRoute]] = {}
    fallback: list[CompiledRoute] = []
    pools: dict[str, Pool] = {}
    for route in table.routes:
        _check_route(route)
        targets: list[Target] = []
        for b in route.backends:
            try:
                host, port = parse_address(b.address)
            except ValueError as exc:
                raise ValueError(f"route {route.service!r}: backend {b.host_id!r}: {exc}") from None
            pool = pools.get(b.address)
            if pool is None:
                pool = pools[b.address] = pool_for(b.address)
            if b.weight > 0:
                targets.append(Target(b.host_id, b.address, host, port, b.weight, pool,
                                      counters_for(b.host_id)))
        order = smooth_schedule([t.weight for t in targets])
        compiled = CompiledRoute(route.service, route.path_prefix.encode(), tuple(targets),
                                 [targets[i] for i in order])
        if compiled.schedule:
            # Start each worker at a different point so workers do not move in lockstep.
            compiled.cursor = random.randrange(len(compiled.schedule))
        if route.hosts:
            for h in {split_host(h.encode()) for h in route.hosts}:
                by_host.setdefault(h, []).append(compiled)
        else:
            fallback.append(compiled)
    # Stable sort: among equal prefixes the table's order decides.
    for routes in by_host.values():
        routes.sort(key=lambda r: len(r.prefix), reverse=True)
    fallback.sort(key=lambda r: len(r.prefix), reverse=True)
    return CompiledTable(table, by_host, fallback, pools)
