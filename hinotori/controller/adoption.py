"""Adoption: a starting controller finds the same truth the last one left.

The data plane and the hosts are separate processes that outlive the controller. So a controller
killed with SIGKILL loses nothing: the next one adopts the router workers, re-adopts every live
host the store knows, destroys hosts nobody knows (orphans) and hosts a half-done deployment
left unrouted, marks that deployment failed, and re-applies the table the store describes.
"""

from __future__ import annotations

from hinotori.controller.discovery import render_discovery
from hinotori.controller.wiring import ACTOR
from hinotori.deploy.fleet import LIVE_STATES, Fleet
from hinotori.errors import MachineUnreachable
from hinotori.model import Host, HostState
from hinotori.project import Project

UNROUTED = (HostState.BOOTING, HostState.VERIFYING, HostState.READY)


async def adopt(project: Project, fleet: Fleet) -> None:
    """Find the same truth after a restart (see the module docstring).

    Order matters: first make the router serve exactly what the store says (live serving
    hosts; an abandoned canary rolled back), and only then burn what is not routed. A
    controller killed between a router switch and its store write leaves the router ahead
    of the store; routing first means no request goes to a host we are about to burn."""
    store, known = project.store, set()
    unrouted: list[Host] = []
    for host in store.hosts(states=LIVE_STATES):
        known.add(host.id)
        if host.state == HostState.JOB:
            continue  # a job run's host: the jobs module adopts or burns it (Jobs.resume)
        try:
            alive = host.provider in fleet.providers and await fleet.provider(host).adopt(host)
        except MachineUnreachable as e:  # its machine is away: burned when it answers again
            fleet._set(host, HostState.LOST, f"found unreachable when the controller started: "
                                             f"{e.message[:200]}")
            continue
        if not alive:
            fleet._set(host, HostState.FAILED, "found dead when the controller started")
            await fleet.destroy([host], why="found dead when the controller started")
        elif host.state in UNROUTED:
            unrouted.append(host)
        elif host.state == HostState.DRAINING:
            fleet.keep_warm([host], fleet.service(host.service).keep_previous
                            if host.service in fleet.spec.services else 0)
    for dep in store.deployments():
        if dep["state"] == "running":
            store.finish_deployment(dep["id"], "failed", actor=ACTOR,
                                    error="interrupted: the controller stopped")
        elif dep["state"] == "held":  # a hold lives in its controller: its hosts are READY
            store.finish_deployment(dep["id"], "aborted", actor=ACTOR,
                                    error="the controller stopped during the hold: the held "
                                          "release was burned, traffic never moved")
    for name in fleet.spec.services:
        await abandon_canary(fleet, name)
    await fleet.sync_router()
    await fleet.destroy(unrouted, why="left unrouted by an interrupted deployment")
    for provider in fleet.providers.values():
        orphans = [h for h in await provider.list() if h.id not in known]
        for orphan in orphans:
            await provider.destroy(orphan, grace=5.0)
            store.record(ACTOR, "host.orphan-destroyed", f"{orphan.service}/{orphan.id}",
                         {"pid": orphan.pid})
    render_discovery(project.state_dir / "discovery", fleet)


async def abandon_canary(fleet: Fleet, service: str) -> None:
    """A canary nobody judges any more (its controller died) goes back to stable."""
    release = fleet.store.canary(service)
    if release is None:
        return
    serving = fleet.hosts(service, HostState.SERVING)
    stable = [h for h in serving if h.release != release]
    tested = [h for h in serving if h.release == release]
    why = "interrupted canary rolled back when the controller started"
    if stable:
        await fleet.switch(service, stable, tested, why=why, canary=None)
        await fleet.destroy(tested, why=why)
    else:
        fleet.store.set_canary(service, None, actor=ACTOR, why=why)
