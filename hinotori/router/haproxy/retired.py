"""What a HAProxy router keeps of counters HAProxy no longer has: the "base" in its state.

HAProxy's counters restart when its worker is replaced (a reload) or a server is deleted, so
the router adds back what it read before either (stats.py). A deleted server's host counts
nothing more: its entry is kept ``KEPT_FOR`` seconds after its servers were deleted (the
metrics sampler, every 10-60 s, and its read on each destroy, have counted it by then), then
forgotten. Kept forever, the base grew by a host for every host ever deleted (1,000 per
deploy of 1,000 hosts), and it is in the state file written by every switch and read back
by every stats call. Entries for hosts a reload reset while they serve carry no "gone" and
stay while the host has a server.

Each change makes a new base dict (plans.py caches the JSON of the last one by identity).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

from hinotori.router.haproxy.stats import Counts

KEPT_FOR = 600.0


def added(base: Mapping[str, Any] | None, counts: Mapping[str, Counts],
          gone_at: float | None) -> dict[str, Any]:
    """``base`` with ``counts`` added per host; ``gone_at``: those hosts' servers were deleted
    then (None: reset by a reload, the host still serving)."""
    out = dict(base or {})
    for host, c in counts.items():
        before = out.get(host)
        total = Counts.from_dict(before) if before else Counts()
        total.add(c, active=False)
        entry: dict[str, Any] = total.to_dict()
        if gone_at is not None:
            entry["gone"] = gone_at
        out[host] = entry
    return out


def pruned(base: Mapping[str, Any] | None, now: float,
           present: Callable[[], Collection[str]]) -> dict[str, Any] | None:
    """``base`` without the hosts gone more than KEPT_FOR ago that have no server now
    (``present()``: the hosts that have one, asked only if some are that old); None when
    nothing is to be forgotten."""
    if not base:
        return None
    old = [h for h, d in base.items() if d.get("gone") is not None and now - d["gone"] > KEPT_FOR]
    if old:
        serving = present()
        old = [h for h in old if h not in serving]
    if not old:
        return None
    out = dict(base)
    for host in old:
        del out[host]
    return out


def updated(base: Mapping[str, Any] | None, deleted: Mapping[str, Counts], now: float,
            present: Callable[[], Collection[str]]) -> dict[str, Any] | None:
    """After a sweep: ``base`` with the counts of the hosts whose servers were just deleted
    (gone now), less what ``pruned`` forgets; None when nothing changed."""
    fresh = added(base, deleted, now) if deleted else None
    kept = pruned(base if fresh is None else fresh, now, present)
    return fresh if kept is None else kept
