"""API routes that change things: deploy, roll back, rotate, kill a host, steer a running
canary, stop the controller. The API token reaches them, and an operating dashboard session
from its own page (guard.py); a read-only session is refused before any route runs.

Who did it is what the credentials proved (``token``; see guard.py), recorded as the event's
actor. The ``actor`` a client puts in the body (`cli:alice`) proves nothing: it is kept beside
it as ``claimed_actor`` in the event's detail, and shown by `hinotori audit`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from hinotori.controller.guard import PRINCIPAL
from hinotori.errors import NotFound
from hinotori.model import MAX_NUMBER, Host

MAX_LOCK_WAIT = 24 * 3600.0  # queueing behind another deployment for longer is a mistake
ACTIONS = ("pause", "resume", "promote", "abort")
MAX_HOLD = 30 * 24 * 3600.0  # a preview held longer than a month is forgotten, not tested


class DeployBody(BaseModel):
    release: int | None = Field(None, ge=1, le=MAX_NUMBER)
    lock_wait: float = Field(0.0, ge=0, le=MAX_LOCK_WAIT)
    actor: str | None = Field(None, max_length=200)  # who the caller says it is: a claim
    replace: bool = False  # deploy even if the release already serves: fresh hosts
    reason: str = Field("", max_length=2000)
    strategy: str | None = Field(None, max_length=100)  # default: the service's in the spec
    # Hold the new colour for preview before the switch (`deploy --hold`): seconds it may be
    # held, 0 until promoted or aborted; None: no hold.
    hold: float | None = Field(None, ge=0, le=MAX_HOLD)


class ShutdownBody(BaseModel):
    teardown: bool = True


class StartDeployment(Protocol):
    def __call__(self, service: str, *, kind: str, release: int | None, lock_wait: float,
                 actor: str, replace: bool = False, reason: str = "",
                 strategy: str | None = None, claimed_actor: str | None = None,
                 hold: float | None = None) -> Awaitable[int | None]: ...


class KillHost(Protocol):
    def __call__(self, host_id: str, actor: str, claimed_actor: str | None = None
                 ) -> Awaitable[Host]: ...


def control_routes(start_deployment: StartDeployment, kill: KillHost,
                   control: Callable[[str, str, str], Awaitable[dict[str, Any]]],
                   stop: Callable[[bool], None]) -> APIRouter:
    """``control(service, action, actor)`` steers a running canary (at once) or a held
    deployment (promote, abort: answered once done, with the deployment); ``stop(teardown)``
    ends the controller (and with ``teardown`` its hosts and router)."""
    routes = APIRouter()

    async def start(request: Request, service: str, kind: str, body: DeployBody,
                    **options: Any) -> dict[str, Any]:
        number = await start_deployment(
            service, kind=kind, lock_wait=body.lock_wait, actor=_principal(request),
            claimed_actor=body.actor, **options)
        return {"deployment": number}

    @routes.post("/v1/services/{service}/deploy")
    async def deploy(request: Request, service: str, body: DeployBody) -> dict[str, Any]:
        return await start(request, service, "deploy", body, release=body.release,
                           replace=body.replace, reason=body.reason, strategy=body.strategy,
                           hold=body.hold)

    @routes.post("/v1/services/{service}/rollback")
    async def rollback(request: Request, service: str, body: DeployBody) -> dict[str, Any]:
        return await start(request, service, "rollback", body, release=None,
                           reason=body.reason)

    @routes.post("/v1/services/{service}/phoenix")
    async def phoenix(request: Request, service: str, body: DeployBody) -> dict[str, Any]:
        return await start(request, service, "phoenix", body, release=None,
                           reason=body.reason or "phoenix rotation on demand")

    @routes.post("/v1/hosts/{host_id}/kill")
    async def kill_host(request: Request, host_id: str, body: DeployBody) -> dict[str, Any]:
        return (await kill(host_id, _principal(request), body.actor)).view()

    @routes.post("/v1/services/{service}/{action}")
    async def steer(request: Request, service: str, action: str) -> dict[str, Any]:
        if action not in ACTIONS:
            raise NotFound(f"no action {action!r}",
                           hint="actions: deploy, rollback, phoenix, bake, " + ", ".join(ACTIONS))
        return {"service": service, "action": action,
                **await control(service, action, _principal(request))}

    @routes.post("/v1/shutdown")
    async def shutdown(body: ShutdownBody) -> dict[str, Any]:
        stop(body.teardown)
        return {"stopping": True, "teardown": body.teardown}

    return routes


def _principal(request: Request) -> str:
    return request.scope.get(PRINCIPAL) or "unverified"  # the guard sets it on every call
