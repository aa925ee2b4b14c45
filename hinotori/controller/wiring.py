"""Wiring: the providers, the router and the fleet of a project, built from its spec.

``make_providers`` is also what `hinotori verify` uses to reach a service's hosts.
"""

from __future__ import annotations

import sys

from hinotori.deploy.fleet import LIVE_STATES, Fleet
from hinotori.project import Project
from hinotori.providers.base import Provider
from hinotori.providers.container import ContainerProvider
from hinotori.providers.process import ProcessProvider
from hinotori.router.base import Router
from hinotori.router.builtin import BuiltinRouter
from hinotori.router.haproxy import HaproxyRouter
from hinotori.verify.runner import VerifyPlan, fleet_verifier

ACTOR = "controller"


def make_providers(project: Project) -> dict[str, Provider]:
    providers: dict[str, Provider] = {"process": ProcessProvider(project.hosts_dir)}
    # Only a project with container hosts (declared, or still recorded) gets the container
    # provider, and it reaches the engine on first use: process-only projects never need one.
    if any(s.provider == "container" for s in project.spec.services.values()) or any(
            h.provider == "container" for h in project.store.hosts(states=LIVE_STATES)):
        providers["container"] = ContainerProvider(
            project.spec.project.name, url=project.spec.engine.url, state_dir=project.state_dir)
    return providers


def make_router(project: Project) -> Router:
    r = project.spec.router
    if r.kind == "haproxy":
        return HaproxyRouter(project.router_dir, r.listen, workers=r.workers,
                             haproxy=r.haproxy, maxconn=r.maxconn,
                             latency_log_rate=r.latency_log_rate,
                             retry_unanswered=r.retry_unanswered)
    return BuiltinRouter(project.router_dir, r.listen, workers=r.workers)


def make_fleet(project: Project, actor: str = ACTOR) -> Fleet:
    providers = make_providers(project)
    fleet = Fleet(spec=project.spec, store=project.store, providers=providers,
                  router=make_router(project), image_root=lambda d: project.images.rootfs(d),
                  hosts_dir=project.hosts_dir, actor=actor)

    def plan_of(service: str) -> VerifyPlan | None:
        """The service's checks, read from the spec as it is now (reloaded per deployment)."""
        svc = fleet.spec.services.get(service)
        if svc is None:
            return None
        return VerifyPlan(checks=tuple(svc.checks),
                          testinfra=tuple(project.root / t for t in svc.testinfra),
                          # A container runs its image's python3, not this controller's.
                          python=sys.executable if svc.provider == "process" else "python3")

    # No host takes traffic before its service's checks pass on it (invariant 2).
    fleet.verifier = fleet_verifier(providers, plan_of)
    return fleet
