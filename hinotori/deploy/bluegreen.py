"""Blue-green: boot a full set of the new release beside the old, switch all traffic at once.

deploy:   boot N new (parallel) -> all healthy? -> one atomic switch -> drain old -> keep old warm
rollback: previous release still warm and healthy -> one atomic switch back (instant);
          otherwise a normal blue-green deploy of the previous release from its image.

If any new host fails, nothing is switched and every new host is destroyed (Fleet.boot_healthy),
so a failed deployment leaves traffic exactly where it was. With ``run.hold`` (`deploy --hold`)
the healthy new colour is held for preview before the switch (deploy/hold.py).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from hinotori import faults
from hinotori.deploy.base import ROLLBACK, Control, StrategyRun
from hinotori.deploy.fleet import Fleet, Progress
from hinotori.deploy.hold import Hold, hold
from hinotori.errors import DeployError, RouterError
from hinotori.model import Host, HostState, Release
from hinotori.router.base import prepare as router_prepare

STRATEGY = "blue-green"


class BlueGreen:
    name = STRATEGY
    controllable = False

    async def run(self, run: StrategyRun) -> dict[str, Any]:
        if run.kind == ROLLBACK:
            return await rollback(run.fleet, run.release.service, run.progress)
        return await deploy(run.fleet, run.release, run.progress, held=run.hold,
                            control=run.control)


async def deploy(fleet: Fleet, release: Release, progress: Progress, *,
                 kind: str = "deploy", held: Hold | None = None,
                 control: Control | None = None) -> dict[str, Any]:
    service = release.service
    svc = fleet.service(service)
    current, previous = fleet.store.service_releases(service)
    old = fleet.hosts(service, HostState.SERVING)
    started = time.monotonic()

    if svc.stateful and old:
        return await _stop_then_start(fleet, release, old, progress, kind=kind)
    progress("boot", {"release": release.name, "replicas": svc.replicas})
    new = await fleet.boot_healthy(service, release, svc.replicas, progress)
    healthy_s = time.monotonic() - started
    held_s = None
    if held is not None:
        await hold(fleet, release, new, held, control or Control(), progress)
        held_s = time.monotonic() - started - healthy_s
        old = fleet.hosts(service, HostState.SERVING)  # a heal may have changed them meanwhile

    prepare_s = await prepare(fleet, service, new) if held is None else None
    switch_s = await fleet.switch(service, new, old, why=f"{kind} to {release.name}")
    progress("switched", {"release": release.name, "switch_ms": round(switch_s * 1000, 2),
                          "hosts": [h.id for h in new]})
    faults.point("bluegreen.switched")
    left = current if current != release.number else previous
    fleet.store.set_service_releases(service, release.number, left, actor=fleet.actor,
                                     why=f"{kind} to {release.name}")
    faults.point("bluegreen.recorded")
    drain_s = await retire(fleet, service, old, left, progress)
    faults.point("bluegreen.retired")
    return {"release": release.name, "instant": False, "boot_to_healthy_s": round(healthy_s, 3),
            "switch_ms": round(switch_s * 1000, 2), "drain_s": round(drain_s, 3),
            "total_s": round(time.monotonic() - started, 3), "hosts": [h.id for h in new],
            **({"held_s": round(held_s, 3)} if held_s is not None else {}),
            **({"prepare_ms": round(prepare_s * 1000, 2)} if prepare_s is not None else {})}


async def rollback(fleet: Fleet, service: str, progress: Progress) -> dict[str, Any]:
    svc = fleet.service(service)
    current, previous = fleet.store.service_releases(service)
    if previous is None:
        raise DeployError(f"{service} has no previous release to roll back to",
                          hint=f"`hinotori deploy {service} --release vN` deploys any release")
    target = fleet.store.release(service, previous)
    warm = [h for h in fleet.hosts(service, HostState.WARM) if h.release == previous]
    if len(warm) >= svc.replicas and await fleet.healthy_now(warm):
        started = time.monotonic()
        old = fleet.hosts(service, HostState.SERVING)
        await prepare(fleet, service, warm)  # often held still, from when they served
        switch_s = await fleet.switch(service, warm, old, why=f"rollback to {target.name}")
        progress("switched", {"release": target.name, "switch_ms": round(switch_s * 1000, 2),
                              "warm": True, "hosts": [h.id for h in warm]})
        fleet.store.set_service_releases(service, previous, current, actor=fleet.actor,
                                         why=f"rollback to {target.name}")
        drain_s = await retire(fleet, service, old, current, progress)
        return {"release": target.name, "instant": True, "switch_ms": round(switch_s * 1000, 2),
                "drain_s": round(drain_s, 3), "total_s": round(time.monotonic() - started, 3),
                "hosts": [h.id for h in warm]}
    progress("cold", {"release": target.name,
                      "why": "previous release is no longer warm; booting it from its image"})
    return await deploy(fleet, target, progress, kind="rollback")


async def prepare(fleet: Fleet, service: str, serve: list[Host]) -> float:
    """Have the router get ready for the switch to ``serve`` (router.base.prepare: routes
    compiled in each worker, the new release's servers readied in its slot), so that the
    switch is a few map entries or route ids; its seconds. Only a head start: if it fails,
    the switch does it all, as it did before."""
    started = time.perf_counter()
    with contextlib.suppress(RouterError):
        await router_prepare(fleet.router, fleet.routing_table(0, {service: (serve, None)}))
    return time.perf_counter() - started


async def retire(fleet: Fleet, service: str, old: list[Host], previous: int | None,
                  progress: Progress) -> float:
    """Drain the hosts just taken out of traffic. Only hosts of the previous release stay warm
    (for instant rollback); any other retired or warm host is burned: an older release, or
    hosts replaced by fresh ones of the same release (e.g. because they drifted)."""
    svc = fleet.service(service)
    old_ids = {h.id for h in old}
    stale = [h for h in fleet.hosts(service, HostState.WARM)
             if h.id not in old_ids and h.release != previous]
    if stale:
        await fleet.destroy(stale, why="superseded: only the previous release is kept warm")
    drain_s = await fleet.drain(old, svc.drain)
    progress("drained", {"hosts": sorted(old_ids), "drain_s": round(drain_s, 3)})
    faults.point("retire.drained")
    warm = [h for h in old if h.release == previous and svc.keep_previous > 0]
    fleet.keep_warm(warm, svc.keep_previous)
    burn = [h for h in old if h not in warm]
    if burn:
        await fleet.destroy(burn, why="replaced by fresh hosts")
    return drain_s


async def _stop_then_start(fleet: Fleet, release: Release, old: list[Host],
                           progress: Progress, *, kind: str) -> dict[str, Any]:
    """A stateful service never has two hosts writing one volume: take the old host out of
    traffic, drain it and stop it, then boot the new release on the same volume. Requests in
    the gap get a 503 from the router. If the new release fails, the old one is booted again
    on its untouched volume."""
    service = release.service
    svc = fleet.service(service)
    current, previous = fleet.store.service_releases(service)
    started = time.monotonic()
    await fleet.switch(service, [], old, why=f"stateful {kind}: stop before start")
    drain_s = await fleet.drain(old, svc.drain)
    await fleet.destroy(old, why="stateful: stopped before the new release gets the volume")
    progress("stopped", {"hosts": [h.id for h in old], "drain_s": round(drain_s, 3)})
    try:
        new = await fleet.boot_healthy(service, release, svc.replicas, progress)
    except DeployError:
        if current is not None:
            back = await fleet.boot_healthy(service, fleet.store.release(service, current),
                                            svc.replicas, progress)
            await fleet.switch(service, back, [], why="stateful: the old release restored")
        raise
    switch_s = await fleet.switch(service, new, [], why=f"stateful {kind} to {release.name}")
    progress("switched", {"release": release.name, "switch_ms": round(switch_s * 1000, 2),
                          "hosts": [h.id for h in new]})
    left = current if current != release.number else previous
    fleet.store.set_service_releases(service, release.number, left, actor=fleet.actor,
                                     why=f"{kind} to {release.name} (stateful)")
    return {"release": release.name, "instant": False, "stateful": True,
            "switch_ms": round(switch_s * 1000, 2), "drain_s": round(drain_s, 3),
            "gap_s": round(time.monotonic() - started, 3),
            "total_s": round(time.monotonic() - started, 3), "hosts": [h.id for h in new]}
