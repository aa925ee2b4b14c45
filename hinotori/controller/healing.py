"""Self-healing: the health monitor and the heals it starts.

A serving host that died or keeps failing its health check is taken out of traffic while a
healthy one remains (invariant 2, without emptying a service); then a service below its replicas
gets fresh, health-gated hosts of its release. A heal that fails (a HinotoriError, or a bug) is
recorded as ``service.heal-failed`` and the service is not healed again before a back-off
(doubling from ``HEAL_BACKOFF`` up to ``HEAL_BACKOFF_MAX``, reset by a heal that works).

The monitor (``run``) looks at each serving host once per its service's ``health.interval``,
so a host that fails ``unhealthy`` checks in a row is out within ``unhealthy x interval`` (plus
a probe's timeout). A service's hosts are spread over the interval in slices about
``SLICE_EVERY`` apart of at least ``SLICE_HOSTS`` hosts, each slice one wakeup for its hosts'
probes: neither a burst of a thousand connections at once nor a wakeup per host. A slice never
waits for another (a hung host holds only its own probe; it is not probed again while one is
in flight). Each look asks the provider whether the host still lives (a dead one goes at once)
and probes it; with the real probe a slice is one batch (batchprobe.py: one wakeup and one
timer for all its hosts). A provider that knows without waiting (``alive_now``: the process
provider's pidfds) is not awaited, and one that tells of a host's end (``exit_watch``) has a
serving host taken out as it ends, not at its next look. ``monitor_once`` is one look at every
host at once (tests, and a caller that wants it now).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from hinotori.controller.batchprobe import BatchProber
from hinotori.controller.hostcache import LiveHosts
from hinotori.controller.wiring import ACTOR
from hinotori.deploy.fleet import Fleet, StaleSwitch
from hinotori.deploy.locks import ServiceLocks
from hinotori.errors import HinotoriError, LockedError, MachineUnreachable
from hinotori.health import Prober, probe
from hinotori.model import HealthCheck, Host, HostState, ProbeResult

log = logging.getLogger("hinotori.controller")

ADOPT_TIMEOUT = 2.0
HEAL_BACKOFF = 5.0
HEAL_BACKOFF_MAX = 60.0
# Probes in flight at once: all of a big fleet's hosts are looked at without a thousand
# sockets opening in the same instant.
PROBES_AT_ONCE = 64
# The slices of a service's interval (see the module docstring): about this far apart, and
# with at least this many hosts each. A wakeup of the loop costs as much CPU as several probes
# (measured here: a probe alone ~370 us, in tens ~100 us), so hosts are looked at in groups.
SLICE_EVERY = 0.02
SLICE_HOSTS = 32
# How often the monitor looks for services added or removed by a reloaded spec, and lets go
# of connections to hosts it no longer watches.
RESCAN_EVERY = 0.5

_UNASKED: Any = object()  # a provider not asked yet for its alive_now

Spawn = Callable[[Coroutine[Any, Any, Any], str], Any]


def slice_count(hosts: int, interval: float) -> int:
    """How many slices a round of ``hosts`` looks over ``interval`` has."""
    return max(1, min(hosts // SLICE_HOSTS, round(interval / SLICE_EVERY)))


class Healing:
    def __init__(self, fleet: Fleet, locks: ServiceLocks, *, spawn: Spawn,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
                 clock: Callable[[], float] | None = None) -> None:
        self.fleet = fleet
        self.store = fleet.store
        self.locks = locks
        self.spawn = spawn
        self._failures: dict[str, int] = {}  # consecutive failed health checks, by host
        self._bad: dict[str, str] = {}  # serving hosts that must go, and why (by host id)
        self._in_flight: set[str] = set()  # hosts whose look has not ended yet
        self._heal_after: dict[str, float] = {}  # back-off after a failed heal, by service
        self._heal_failed: dict[str, int] = {}  # consecutive failed heals, by service
        self._acting: dict[str, asyncio.Lock] = {}  # one take-out at a time, by service
        self._healing: set[str] = set()  # services with a heal spawned and not ended
        self._slices: set[asyncio.Task[None]] = set()
        self._limit: asyncio.Semaphore | None = None
        self.hosts = LiveHosts(self.store)
        # The real probe, a slice at a time; one open connection per serving host between looks
        self._batch = BatchProber()
        self._quick: dict[str, Callable[[Host], bool] | None] = {}  # provider -> alive_now
        self._exit_watches: list[tuple[list[Callable[[int], None]], Callable[[int], None]]] = []
        self._running = False  # run() is watching: a host that dies is taken out at once
        self._sleep = sleep  # a test drives the monitor on a clock of its own
        self._clock = clock

    def _prober(self) -> Prober:
        return self._batch if self.fleet.prober is probe else self.fleet.prober

    # -- the monitor ---------------------------------------------------------------------
    async def run(self) -> None:
        """Watch every service, each on its own interval, until cancelled (a failure of one
        service's watch ends this: the controller's guard records it and starts it again)."""
        watches: dict[str, asyncio.Task[None]] = {}
        self._running = True
        try:
            while True:
                services = set(self.fleet.spec.services)
                for name in services - watches.keys():
                    watches[name] = asyncio.create_task(self.watch(name), name=f"monitor {name}")
                for name in watches.keys() - services:
                    watches.pop(name).cancel()
                if not watches:  # no service (yet): nothing to watch
                    await asyncio.sleep(RESCAN_EVERY)
                    continue
                done, _ = await asyncio.wait(watches.values(), timeout=RESCAN_EVERY,
                                             return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()  # a watch ends only by failing: raise it here
                self._tidy()
        finally:
            self._running = False
            ending = [*watches.values(), *self._slices]
            for task in ending:
                task.cancel()
            await asyncio.gather(*ending, return_exceptions=True)

    async def watch(self, service: str) -> None:
        """One service: each round of its interval looks at every serving host once, spread
        over the interval in slices; after a round, a service short of replicas is healed."""
        now = self._clock or asyncio.get_running_loop().time
        # A random phase: services with the same interval do not wake up together.
        tick = now() + random.random() * self.fleet.service(service).health.interval
        await self._until(tick, now)
        while True:
            check = self.fleet.service(service).health.check()
            hosts = list(self.hosts.shared(service, HostState.SERVING))
            slices = slice_count(len(hosts), check.interval)
            for j in range(slices):
                await self._until(tick + j * check.interval / slices, now)
                if not self.locks.locked(service):
                    self._start_slice(service, hosts[j::slices], check)
            tick += check.interval
            await self._until(tick, now)
            if not self.locks.locked(service):
                self._heal_if_short(service)
            if now() - tick > check.interval:
                tick = now()  # fell a round behind (a busy loop): go on from now, no burst

    async def _until(self, when: float, now: Callable[[], float]) -> None:
        left = when - now()
        if left > 0:
            await self._sleep(left)

    def _start_slice(self, service: str, hosts: Sequence[Host], check: HealthCheck) -> None:
        serving = self.hosts.ids(service, HostState.SERVING)
        due = [h for h in hosts if h.id in serving and h.id not in self._in_flight]
        if due:
            task = asyncio.create_task(self._slice(service, due, check))
            self._slices.add(task)
            task.add_done_callback(self._slice_done)

    def _slice_done(self, task: asyncio.Task[None]) -> None:
        self._slices.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("health monitor: a slice failed", exc_info=task.exception())

    async def _slice(self, service: str, hosts: Sequence[Host], check: HealthCheck) -> None:
        """Look at ``hosts`` of ``service`` together; take out those that must go."""
        prober = self._prober()
        if prober is self._batch:
            verdicts: list[str | None] = []
            for i in range(0, len(hosts), PROBES_AT_ONCE):
                verdicts += await self._look_batch(hosts[i:i + PROBES_AT_ONCE], check)
        else:
            if self._limit is None:
                self._limit = asyncio.Semaphore(PROBES_AT_ONCE)
            verdicts = await asyncio.gather(*(self._look(h, check, prober, self._limit)
                                              for h in hosts))
        bad = self._bad
        for host, why in zip(hosts, verdicts, strict=True):
            if why is not None:
                bad[host.id] = why
            elif bad:  # usually empty: nothing to forget
                bad.pop(host.id, None)
        if any(verdicts):
            await self._take_out(service)

    async def _take_out(self, service: str) -> None:
        """The serving hosts found bad leave traffic (and are destroyed) while at least one
        healthy host remains: a 503 for everyone is worse than a bad host among good ones."""
        async with self._acting.setdefault(service, asyncio.Lock()):
            if self.locks.locked(service):
                return  # a deployment (or a heal) owns the service's hosts now
            serving = self.hosts.of(service, HostState.SERVING)
            bad = [h for h in serving if h.id in self._bad]
            healthy = [h for h in serving if h.id not in self._bad]
            if not bad or not healthy:
                return
            why = {h.id: self._bad[h.id] for h in bad}
            try:
                await self.fleet.switch(service, healthy, [], why="health monitor",
                                        weights={h.id: h.weight for h in healthy},
                                        canary=self.store.canary(service),
                                        expect=[h.id for h in serving])
            except StaleSwitch:
                return  # a deployment switched first: the next look decides again
            # Out of the table: failed before any await, so that a look still in flight (it
            # may find one answering again) cannot leave it serving in the store, in no table.
            for host in bad:
                self._bad.pop(host.id, None)
                self.fleet._set(host, HostState.FAILED, why[host.id])
            for host in bad:
                await self.fleet.destroy([host], why=why[host.id])
                self._failures.pop(host.id, None)
            if not self.locks.locked(service):
                self._heal_if_short(service)  # now, not at the round's end

    def _heal_if_short(self, service: str) -> None:
        """A service with fewer healthy serving hosts than its replicas gets new ones (after
        the back-off of a failed heal)."""
        healthy = sum(1 for h in self.hosts.shared(service, HostState.SERVING)
                      if h.id not in self._bad)
        missing = self.fleet.service(service).replicas - healthy
        if missing <= 0 or time.time() < self._heal_after.get(service, 0):
            return
        if service in self._healing:
            return  # one spawned already, not started yet: it would boot the same hosts again
        current, _ = self.store.service_releases(service)
        if current is not None:
            self._healing.add(service)
            self.spawn(self.heal(service, current, missing), f"heal {service}")

    def _tidy(self) -> None:
        """Let go of what belongs to hosts no longer watched: connections to hosts out of
        service (or whose service a deployment holds: nothing of ours holds a draining host)
        and the counts of hosts gone (they would be kept forever)."""
        watched = [h for name in self.fleet.spec.services if not self.locks.locked(name)
                   for h in self.hosts.shared(name, HostState.SERVING)]
        self._batch.keep_only({h.address or "" for h in watched})
        live = {h.id for h in self.hosts()}
        for counts in (self._failures, self._bad):
            for host_id in [i for i in counts if i not in live]:
                del counts[host_id]

    async def monitor_once(self) -> None:
        """One look at every serving host of every service at once, then the take-outs and
        heals it calls for."""
        for service in self.fleet.spec.services:
            if self.locks.locked(service):
                continue  # a deployment (or a heal) owns the service's hosts right now
            hosts = self.hosts.shared(service, HostState.SERVING)
            await self._slice(service, hosts, self.fleet.service(service).health.check())
            self._heal_if_short(service)
        self._tidy()

    async def _look(self, host: Host, check: HealthCheck, prober: Prober,
                    limit: asyncio.Semaphore) -> str | None:
        """Why ``host`` must go (None: it stays). Unknown (its machine cut off) stays: the
        machine watch decides about such hosts."""
        self._in_flight.add(host.id)
        try:
            async with limit:
                alive = self._alive_now(host)
                if alive is None:
                    alive = await self._adopted(host)
                if alive is None:
                    return None
                if not alive:
                    return "process exited"
                result = await prober(host.address or "", check)
        finally:
            self._in_flight.discard(host.id)
        return self._count(host, result, check)

    async def _look_batch(self, hosts: Sequence[Host], check: HealthCheck) -> list[str | None]:
        """``_look`` for many hosts, their probes one batch (see batchprobe.py)."""
        ids = [h.id for h in hosts]
        self._in_flight.update(ids)
        try:
            alive = [self._alive_now(h) for h in hosts]
            if None in alive:
                asked = [i for i, a in enumerate(alive) if a is None]
                found = await asyncio.gather(*(self._adopted(hosts[i]) for i in asked))
                for i, a in zip(asked, found, strict=True):
                    alive[i] = a
            up = [i for i, a in enumerate(alive) if a]
            results = await self._batch.look([hosts[i].address or "" for i in up], check)
        finally:
            self._in_flight.difference_update(ids)
        verdicts: list[str | None] = [None if a is None else "process exited" for a in alive]
        failures = self._failures
        for i, result in zip(up, results, strict=True):
            if result.ok:  # _count's answer for a pass, without the call
                failures[ids[i]] = 0
                verdicts[i] = None
            else:
                verdicts[i] = self._count(hosts[i], result, check)
        return verdicts

    def _alive_now(self, host: Host) -> bool | None:
        """Whether ``host`` lives, from a provider that knows without waiting (the process
        provider: a pidfd tells it when a host dies); None: ask ``adopt``."""
        quick = self._quick.get(host.provider, _UNASKED)
        if quick is _UNASKED:
            provider = self.fleet.provider(host)
            quick = self._quick[host.provider] = getattr(provider, "alive_now", None)
            watch = getattr(provider, "exit_watch", None)
            if watch is not None:
                listener = functools.partial(self._exited, host.provider)
                watch.listeners.append(listener)
                self._exit_watches.append((watch.listeners, listener))
        return quick(host) if quick is not None else None

    def _exited(self, provider: str, pid: int) -> None:
        """A provider saw a host's process end: a serving one leaves the table now (as a
        look would find it, without waiting for that look)."""
        if not self._running:
            return
        for host in self.hosts():
            if host.pid == pid and host.provider == provider and \
                    host.state == HostState.SERVING and not self.locks.locked(host.service):
                self._bad[host.id] = "process exited"
                task = asyncio.create_task(self._take_out(host.service))
                self._slices.add(task)
                task.add_done_callback(self._slice_done)
                return

    async def _adopted(self, host: Host) -> bool | None:
        """The provider's ``adopt``, bounded: a host on a machine being cut off must not stall
        the monitor. None: unknown (its machine cut off), the machine watch decides."""
        try:
            async with asyncio.timeout(ADOPT_TIMEOUT):
                return await self.fleet.provider(host).adopt(host)
        except (MachineUnreachable, TimeoutError):
            return None

    def _count(self, host: Host, result: ProbeResult, check: HealthCheck) -> str | None:
        fails = 0 if result.ok else self._failures.get(host.id, 0) + 1
        self._failures[host.id] = fails
        if fails >= check.unhealthy:
            return f"failed {fails} health checks: {result.detail}"
        return None

    def close(self) -> None:
        """Close the monitor's kept-alive probe connections and stop hearing of hosts' ends
        (the controller is stopping: its hosts may be destroyed next)."""
        self._batch.close()
        self._running = False
        for listeners, listener in self._exit_watches:
            if listener in listeners:
                listeners.remove(listener)
        self._exit_watches.clear()

    async def heal(self, service: str, release: int, count: int) -> None:
        try:
            await self._heal(service, release, count)
        finally:
            self._healing.discard(service)

    async def _heal(self, service: str, release: int, count: int) -> None:
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
