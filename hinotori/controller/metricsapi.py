"""The metrics routes: live counters (``/v1/metrics``, Prometheus' ``/metrics``) and history.

``GET /v1/metrics/history``: a service's metric history, per release, over a time range.
Query parameters: ``service`` (required), ``release`` (``3`` or ``v3``; default every
release), ``since`` (a duration ago like ``1h``, or epoch seconds; default ``1h``), ``until``
(same forms; default now), ``step`` (bucket width, e.g. ``30s`` or ``60``; default: fit for the
range). The answer's shape is drawn in hinotori/observe/metrics/query.py; releases whose hosts
are all gone are answered like any other.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from hinotori.controller.metrics import from_totals, prometheus_text
from hinotori.durations import parse_moment
from hinotori.model import BackendStats
from hinotori.observe.metrics import BadQuery, MetricsRecorder, history_text
from hinotori.store import Store

RouterStats = Callable[[], Awaitable[dict[str, BackendStats]]]


def live_routes(store: Store, router_stats: RouterStats, recorder: MetricsRecorder
                ) -> APIRouter:
    """``router_stats``: what the data plane counted per host since it started."""
    routes = APIRouter()

    @routes.get("/v1/metrics")
    async def metrics(service: str | None = None, by: str = "release") -> list[dict[str, Any]]:
        """Per service and release (default), or per host with ``by=host``."""
        stats, hosts = await router_stats(), store.hosts()
        if by == "host":
            owner = {h.id: h for h in hosts}
            return [{"host": hid, "service": owner[hid].service,
                     "release": f"v{owner[hid].release}", "requests": s.requests,
                     "errors": s.errors, "in_flight": s.active, "statuses": s.statuses}
                    for hid, s in sorted(stats.items()) if hid in owner
                    and service in (None, owner[hid].service)]
        totals = await recorder.totals(service)  # they outlive hosts and routers
        return [m.to_dict() for m in from_totals(totals, stats, hosts)]

    @routes.get("/metrics")
    async def prometheus() -> Response:
        hosts = store.hosts()
        totals = await recorder.totals()
        body = prometheus_text(from_totals(totals, await router_stats(), hosts), hosts)
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    return routes


def history_routes(recorder: MetricsRecorder) -> APIRouter:
    router = APIRouter()

    @router.get("/v1/metrics/history")
    async def metrics_history(service: str, release: str | None = None, since: str = "1h",
                              until: str | None = None, step: str | None = None
                              ) -> dict[str, Any]:
        """Per-release series of a service: rps, error rate, p50/p95/p99, CPU, memory,
        hosts; kept after the hosts are gone (10 s points for a day, 1 min for 30 days)."""
        _finite("since", since)
        _finite("until", until)
        try:
            return await asyncio.to_thread(
                history_text, recorder.store, service, interval=recorder.spec.interval,
                retention_raw=recorder.spec.retention_10s, release=release, since=since,
                until=until, step=step)
        except OverflowError:  # a step or a time past what the store's integers hold
            raise BadQuery("a number in the query is too large",
                           hint="e.g. since=1h, step=30s") from None

    return router


def _finite(name: str, text: str | None) -> None:
    """``1e400`` parses as a time (infinity) but is none; other mistakes are left to
    history_text, which names them."""
    try:
        value = parse_moment(text) if text else 0.0
    except ValueError:
        return
    if not math.isfinite(value):
        raise BadQuery(f"{name} {text!r} is not a time", hint="e.g. 1h, 30m, 7d, or epoch seconds")
