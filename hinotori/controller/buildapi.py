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
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from hinotori.controller.dashboard.sessions import PRINCIPAL
from hinotori.project import Project
from hinotori.releases import bake_service, bake_summary, image_rows

if TYPE_CHECKING:
    import docker

log = logging.getLogger("hinotori.controller")


class BakeBody(BaseModel):
    no_cache: bool = False  # run every step again (`hinotori bake --no-cache`)
    actor: str | None = Field(None, max_length=200)  # who the caller says it is: a claim


class WarmEngine:
    """One client of the project's container engine for every bake of this process: a warm
    connection, not a new client and ping per bake. Made again when the spec's [engine] url
    changes, and after a bake that failed (the engine may have gone or moved)."""

    def __init__(self, project: Project) -> None:
        self.project = project
        self._client: docker.DockerClient | None = None
        self._url: str | None = None
        self._lock = threading.Lock()

    def client(self) -> docker.DockerClient:
        """The client for an OS-image bake (connected on first use: EngineError if none)."""
        with self._lock:
            url = self.project.spec.engine.url
            if self._client is None or url != self._url:
                self._client, self._url = self.project.engine(), url
            return self._client

    def forget(self, client: docker.DockerClient) -> None:
        """Make a new client next time. Not closed here: a bake running at the same time may
        still use it; it is closed when the last one lets go of it."""
        with self._lock:
            if self._client is client:
                self._client = None


def build_routes(project: Project, reload_spec: Callable[[], None]) -> APIRouter:
    """``reload_spec`` brings ``project.spec`` up to date with the file on disk."""
    routes = APIRouter()
    warm = WarmEngine(project)

    def bake_with_engine(service: str, *, use_cache: bool, actor: str) -> Any:
        engine = warm.client() if project.service(service).image.os is not None else None
        try:
            return bake_service(project, service, use_cache=use_cache, actor=actor,
                                via="controller", engine=engine)
        except BaseException:
            if engine is not None:
                warm.forget(engine)
            raise

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
            bake_with_engine, service, use_cache=not no_cache, actor=actor)
        return bake_summary(service, result, outcome)

    @routes.get("/v1/images")
    async def images() -> list[dict[str, Any]]:
        return image_rows(project)

    return routes
