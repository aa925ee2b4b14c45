"""``GET /v1/metrics/history``: a service's metric history, per release, over a time range.

Query parameters: ``service`` (required), ``release`` (``3`` or ``v3``; default every
release), ``since`` (a duration ago like ``1h``, or epoch seconds; default ``1h``), ``until``
(same forms; default now), ``step`` (bucket width, e.g. ``30s`` or ``60``; default: fit for the
range). The answer's shape is drawn in hinotori/observe/metrics/query.py; releases whose hosts
are all gone are answered like any other.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter

from hinotori.observe.metrics import MetricsRecorder, history_text


def history_routes(recorder: MetricsRecorder) -> APIRouter:
    router = APIRouter()

    @router.get("/v1/metrics/history")
    async def metrics_history(service: str, release: str | None = None, since: str = "1h",
                              until: str | None = None, step: str | None = None
                              ) -> dict[str, Any]:
        """Per-release series of a service: rps, error rate, p50/p95/p99, CPU, memory,
        hosts; kept after the hosts are gone (10 s points for a day, 1 min for 30 days)."""
        return await asyncio.to_thread(
            history_text, recorder.store, service, interval=recorder.spec.interval,
            retention_raw=recorder.spec.retention_10s, release=release, since=since,
            until=until, step=step)

    return router
