"""API route for the router's TLS certificates: read the files again and serve them."""

from __future__ import annotations

from typing import Any, Protocol

from fastapi import APIRouter, Request

from hinotori.controller.guard import PRINCIPAL


class CertParts(Protocol):
    async def reload(self, actor: str, why: str = "asked") -> list[dict[str, Any]]: ...


def cert_routes(certs: CertParts) -> APIRouter:
    routes = APIRouter()

    @routes.post("/v1/router/reload-certs")
    async def reload_certs(request: Request) -> dict[str, Any]:
        actor = request.scope.get(PRINCIPAL) or "unverified"
        return {"certs": await certs.reload(actor, why="hinotori router reload-certs")}

    return routes
