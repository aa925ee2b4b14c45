"""Canary analysis: judge the canary against the stable release on the same window of traffic.

Both sides are measured over the same interval from the router's counters (deltas), so load
swings hit both alike. The verdict is one of:

- FAIL: the canary's error rate is above the absolute maximum, or above stable's by more than
  the allowed difference, or its p95/p99 latency is more than the allowed ratio of stable's;
- INCONCLUSIVE: fewer than ``min_requests`` canary requests (or too few stable requests to
  compare against): no data is never a pass (Argo Rollouts' users' top complaint); or too few
  requests on either side for a judged percentile to be more than the window's slowest one
  (``enough_for``: 100 for p99, 20 for p95). A single slow request among 54 is not a slow p99;
  the window grows over the step, so the next interval judges it;
- PASS otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum

from hinotori.model import LATENCY_BUCKETS_MS

_EPS = 1e-9  # rates are ratios of counts: 0.05 - 0.04 must not be "more than 0.01"


class Outcome(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


def enough_for(p: float) -> int:
    """Fewest requests whose p-th percentile is not the slowest request: one lies above it."""
    return math.ceil(round(100 / (100 - p), 6))


@dataclass(frozen=True)
class Window:
    """Traffic of one side (stable or canary) over one analysis interval."""

    requests: int = 0
    errors: int = 0  # 5xx answers, whether the app's or the router's
    latency: tuple[int, ...] = ()  # counts per LATENCY_BUCKETS_MS bucket (+ overflow)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def percentile_ms(self, p: float) -> float | None:
        total = sum(self.latency)
        if not total:
            return None
        rank, seen = p / 100 * total, 0
        for bound, count in zip((*LATENCY_BUCKETS_MS, float("inf")), self.latency, strict=True):
            seen += count
            if seen >= rank:
                return float(bound)
        return float("inf")

    def minus(self, earlier: Window) -> Window:
        lat = tuple(a - b for a, b in zip(self.latency, earlier.latency or
                                          (0,) * len(self.latency), strict=True))
        return Window(self.requests - earlier.requests, self.errors - earlier.errors, lat)


@dataclass(frozen=True)
class Thresholds:
    max_error_rate: float = 0.01
    max_error_rate_diff: float = 0.01
    max_p95_ratio: float | None = None
    max_p99_ratio: float | None = 1.5
    min_requests: int = 50


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    reasons: list[str] = field(default_factory=list)
    metrics: dict[str, float | int | None] = field(default_factory=dict)


def judge(stable: Window, canary: Window, t: Thresholds) -> Verdict:
    metrics: dict[str, float | int | None] = {
        "canary_requests": canary.requests, "stable_requests": stable.requests,
        "canary_error_rate": round(canary.error_rate, 5),
        "stable_error_rate": round(stable.error_rate, 5),
        "canary_p95_ms": canary.percentile_ms(95), "stable_p95_ms": stable.percentile_ms(95),
        "canary_p99_ms": canary.percentile_ms(99), "stable_p99_ms": stable.percentile_ms(99)}
    if canary.requests < t.min_requests:
        return Verdict(Outcome.INCONCLUSIVE,
                       [f"only {canary.requests} canary requests (need {t.min_requests})"],
                       metrics)
    fails = []
    if canary.error_rate > t.max_error_rate + _EPS:
        fails.append(f"canary error rate {canary.error_rate:.2%} > max {t.max_error_rate:.2%}")
    # Comparisons with stable need enough stable traffic to mean anything.
    comparable = stable.requests >= t.min_requests
    if comparable and canary.error_rate - stable.error_rate > t.max_error_rate_diff + _EPS:
        fails.append(f"canary error rate {canary.error_rate:.2%} exceeds stable's "
                     f"{stable.error_rate:.2%} by more than {t.max_error_rate_diff:.2%}")
    too_few = []
    for p, limit in ((95, t.max_p95_ratio), (99, t.max_p99_ratio)):
        c, s = canary.percentile_ms(p), stable.percentile_ms(p)
        if limit is not None and min(canary.requests, stable.requests) < enough_for(p):
            too_few.append(f"p{p} needs {enough_for(p)} requests on each side (canary "
                           f"{canary.requests}, stable {stable.requests})")
        elif limit is not None and comparable and c is not None and s:
            ratio = c / s
            metrics[f"p{p}_ratio"] = round(ratio, 3)
            if ratio > limit:
                fails.append(f"canary p{p} {c:g} ms is {ratio:.2f}x stable's {s:g} ms "
                             f"(max {limit:g}x)")
    if fails:
        return Verdict(Outcome.FAIL, fails, metrics)
    if not comparable and (t.max_error_rate_diff is not None or t.max_p99_ratio is not None):
        return Verdict(Outcome.INCONCLUSIVE,
                       [f"only {stable.requests} stable requests to compare with"], metrics)
    if too_few:
        return Verdict(Outcome.INCONCLUSIVE, too_few, metrics)
    return Verdict(Outcome.PASS, [], metrics)
