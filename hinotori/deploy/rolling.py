"""Rolling: replace hosts in health-gated batches, for services that cannot double capacity.

Invariant kept at every moment: serving hosts never fewer than replicas - max_unavailable,
and all hosts (old + new) never more than replicas + max_surge.

    while the new release has fewer than `replicas` serving hosts:
        room = replicas + max_surge - (old + new)
        room <= 0: retire up to max_unavailable old hosts first (drain, then burn)
        else:      boot min(room, missing) new hosts; all healthy -> add them to traffic,
                   then retire as many old hosts (drain, then burn)

Retired hosts are burned, not kept warm (keeping them would need the capacity rolling saves).
So a failed batch is rolled back by rolling the previous release forward again, the same way.
"""

from __future__ import annotations

import time
from typing import Any

from hinotori.deploy.base import PHOENIX, StrategyRun
from hinotori.deploy.fleet import Fleet, Progress
from hinotori.errors import DeployError
from hinotori.model import Host, HostState, Release
from hinotori.spec.schema import RollingSpec

STRATEGY = "rolling"
# Phoenix (the same release on fresh hosts): one host at a time, never below replicas.
PHOENIX_SPEC = RollingSpec(kind="rolling", max_surge=1, max_unavailable=0)


class Rolling:
    name = STRATEGY
    controllable = False

    async def run(self, run: StrategyRun) -> dict[str, Any]:
        if run.kind == PHOENIX:
            only = set(run.only) if run.only is not None else None
            return await deploy(run.fleet, run.release, run.progress, PHOENIX_SPEC,
                                kind=PHOENIX, only=only)
        spec = run.spec if isinstance(run.spec, RollingSpec) else RollingSpec(kind="rolling")
        return await deploy(run.fleet, run.release, run.progress, spec)


async def deploy(fleet: Fleet, release: Release, progress: Progress, strategy: RollingSpec,
                 *, kind: str = "deploy", rolling_back: bool = False,
                 only: set[str] | None = None) -> dict[str, Any]:
    """Roll ``release`` in; with ``only``, replace just those hosts (phoenix by age)."""
    service = release.service
    svc = fleet.service(service)
    current, previous = fleet.store.service_releases(service)
    started = time.monotonic()
    serving = fleet.hosts(service, HostState.SERVING)
    if rolling_back:  # hosts of the release we go back to that still serve count as done
        new = [h for h in serving if h.release == release.number]
        old = [h for h in serving if h.release != release.number]
    elif only is not None:  # replace these hosts; the others already count as new
        new = [h for h in serving if h.id not in only]
        old = [h for h in serving if h.id in only]
    else:  # every serving host is replaced, even of the same release (e.g. drift --replace)
        new, old = [], serving
    n, surge, unavailable = svc.replicas, strategy.max_surge, strategy.max_unavailable
    batches = 0
    while len(new) < n:
        room = n + surge - (len(old) + len(new))
        if room <= 0:
            await _retire(fleet, service, old[:unavailable], new + old[unavailable:], progress)
            old = old[unavailable:]
            continue
        batch = min(room, n - len(new))
        progress("batch", {"release": release.name, "boot": batch, "serving_old": len(old),
                           "serving_new": len(new)})
        try:
            booted = await fleet.boot_healthy(service, release, batch, progress)
        except DeployError as e:
            if rolling_back or current is None or not new:
                raise
            progress("rolling-back", {"to": f"v{current}", "why": e.message})
            await deploy(fleet, fleet.store.release(service, current), progress, strategy,
                         kind="rollback", rolling_back=True)
            raise DeployError(f"{e.message}; rolled back to v{current}", hint=e.hint) from None
        new += booted
        batches += 1
        await fleet.switch(service, old + new, [], why=f"rolling {release.name}: batch "
                                                       f"{batches} in")
        k = min(len(booted), len(old), max(len(old) + len(new) - n, 0))
        await _retire(fleet, service, old[:k], new + old[k:], progress)
        old = old[k:]
    if old:  # more old hosts than replicas (replicas was lowered): retire the rest
        await _retire(fleet, service, old, new, progress)
    left = current if current != release.number else previous
    if not rolling_back:
        fleet.store.set_service_releases(service, release.number, left, actor=fleet.actor,
                                         why=f"{kind} to {release.name} (rolling)")
    return {"release": release.name, "instant": False, "strategy": STRATEGY,
            "batches": batches, "total_s": round(time.monotonic() - started, 3),
            "switch_ms": None, "drain_s": None, "hosts": [h.id for h in new]}


async def _retire(fleet: Fleet, service: str, going: list[Host], staying: list[Host],
                  progress: Progress) -> None:
    if not going:
        return
    await fleet.switch(service, staying, going, why="rolling: batch out")
    drain_s = await fleet.drain(going, fleet.service(service).drain)
    progress("drained", {"hosts": [h.id for h in going], "drain_s": round(drain_s, 3)})
    await fleet.destroy(going, why="replaced by a rolling update")
