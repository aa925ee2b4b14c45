"""The controller's HTTP API (loopback by default, bearer-token auth), used by the CLI.

Errors a user can cause come back as JSON {"error", "hint", "type"} with a fitting status, so
the client can raise the same HinotoriError on its side.
"""

from __future__ import annotations

import os
import secrets
import time
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from hinotori import __version__
from hinotori.controller import dashboard
from hinotori.controller.buildapi import build_routes
from hinotori.controller.daemon import Controller
from hinotori.controller.dashboard.sessions import DashboardSessions
from hinotori.controller.metrics import from_totals, prometheus_text
from hinotori.controller.metricsapi import history_routes
from hinotori.controller.readapi import read_routes
from hinotori.errors import HinotoriError, LockedError, NotFound, Unauthorised
from hinotori.model import HostState

_STATUS = {Unauthorised: 401, LockedError: 409, NotFound: 404}


class DeployBody(BaseModel):
    release: int | None = None
    lock_wait: float = Field(0.0, ge=0)
    actor: str = "api"
    replace: bool = False  # deploy even if the release already serves: fresh hosts
    reason: str = ""
    strategy: str | None = None  # default: the service's strategy in the spec


class ShutdownBody(BaseModel):
    teardown: bool = True


def create_app(controller: Controller, token: str) -> FastAPI:
    sessions = DashboardSessions()  # the web dashboard's read-only sign-ins

    def authorised(request: Request, authorization: str | None = Header(default=None)) -> None:
        given = (authorization or "").removeprefix("Bearer ").strip()
        if given and sessions.authorise(given, request.method):
            return
        if not given or not secrets.compare_digest(given.encode(), token.encode()):
            raise Unauthorised("missing or wrong API token",
                                hint="the token is in .hinotori/token of the project")

    app = FastAPI(title="hinotori controller", version=__version__)
    api = APIRouter(dependencies=[Depends(authorised)])  # everything but the push webhook
    # Before /v1/services/{service}/{action} below, which would take "bake" for an action.
    api.include_router(build_routes(controller))
    store, fleet = controller.store, controller.fleet

    @app.exception_handler(HinotoriError)
    async def _error(_: Request, exc: HinotoriError) -> JSONResponse:
        status = next((s for t, s in _STATUS.items() if isinstance(exc, t)), 400)
        return JSONResponse({"error": exc.message, "hint": exc.hint,
                             "type": type(exc).__name__}, status_code=status)

    @api.get("/v1/status")
    async def status() -> dict[str, Any]:
        services = []
        for name in sorted(controller.project.spec.services):
            current, previous = store.service_releases(name)
            hosts = fleet.hosts(name)
            counts: dict[str, int] = {}
            for h in hosts:
                if h.state.alive:
                    counts[str(h.state)] = counts.get(str(h.state), 0) + 1
            lock = controller.locks.holder(name)
            services.append({
                "name": name, "current": current, "previous": previous,
                "replicas": fleet.service(name).replicas, "hosts": counts,
                "locked_by": lock[0] if lock else None,
                "latest": (r.number if (r := store.latest_release(name)) else None)})
        return {"pid": os.getpid(), "version": __version__,
                "uptime_s": round(time.time() - controller.started_at, 1),
                "router": controller.project.spec.router.listen, "services": services}

    @api.post("/v1/services/{service}/deploy")
    async def deploy(service: str, body: DeployBody) -> dict[str, Any]:
        number = await controller.start_deployment(
            service, kind="deploy", release=body.release, lock_wait=body.lock_wait,
            actor=body.actor, replace=body.replace, reason=body.reason, strategy=body.strategy)
        return {"deployment": number}

    @api.post("/v1/services/{service}/rollback")
    async def rollback(service: str, body: DeployBody) -> dict[str, Any]:
        number = await controller.start_deployment(
            service, kind="rollback", release=None, lock_wait=body.lock_wait, actor=body.actor,
            reason=body.reason)
        return {"deployment": number}

    @api.post("/v1/services/{service}/phoenix")
    async def phoenix(service: str, body: DeployBody) -> dict[str, Any]:
        number = await controller.start_deployment(
            service, kind="phoenix", release=None, lock_wait=body.lock_wait, actor=body.actor,
            reason=body.reason or "phoenix rotation on demand")
        return {"deployment": number}

    @api.post("/v1/hosts/{host_id}/kill")
    async def kill(host_id: str, body: DeployBody) -> dict[str, Any]:
        return (await controller.kill(host_id, body.actor)).to_dict()

    @api.post("/v1/services/{service}/{action}")
    async def control(service: str, action: str) -> dict[str, Any]:
        if action not in ("pause", "resume", "promote", "abort"):
            raise NotFound(f"no action {action!r}",
                           hint="actions: deploy, rollback, pause, resume, promote, abort")
        controller.control(service, action)
        return {"service": service, "action": action}

    @api.get("/v1/deployments")
    async def deployments(service: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        return store.deployments(service, limit)

    @api.get("/v1/deployments/{number}")
    async def deployment(number: int) -> dict[str, Any]:
        return store.deployment(number)

    @api.get("/v1/hosts")
    async def hosts(service: str | None = None, all: bool = False) -> list[dict[str, Any]]:
        states = None if all else [s for s in HostState if s.alive]
        return [h.to_dict() for h in store.hosts(service, states)]

    @api.get("/v1/metrics")
    async def metrics(service: str | None = None, by: str = "release") -> list[dict[str, Any]]:
        """Per service and release (default), or per host with ``by=host``."""
        stats, hosts = await fleet.router.stats(), store.hosts()
        if by == "host":
            owner = {h.id: h for h in hosts}
            return [{"host": hid, "service": owner[hid].service,
                     "release": f"v{owner[hid].release}", "requests": s.requests,
                     "errors": s.errors, "in_flight": s.active, "statuses": s.statuses}
                    for hid, s in sorted(stats.items()) if hid in owner
                    and service in (None, owner[hid].service)]
        totals = await controller.metrics.totals(service)  # they outlive hosts and routers
        return [m.to_dict() for m in from_totals(totals, stats, hosts)]

    @api.get("/metrics")
    async def prometheus() -> Response:
        hosts = store.hosts()
        totals = await controller.metrics.totals()
        body = prometheus_text(from_totals(totals, await fleet.router.stats(), hosts), hosts)
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    @api.post("/v1/shutdown")
    async def shutdown(body: ShutdownBody) -> dict[str, Any]:
        controller.teardown = body.teardown
        controller.stopping.set()
        return {"stopping": True, "teardown": body.teardown}

    @app.post("/v1/webhooks/push", include_in_schema=True)
    async def push(request: Request) -> dict[str, Any]:
        """A GitHub-style push, signed with HMAC-SHA256 (X-Hub-Signature-256): ships every
        service whose `ship_on` matches the repository and branch. Unsigned or wrongly signed
        pushes are refused and recorded."""
        body = await request.body()
        shipped = await controller.push(body, request.headers.get("x-hub-signature-256"))
        return {"shipped": shipped}

    api.include_router(read_routes(controller))
    api.include_router(history_routes(controller.metrics))
    dashboard.mount(app, api, sessions)  # the page at /, its sign-in, /v1/dashboard/ticket
    app.include_router(api)
    return app
