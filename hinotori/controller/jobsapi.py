"""API routes of scheduled jobs: list them, a job's runs, one run, start a run now.

Reads are the store's (the dashboard's sessions may make them); starting a run changes things,
so only the API token reaches it, and the run's event names who asked (the guard's principal).
"""

from __future__ import annotations

from typing import Any, Protocol

from fastapi import APIRouter, Path, Query, Request

from hinotori.controller.guard import PRINCIPAL
from hinotori.model import MAX_NUMBER
from hinotori.spec.jobs import JobSpec
from hinotori.store.jobs import JobRuns


class JobsParts(Protocol):
    """What the routes take from the controller's jobs (hinotori.controller.jobs.Jobs)."""

    runs: JobRuns

    def rows(self) -> list[dict[str, Any]]: ...

    def spec(self, name: str) -> JobSpec: ...

    async def trigger(self, name: str, trigger: str, *, due: float | None = None,
                      quiet: bool = False, actor: str = ...) -> int | None: ...


def job_routes(jobs: JobsParts) -> APIRouter:
    routes = APIRouter()

    @routes.get("/v1/jobs")
    async def listing() -> list[dict[str, Any]]:
        return jobs.rows()

    @routes.get("/v1/jobs/runs/{run}")
    async def one_run(run: int = Path(ge=1, le=MAX_NUMBER)) -> dict[str, Any]:
        return jobs.runs.run(run)

    @routes.get("/v1/jobs/{name}")
    async def history(name: str, limit: int = Query(20, ge=1, le=10_000)) -> dict[str, Any]:
        jobs.spec(name)  # NotFound (404) for a job the spec does not have
        row = next(r for r in jobs.rows() if r["job"] == name)
        return {**row, "runs": jobs.runs.runs(name, limit=limit)}

    @routes.post("/v1/jobs/{name}/run")
    async def run_now(request: Request, name: str) -> dict[str, Any]:
        actor = request.scope.get(PRINCIPAL) or "unverified"
        run = await jobs.trigger(name, "manual", actor=actor)
        return {"job": name, "run": run}

    return routes
