"""Wiring: the providers, the router and the fleet of a project, built from its spec.

``make_providers`` is also what `hinotori verify` uses to reach a service's hosts.
"""

from __future__ import annotations

from hinotori.deploy.fleet import LIVE_STATES, Fleet
from hinotori.project import Project
from hinotori.providers.base import Provider, ProviderContext
from hinotori.providers.machines import machines_of
from hinotori.providers.registry import build as build_providers
from hinotori.router.base import Router, RouterContext
from hinotori.router.registry import build as build_router
from hinotori.verify.runner import VerifyPlan, fleet_verifier

ACTOR = "controller"


def make_providers(project: Project) -> dict[str, Provider]:
    """One provider per name the spec's services use or live hosts in the store have. A
    provider reaches whatever it drives (an engine) on first use only."""
    live = project.store.hosts(states=LIVE_STATES)
    names = {s.provider for s in project.spec.services.values()} | {h.provider for h in live}
    # This machine's engine is needed by a service without machines, or a host left on it.
    local = any(not s.machines for s in project.spec.services.values()) or any(
        h.data.get("machine") is None for h in live)
    return build_providers(names, ProviderContext(
        project=project.spec.project.name, hosts_dir=project.hosts_dir,
        state_dir=project.state_dir, engine_url=project.spec.engine.url,
        machines=machines_of(project.spec.machines, project.root), local_engine=local))


def make_router(project: Project) -> Router:
    return build_router(RouterContext(project.router_dir, project.spec.router, project.root))


def make_fleet(project: Project, actor: str = ACTOR) -> Fleet:
    providers = make_providers(project)
    fleet = Fleet(spec=project.spec, store=project.store, providers=providers,
                  router=make_router(project), image_root=lambda d: project.images.rootfs(d),
                  hosts_dir=project.hosts_dir, actor=actor, secrets=project.secrets)

    def plan_of(service: str) -> VerifyPlan | None:
        """The service's checks, read from the spec as it is now (reloaded per deployment);
        the evaluator runs with the host's provider's python."""
        svc = fleet.spec.services.get(service)
        if svc is None:
            return None
        return VerifyPlan(checks=tuple(svc.checks),
                          testinfra=tuple(project.root / t for t in svc.testinfra))

    # No host takes traffic before its service's checks pass on it (invariant 2).
    fleet.verifier = fleet_verifier(providers, plan_of)
    return fleet
