"""The controller's HTTP API (loopback by default, bearer-token auth), used by the CLI.

``create_app(controller, token)`` is the one place that knows the controller: it hands each
group of routes only what that group uses (readapi: the stores; controlapi: the actions;
buildapi: the project; metricsapi: the router's counters and the recorder; webhookapi: the
push webhook's defences and its push), so no API module imports the daemon. In front of
everything sits guard.py: the token is checked and the body's size capped before any body is
read.

Errors a user can cause come back as JSON {"error", "hint", "type"} with a fitting status, so
the client can raise the same HinotoriError on its side; a request the routes' types refuse
(a number the store cannot hold, a limit out of range) is a 422 of the same shape. There is no
/docs page (it would load JavaScript from a CDN); the schema is at /openapi.json, behind the
token like every other path but the dashboard's page and the push webhook.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, Protocol

from fastapi import APIRouter, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from hinotori import __version__, gcheap
from hinotori.controller import dashboard
from hinotori.controller.buildapi import build_routes
from hinotori.controller.certsapi import CertParts, cert_routes
from hinotori.controller.controlapi import control_routes
from hinotori.controller.dashboard.sessions import DashboardSessions
from hinotori.controller.guard import Credentials, RequestGuard, error_body
from hinotori.controller.jobsapi import JobsParts, job_routes
from hinotori.controller.machinesapi import MachinesParts, machine_routes
from hinotori.controller.maintenance import MaintenanceMode
from hinotori.controller.maintenanceapi import maintenance_routes
from hinotori.controller.metricsapi import history_routes, live_routes
from hinotori.controller.readapi import read_routes
from hinotori.controller.webhook import Webhook
from hinotori.controller.webhookapi import webhook_routes
from hinotori.deploy.fleet import Fleet
from hinotori.deploy.locks import ServiceLocks
from hinotori.errors import Forbidden, HinotoriError, LockedError, NotFound, Unauthorised
from hinotori.model import Host
from hinotori.observe.logs import LogPipeline
from hinotori.observe.metrics import MetricsRecorder
from hinotori.project import Project
from hinotori.store import Store

_STATUS = {Unauthorised: 401, Forbidden: 403, LockedError: 409, NotFound: 404}


class ControllerParts(Protocol):
    """What create_app takes from the controller (hinotori.controller.daemon.Controller)."""

    project: Project
    store: Store
    fleet: Fleet
    locks: ServiceLocks
    logs: LogPipeline
    metrics: MetricsRecorder
    stopping: asyncio.Event
    teardown: bool
    started_at: float

    async def start_deployment(self, service: str, *, kind: str, release: int | None,
                               lock_wait: float, actor: str, replace: bool = False,
                               reason: str = "", strategy: str | None = None,
                               claimed_actor: str | None = None,
                               hold: float | None = None) -> int | None: ...

    async def kill(self, host_id: str, actor: str,
                   claimed_actor: str | None = None) -> Host: ...

    async def control(self, service: str, action: str,
                      actor: str = ...) -> dict[str, Any]: ...

    webhook: Webhook  # the push webhook's defences
    machines: MachinesParts  # the machines of a fleet, watched
    maintenance: MaintenanceMode  # services the router answers 503 for
    jobs: JobsParts  # scheduled jobs and their runs
    certs: CertParts  # the router's TLS certificates, watched

    async def push(self, body: bytes, signature: str | None, *, delivery: str | None,
                   source: str) -> list[str]: ...

    def reload_spec(self) -> None: ...


def create_app(controller: ControllerParts, token: str) -> FastAPI:
    sessions = DashboardSessions()  # the web dashboard's read-only sign-ins
    app = FastAPI(title="hinotori controller", version=__version__, docs_url=None,
                  redoc_url=None)
    app.add_middleware(RequestGuard, credentials=Credentials(token, sessions))
    api = APIRouter()  # the guard checks the token of every route but the open ones
    store, fleet = controller.store, controller.fleet

    @app.exception_handler(HinotoriError)
    async def _error(_: Request, exc: HinotoriError) -> JSONResponse:
        status = next((s for t, s in _STATUS.items() if isinstance(exc, t)), 400)
        return JSONResponse(error_body(exc), status_code=status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"][1:]) or "".join(map(str, first["loc"]))
        message = f"{where}: {first['msg']}" if where else str(first["msg"])
        body = error_body(HinotoriError(message, hint="GET /openapi.json for the parameters"))
        # Without the inputs: they may be large, or be floats JSON cannot carry (Infinity).
        detail = [{k: e.get(k) for k in ("loc", "msg", "type")} for e in errors]
        return JSONResponse({**body, "detail": jsonable_encoder(detail)}, status_code=422)

    def stop(teardown: bool) -> None:
        controller.teardown = teardown
        controller.stopping.set()

    # Before /v1/services/{service}/{action} in control_routes, which would take "bake".
    api.include_router(build_routes(controller.project, controller.reload_spec))
    api.include_router(control_routes(controller.start_deployment, controller.kill,
                                      controller.control, stop))

    @api.get("/v1/status")
    async def status() -> dict[str, Any]:
        services = []
        maintenance = store.maintenance_all()
        for name in sorted(controller.project.spec.services):
            current, previous = store.service_releases(name)
            counts = store.host_counts(name)  # counted in SQL: history is never read
            lock = controller.locks.holder(name)
            services.append({
                "name": name, "current": current, "previous": previous,
                "replicas": fleet.service(name).replicas, "hosts": counts,
                "locked_by": lock[0] if lock else None,
                "maintenance": maintenance.get(name),
                "latest": (r.number if (r := store.latest_release(name)) else None)})
        return {"pid": os.getpid(), "version": __version__,
                "uptime_s": round(time.time() - controller.started_at, 1),
                "router": controller.project.spec.router.listen, "services": services,
                "gc": gcheap.describe()}  # start-up frozen (serve.py): short full collections

    # No token (the guard lets it through): it is signed, and defends itself (webhook.py).
    app.include_router(webhook_routes(controller.webhook, controller.push, store.record))
    api.include_router(read_routes(store, controller.logs.store))
    api.include_router(machine_routes(controller.machines))
    api.include_router(maintenance_routes(controller.maintenance))
    api.include_router(job_routes(controller.jobs))
    api.include_router(cert_routes(controller.certs))
    api.include_router(live_routes(store, lambda: fleet.router.stats(), controller.metrics))
    api.include_router(history_routes(controller.metrics))
    dashboard.mount(app, api, sessions)  # the page at /, its sign-in, /v1/dashboard/ticket
    app.include_router(api)
    return app
