"""Read-only API routes: the event log, the central logs and the releases.

The CLI reads these from the local files (they work with the controller down); the API serves
the same data to the dashboard and to anything else that only has the token. Times in queries
are durations ago ("10m") or epoch seconds.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter

from hinotori.controller.daemon import Controller
from hinotori.durations import parse_moment
from hinotori.errors import HinotoriError
from hinotori.model import release_number
from hinotori.observe.logs import LogQuery, search
from hinotori.releases import release_rows

MAX_LIMIT = 10_000


def _moment(name: str, text: str | None) -> float | None:
    if text is None or text == "":
        return None
    try:
        return parse_moment(text)
    except ValueError:
        raise HinotoriError(f"{name}={text!r} is not a time",
                            hint="a duration ago (30s, 10m, 2h, 7d) or epoch seconds") from None


def _release(text: str | None) -> int | None:
    if not text:
        return None
    try:
        return release_number(text)
    except ValueError:
        raise HinotoriError(f"release={text!r} is not a release",
                            hint="write it as v3 (or 3)") from None


def read_routes(controller: Controller) -> APIRouter:
    routes = APIRouter()
    store = controller.store

    @routes.get("/v1/events")
    async def events(subject: str | None = None, action: str | None = None,
                     actor: str | None = None, since: str | None = None,
                     until: str | None = None, grep: str | None = None,
                     limit: int = 100) -> dict[str, Any]:
        """The audit log, newest last; ``subject``, ``action`` and ``actor`` match prefixes,
        ``grep`` a substring of the details (the why)."""
        found = store.events(subject=subject, action=action, actor=actor,
                             since=_moment("since", since), until=_moment("until", until),
                             text=grep, limit=max(1, min(limit, MAX_LIMIT)))
        return {"events": [e.to_dict() for e in found]}

    @routes.get("/v1/logs")
    async def logs(service: str | None = None, release: str | None = None,
                   host: str | None = None, since: str | None = None,
                   until: str | None = None, grep: str | None = None, limit: int = 200,
                   after: int = 0) -> dict[str, Any]:
        """Lines from the central store (live and destroyed hosts alike), oldest first: the
        newest ``limit`` matches with id > ``after``. Poll with ``after=next`` to follow."""
        query = LogQuery(service=service or None, release=_release(release), host=host or None,
                         since=_moment("since", since), until=_moment("until", until),
                         grep=grep or None, limit=max(1, min(limit, MAX_LIMIT)))
        lines = await asyncio.to_thread(search, controller.logs.store, query, after)
        return {"lines": [ln.to_dict() for ln in lines],
                "next": lines[-1].id if lines else after}

    @routes.get("/v1/releases")
    async def releases(service: str | None = None) -> list[dict[str, Any]]:
        return release_rows(store, service)

    return routes
