"""Self-healing: the health monitor loop and the heals it starts.

A serving host that died or keeps failing its health check is taken out of traffic while a
healthy one remains (invariant 2, without emptying a service); then a service below its replicas
gets fresh, health-gated hosts of its release. A heal that fails (a HinotoriError, or a bug) is
recorded as ``service.heal-failed`` and the service is not healed again before a back-off
(doubling from ``HEAL_BACKOFF`` up to ``HEAL_BACKOFF_MAX``, reset by a heal that works).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from hinotori.controller.hostcache import LiveHosts
from hinotori.controller.wiring import ACTOR
from hinotori.deploy.fleet import Fleet
from hinotori.deploy.locks import ServiceLocks
from hinotori.errors import HinotoriError, LockedError, MachineUnreachable
from hinotori.health import KeepAlive, Prober, probe
from hinotori.model import HealthCheck, Host, HostState

log = logging.getLogger("hinotori.controller")

ADOPT_TIMEOUT = 2.0
HEAL_BACKOFF = 5.0
HEAL_BACKOFF_MAX = 60.0
# Probes in flight at once in one service's pass: all of a big fleet's hosts are looked at in
# a fraction of the interval, without a thousand sockets opening in the same instant.
PROBES_AT_ONCE = 64

Spawn = Callable[[Coroutine[Any, Any, Any], str], Any]


class Healing:
    def __init__(self, fleet: Fleet, locks: ServiceLocks, *, spawn: Spawn) -> None:
        self.fleet = fleet
        self.store = fleet.store
        self.locks = locks
        self.spawn = spawn
        self._failures: dict[str, int] = {}  # consecutive failed health checks, by host
        self._heal_after: dict[str, float] = {}  # back-off after a failed heal, by service
        self._heal_failed: dict[str, int] = {}  # consecutive failed heals, by service
        self.hosts = LiveHosts(self.store)
        self._keepalive = KeepAlive()  # one open connection per serving host, between passes

    async def monitor_once(self) -> None:
        """One pass of the health monitor over every service (see the module docstring)."""
        prober = self._keepalive if self.fleet.prober is probe else self.fleet.prober
        probed: set[str] = set()
        for service in self.fleet.spec.services:
            if self.locks.locked(service):
                continue  # a deployment (or a heal) owns the service's hosts right now
            serving = self.hosts.of(service, HostState.SERVING)
            check = self.fleet.service(service).health.check()
            probed.update(h.address or "" for h in serving)
            limit = asyncio.Semaphore(PROBES_AT_ONCE)
            verdicts = await asyncio.gather(*(self._look(h, check, prober, limit)
                                              for h in serving))
            bad = [(h, why) for h, why in zip(serving, verdicts, strict=True) if why]
            healthy = [h for h, why in zip(serving, verdicts, strict=True) if why is None]
            if bad and healthy:
                await self.fleet.switch(service, healthy, [], why="health monitor",
                                        weights={h.id: h.weight for h in healthy},
                                        canary=self.store.canary(service))
                for host, why in bad:
                    self.fleet._set(host, HostState.FAILED, why)
                    await self.fleet.destroy([host], why=why)
                    self._failures.pop(host.id, None)
            current, _ = self.store.service_releases(service)
            missing = self.fleet.service(service).replicas - len(healthy)
            if current is not None and missing > 0 and time.time() >= \
                    self._heal_after.get(service, 0):
                self.spawn(self.heal(service, current, missing), f"heal {service}")
        # Connections to hosts no longer watched (out of service, or their service locked by
        # a deployment that drains them) are closed: nothing of ours holds a draining host.
        self._keepalive.keep_only(probed)
        live = {h.id for h in self.hosts()}
        for host_id in [i for i in self._failures if i not in live]:
            del self._failures[host_id]  # gone: its count would be kept forever

    async def _look(self, host: Host, check: HealthCheck, prober: Prober,
                    limit: asyncio.Semaphore) -> str | None:
        """Why ``host`` must go (None: it stays). Unknown (its machine cut off) stays: the
        machine watch decides about such hosts."""
        async with limit:
            try:
                # Bounded: a host on a machine being cut off must not stall the pass.
                async with asyncio.timeout(ADOPT_TIMEOUT):
                    alive = await self.fleet.provider(host).adopt(host)
            except (MachineUnreachable, TimeoutError):
                return None
            if not alive:
                return "process exited"
            result = await prober(host.address or "", check)
            fails = 0 if result.ok else self._failures.get(host.id, 0) + 1
            self._failures[host.id] = fails
            if fails >= check.unhealthy:
                return f"failed {fails} health checks: {result.detail}"
            return None

    def close(self) -> None:
        """Close the monitor's kept-alive probe connections (the controller is stopping)."""
        self._keepalive.close()

    async def heal(self, service: str, release: int, count: int) -> None:
        try:
            async with self.locks.hold(service, "self-healing"):
                started = time.monotonic()
                new = await self.fleet.boot_healthy(service, self.store.release(service, release),
                                                    count)
                serving = self.fleet.hosts(service, HostState.SERVING)
                alive = [h for h in serving if await self.fleet.provider(h).adopt(h)]
                dead = [h for h in serving if h not in alive]
                await self.fleet.switch(service, alive + new, dead,
                                        why=f"self-healing: {count} host(s) missing")
                if dead:
                    await self.fleet.destroy(dead, why="found dead while healing")
                self.store.record(ACTOR, "service.healed", service, {
                    "release": f"v{release}", "booted": [h.id for h in new],
                    "replaced": [h.id for h in dead],
                    "took_s": round(time.monotonic() - started, 3)})
                self._heal_failed.pop(service, None)
        except LockedError:
            pass  # a deployment started meanwhile: it owns the hosts
        except Exception as e:  # a HinotoriError, or a bug: back off, say so, try again later
            if not isinstance(e, HinotoriError):
                log.exception("healing %s failed", service)
            self._back_off(service, e)

    def _back_off(self, service: str, e: Exception) -> None:
        failed = self._heal_failed[service] = self._heal_failed.get(service, 0) + 1
        delay = min(HEAL_BACKOFF * 2 ** (failed - 1), HEAL_BACKOFF_MAX)
        self._heal_after[service] = time.time() + delay
        error = str(e) if isinstance(e, HinotoriError) else repr(e)
        self.store.record(ACTOR, "service.heal-failed", service,
                          {"error": error[:500], "retry_in_s": delay})
