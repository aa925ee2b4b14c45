"""Read-only API routes: the event log, the central logs, releases, hosts and deployments.

The CLI reads these from the local files (they work with the controller down); the API serves
the same data, in the same shapes (``view()`` in hinotori/model.py), to the dashboard and to
anything else that only has the token. Times in queries are durations ago ("10m") or epoch
seconds; numbers are checked against what the store can hold (422 with the reason, not 500).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import OrderedDict
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response

from hinotori.controller.hostcache import LiveHosts
from hinotori.durations import parse_moment
from hinotori.errors import HinotoriError
from hinotori.model import MAX_NUMBER, HostState, deployment_view, release_number
from hinotori.observe.logs import LogQuery, LogStore, search
from hinotori.releases import release_rows
from hinotori.store import Store

MAX_LIMIT = 10_000
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"at most {MAX_LIMIT}")]


def _moment(name: str, text: str | None) -> float | None:
    if text is None or text == "":
        return None
    try:
        moment = parse_moment(text)
    except ValueError:
        moment = math.nan
    if not math.isfinite(moment):
        raise HinotoriError(f"{name}={text!r} is not a time",
                            hint="a duration ago (30s, 10m, 2h, 7d) or epoch seconds")
    return moment


def _release(text: str | None) -> int | None:
    if not text:
        return None
    try:
        return release_number(text)
    except ValueError as e:
        raise HinotoriError(f"release={text!r} is not a release",
                            hint=str(e).partition(": ")[2] or "write it as v3 (or 3)") from None


def _json(data: Any) -> Response:
    """``data`` as JSON, past FastAPI's validation of the declared return type, which costs
    ~10x json.dumps (75 ms for 2,000 hosts): the shapes come from model.py's views, the
    declared types stay for the API's schema."""
    return Response(json.dumps(data).encode(), media_type="application/json")


class HostAnswers:
    """``GET /v1/hosts`` answers, read through the controller's host cache (hostcache.py) and
    kept until its hosts change: the dashboard asks each second, and at 2,000 hosts reading and
    encoding them took ~50 ms of the controller's loop. A few recent questions are kept (the
    service is the caller's)."""

    KEPT = 16

    def __init__(self, store: Store) -> None:
        self._views = {False: LiveHosts(store, states=[s for s in HostState if s.alive]),
                       True: LiveHosts(store, states=None)}
        self._kept: OrderedDict[tuple[str | None, bool], tuple[int, bytes]] = OrderedDict()

    def __call__(self, service: str | None, every: bool) -> Response:
        key, view = (service, every), self._views[every]
        hosts = view()  # brought up to date: its version moves if they changed
        kept = self._kept.get(key)
        if kept is None or kept[0] != view.version:
            body = json.dumps([h.view() for h in hosts
                               if not service or h.service == service]).encode()
            kept = self._kept[key] = (view.version, body)
            if len(self._kept) > self.KEPT:
                self._kept.popitem(last=False)
        self._kept.move_to_end(key)
        return Response(kept[1], media_type="application/json")


def read_routes(store: Store, logs: LogStore) -> APIRouter:
    routes = APIRouter()

    @routes.get("/v1/events")
    async def events(subject: str | None = None, action: str | None = None,
                     actor: str | None = None, since: str | None = None,
                     until: str | None = None, grep: str | None = None,
                     limit: Limit = 100) -> dict[str, Any]:
        """The audit log, newest last; ``subject``, ``action`` and ``actor`` match prefixes
        (taken literally: ``%`` and ``_`` are no wildcards), ``grep`` a substring of the
        details (the why)."""
        found = store.events(subject=subject, action=action, actor=actor,
                             since=_moment("since", since), until=_moment("until", until),
                             text=grep, limit=limit)
        return {"events": [e.to_dict() for e in found]}

    @routes.get("/v1/logs")
    async def log_lines(service: str | None = None, release: str | None = None,
                        host: str | None = None, since: str | None = None,
                        until: str | None = None, grep: str | None = None, limit: Limit = 200,
                        after: Annotated[int, Query(ge=0, le=MAX_NUMBER)] = 0
                        ) -> dict[str, Any]:
        """Lines from the central store (live and destroyed hosts alike), oldest first: the
        newest ``limit`` matches with id > ``after``. Poll with ``after=next`` to follow."""
        query = LogQuery(service=service or None, release=_release(release), host=host or None,
                         since=_moment("since", since), until=_moment("until", until),
                         grep=grep or None, limit=limit)
        lines = await asyncio.to_thread(search, logs, query, after)
        return {"lines": [ln.to_dict() for ln in lines],
                "next": lines[-1].id if lines else after}

    @routes.get("/v1/releases")
    async def releases(service: str | None = None) -> list[dict[str, Any]]:
        return release_rows(store, service)

    answered = HostAnswers(store)

    @routes.get("/v1/hosts")
    async def hosts(service: str | None = None, all: bool = False) -> list[dict[str, Any]]:
        """Live hosts (every host ever, with ``all=true``), as `hinotori hosts --json`."""
        return answered(service, all)  # type: ignore[return-value]

    @routes.get("/v1/deployments")
    async def deployments(service: str | None = None, limit: Limit = 50,
                          last_steps: Annotated[int | None, Query(ge=0, le=MAX_NUMBER)] = None
                          ) -> list[dict[str, Any]]:
        """The newest deployments; ``last_steps=N``: only each one's last N steps."""
        return _json([deployment_view(d) for d in  # type: ignore[return-value]
                      store.deployments(service, limit, last_steps)])

    @routes.get("/v1/deployments/{number}")
    async def deployment(number: Annotated[int, Path(ge=1, le=MAX_NUMBER)],
                         steps_after: Annotated[int, Query(ge=0, le=MAX_NUMBER)] = 0
                         ) -> dict[str, Any]:
        """One deployment; ``steps_after=N``: its steps from index N on (what a follower has
        not seen yet), so following a 1,000-host deployment is not quadratic."""
        return _json(deployment_view(store.deployment(number, steps_after)))  # type: ignore[return-value]

    return routes
