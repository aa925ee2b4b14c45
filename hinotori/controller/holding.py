"""Held deployments (`hinotori deploy web --hold [DURATION]`), the controller's side: the
pre_switch hooks, the record of the hold, promote and abort, and the service's lock.

The strategy (deploy/hold.py) boots and gates the new colour, routes it for preview and waits.
Here:

- ``ready`` (called by the strategy once the preview answers) runs the service's pre_switch
  hooks with HINOTORI_PREVIEW_URL; a failing one raises, and the held colour is burned. Then
  the deployment is recorded as ``held`` (release, preview address, header, expiry).
- While held, the deployment gives up the service's lock, so self-healing of the live colour
  goes on (a hold may last hours); a new deployment of the service is refused instead.
- ``steer`` is `hinotori promote|abort SERVICE` on a held deployment: promote takes the lock
  back (waiting for a heal under way) and lets the strategy switch; abort lets it burn the
  held colour. Both return once the deployment has ended.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from hinotori.controller.wiring import ACTOR
from hinotori.deploy import bluegreen
from hinotori.deploy.base import Control
from hinotori.deploy.fleet import Fleet, Progress
from hinotori.deploy.hold import RELEASE_HEADER, Hold
from hinotori.deploy.hooks import HookResult
from hinotori.deploy.locks import ServiceLocks
from hinotori.errors import DeployError, LockedError, SpecError
from hinotori.model import Host, Release, deployment_view
from hinotori.project import Project

PROMOTE_LOCK_WAIT = 60.0  # a heal of the live colour under way finishes first
Hook = Callable[[int, str, list[str], dict[str, str], float], Awaitable[HookResult]]


class Holding:
    def __init__(self, project: Project, fleet: Fleet, locks: ServiceLocks, *,
                 hook: Hook) -> None:
        self.project = project
        self.fleet = fleet
        self.store = project.store
        self.locks = locks
        self.hook = hook
        self.controls: dict[int, Control] = {}  # a held deployment's promote/abort, by number
        self._held: dict[str, int] = {}  # service -> its deployment held now
        self._locks: dict[int, Any] = {}  # deployment -> the service lock it holds (entered)
        self._done: dict[int, asyncio.Event] = {}  # set when the deployment has ended

    # -- before a deployment ---------------------------------------------------------------
    def refuse_if_held(self, service: str) -> None:
        number = self._held.get(service)
        if number is not None:
            raise LockedError(f"{service} has a held deployment ({number}): promote or abort "
                              f"it first", hint=f"`hinotori promote {service}` switches to it; "
                                                f"`hinotori abort {service}` burns it")

    def check(self, service: str, kind: str, strategy: str) -> None:
        """--hold has a meaning here, or a usage error (exit 2) says why not."""
        svc = self.fleet.service(service)
        if kind != "deploy":
            raise SpecError(f"--hold applies to deploy, not {kind}", key="--hold")
        if strategy != bluegreen.STRATEGY:
            raise SpecError(f"--hold previews the new colour of a blue-green deploy; {service} "
                            f"would deploy with {strategy}", key="--hold",
                            hint="add --strategy blue-green to hold this deploy")
        if svc.stateful:
            raise SpecError(f"{service} is stateful: it stops before it starts, so there is no "
                            f"second colour to hold", key="--hold")
        if svc.hooks.pre_switch and not self.project.spec.router.preview_listen:
            raise SpecError(f"{service} has pre_switch hooks but the router has no preview "
                            f"listener for them to reach", key="--hold",
                            hint='set [router] preview_listen = "127.0.0.1:PORT"')

    def locked(self, number: int, lock: Any) -> None:
        """The deployment ``number`` was started holding ``lock`` (entered)."""
        self._locks[number] = lock
        self._done[number] = asyncio.Event()

    # -- during it -------------------------------------------------------------------------
    def preview_url(self, service: str) -> str | None:
        listen = self.project.spec.router.preview_listen
        return f"http://{listen}{self.fleet.service(service).path_prefix}" if listen else None

    def hold(self, number: int, service: str, timeout: float, context: dict[str, str],
             progress: Progress) -> Hold:
        """The Hold the strategy gets; ``timeout`` 0 holds until promoted or aborted."""
        self.controls[number] = Control()

        async def ready(release: Release, hosts: list[Host]) -> None:
            svc = self.fleet.service(service)
            url = self.preview_url(service)
            header = f"{RELEASE_HEADER}: {release.name}"
            if svc.hooks.pre_switch:
                env = {**context, "HINOTORI_PREVIEW_URL": url or "",
                       "HINOTORI_PREVIEW_HEADER": header,
                       "HINOTORI_PREVIEW_RELEASE": release.name}
                result = await self.hook(number, "pre_switch", svc.hooks.pre_switch, env,
                                         svc.hooks.timeout)
                if not result.ok:
                    raise DeployError(f"{service}: the pre-switch hook failed; the held "
                                      f"{release.name} was burned, traffic never moved\n"
                                      f"{result.describe()}")
            now = time.time()
            info = {"release": release.name, "preview": url, "header": header,
                    "router": self.project.spec.router.listen, "held_at": now,
                    "expires_at": now + timeout if timeout else None,
                    "hosts": [h.id for h in hosts]}
            progress("held", info)
            self.store.hold_deployment(number, info, actor=ACTOR)
            self._held[service] = number
            lock = self._locks.pop(number, None)
            if lock is not None:  # heals of the live colour go on while it is held
                await lock.__aexit__(None, None, None)

        return Hold(timeout=timeout or None, ready=ready)

    def held(self, service: str) -> int | None:
        return self._held.get(service)

    async def steer(self, service: str, action: str, actor: str = ACTOR) -> dict[str, Any]:
        """promote | abort the held deployment of ``service``; returns once it has ended.
        ``actor``: who asked, for the audit log."""
        number = self._held[service]
        if action not in ("promote", "abort"):
            raise DeployError(f"{service}'s deployment {number} is held: it takes promote or "
                              f"abort, not {action}",
                              hint=f"`hinotori promote {service}` switches to it; "
                                   f"`hinotori abort {service}` burns it")
        done = self._done[number]
        lock = None
        if action == "promote":
            lock = self.locks.hold(service, f"the promotion of held deployment {number}",
                                   wait=PROMOTE_LOCK_WAIT)
            await lock.__aenter__()
        if self._held.get(service) != number or done.is_set():  # ended or steered meanwhile
            if lock is not None:
                await lock.__aexit__(None, None, None)
            raise DeployError(f"{service}'s deployment {number} is no longer held",
                              hint=f"`hinotori deployment show {number}` says how it ended")
        if lock is not None:
            self._locks[number] = lock
        del self._held[service]
        self.store.unhold_deployment(number, actor=actor, why=f"{action} by an operator")
        self.store.record(actor, f"deploy.{action}", service,
                          {"by": "operator", "deployment": number})
        self.controls[number].request(action)
        await done.wait()
        return deployment_view(self.store.deployment(number))

    async def finished(self, number: int, service: str) -> None:
        """The deployment ended, however: give back its lock and wake whoever waits."""
        if self._held.get(service) == number:
            del self._held[service]
        self.controls.pop(number, None)
        lock = self._locks.pop(number, None)
        if lock is not None:
            await lock.__aexit__(None, None, None)
        done = self._done.pop(number, None)
        if done is not None:
            done.set()
