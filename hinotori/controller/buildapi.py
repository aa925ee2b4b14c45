"""Bake and images through the API: what `hinotori bake` and `hinotori images` do, for clients
that only have the token (a CI job, the push webhook's callers, scripts) and for the CLI itself:
`hinotori bake` hands its bake to a running controller (a warm process: no interpreter start,
imports or engine connection to pay), see hinotori.cli.bakequick.

The bake runs in a worker thread (it is slow: steps, or the engine's build) with the spec as it
is on disk now, exactly as the CLI would run it; a release is made only when something changed.
Who asked is recorded: the token's principal, and the actor the caller claims (`cli:alice@box`)
beside it, in the release and the ``image.baked`` event (``via`` "controller").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from hinotori.controller.dashboard.sessions import PRINCIPAL
from hinotori.project import Project
from hinotori.releases import bake_service, bake_summary, image_rows

log = logging.getLogger("hinotori.controller")


class BakeBody(BaseModel):
    no_cache: bool = False  # run every step again (`hinotori bake --no-cache`)
    actor: str | None = Field(None, max_length=200)  # who the caller says it is: a claim


def build_routes(project: Project, reload_spec: Callable[[], None]) -> APIRouter:
    """``reload_spec`` brings ``project.spec`` up to date with the file on disk."""
    routes = APIRouter()

    @routes.post("/v1/services/{service}/bake")
    async def bake(request: Request, service: str,
                   body: BakeBody | None = None) -> dict[str, Any]:
        reload_spec()  # the spec as it is on disk now, not as it was at `up`
        project.service(service)  # NotFound (404) before any work
        principal = request.scope.get(PRINCIPAL) or "unverified"  # the guard sets it
        claimed = body.actor if body else None
        actor = f"{principal} ({claimed})" if claimed else principal
        no_cache = bool(body and body.no_cache)
        log.info("bake of %s for %s%s", service, actor, " (no cache)" if no_cache else "")
        result, outcome = await asyncio.to_thread(
            bake_service, project, service, use_cache=not no_cache, actor=actor,
            via="controller")
        return bake_summary(service, result, outcome)

    @routes.get("/v1/images")
    async def images() -> list[dict[str, Any]]:
        return image_rows(project)

    return routes
