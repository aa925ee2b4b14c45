"""Metrics of services and releases that outlive hosts: history, rollups, totals.

::

    router per-host      ──Sampler──▶ per-release deltas ──▶ .hinotori/metrics.db
    cumulative counters   every        (never a host name)     raw points (a day)
    + hosts' CPU/memory   [metrics]                            ──rollup──▶ 1-min points (30 d)
                          interval;                            totals (Prometheus counters)
                          and before each host is destroyed          │
                                                                     ▼
                                 GET /v1/metrics/history, GET /metrics, `hinotori metrics`

Modules, one job each:

- ``points``   Counts and Point (counters over a span, gauges), the bucket percentile
- ``sampler``  Sampler: cumulative per-host counters -> per-release deltas (appeared, reset,
               vanished hosts; CPU rates)
- ``store``    MetricsStore: points, totals, the sampler's baseline; rollup and pruning
- ``query``    history(): a series for a service over a range, derived values
- ``recorder`` MetricsRecorder: the controller's loop, the destroy hook, live totals
"""

from hinotori.observe.metrics.points import Counts, Point, bucket_percentile
from hinotori.observe.metrics.query import history, history_text, parse_release
from hinotori.observe.metrics.recorder import MetricsRecorder, chain_destroying
from hinotori.observe.metrics.sampler import Sampler
from hinotori.observe.metrics.store import (
    METRICS_DB,
    MINUTE,
    RAW,
    BadQuery,
    MetricsError,
    MetricsStore,
    Total,
    metrics_db,
)

__all__ = ["METRICS_DB", "MINUTE", "RAW", "BadQuery", "Counts", "MetricsError", "MetricsRecorder",
           "MetricsStore", "Point", "Sampler", "Total", "bucket_percentile", "chain_destroying",
           "history", "history_text", "metrics_db", "parse_release"]
