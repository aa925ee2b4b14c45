"""Bake and images through the API: what `hinotori bake` and `hinotori images` do, for clients
that only have the token (a CI job, the push webhook's callers, scripts).

The bake runs in a worker thread (it is slow: steps, or the engine's build) with the spec as it
is on disk now, exactly as the CLI would run it; a release is made only when something changed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from hinotori.project import Project
from hinotori.releases import bake_service, bake_summary, image_rows


class BakeBody(BaseModel):
    no_cache: bool = False  # run every step again (`hinotori bake --no-cache`)


def build_routes(project: Project, reload_spec: Callable[[], None]) -> APIRouter:
    """``reload_spec`` brings ``project.spec`` up to date with the file on disk."""
    routes = APIRouter()

    @routes.post("/v1/services/{service}/bake")
    async def bake(service: str, body: BakeBody | None = None) -> dict[str, Any]:
        reload_spec()
        project.service(service)  # NotFound (404) before any work
        result, outcome = await asyncio.to_thread(
            bake_service, project, service, use_cache=not (body and body.no_cache))
        return bake_summary(service, result, outcome)

    @routes.get("/v1/images")
    async def images() -> list[dict[str, Any]]:
        return image_rows(project)

    return routes
