"""History queries: a service's series over a time range, at a resolution fit for the range.

``history()`` returns the JSON the API serves at ``GET /v1/metrics/history`` and that
`hinotori metrics --json` prints::

    {"service": "web", "release": null,          # or the one release asked for
     "since": 1764050000.0, "until": 1764053600.0,  # epoch seconds
     "step": 10, "resolution": "10s",            # bucket width (s); stored points read ("1m")
     "points": [                                  # ordered by t, then release
       {"t": 1764050000.0,                        # bucket start, epoch seconds
        "release": 3,                             # release number
        "rps": 41.2,                              # responses per second over the bucket
        "error_rate": 0.0,                        # share of responses that were 5xx (0..1)
        "p50_ms": 5.0, "p95_ms": 10.0, "p99_ms": 20.0,  # latency percentiles, null: no data
        "cpu": 12.5,                              # percent of one core, summed over hosts
        "memory_bytes": 73400320,                 # resident, summed over hosts (average)
        "hosts": 3.0,                             # hosts serving (average over the bucket)
        "requests": 412, "errors_5xx": 0}],       # the counts behind rps and error_rate
     "releases": [                                # one summary per release over the range
       {"release": 3, "requests": 9000, "errors_5xx": 0, "error_rate": 0.0,
        "p50_ms": 5.0, "p99_ms": 20.0, "first": 1764050000.0, "last": 1764053590.0}]}

Percentiles are the upper bound of the router's latency bucket that holds them (the method of
controller/metrics.py), computed from the histogram buckets summed over the bucket's points; a
percentile beyond the last bound (30 s) shows as that bound, as Prometheus'
``histogram_quantile`` does.

Resolution: raw points (one per sample) when the range starts within ``retention_raw`` and the
step is under a minute; otherwise 1-minute points, plus the raw points of the minutes not
rolled up yet, so the newest minute is never missing. The step defaults to the smallest
multiple of the resolution that keeps at most ``max_points`` buckets per release.
"""

from __future__ import annotations

import math
import time
from typing import Any

from hinotori.durations import format_duration, parse_duration, parse_moment
from hinotori.model import LATENCY_BUCKETS_MS, release_number
from hinotori.observe.metrics.points import Point, merge_points
from hinotori.observe.metrics.store import MINUTE, RAW, BadQuery, MetricsStore

MAX_POINTS = 720


def _ms(value: float | None) -> float | None:
    if value is None:
        return None
    return float(LATENCY_BUCKETS_MS[-1]) if math.isinf(value) else float(value)


def pick(since: float, until: float, *, now: float, interval: float, retention_raw: float,
         step: float | None = None, max_points: int = MAX_POINTS) -> tuple[int, int]:
    """(resolution, step in whole seconds) for a range."""
    if until <= since:
        raise BadQuery("the time range is empty: `since` must be before `until`",
                       hint="e.g. since=1h (an hour ago) and no until (now)")
    raw_ok = since >= now - retention_raw and (step is None or step < MINUTE)
    resolution = RAW if raw_ok else MINUTE
    base = max(1, math.ceil(interval)) if resolution == RAW else MINUTE
    wanted = max(step or 0.0, (until - since) / max_points)
    return resolution, max(base, math.ceil(wanted / base) * base)


def _point_json(p: Point) -> dict[str, Any]:
    c = p.counts
    return {"t": p.ts, "release": p.release, "rps": round(p.rps, 3),
            "error_rate": round(p.error_rate, 6), "p50_ms": _ms(p.percentile_ms(50)),
            "p95_ms": _ms(p.percentile_ms(95)), "p99_ms": _ms(p.percentile_ms(99)),
            "cpu": round(p.cpu_percent, 2), "memory_bytes": int(p.memory_bytes),
            "hosts": round(p.hosts, 2), "requests": c.requests,
            "errors_5xx": c.statuses.get("5xx", 0)}


def history(store: MetricsStore, service: str, *, since: float, until: float, now: float,
            interval: float, retention_raw: float, release: int | None = None,
            step: float | None = None, max_points: int = MAX_POINTS) -> dict[str, Any]:
    resolution, width = pick(since, until, now=now, interval=interval,
                             retention_raw=retention_raw, step=step, max_points=max_points)
    if resolution == RAW:
        ranges = [(RAW, since, until)]
    else:
        rolled = store.rolled_until()
        split = min(max(since, rolled if rolled is not None else since), until)
        ranges = [(MINUTE, since, split), (RAW, split, until)]
    rows = store.buckets(service, step=width, ranges=ranges, release=release)
    points = [_point_json(p) for p, _, _ in rows]
    per_release: dict[int, list[tuple[Point, float, float]]] = {}
    for row in rows:
        per_release.setdefault(row[0].release, []).append(row)
    releases = []
    for number, group in sorted(per_release.items()):
        merged = merge_points((p for p, _, _ in group), ts=group[-1][2])
        if merged is None:
            continue
        c = merged.counts
        releases.append({"release": number, "requests": c.requests,
                         "errors_5xx": c.statuses.get("5xx", 0),
                         "error_rate": round(merged.error_rate, 6),
                         "p50_ms": _ms(merged.percentile_ms(50)),
                         "p99_ms": _ms(merged.percentile_ms(99)),
                         "first": min(first for _, first, _ in group),
                         "last": max(last for _, _, last in group)})
    label = "1m" if resolution == MINUTE else format_duration(interval)
    return {"service": service, "release": release, "since": since, "until": until,
            "step": width, "resolution": label, "points": points, "releases": releases}


def parse_release(text: str | None) -> int | None:
    if text is None or text == "":
        return None
    try:
        return release_number(text)
    except ValueError:
        raise BadQuery(f"release {text!r} is not a release number",
                       hint="write it as 3 or v3") from None


def parse_when(name: str, text: str, now: float) -> float:
    try:
        return parse_moment(text, now)
    except ValueError:
        raise BadQuery(f"{name} {text!r} is neither a duration ago nor a time",
                       hint="e.g. 1h, 30m, 7d, or epoch seconds like 1764000000") from None


def parse_step(text: str | None) -> float | None:
    if text is None or text == "":
        return None
    try:
        return float(text) if text.replace(".", "", 1).isdigit() else parse_duration(text)
    except ValueError:
        raise BadQuery(f"step {text!r} is not a duration",
                       hint="e.g. 10s, 1m, 5m (or seconds)") from None


def history_text(store: MetricsStore, service: str, *, interval: float, retention_raw: float,
                 release: str | None = None, since: str = "1h", until: str | None = None,
                 step: str | None = None, now: float | None = None) -> dict[str, Any]:
    """``history()`` with its arguments as a user writes them (API query, CLI options)."""
    now = time.time() if now is None else now
    return history(store, service, since=parse_when("since", since, now),
                   until=parse_when("until", until, now) if until else now, now=now,
                   interval=interval, retention_raw=retention_raw,
                   release=parse_release(release), step=parse_step(step))
