"""The machines of a fleet, watched: up, down or drained, and what follows from each.

Every second each machine is probed through its SSH connection (the engine answers a ping).
``DOWN_AFTER`` probes in a row that fail or take longer than ``PROBE_TIMEOUT`` make it down:

- its hosts leave the routing table at once (the Fleet never routes a host on a down machine,
  whichever list still holds it) and become ``lost``; the health monitor then finds the services
  below their replicas and boots replacements on the machines that are up;
- when it answers again it is up: its lost hosts, and any container of the project there that
  nobody knows, are burned, never routed again.

A drained machine (``hinotori machine drain``) takes no new host, and its hosts are moved
elsewhere by a rolling replacement of exactly those hosts: zero failed requests, as a phoenix
rotation. Every change of state is an event (``machine.up``, ``machine.down``,
``machine.drained``, ``machine.undrained``) and is kept in the store for `hinotori machines`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from hinotori.controller.wiring import ACTOR
from hinotori.deploy.fleet import LIVE_STATES, Fleet
from hinotori.deploy.placement import DOWN, DRAINING, USABLE
from hinotori.errors import DeployError, NotFound
from hinotori.model import HostState
from hinotori.providers.base import MachineProvider

log = logging.getLogger("hinotori.controller")

WATCH_EVERY = 1.0
PROBE_TIMEOUT = 1.5
DOWN_AFTER = 2  # failed probes in a row
SEEN_EVERY = 10.0  # how often an up machine's last_seen is written

StartDeployment = Callable[..., Awaitable[int | None]]


class Machines:
    def __init__(self, fleet: Fleet, *, start_deployment: StartDeployment) -> None:
        self.fleet = fleet
        self.store = fleet.store
        self.start_deployment = start_deployment
        self.state: dict[str, str] = {}  # up | down, as last decided
        self._fails: dict[str, int] = {}
        self._probes: dict[str, asyncio.Task[str | None]] = {}
        self._written: dict[str, float] = {}
        self._detail: dict[str, str] = {}  # why a down machine is down, as recorded
        self._drained = {n for n, row in self.store.machines().items() if row["drained"]}
        fleet.machine_state = self.state_of

    def providers(self) -> list[MachineProvider]:
        return [p for p in self.fleet.providers.values() if isinstance(p, MachineProvider)]

    def names(self) -> list[str]:
        return sorted({name for p in self.providers() for name in p.machines})

    def state_of(self, name: str) -> str:
        """What placement and routing go by (asked per host: no store query): down wins over
        drained."""
        if self.state.get(name) == DOWN:
            return DOWN
        return DRAINING if name in self._drained else USABLE

    # -- the watch -----------------------------------------------------------------------
    async def watch_once(self) -> None:
        checks = [(p, name) for p in self.providers() for name in p.machines]
        results = await asyncio.gather(*(self._probe(p, name) for p, name in checks))
        for (provider, name), why in zip(checks, results, strict=True):
            await self._judge(provider, name, why)

    async def _probe(self, provider: MachineProvider, name: str) -> str | None:
        """None if the machine answered within PROBE_TIMEOUT, else why not. A probe still
        running from before counts as one more failure (a cut machine can hold one up)."""
        running = self._probes.get(name)
        if running is not None and not running.done():
            return f"machine {name}: no answer for over {PROBE_TIMEOUT:g}s"
        if running is not None and not running.cancelled() and running.result() is not None:
            # A probe that outlived its round has finished since: its reason is the real one
            # (an SSH connect timeout, say), better than "no answer".
            self._probes.pop(name)
            return running.result()
        task = self._probes[name] = asyncio.create_task(provider.probe(name))
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                return await asyncio.shield(task)
        except TimeoutError:
            return f"machine {name}: no answer within {PROBE_TIMEOUT:g}s"

    async def _judge(self, provider: MachineProvider, name: str, why: str | None) -> None:
        now = time.time()
        was = self.state.get(name)
        if why is None:
            self._fails[name] = 0
            if was != USABLE:
                self.state[name] = USABLE
                self.store.save_machine(name, state=USABLE, last_seen=now,
                                        engine=provider.engine_version(name),
                                        why="its engine answers through SSH")
                self._written[name] = now
                await self._came_back(provider, name)
            elif now - self._written.get(name, 0) >= SEEN_EVERY:
                self.store.save_machine(name, state=USABLE, last_seen=now, engine=None)
                self._written[name] = now
            return
        self._fails[name] = self._fails.get(name, 0) + 1
        if was != DOWN and (self._fails[name] >= DOWN_AFTER or was is None):
            self.state[name] = DOWN
            self.store.save_machine(name, state=DOWN, last_seen=None, engine=None,
                                    detail=why[:300], why=why[:300])
            self._detail[name] = why
            await self._went_down(name, why)
        elif was == DOWN and why != self._detail.get(name) and "no answer" not in why:
            self._detail[name] = why  # a better reason than the one recorded (no event)
            self.store.save_machine(name, state=DOWN, last_seen=None, engine=None,
                                    detail=why[:300])

    async def _went_down(self, name: str, why: str) -> None:
        """Out of the table at once, then lost: replacements come from the health monitor."""
        gone = [h for h in self.store.hosts(states=LIVE_STATES) if h.data.get("machine") == name]
        await self.fleet.sync_router()  # the table without the down machine's hosts
        for host in gone:
            self.fleet._set(host, HostState.LOST, f"machine {name} is down: {why[:200]}")

    async def _came_back(self, provider: MachineProvider, name: str) -> None:
        """Its lost hosts, and containers of the project nobody knows, are burned."""
        lost = [h for h in self.store.hosts(states=[HostState.LOST])
                if h.data.get("machine") == name]
        if lost:
            await self.fleet.destroy(lost, why=f"machine {name} came back: stale hosts burned")
        known = {h.id for h in self.store.hosts(states=LIVE_STATES)}
        for orphan in await provider.hosts_on(name):
            if orphan.id not in known:
                await provider.destroy(orphan, grace=5.0)
                self.store.record(ACTOR, "host.orphan-destroyed",
                                  f"{orphan.service}/{orphan.id}", {"machine": name})

    # -- operators -----------------------------------------------------------------------
    def _known(self, name: str) -> None:
        if name not in self.names():
            raise NotFound(f"no machine {name!r} (machines: {', '.join(self.names()) or 'none'})",
                           hint="machines are [machines.NAME] tables of the spec")

    async def drain(self, name: str, actor: str) -> list[int]:
        """No new host on ``name``; its serving hosts replaced elsewhere, one at a time."""
        self._known(name)
        self.store.set_drained(name, True, actor=actor, why="no new hosts; hosts moved away")
        self._drained.add(name)
        started = []
        for service in self.fleet.spec.services:
            here = {h.id for h in self.fleet.hosts(service, HostState.SERVING)
                    if h.data.get("machine") == name}
            if not here:
                continue
            try:
                number = await self.start_deployment(
                    service, kind="phoenix", release=None, lock_wait=600, actor=actor,
                    only=here, reason=f"machine {name} drained")
            except DeployError as e:
                raise DeployError(f"machine {name} is drained (no new hosts), but its hosts of "
                                  f"{service} could not be moved: {e.message}",
                                  hint=e.hint) from None
            if number is not None:
                started.append(number)
        return started

    def undrain(self, name: str, actor: str) -> None:
        self._known(name)
        self.store.set_drained(name, False, actor=actor, why="takes new hosts again")
        self._drained.discard(name)

    def rows(self) -> list[dict[str, Any]]:
        """What `hinotori machines` shows, from the store and the live fleet."""
        return machine_rows(self.names(), self.store, self.state)


def machine_rows(names: list[str], store: Any, live: dict[str, str] | None = None
                 ) -> list[dict[str, Any]]:
    """One row per machine: name, state (up | down | draining), hosts, engine, last seen.
    Without a controller (``live`` None) the state is the last one it recorded."""
    seen = store.machines()
    hosts = [h for h in store.hosts(states=LIVE_STATES) if h.data.get("machine")]
    rows = []
    for name in names:
        row = seen.get(name, {})
        state = (live or {}).get(name) or row.get("state") or "unknown"
        if state == USABLE and row.get("drained"):
            state = DRAINING
        rows.append({"name": name, "state": state, "drained": bool(row.get("drained")),
                     "hosts": sum(1 for h in hosts if h.data.get("machine") == name),
                     "engine": row.get("engine"), "last_seen": row.get("last_seen"),
                     "detail": row.get("detail") or ""})
    return rows
