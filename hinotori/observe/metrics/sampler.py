"""From the router's per-host cumulative counters to per-release deltas, one sample at a time.

The router counts per backend host id, cumulatively, since its worker started; hosts come and
go. A sample turns that into *deltas per (service, release)* since the previous sample, so what
is stored never names a host and never depends on a host still existing. The sampler keeps the
last counters it saw per host (its *baseline*, saved with every sample so a restarted
controller goes on where the last one stopped). Per host id in the router's stats:

- **appeared** (no baseline): everything it counted is new; a host's counters start at zero
  when it first gets traffic, so this is exact.
- **counted on**: delta = now - baseline.
- **reset** (any counter smaller than its baseline: the router restarted): everything it
  counted since the reset is new, as Prometheus' ``rate`` assumes. With several router workers
  one worker restarting alone is not seen as a reset (the sum still grows), and its lost share
  is simply not counted.
- **vanished** from the stats: its increments since the previous sample are lost, unless the
  controller called ``final(host)`` before destroying it, which it does on every destroy
  (Fleet.destroying): the increments are then kept as *pending* and go into the next sample.
  The built-in router keeps a host's counters after it leaves the table, so there a vanished
  host means a restarted router.

CPU is a rate: the delta of each live host's cumulative ``cpu_seconds``; a host born since the
last sample counts from zero; a host seen for the first time that is older (a restarted
controller with no baseline for it) starts its baseline without a delta rather than putting
its whole lifetime into one point. A decrease (a child process of the host exited and took its
CPU time along) counts as zero. Memory is the resident size summed over the release's live
hosts now; ``hosts`` is how many of them are serving.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from hinotori.model import BackendStats, Host, HostState
from hinotori.observe.metrics.points import Counts, Point
from hinotori.providers.base import HostUsage

Key = tuple[str, int]  # (service, release)


def router_counts(s: BackendStats) -> Counts:
    return Counts(requests=s.requests, errors=s.errors, statuses=dict(s.statuses),
                  latency=Counts.from_dict({"latency": s.latency}).latency,
                  latency_sum_ms=s.latency_sum_ms)


def same_counts(a: BackendStats, b: BackendStats) -> bool:
    """Whether two stats of a backend counted the same (what is in flight aside)."""
    return a.requests == b.requests and a.errors == b.errors and \
        a.latency_sum_ms == b.latency_sum_ms and a.latency == b.latency and \
        a.statuses == b.statuses


def is_reset(before: Counts, now: Counts) -> bool:
    """True when any counter went down: the counters restarted from zero since ``before``."""
    if now.requests < before.requests or now.errors < before.errors:
        return True
    if now.latency_sum_ms < before.latency_sum_ms - 1e-6:
        return True
    if any(now.statuses.get(k, 0) < v for k, v in before.statuses.items()):
        return True
    return any(a < b for a, b in zip(now.latency, before.latency, strict=True))


def delta(before: Counts | None, now: Counts) -> Counts:
    """What was counted between ``before`` and ``now`` (both cumulative)."""
    if before is None or is_reset(before, now):
        return Counts.from_dict(now.to_dict())
    return Counts(requests=now.requests - before.requests, errors=now.errors - before.errors,
                  statuses={k: v - before.statuses.get(k, 0) for k, v in now.statuses.items()
                            if v - before.statuses.get(k, 0)},
                  latency=[a - b for a, b in zip(now.latency, before.latency, strict=True)],
                  latency_sum_ms=max(0.0, now.latency_sum_ms - before.latency_sum_ms))


class Sampler:
    """Deterministic: every method takes the time and the observations it works on."""

    def __init__(self, state: Mapping[str, Any] | None = None) -> None:
        # By host id: the router's stats a baseline was made from, and that baseline. Stats
        # equal to them count nothing new: a thousand idle hosts are then not converted and
        # subtracted every sample. Checked by identity against the baseline in use, so a
        # restore or rollback (other baselines) never reuses one.
        self._made_from: dict[str, tuple[BackendStats, Counts]] = {}
        self.restore(state or {})

    # -- state (saved with every sample) --------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"last_ts": self.last_ts,
                "router": {h: [k[0], k[1], c.to_dict()] for h, (k, c) in self.router.items()},
                "cpu": dict(self.cpu),
                "pending": [[k[0], k[1], c.to_dict()] for k, c in self.pending.items()]}

    def restore(self, state: Mapping[str, Any]) -> None:
        state = json.loads(json.dumps(state))  # a copy: the caller's dict stays its own
        self.last_ts: float | None = state.get("last_ts")
        self.router: dict[str, tuple[Key, Counts]] = {
            h: ((svc, int(rel)), Counts.from_dict(c))
            for h, (svc, rel, c) in (state.get("router") or {}).items()}
        self.cpu: dict[str, float] = {h: float(v) for h, v in (state.get("cpu") or {}).items()}
        self.pending: dict[Key, Counts] = {(svc, int(rel)): Counts.from_dict(c)
                                           for svc, rel, c in state.get("pending") or []}

    def snapshot(self) -> tuple[Any, ...]:
        """The baseline as it is now, for ``rollback`` if a sample is not stored. Cheaper than
        ``state()``: a sample replaces the entries it moves and never changes one in place."""
        return self.last_ts, dict(self.router), dict(self.cpu), self.pending

    def rollback(self, snapshot: tuple[Any, ...]) -> None:
        self.last_ts, router, cpu, self.pending = snapshot
        self.router, self.cpu = dict(router), dict(cpu)

    # -- observations -----------------------------------------------------------------------
    def _router_deltas(self, stats: Mapping[str, BackendStats], owners: Mapping[str, Key],
                       commit: bool, forget_vanished: bool = True) -> dict[Key, Counts]:
        out: dict[Key, Counts] = {}
        made_from = self._made_from
        for host_id, s in stats.items():
            seen = self.router.get(host_id)
            if seen is not None and (made := made_from.get(host_id)) is not None and \
                    made[1] is seen[1] and same_counts(made[0], s):
                continue  # nothing counted since the baseline, which stays
            key = seen[0] if seen else owners.get(host_id)
            if key is None:
                continue  # a backend the store does not know: nothing to attribute it to
            now = router_counts(s)
            d = delta(seen[1] if seen else None, now)
            if commit:
                self.router[host_id] = (key, now)
                made_from[host_id] = (s, now)
            if not d.empty:
                out.setdefault(key, Counts()).add(d)
        if commit and forget_vanished:
            for host_id in [h for h in self.router if h not in stats]:
                del self.router[host_id]  # vanished: the router forgot it (see the docstring)
            for host_id in [h for h in made_from if h not in self.router]:
                del made_from[host_id]
        return out

    def _cpu_delta(self, host: Host, usage: HostUsage) -> float:
        before = self.cpu.get(host.id)
        self.cpu[host.id] = usage.cpu_seconds
        if before is None:
            born_since = self.last_ts is not None and host.born_at >= self.last_ts
            return usage.cpu_seconds if born_since else 0.0
        return max(0.0, usage.cpu_seconds - before)

    def final(self, host: Host, stats: BackendStats | None, usage: HostUsage | None) -> None:
        """The host is about to be destroyed: keep what it counted since the last sample."""
        key = (host.service, host.release)
        if stats is not None:
            d = self._router_deltas({host.id: stats}, {host.id: key}, commit=True,
                                    forget_vanished=False)
            for k, c in d.items():
                self.pending.setdefault(k, Counts()).add(c)
        if usage is not None:
            cpu = self._cpu_delta(host, usage)
            self.pending.setdefault(key, Counts()).add(Counts(cpu_seconds=cpu))
        self.cpu.pop(host.id, None)

    def peek(self, stats: Mapping[str, BackendStats], hosts: Iterable[Host]) -> dict[Key, Counts]:
        """Router counts not yet in a sample (pending included), without taking a sample."""
        owners = {h.id: (h.service, h.release) for h in hosts}
        out = self._router_deltas(stats, owners, commit=False)
        for key, c in self.pending.items():
            out.setdefault(key, Counts()).add(Counts.from_dict({**c.to_dict(),
                                                                "cpu_seconds": 0.0}))
        return out

    def sample(self, now: float, stats: Mapping[str, BackendStats], hosts: Iterable[Host],
               usage: Mapping[str, HostUsage], interval: float) -> list[Point]:
        """One point per release that counted anything or has live hosts; moves the baseline.

        ``hosts``: every host the store knows (destroyed ones too, for the router's counters of
        hosts gone since); ``usage``: of the live ones, by host id."""
        hosts = list(hosts)
        owners = {h.id: (h.service, h.release) for h in hosts}
        span = now - self.last_ts if self.last_ts is not None and now > self.last_ts \
            else interval
        points: dict[Key, Point] = {}

        def point(key: Key) -> Point:
            p = points.get(key)
            if p is None:
                p = points[key] = Point(service=key[0], release=key[1], ts=now, span=span)
            return p

        for key, c in self._router_deltas(stats, owners, commit=True).items():
            point(key).counts.add(c)
        for key, c in self.pending.items():
            point(key).counts.add(c)
        self.pending = {}
        live = [h for h in hosts if h.state.alive]
        for host in live:
            p = point((host.service, host.release))
            u = usage.get(host.id)
            if u is not None:
                p.counts.cpu_seconds += self._cpu_delta(host, u)
                p.memory_sum += u.memory_bytes
            if host.state == HostState.SERVING:
                p.hosts_sum += 1
        for host_id in [h for h in self.cpu if h not in usage]:
            del self.cpu[host_id]  # gone, or its provider cannot tell any more
        for p in points.values():
            p.memory_max, p.hosts_max = int(p.memory_sum), int(p.hosts_sum)
        self.last_ts = now
        return sorted(points.values(), key=lambda p: (p.service, p.release))
