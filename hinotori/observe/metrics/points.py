"""One metric point of one (service, release): counters over an interval plus gauges.

A point is what the sampler measured for a release over one interval (a *raw* point, one per
sample) or what rollup summed from such points (a 1-minute point). Counters are deltas over
the point's ``span`` and add up; gauges are kept as a sum over samples (so an average survives
any number of merges) and a max.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hinotori.model import LATENCY_BUCKETS_MS

N_BUCKETS = len(LATENCY_BUCKETS_MS) + 1  # the router's buckets plus the overflow bucket
BOUNDS = (*LATENCY_BUCKETS_MS, float("inf"))


def bucket_percentile(latency: Sequence[int], p: float) -> float | None:
    """Upper bound (ms) of the latency bucket holding the p-th percentile; None: no data,
    inf: beyond the last bound. The method of ``controller.metrics.ReleaseMetrics``: no
    interpolation inside a bucket, so a value is always a bucket edge the router really has."""
    total = sum(latency)
    if not total:
        return None
    rank, seen = p / 100 * total, 0
    for bound, count in zip(BOUNDS, latency, strict=False):
        seen += count
        if seen >= rank:
            return bound
    return float("inf")


def empty_latency() -> list[int]:
    return [0] * N_BUCKETS


@dataclass
class Counts:
    """Counters of one release over some interval (or since the start: totals)."""

    requests: int = 0
    errors: int = 0  # backend failures the router saw (connection errors, router 502/504)
    statuses: dict[str, int] = field(default_factory=dict)  # "2xx".."5xx" -> responses
    latency: list[int] = field(default_factory=empty_latency)
    latency_sum_ms: float = 0.0
    cpu_seconds: float = 0.0  # CPU time the release's hosts used

    def add(self, other: Counts) -> None:
        self.requests += other.requests
        self.errors += other.errors
        for k, v in other.statuses.items():
            self.statuses[k] = self.statuses.get(k, 0) + v
        self.latency = [a + b for a, b in zip(self.latency, _sized(other.latency), strict=True)]
        self.latency_sum_ms += other.latency_sum_ms
        self.cpu_seconds += other.cpu_seconds

    @property
    def empty(self) -> bool:
        return not (self.requests or self.errors or self.cpu_seconds or any(self.latency)
                    or any(self.statuses.values()))

    def to_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors,
                "statuses": dict(sorted(self.statuses.items())), "latency": list(self.latency),
                "latency_sum_ms": round(self.latency_sum_ms, 3),
                "cpu_seconds": round(self.cpu_seconds, 3)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Counts:
        return cls(requests=int(d.get("requests", 0)), errors=int(d.get("errors", 0)),
                   statuses={k: int(v) for k, v in (d.get("statuses") or {}).items()},
                   latency=_sized(d.get("latency") or ()),
                   latency_sum_ms=float(d.get("latency_sum_ms", 0.0)),
                   cpu_seconds=float(d.get("cpu_seconds", 0.0)))


def _sized(latency: Iterable[int]) -> list[int]:
    """A histogram with exactly N_BUCKETS buckets (a router that sent none: all zero)."""
    values = [int(v) for v in latency]
    return (values + [0] * N_BUCKETS)[:N_BUCKETS]


@dataclass
class Point:
    """(service, release, ts): counters over ``span`` seconds ending at ``ts``, and gauges.

    Gauges are sums over ``samples`` (average = sum / samples) and maxima, so merging points
    (rollup, or a query's step) keeps both exact."""

    service: str
    release: int
    ts: float
    span: float
    counts: Counts = field(default_factory=Counts)
    samples: int = 1
    memory_sum: float = 0.0  # bytes, summed over the release's live hosts, per sample
    memory_max: int = 0
    hosts_sum: float = 0.0  # hosts serving, per sample
    hosts_max: int = 0

    def merge(self, other: Point) -> None:
        self.counts.add(other.counts)
        self.span += other.span
        self.samples += other.samples
        self.memory_sum += other.memory_sum
        self.memory_max = max(self.memory_max, other.memory_max)
        self.hosts_sum += other.hosts_sum
        self.hosts_max = max(self.hosts_max, other.hosts_max)
        self.ts = max(self.ts, other.ts)

    # -- derived values --------------------------------------------------------------------
    @property
    def rps(self) -> float:
        return self.counts.requests / self.span if self.span > 0 else 0.0

    @property
    def error_rate(self) -> float:
        """Share of responses that were 5xx (from the app or made by the router)."""
        c = self.counts
        return c.statuses.get("5xx", 0) / c.requests if c.requests else 0.0

    @property
    def cpu_percent(self) -> float:
        """CPU of all the release's hosts, in percent of one core (200 = two cores busy)."""
        return 100.0 * self.counts.cpu_seconds / self.span if self.span > 0 else 0.0

    @property
    def memory_bytes(self) -> float:
        return self.memory_sum / self.samples if self.samples else 0.0

    @property
    def hosts(self) -> float:
        return self.hosts_sum / self.samples if self.samples else 0.0

    def percentile_ms(self, p: float) -> float | None:
        return bucket_percentile(self.counts.latency, p)


def merge_points(points: Iterable[Point], *, ts: float) -> Point | None:
    """One point holding everything of ``points`` (all of one release), stamped ``ts``."""
    merged: Point | None = None
    for p in points:
        if merged is None:
            merged = Point(service=p.service, release=p.release, ts=p.ts, span=0.0, samples=0)
        merged.merge(p)
    if merged is not None:
        merged.ts = ts
    return merged
