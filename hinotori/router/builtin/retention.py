"""How long a worker keeps a backend's counters once no route names it (``CounterRetention``).

The counters of a host that left the table are read by the controller's metrics sampler (every
10-60 s) and once more when the host is destroyed. Kept past that, they only grew the worker's
memory, its stats answer and its one-second sweep by every host it ever served (1,000 more per
deploy of 1,000 hosts). A host's counters are dropped ``COUNTERS_KEPT`` seconds (give or take
``CHECK_EVERY``) after it was last in the live table or a prepared route, once nothing is in
flight to it; a host that comes back later (a rollback to a warm release) counts from zero,
which the sampler reads as new.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hinotori.router.builtin.prepared import Prepared
    from hinotori.router.builtin.table import CompiledTable, Counters

COUNTERS_KEPT = 600.0
# How often the sweep looks (the routes and every counter: ~3 ms with 16 prepared routes of
# 1,000 hosts and 17,000 counters, time a switch arriving then would wait): once a minute.
CHECK_EVERY = 60.0


class CounterRetention:
    def __init__(self) -> None:
        self._left: dict[str, float] = {}  # host id -> when no route named it any more
        self._seen: tuple[object, ...] | None = None  # the routes _left was made from
        self._next = 0.0  # when to look next

    def sweep(self, now: float, counters: dict[str, Counters], table: CompiledTable | None,
              prepared: Prepared) -> None:
        """Every CHECK_EVERY: note who left every route since the last look (the routes are
        looked at only if they changed) and drop the counters of those gone long enough."""
        if now < self._next:
            return
        self._next = now + CHECK_EVERY
        routes = (table, *prepared.entries)
        if routes != self._seen:
            self._seen = routes
            named = {b.host_id for r in table.table.routes for b in r.backends} if table \
                else set()
            for entry in prepared.entries.values():
                named.update(b.host_id for b in entry.route.backends)
            for host in counters:
                if host in named:
                    self._left.pop(host, None)
                else:
                    self._left.setdefault(host, now)
        for host, since in list(self._left.items()):
            c = counters.get(host)
            if c is None:
                del self._left[host]
            elif now - since > COUNTERS_KEPT and c.active == 0:
                del counters[host], self._left[host]
