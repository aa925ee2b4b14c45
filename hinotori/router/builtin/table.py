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
* a request may ask for a release (``X-Hinotori-Release: canary | stable | vN``, or the route's
  sticky cookie ``hinotori-<service>=vN``); then only that release's backends are candidates,
  weight-0 ones included (weight counts as 1), because asking by name is how you reach a canary
  that gets no share of the traffic.
* a held release (``route.preview``, `deploy --hold`) has weight-0 backends only: live traffic
  never picks them; ``X-Hinotori-Release: preview | vN`` and every request that came in on the
  preview listener do.

The worker swaps the whole ``CompiledTable`` reference on ``apply``; nothing in it is mutated
afterwards except the schedule's turn and the counters.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import reduce
from operator import add
from typing import TYPE_CHECKING

from hinotori.model import LATENCY_BUCKETS_MS, RoutingTable, ServiceRoute
from hinotori.router import maintenance
from hinotori.router.builtin.http1 import split_host
from hinotori.router.builtin.listener import parse_address

if TYPE_CHECKING:
    from hinotori.router.builtin.upstream import Pool

_MAX_SCHEDULE = 10_000  # beyond this many slots, fall back to weighted random picks


_STATUS_CLASSES = ("2xx", "3xx", "4xx", "5xx")
_TABLE_MS = 1000  # latency bucket by whole ms rounded up (the bounds are whole): a lookup
BUCKET_BY_MS = [bisect.bisect_left(LATENCY_BUCKETS_MS, ms) for ms in range(_TABLE_MS + 1)]


class Counters:
    """Per-backend counters (the wire form of ``model.BackendStats``); plain attributes and
    lists because the hot path bumps them per request.

    A 2xx answer's latency is only appended to ``ok_ms`` (one C call per request); ``fold``
    counts the batch (requests, status class, bucket, sum) at the next read (``to_dict``), the
    worker's one-second sweep (which bounds the list) or any other answer (``observe``, so the
    sum is added in arrival order): the same figures as counting each answer as it came."""

    __slots__ = ("active", "errors", "latency", "latency_sum_ms", "ok_ms", "requests",
                 "statuses")

    def __init__(self) -> None:
        self.active = 0      # requests in flight to the backend now
        self.requests = 0    # responses answered for it: relayed, or router-made 502/504
        self.errors = 0      # connect failures and router-generated 5xx blamed on the backend
        self.statuses = [0, 0, 0, 0]  # 2xx, 3xx, 4xx, 5xx (1xx counts as 2xx)
        self.latency = [0] * (len(LATENCY_BUCKETS_MS) + 1)  # ms buckets + overflow
        self.latency_sum_ms = 0.0
        self.ok_ms: list[float] = []  # latencies of 2xx answers not counted yet

    def observe(self, status: int, latency_ms: float) -> None:
        if self.ok_ms:
            self.fold()
        self.requests += 1
        cls = status // 100 - 2
        self.statuses[0 if cls < 0 else 3 if cls > 3 else cls] += 1
        self.latency[bisect.bisect_left(LATENCY_BUCKETS_MS, latency_ms)] += 1
        self.latency_sum_ms += latency_ms

    def fold(self) -> None:
        """Count the 2xx answers in ``ok_ms`` as ``observe`` would have, one by one."""
        batch = self.ok_ms
        if not batch:
            return
        self.ok_ms = []
        self.requests += len(batch)
        self.statuses[0] += len(batch)
        latency = self.latency
        # Whole bucket bounds: a latency's bucket is its ceiling's (math.ceil and Counter in C).
        for ceiling, n in Counter(map(math.ceil, batch)).items():
            latency[BUCKET_BY_MS[ceiling] if ceiling <= _TABLE_MS
                    else bisect.bisect_left(LATENCY_BUCKETS_MS, ceiling)] += n
        # One addition after the other, in order (sum() may compensate: other last bits).
        self.latency_sum_ms = reduce(add, batch, self.latency_sum_ms)

    def to_dict(self) -> dict[str, object]:
        self.fold()
        return {"active": self.active, "requests": self.requests, "errors": self.errors,
                "statuses": dict(zip(_STATUS_CLASSES, self.statuses, strict=True)),
                "latency": list(self.latency), "latency_sum_ms": round(self.latency_sum_ms, 3)}


@dataclass(eq=False, slots=True)
class Target:
    host_id: str
    address: str
    host: str
    port: int
    weight: int
    release: int
    pool: Pool
    counters: Counters


@dataclass(eq=False, slots=True)
class CompiledRoute:
    service: str
    prefix: bytes
    targets: tuple[Target, ...]           # weight > 0 only
    schedule: list[Target] = field(default_factory=list)
    # The schedule's next backend, round and round (one C call; each worker starts elsewhere).
    turn: Callable[[], Target] | None = None
    # Release selection (canary/sticky); ``by_release`` holds every backend, weight 0 included.
    by_release: dict[int, tuple[Target, ...]] = field(default_factory=dict)
    canary: int | None = None
    sticky: bool = False                  # only when more than one release serves
    cookie: bytes = b""                   # sticky cookie name: hinotori-<service>
    # In maintenance: (Retry-After value, JSON body, HTML body), built once per table.
    maintenance: tuple[bytes, bytes, bytes] | None = None
    preview: int | None = None            # the held release, if any
    preview_cursor: int = 0               # round-robin over the held release's backends

    @property
    def selects_release(self) -> bool:
        return self.sticky or self.canary is not None or self.preview is not None

    def wanted(self, header: bytes | None, cookie: bytes | None) -> int | None:
        """The release a request asks for (header first, then the sticky cookie), if this
        route serves it."""
        for value in (header, cookie if self.sticky else None):
            if not value:
                continue
            v = value.strip().lower()
            release: int | None
            if v == b"canary":
                release = self.canary
            elif v == b"preview":
                release = self.preview
            elif v == b"stable":
                release = max((r for r in self.by_release if r not in (self.canary,
                                                                      self.preview)),
                              default=None)
            else:
                digits = v.removeprefix(b"v")
                release = int(digits) if digits.isdigit() else None
            if release in self.by_release:
                return release
        return None

    def pick_release(self, release: int, exclude: set[str]) -> Target | None:
        """A backend of ``release`` by weight (weight 0 counts as 1), not in ``exclude``."""
        if release == self.preview and not exclude:
            # Every request on the preview listener comes here, and a held release's weights
            # are all 0 (equal): a cursor, not a weighted draw per request.
            members = self.by_release.get(release, ())
            if members:
                self.preview_cursor = i = (self.preview_cursor + 1) % len(members)
                return members[i]
        candidates = [t for t in self.by_release.get(release, ()) if t.address not in exclude]
        if not candidates:
            return None
        return random.choices(candidates, weights=[t.weight or 1 for t in candidates])[0]

    def pick(self) -> Target | None:
        """The next backend by weight, or None when the route has none."""
        if self.turn is not None:
            return self.turn()
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
    """Indices in smooth weighted round-robin order over one full cycle (empty if too long).

    nginx's algorithm (every step each backend gains its weight, the highest is picked and
    loses the total; ties to the lowest index), simulated per group of equal weights rather
    than per backend: the members of a group are picked in turn, in index order, so a group
    is one counter. The same order, in O(cycle x distinct weights) instead of O(cycle x
    backends): 1,000 backends of one weight took 67 ms per table, now 1 ms."""
    g = math.gcd(*weights)
    if g == 0:
        return []
    reduced = [w // g for w in weights]
    total = sum(reduced)
    members: dict[int, list[int]] = {}
    for i, w in enumerate(reduced):
        if w:
            members.setdefault(w, []).append(i)
    if total > _MAX_SCHEDULE or total * len(members) > _MAX_SCHEDULE * 100:
        return []
    groups = [(w, idx) for w, idx in members.items()]
    picks = [0] * len(groups)  # picks of each group so far
    order: list[int] = []
    for step in range(1, total + 1):
        best, best_key = 0, None
        for gi, (w, idx) in enumerate(groups):
            p = picks[gi]
            n = len(idx)
            # The next member's counter: gained w per step, lost total per pick of it.
            key = (step * w - total * (p // n), -idx[p % n])
            if best_key is None or key > best_key:
                best, best_key = gi, key
        w, idx = groups[best]
        order.append(idx[picks[best] % len(idx)])
        picks[best] += 1
    return order


def _check_route(route: ServiceRoute) -> None:
    if not route.path_prefix.startswith("/"):
        raise ValueError(f"route {route.service!r}: path_prefix must start with '/', "
                         f"got {route.path_prefix!r}")
    for b in route.backends:
        if not isinstance(b.weight, int) or b.weight < 0:
            raise ValueError(f"route {route.service!r}: backend {b.host_id!r} weight must be an "
                             f"integer >= 0, got {b.weight!r}")


def _maintenance(route: ServiceRoute) -> tuple[bytes, bytes, bytes] | None:
    state = route.maintenance
    if state is None:
        return None
    if not isinstance(state.retry_after, int) or state.retry_after < 0:
        raise ValueError(f"route {route.service!r}: maintenance retry_after must be an integer "
                         f">= 0, got {state.retry_after!r}")
    return (str(state.retry_after).encode(), maintenance.json_body(route.service, state),
            maintenance.html_body(route.service, state))


def compile_route(route: ServiceRoute, pools: dict[str, Pool], pool_for: Callable[[str], Pool],
                  counters_for: Callable[[str], Counters]) -> CompiledRoute:
    """Validate and compile one route; its backends' pools are taken from ``pools`` (by
    address) or made by ``pool_for`` and added there. Raises ValueError naming what is bad."""
    _check_route(route)
    everyone: list[Target] = []
    for b in route.backends:
        try:
            host, port = parse_address(b.address)
        except ValueError as exc:
            raise ValueError(f"route {route.service!r}: backend {b.host_id!r}: {exc}") from None
        pool = pools.get(b.address)
        if pool is None:
            pool = pools[b.address] = pool_for(b.address)
        everyone.append(Target(b.host_id, b.address, host, port, b.weight, int(b.release),
                               pool, counters_for(b.host_id)))
    targets = [t for t in everyone if t.weight > 0]
    order = smooth_schedule([t.weight for t in targets])
    members: dict[int, list[Target]] = {}
    for t in everyone:
        members.setdefault(t.release, []).append(t)
    by_release = {release: tuple(ts) for release, ts in members.items()}
    compiled = CompiledRoute(route.service, route.path_prefix.encode(), tuple(targets),
                             [targets[i] for i in order], by_release=by_release,
                             canary=route.canary, preview=route.preview,
                             # a held release never counts: nobody is stuck to it
                             sticky=route.sticky and len(set(by_release) -
                                                         {route.preview}) > 1,
                             cookie=b"hinotori-" + route.service.encode(),
                             maintenance=_maintenance(route))
    schedule = compiled.schedule
    if schedule:
        # Start each worker at a different point so workers do not move in lockstep.
        start = random.randrange(len(schedule))
        compiled.turn = itertools.cycle(schedule[start:] + schedule[:start]).__next__
    return compiled


def assemble(table: RoutingTable, compiled: list[CompiledRoute],
             pools: dict[str, Pool]) -> CompiledTable:
    """The CompiledTable of ``table`` whose routes, in order, compiled to ``compiled``."""
    by_host: dict[bytes, list[CompiledRoute]] = {}
    fallback: list[CompiledRoute] = []
    for route, c in zip(table.routes, compiled, strict=True):
        if route.hosts:
            for h in {split_host(h.encode()) for h in route.hosts}:
                by_host.setdefault(h, []).append(c)
        else:
            fallback.append(c)
    # Stable sort: among equal prefixes the table's order decides.
    for routes in by_host.values():
        routes.sort(key=lambda r: len(r.prefix), reverse=True)
    fallback.sort(key=lambda r: len(r.prefix), reverse=True)
    return CompiledTable(table, by_host, fallback, pools)


def compile_table(table: RoutingTable, pool_for: Callable[[str], Pool],
                  counters_for: Callable[[str], Counters]) -> CompiledTable:
    """Validate and index ``table``. Raises ValueError naming the bad route or backend."""
    pools: dict[str, Pool] = {}
    compiled = [compile_route(route, pools, pool_for, counters_for) for route in table.routes]
    return assemble(table, compiled, pools)


def link(compiled: list[CompiledRoute], live: dict[str, Pool]) -> dict[str, Pool]:
    """Give routes compiled earlier (prepared, or served before) the pools they serve with:
    an address's pool in the live table if it has one, else the one the route was compiled
    with, taken back from retirement if the address left the table since. One pool per
    address, as ``compile_table`` gives. Returns the pools by address."""
    pools: dict[str, Pool] = {}
    for route in compiled:
        for members in route.by_release.values():  # every target, weight 0 included
            for t in members:
                pool = pools.get(t.address)
                if pool is None:
                    pool = live.get(t.address) or t.pool
                    pool.retired = False  # a retired pool closed its idle connections
                    pools[t.address] = pool
                t.pool = pool
    return pools
