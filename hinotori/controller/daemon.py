"""The controller: the long-running control plane of one project (`hinotori up`).

It owns the router and the providers through a Fleet and composes the controller's jobs, each
in its own module:

- wiring.py      providers, router and fleet built from the spec
- deployments.py deployments, their hooks, and a running canary's controls
- healing.py     the health monitor loop and its heals
- machines.py    the machines of a fleet watched (up, down, drained) and what follows
- maintenance.py maintenance mode: the router answers a service's requests with 503
- burning.py     the reaper, phoenix by age, chaos schedules and kills; the private engine
- shipping.py    the signed push webhook: bake -> deploy
- membership.py  discovery files, member events, Serf, on_join/on_leave hooks
- adoption.py    what a starting controller takes over from the last one
- jobs.py        scheduled jobs: each run a disposable host of its own
- observing.py   the log pipeline and the metrics recorder
- certwatch.py   TLS certificate files watched and reloaded into the router
- tasks.py       every background loop its own named task, restarted under guard
- serve.py       the HTTP API around a running controller (`serve`)

The data plane and the hosts are separate processes that outlive the controller, so a controller
killed with SIGKILL loses nothing: the next one adopts them (adoption.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Coroutine
from typing import Any

from hinotori.controller import adoption
from hinotori.controller.burning import Burning, stop_private_engine
from hinotori.controller.certwatch import WATCH_EVERY as CERT_WATCH_EVERY
from hinotori.controller.certwatch import CertWatch
from hinotori.controller.deployments import Deployments
from hinotori.controller.healing import Healing
from hinotori.controller.jobs import Jobs
from hinotori.controller.machines import WATCH_EVERY, Machines
from hinotori.controller.maintenance import MaintenanceMode
from hinotori.controller.membership import Membership
from hinotori.controller.notify import Notifier
from hinotori.controller.observing import Observing
from hinotori.controller.shipping import Shipping
from hinotori.controller.tasks import Phases, Tasks, every
from hinotori.controller.wiring import ACTOR, make_fleet, make_providers
from hinotori.deploy.fleet import LIVE_STATES
from hinotori.deploy.locks import ServiceLocks
from hinotori.errors import ControllerError
from hinotori.model import Host
from hinotori.project import Project
from hinotori.statefiles import open_private

log = logging.getLogger("hinotori.controller")

# How often the burning loops make a pass, in seconds (the others keep their own pace: the
# health monitor each service's health interval, [logs] ship_interval, [metrics] interval).
BURN_EVERY = 1.0


class Controller:
    def __init__(self, project: Project) -> None:
        self.project = project
        self.store = project.store
        self.fleet = make_fleet(project)
        self.locks = ServiceLocks()
        notify = project.spec.notify
        self.notifier = Notifier(notify.webhooks, timeout=notify.timeout)
        self.stopping = asyncio.Event()
        self.teardown = False  # set by `down`: also destroy hosts and stop the router
        self.started_at = time.time()
        self._lock_file: Any = None
        self.tasks = Tasks(self._event)
        self.membership = Membership(project, self.fleet, spawn=self.spawn)
        self.fleet.membership = self.membership
        self.deployments = Deployments(project, self.fleet, self.locks, self.notifier,
                                       spawn=self.spawn, reload_spec=self.reload_spec)
        self.controls = self.deployments.controls  # running canaries, by service
        self.healing = Healing(self.fleet, self.locks, spawn=self.spawn)
        self.burning = Burning(self.fleet, self.locks,
                               start_deployment=self.start_deployment)
        self.shipping = Shipping(project, self.fleet, spawn=self.spawn,
                                 reload_spec=self.reload_spec,
                                 start_deployment=self.start_deployment)
        self.webhook = self.shipping.webhook  # its defences, for the API's push route
        self.observing = Observing(project, self.fleet, self.tasks)
        self.machines = Machines(self.fleet, start_deployment=self.start_deployment)
        self.maintenance = MaintenanceMode(self.fleet)  # the router's 503s, by service
        self.jobs = Jobs(self.fleet, self.notifier, spawn=self.spawn)
        self.logs = self.observing.logs
        self.metrics = self.observing.metrics
        self.certs = CertWatch(project, self.fleet.router, self._event)

    def _event(self, action: str, subject: str, detail: dict[str, Any]) -> None:
        self.store.record(ACTOR, action, subject, detail)

    # -- life cycle ----------------------------------------------------------------------
    def claim(self) -> None:
        """Only one controller per project: an exclusive lock the kernel frees if we die."""
        self.project.ensure_state_dir()
        self._lock_file = open_private(self.project.state_dir / "controller.lock", "a+")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            info = self.project.controller_file
            pid = json.loads(info.read_text()).get("pid") if info.exists() else "?"
            raise ControllerError(f"a controller is already running for this project (pid {pid})",
                                  hint="`hinotori status` talks to it; `hinotori down` stops it"
                                  ) from None

    async def start(self) -> None:
        self.claim()
        await self.fleet.router.start()
        self.certs.started()
        await self.machines.watch_once()  # which machines answer, before adopting their hosts
        await self.adopt()
        await self.jobs.resume()  # after adopt: the runs' hosts are known, the router synced
        self.tasks.loop("jobs", self.jobs.run)
        self.tasks.loop("machines", every(WATCH_EVERY, self.machines.watch_once))
        if self.certs.enabled:
            self.tasks.loop("certs", every(CERT_WATCH_EVERY, self.certs.watch_once))
        self.tasks.loop("monitor", self.healing.run)
        self.tasks.loop("notify", self.notifier.run)
        # Stopped apart from the others (see stop): logs last, metrics sampled before the
        # router stops.
        self.observing.start()
        self.tasks.loop("reaper", every(BURN_EVERY, self.burning.reap_once))
        self.tasks.loop("phoenix", every(BURN_EVERY, self.burning.rotate_aged))
        self.tasks.loop("chaos", every(BURN_EVERY, self.burning.scheduled_chaos))
        self.tasks.loop("webhook", every(BURN_EVERY, self._flush_rejections))
        self.store.record(ACTOR, "controller.started", self.project.spec.project.name,
                          {"pid": os.getpid()})

    async def _flush_rejections(self) -> None:
        self.webhook.rejections.flush()

    async def adopt(self) -> None:
        await adoption.adopt(self.project, self.fleet)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None
              ) -> asyncio.Task[Any]:
        """Run one-shot work in the background; a failure is logged and recorded."""
        return self.tasks.spawn(coro, name)

    async def stop(self) -> None:
        phases = Phases()
        async with phases("tasks"):
            await self.tasks.stop(keep=("logs", "metrics"))
        self.healing.close()  # its kept probe connections, before any host is stopped
        if self.teardown:
            async with phases("hosts"):
                hosts = self.store.hosts(states=LIVE_STATES)
                await self.fleet.destroy(hosts, why="hinotori down")
                self.jobs.torn_down()
            async with phases("metrics"):
                await self.observing.stop_metrics()
            async with phases("router"):
                await self.fleet.router.stop()
        async with phases("metrics"):
            await self.observing.stop_metrics()
        async with phases("logs"):
            await self.observing.stop_logs()  # last: a teardown has flushed every host by now
        async with phases("late tasks"):
            await self.tasks.stop()
        for provider in self.fleet.providers.values():
            provider.close(teardown=self.teardown)  # SSH tunnels; on `down`, the registry
        self.webhook.rejections.flush(force=True)  # the rejections not recorded yet
        if self.teardown:
            async with phases("engine"):
                await stop_private_engine(self.project.state_dir, self.store)
        self.store.record(ACTOR, "controller.stopped", self.project.spec.project.name,
                          {"teardown": self.teardown})
        with contextlib.suppress(FileNotFoundError):
            self.project.controller_file.unlink()
        log.info("controller stopped in %s", phases)

    # -- what the API asks ---------------------------------------------------------------
    async def start_deployment(self, service: str, *, kind: str, release: int | None,
                               lock_wait: float, actor: str, replace: bool = False,
                               reason: str = "", strategy: str | None = None,
                               only: set[str] | None = None,
                               claimed_actor: str | None = None,
                               hold: float | None = None) -> int | None:
        return await self.deployments.start(
            service, kind=kind, release=release, lock_wait=lock_wait, actor=actor,
            replace=replace, reason=reason, strategy=strategy, only=only,
            claimed_actor=claimed_actor, hold=hold)

    async def control(self, service: str, action: str, actor: str = ACTOR) -> dict[str, Any]:
        return await self.deployments.control(service, action, actor)

    async def kill(self, host_id: str, actor: str, claimed_actor: str | None = None) -> Host:
        return await self.burning.kill(host_id, actor, claimed_actor)

    async def push(self, body: bytes, signature: str | None, *, delivery: str | None,
                   source: str) -> list[str]:
        return await self.shipping.push(body, signature, delivery=delivery, source=source)

    def reload_spec(self) -> None:
        """Read the spec on disk again (an invalid spec raises and changes nothing). The next
        deployment runs with it (strategy, hooks, replicas, timeouts), like the CLI that asked
        for it; a running deployment keeps the spec it started with (Fleet.pin). What cannot
        change in a running controller is recorded as an event saying what to do."""
        fresh = Project.load(self.project.loaded.path, self.project.environment).spec
        old = self.project.spec
        if fresh == old:
            return
        if fresh.router != old.router:
            note = "takes effect at the next `hinotori up`"
            if fresh.router.kind != old.router.kind:
                # Two data planes cannot share the listen address: the running one must go.
                note = (f"router kind {old.router.kind} -> {fresh.router.kind}: "
                        "run `hinotori down` then `hinotori up` to switch data planes")
            self.store.record(ACTOR, "spec.router-changed", fresh.project.name, {"note": note})
        self.fleet.spec = fresh
        if fresh.notify != old.notify:
            self.notifier.set_urls(fresh.notify.webhooks)
            self.notifier.timeout = fresh.notify.timeout
            if "notify" in self.tasks.loops:
                self.spawn(self._restart_notify(), "notify-restart")
        self.observing.apply(old, fresh, restart=lambda: self.spawn(
            self.observing.restart_logs(), "logs-restart"))
        if fresh.jobs != old.jobs:
            self.jobs.spec_changed()
        self.project.spec = fresh
        # A service that moved to (or arrived with) a new provider: add it in place, so the
        # fleet and its verifier, which share this dict, both see it.
        for name, provider in make_providers(self.project).items():
            self.fleet.providers.setdefault(name, provider)

    async def _restart_notify(self) -> None:
        """The receivers changed: the notify loop starts again with them (queued events of
        kept receivers stay queued)."""
        await self.tasks.cancel("notify")
        if "notify" not in self.tasks.loops:  # another reload may have restarted it already
            self.tasks.loop("notify", self.notifier.run)
