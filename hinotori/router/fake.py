"""An in-memory Router for tests of orchestration: tables kept in a list, traffic made up.

``applied`` holds every table the control plane handed over, in order, so a test can check an
invariant at every switch (never fewer serving backends than…, never a backend that failed its
health check). ``fail_applies`` makes the next N ``apply`` calls raise RouterError, as a data
plane that stopped answering would. ``stats()`` makes up ``traffic`` requests per call, split
over the live table's backends by weight (deterministically: no randomness), each backend
answering with the error share ``error_rate(host_id)`` gives, so canary analysis can be driven
without a socket.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from hinotori.errors import RouterError
from hinotori.model import LATENCY_BUCKETS_MS, BackendStats, RoutingTable


def _no_errors(_: str) -> float:
    return 0.0


@dataclass
class FakeRouter:
    kind: str = "fake"
    traffic: int = 0  # requests made up per stats() call
    error_rate: Callable[[str], float] = _no_errors
    fail_applies: int = 0
    applied: list[RoutingTable] = field(default_factory=list)
    prepared: list[RoutingTable] = field(default_factory=list)  # what prepare() was given
    started: bool = False
    _counts: dict[str, BackendStats] = field(default_factory=dict)

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.started = False

    async def apply(self, table: RoutingTable) -> None:
        if self.fail_applies > 0:
            self.fail_applies -= 1
            raise RouterError("the data plane did not acknowledge the table (fake fault)")
        self.applied.append(table)

    async def prepare(self, table: RoutingTable) -> None:
        self.prepared.append(table)

    async def current(self) -> RoutingTable | None:
        return self.applied[-1] if self.applied else None

    def serving(self, service: str) -> dict[str, int]:
        """Host id -> weight of ``service`` in the live table."""
        table = self.applied[-1] if self.applied else None
        route = table.route(service) if table else None
        return {b.host_id: b.weight for b in route.backends} if route else {}

    async def stats(self) -> dict[str, BackendStats]:
        table = self.applied[-1] if self.applied else None
        for route in table.routes if table else ():
            total = sum(b.weight for b in route.backends)
            for b in route.backends:
                n = self.traffic * b.weight // total if total else 0
                errors = round(n * self.error_rate(b.host_id))
                old = self._counts.get(b.host_id, BackendStats(host_id=b.host_id))
                statuses = dict(old.statuses)
                statuses["2xx"] = statuses.get("2xx", 0) + n - errors
                statuses["5xx"] = statuses.get("5xx", 0) + errors
                latency = list(old.latency or [0] * (len(LATENCY_BUCKETS_MS) + 1))
                latency[0] += n  # every made-up request is fast
                self._counts[b.host_id] = BackendStats(
                    host_id=b.host_id, requests=old.requests + n, statuses=statuses,
                    latency=tuple(latency), latency_sum_ms=old.latency_sum_ms + n)
        return dict(self._counts)
