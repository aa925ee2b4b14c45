"""API routes of maintenance mode: list, on, off. Each returns once the router answers the
new way (see maintenance.py); who asked is what the credentials proved (guard.py)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from hinotori.controller.guard import PRINCIPAL
from hinotori.controller.maintenance import (
    DEFAULT_MESSAGE,
    DEFAULT_RETRY_AFTER,
    MAX_MESSAGE,
    MAX_RETRY_AFTER,
    MaintenanceMode,
)


class OnBody(BaseModel):
    message: str = Field(DEFAULT_MESSAGE, min_length=1, max_length=MAX_MESSAGE)
    retry_after: int = Field(DEFAULT_RETRY_AFTER, ge=0, le=MAX_RETRY_AFTER)
    reason: str = Field("", max_length=2000)
    actor: str | None = Field(None, max_length=200)  # a claim, kept beside the proven actor


class OffBody(BaseModel):
    reason: str = Field("", max_length=2000)
    actor: str | None = Field(None, max_length=200)


def maintenance_routes(mode: MaintenanceMode) -> APIRouter:
    routes = APIRouter()

    @routes.get("/v1/maintenance")
    async def listing() -> dict[str, Any]:
        return {"services": mode.status()}

    @routes.post("/v1/maintenance/{service}/on")
    async def on(request: Request, service: str, body: OnBody) -> dict[str, Any]:
        return await mode.on(service, message=body.message, retry_after=body.retry_after,
                             actor=_principal(request), reason=_reason(body.reason, body.actor))

    @routes.post("/v1/maintenance/{service}/off")
    async def off(request: Request, service: str, body: OffBody) -> dict[str, Any]:
        return await mode.off(service, actor=_principal(request),
                              reason=_reason(body.reason, body.actor))

    return routes


def _principal(request: Request) -> str:
    return request.scope.get(PRINCIPAL) or "unverified"


def _reason(reason: str, claimed: str | None) -> str:
    return f"{reason} (by {claimed})" if claimed and reason else (
        f"by {claimed}" if claimed else reason)
