"""Service metrics from the router's per-host counters, summed per service and release.

Metrics belong to the service and the release, never to a host: hosts are disposable, so a
graph keyed by host name dies with the host. The router counts per backend host id (cheap on
the hot path); here the controller, which knows which release each host ran, folds them.

Exposed as JSON (`GET /v1/metrics`) and in the Prometheus text format (`GET /metrics`) through
prometheus-client's exposition code, so the names and formats follow its conventions. The
counters served there are the metric history's totals (``from_totals``: kept per release in
.hinotori/metrics.db by the sampler, plus what the router counted since its last sample), so
they survive the hosts, a restarted router and a restarted controller; ``by_release`` folds the
router's live per-host counters (in flight, and the per-host view).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from hinotori.model import LATENCY_BUCKETS_MS, BackendStats, Host
from hinotori.observe.metrics import Total, bucket_percentile


@dataclass
class ReleaseMetrics:
    service: str
    release: int
    requests: int = 0
    errors: int = 0  # backend failures the router saw, retried or not (not client failures)
    in_flight: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    latency: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_MS) + 1))
    latency_sum_ms: float = 0.0
    cpu_seconds: float = 0.0  # CPU time of the release's hosts (history totals only)
    memory_bytes: int = 0  # resident memory of the release's live hosts at the last sample

    @property
    def error_rate(self) -> float:
        """Share of requests answered 5xx (by the app or by the router)."""
        return self.statuses.get("5xx", 0) / self.requests if self.requests else 0.0

    def percentile_ms(self, p: float) -> float | None:
        """Upper bound of the latency bucket holding the p-th percentile (None: no data)."""
        return bucket_percentile(self.latency, p)

    def to_dict(self) -> dict[str, Any]:
        return {"service": self.service, "release": f"v{self.release}",
                "requests": self.requests, "errors": self.errors, "in_flight": self.in_flight,
                "statuses": self.statuses, "error_rate": round(self.error_rate, 6),
                "p50_ms": self.percentile_ms(50), "p95_ms": self.percentile_ms(95),
                "p99_ms": self.percentile_ms(99),
                "latency_buckets_ms": list(LATENCY_BUCKETS_MS), "latency": self.latency,
                "latency_sum_ms": round(self.latency_sum_ms, 3),
                "cpu_seconds": round(self.cpu_seconds, 3), "memory_bytes": self.memory_bytes}


def by_release(stats: dict[str, BackendStats], hosts: list[Host]) -> list[ReleaseMetrics]:
    """Fold per-host counters into per (service, release) totals."""
    owner = {h.id: (h.service, h.release) for h in hosts}
    folded: dict[tuple[str, int], ReleaseMetrics] = {}
    for host_id, s in stats.items():
        key = owner.get(host_id)
        if key is None:
            continue  # a host the store no longer knows: nothing to attribute it to
        m = folded.get(key)
        if m is None:
            m = folded[key] = ReleaseMetrics(service=key[0], release=key[1])
        m.requests += s.requests
        m.errors += s.errors
        m.in_flight += s.active
        m.latency_sum_ms += s.latency_sum_ms
        for k, v in s.statuses.items():
            m.statuses[k] = m.statuses.get(k, 0) + v
        for i, v in enumerate(s.latency):
            m.latency[i] += v
    return sorted(folded.values(), key=lambda m: (m.service, m.release))


def from_totals(totals: list[Total], stats: dict[str, BackendStats],
                hosts: list[Host]) -> list[ReleaseMetrics]:
    """The history's per-release totals, with requests in flight from the live counters."""
    live = {(m.service, m.release): m.in_flight for m in by_release(stats, hosts)}
    return [ReleaseMetrics(service=t.service, release=t.release, requests=t.counts.requests,
                           errors=t.counts.errors, in_flight=live.get((t.service, t.release), 0),
                           statuses=dict(t.counts.statuses), latency=list(t.counts.latency),
                           latency_sum_ms=t.counts.latency_sum_ms,
                           cpu_seconds=t.counts.cpu_seconds, memory_bytes=t.memory_bytes)
            for t in totals]


class _Snapshot(Collector):
    def __init__(self, metrics: list[ReleaseMetrics], hosts: list[Host]) -> None:
        self.metrics = metrics
        self.hosts = hosts

    def collect(self) -> Iterator[Any]:
        labels = ["service", "release"]
        requests = CounterMetricFamily("hinotori_requests", "Responses relayed by the router",
                                       labels=[*labels, "code"])
        errors = CounterMetricFamily("hinotori_router_errors",
                                     "Backend connection failures and router-made 502/504",
                                     labels=labels)
        in_flight = GaugeMetricFamily("hinotori_requests_in_flight", "Requests in flight",
                                      labels=labels)
        latency = HistogramMetricFamily("hinotori_request_duration_seconds",
                                        "Time from relaying a request to its last response byte",
                                        labels=labels)
        cpu = CounterMetricFamily("hinotori_cpu_seconds", "CPU time used by the release's "
                                  "hosts (summed; survives the hosts)", labels=labels)
        memory = GaugeMetricFamily("hinotori_memory_bytes", "Resident memory of the release's "
                                   "live hosts, summed, at the last sample", labels=labels)
        for m in self.metrics:
            release = [m.service, f"v{m.release}"]
            cpu.add_metric(release, m.cpu_seconds)
            if m.memory_bytes:  # a release with no live host has no memory, not 0 bytes
                memory.add_metric(release, m.memory_bytes)
            for code, count in sorted(m.statuses.items()):
                requests.add_metric([*release, code], count)
            errors.add_metric(release, m.errors)
            in_flight.add_metric(release, m.in_flight)
            cumulative, buckets = 0, []
            for bound, count in zip((*LATENCY_BUCKETS_MS, float("inf")), m.latency,
                                    strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else str(bound / 1000),
                                cumulative))
            latency.add_metric(release, buckets, m.latency_sum_ms / 1000)
        hosts = GaugeMetricFamily("hinotori_hosts", "Live hosts by state",
                                  labels=[*labels, "state"])
        counts: dict[tuple[str, str, str], int] = {}
        for h in self.hosts:
            if h.state.alive:
                key = (h.service, f"v{h.release}", str(h.state))
                counts[key] = counts.get(key, 0) + 1
        for key, count in sorted(counts.items()):
            hosts.add_metric(list(key), count)
        yield from (requests, errors, in_flight, latency, cpu, memory, hosts)


def prometheus_text(metrics: list[ReleaseMetrics], hosts: list[Host]) -> bytes:
    from prometheus_client import generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(metrics, hosts))
    return generate_latest(registry)
