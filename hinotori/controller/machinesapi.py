"""API routes for the machines of a fleet: list them, drain one, bring it back."""

from __future__ import annotations

from typing import Any, Protocol

from fastapi import APIRouter, Request

from hinotori.controller.guard import PRINCIPAL


class MachinesParts(Protocol):
    def rows(self) -> list[dict[str, Any]]: ...

    async def drain(self, name: str, actor: str) -> list[int]: ...

    def undrain(self, name: str, actor: str) -> None: ...


def machine_routes(machines: MachinesParts) -> APIRouter:
    routes = APIRouter()

    @routes.get("/v1/machines")
    async def listing() -> list[dict[str, Any]]:
        return machines.rows()

    @routes.post("/v1/machines/{name}/drain")
    async def drain(request: Request, name: str) -> dict[str, Any]:
        started = await machines.drain(name, request.scope.get(PRINCIPAL) or "unverified")
        return {"machine": name, "state": "draining", "deployments": started}

    @routes.post("/v1/machines/{name}/undrain")
    async def undrain(request: Request, name: str) -> dict[str, Any]:
        machines.undrain(name, request.scope.get(PRINCIPAL) or "unverified")
        return {"machine": name, "drained": False}

    return routes
