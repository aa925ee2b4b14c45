"""Burning hosts on purpose: the reaper (warm hosts past keep_previous), phoenix by age (hosts
older than max_age are replaced by the same release), the spec's chaos schedules, `hinotori
chaos kill`, and at teardown the private Podman service this project started.

The reaper, phoenix and chaos passes are three separate loops (see ``Controller.start``): a
failing pass of one never skips the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from hinotori.controller.hostcache import LiveHosts, copy_host
from hinotori.controller.wiring import ACTOR
from hinotori.deploy.fleet import Fleet
from hinotori.deploy.locks import ServiceLocks
from hinotori.engine import stop_podman_service
from hinotori.errors import DeployError, LockedError
from hinotori.model import Host, HostState
from hinotori.processes import pid_alive
from hinotori.store import Store

StartDeployment = Callable[..., Awaitable[int | None]]


class Burning:
    def __init__(self, fleet: Fleet, locks: ServiceLocks, *,
                 start_deployment: StartDeployment, rng: random.Random | None = None) -> None:
        self.fleet = fleet
        self.store = fleet.store
        self.locks = locks
        self.start_deployment = start_deployment
        self._rng = rng or random.Random()
        self.hosts = LiveHosts(self.store)

    async def reap_once(self) -> None:
        """Warm hosts whose keep_previous ran out are burned (looked for in the host cache:
        a thousand warm hosts read and decoded every second cost more than all the rest)."""
        now = time.time()
        expired = [copy_host(h) for h in self.hosts()
                   if h.state == HostState.WARM and (h.warm_until or 0) <= now
                   and not self.locks.locked(h.service)]
        if expired:
            await self.fleet.destroy(expired, why="keep_previous expired")

    async def rotate_aged(self) -> None:
        """Phoenix by age: serving hosts older than the service's max_age are replaced, one at a
        time, by the same release from its image."""
        now = time.time()
        for name, svc in self.fleet.spec.services.items():
            if svc.max_age is None or svc.stateful or self.locks.locked(name):
                continue  # stateful services are never burned on purpose
            aged = {h.id for h in self.fleet.hosts(name, HostState.SERVING)
                    if now - h.born_at > svc.max_age}
            if aged:
                with contextlib.suppress(LockedError):  # a deployment just started
                    await self.start_deployment(
                        name, kind="phoenix", release=None, lock_wait=0,
                        actor="controller (max_age)", only=aged,
                        reason=f"{len(aged)} host(s) older than max_age")

    async def scheduled_chaos(self, tick: float = 1.0) -> None:
        """The spec's chaos schedules: each second inside a schedule, a kill happens with
        probability 1 - exp(-tick / mean_time_between_kills), if the steady state holds."""
        now = time.localtime()
        for name, svc in self.fleet.spec.services.items():
            chaos = svc.chaos
            if chaos is None or self.locks.locked(name):
                continue
            day = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")[now.tm_wday]
            if day not in chaos.days or not chaos.hours[0] <= now.tm_hour < chaos.hours[1]:
                continue
            if self._rng.random() >= 1 - math.exp(-tick / chaos.mean_time_between_kills):
                continue
            serving = self.fleet.hosts(name, HostState.SERVING)
            if len(serving) < svc.replicas or len(serving) - 1 < chaos.min_healthy:
                self.store.record(ACTOR, "chaos.skipped", name, {
                    "why": f"{len(serving)} serving of {svc.replicas}, min_healthy "
                           f"{chaos.min_healthy}"})
                continue
            await self.kill(self._rng.choice(serving).id, actor="chaos (schedule)")

    async def kill(self, host_id: str, actor: str, claimed_actor: str | None = None) -> Host:
        """Chaos: kill one serving host abruptly; the self-healing loop replaces it."""
        host = self.store.host(host_id)
        if host.state != HostState.SERVING:
            raise DeployError(f"host {host_id} is {host.state}, not serving")
        if self.fleet.service(host.service).stateful:
            raise DeployError(f"{host.service} is stateful: chaos never kills it",
                              hint="stateful services are left alone by chaos and phoenix")
        await self.fleet.provider(host).kill(host)
        self.store.record(actor, "chaos.kill", f"{host.service}/{host.id}",
                          {"pid": host.pid, **({"claimed_actor": claimed_actor}
                                               if claimed_actor else {})})
        return host


def private_engine_pid(state_dir: Path) -> int | None:
    """The pid of the `podman system service` this project started under ``state_dir`` (the
    engine module's pid file), if that process still runs it; None otherwise. The process
    must name the project's socket: a pid reused by another program is never ours."""
    sock = state_dir / "podman.sock"
    try:
        pid = int(sock.with_suffix(".pid").read_text())
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if f"unix://{sock}".encode() in argv and pid_alive(pid) else None


async def stop_private_engine(state_dir: Path, store: Store) -> None:
    """At teardown, after every host is gone: stop the private Podman service, if this project
    started one (an engine found running elsewhere is never ours to stop)."""
    pidfile = state_dir / "podman.pid"
    if not pidfile.exists():
        return
    pid = private_engine_pid(state_dir)
    if pid is None:
        pidfile.unlink(missing_ok=True)  # it is gone already, or the pid is someone else's
        return
    await asyncio.to_thread(stop_podman_service, state_dir / "podman.sock")
    store.record(ACTOR, "engine.stopped", "podman", {"pid": pid, "socket":
                                                     str(state_dir / "podman.sock")})
