"""Deployments: take a service's lock, record the deployment, run its strategy and hooks in the
background, and let an operator steer a running canary (pause, resume, promote, abort) or a
held one (`deploy --hold`: promote, abort; see controller/holding.py).

One spec per deployment: the service's definition as it was when the deployment was asked for
is pinned on the fleet (``Fleet.pin``) until the deployment ends, so a spec reloaded meanwhile
(by a bake, a push or another service's deployment) never changes a deployment under way; the
next deployment starts with the spec then on disk.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from hinotori.controller.holding import Holding
from hinotori.controller.notify import Notifier
from hinotori.controller.wiring import ACTOR
from hinotori.deploy import bluegreen, canary, rolling
from hinotori.deploy.base import Control, StrategyRun
from hinotori.deploy.fleet import Fleet
from hinotori.deploy.hooks import HookResult, run_hook
from hinotori.deploy.locks import ServiceLocks
from hinotori.deploy.strategies import STRATEGIES
from hinotori.errors import DeployError, HinotoriError, HoldEnded
from hinotori.model import HostState, Release
from hinotori.project import Project
from hinotori.promotion import check_deployable
from hinotori.store import Store

log = logging.getLogger("hinotori.controller")

Spawn = Callable[[Coroutine[Any, Any, Any], str], Any]


class Deployments:
    def __init__(self, project: Project, fleet: Fleet, locks: ServiceLocks, notifier: Notifier,
                 *, spawn: Spawn, reload_spec: Callable[[], None]) -> None:
        self.project = project
        self.fleet = fleet
        self.store: Store = project.store
        self.locks = locks
        self.notifier = notifier
        self.spawn = spawn
        self.reload_spec = reload_spec
        self.controls: dict[str, Control] = {}  # running canaries, by service
        self.holding = Holding(project, fleet, locks, hook=self._hook)

    async def start(self, service: str, *, kind: str, release: int | None,
                    lock_wait: float, actor: str, replace: bool = False,
                    reason: str = "", strategy: str | None = None,
                    only: set[str] | None = None,
                    claimed_actor: str | None = None,
                    hold: float | None = None) -> int | None:
        """Take the service's lock, record the deployment and run it in the background.
        Returns its id, or None when the wanted release is already serving (unless
        ``replace``: then its hosts are replaced by fresh ones, e.g. because they drifted)."""
        self.reload_spec()
        self.fleet.service(service)
        self.holding.refuse_if_held(service)
        # The spec as it is now, not as a running deployment of the service pinned it.
        definition = self.project.spec.services.get(service) or self.fleet.service(service)
        # ``actor``: who the API's credentials proved; ``claimed_actor``: who the caller says.
        who = f"{actor} ({claimed_actor})" if claimed_actor else actor
        hold_lock = self.locks.hold(service, f"a {kind} by {who}", wait=lock_wait)
        await hold_lock.__aenter__()
        self.fleet.pin(service, definition)
        try:
            current, previous = self.store.service_releases(service)
            if kind == "rollback":
                if previous is None:
                    raise DeployError(f"{service} has no previous release to roll back to",
                                      hint="a rollback needs a service deployed at least twice")
                target = previous
            elif kind == "phoenix":
                if self.fleet.service(service).stateful:
                    raise DeployError(f"{service} is stateful: phoenix never burns it",
                                      hint="deploy it explicitly; it stops before it starts")
                if current is None or not self.fleet.hosts(service, HostState.SERVING):
                    raise DeployError(f"{service} has no serving hosts to rotate")
                target = current
            else:
                latest = self.store.latest_release(service)
                if latest is None and release is None:
                    raise DeployError(f"{service} has no release yet",
                                      hint=f"run `hinotori bake {service}` first")
                target = release if release is not None else latest.number  # type: ignore[union-attr]
                self.store.release(service, target)  # raises NotFound for a bad --release
                if latest is not None and target == latest.number and latest.config.secrets:
                    target = await self._secrets_now(service, latest)
                serving = self.fleet.hosts(service, HostState.SERVING)
                if target == current and serving and not replace:
                    self.fleet.pin(service, None)
                    await hold_lock.__aexit__(None, None, None)
                    return None
                if target != current:  # fresh hosts of the serving release bring no new image
                    # promote_only: a promotion whose image still meets its conditions,
                    # whoever asks (CLI, API, ship, webhook)
                    check_deployable(self.project, service, target)
            spec_strategy = self.fleet.service(service).strategy
            chosen = strategy or spec_strategy.kind
            if chosen not in STRATEGIES:
                raise DeployError(f"unknown strategy {chosen!r}",
                                  hint=f"use {', '.join(STRATEGIES.names())}")
            if kind == "rollback":
                chosen = bluegreen.STRATEGY  # going back is one switch, never a slow ramp
            if kind == "phoenix":
                chosen = rolling.STRATEGY  # one host at a time, never below replicas
            origin = self.store.origin(service, target) if kind == "deploy" else None
            if origin is not None:  # a promotion says where its image served before
                came = (f"promoted from {origin['environment']} {origin['release_name']} "
                        f"(image {origin['image'].removeprefix('sha256:')[:12]})")
                reason = f"{reason}; {came}" if reason else came
            if hold is not None:
                self.holding.check(service, kind, chosen)
            number = self.store.create_deployment(
                service, strategy=chosen, kind=kind, from_release=current,
                to_release=target, actor=actor, reason=reason,
                claimed_actor=claimed_actor)
            if origin is not None:
                self.store.add_deployment_step(number, {"step": "note", "text": came,
                                                        "origin": origin})
        except BaseException:
            self.fleet.pin(service, None)
            await hold_lock.__aexit__(None, None, None)
            raise
        self.holding.locked(number, hold_lock)
        self.spawn(self._run_deployment(number, service, kind, target, chosen, only, hold),
                   f"deployment {number}")
        return number

    async def _secrets_now(self, service: str, latest: Release) -> int:
        """The newest release, or a config-only one if a secret's value here (the controller's
        environment, files and commands, which boot the hosts) differs from its fingerprint
        ("secret X changed"); SecretError if one cannot be resolved."""
        from hinotori.releases import ensure_release

        outcome = await asyncio.to_thread(ensure_release, self.project, service,
                                          image=latest.image, config=latest.config,
                                          reason="secrets changed")
        return outcome.release.number

    async def control(self, service: str, action: str, actor: str = ACTOR) -> dict[str, Any]:
        """pause | resume | promote | abort the running canary of ``service`` (at once), or
        promote | abort its held deployment (returning once that is done); ``actor``: who
        asked, for the audit log."""
        self.fleet.service(service)
        if self.holding.held(service) is not None:
            return await self.holding.steer(service, action, actor)
        control = self.controls.get(service)
        if control is None:
            raise DeployError(f"{service} has no canary deployment running",
                              hint="pause, resume, promote and abort act on a running canary")
        control.request(action)
        self.store.record(actor, f"deploy.{action}", service, {"by": "operator"})
        return {"service": service, "action": action}

    async def _run_deployment(self, number: int, service: str, kind: str, target: int,
                              strategy: str, only: set[str] | None = None,
                              hold: float | None = None) -> None:
        svc = self.fleet.service(service)
        current, _ = self.store.service_releases(service)
        context = {"HINOTORI_SERVICE": service, "HINOTORI_DEPLOYMENT": str(number),
                   "HINOTORI_KIND": kind, "HINOTORI_STRATEGY": strategy,
                   "HINOTORI_FROM_RELEASE": f"v{current}" if current else "",
                   "HINOTORI_TO_RELEASE": f"v{target}",
                   "HINOTORI_ROUTER": self.project.spec.router.listen}
        about = {"service": service, "deployment": number, "kind": kind, "strategy": strategy,
                 "from": context["HINOTORI_FROM_RELEASE"], "to": f"v{target}"}
        hook_tasks: list[asyncio.Task[None]] = []

        def progress(step: str, detail: dict[str, Any]) -> None:
            self.store.add_deployment_step(number, {"step": step, **detail})
            self.notifier.emit("step", **about, step=step, detail=detail)
            if step in ("switched", "promoted") and svc.hooks.post_switch:
                hook_tasks.append(asyncio.create_task(self._hook(
                    number, "post_switch", svc.hooks.post_switch, context, svc.hooks.timeout)))

        self.notifier.emit("started", **about)
        try:
            if svc.hooks.pre_deploy:
                result = await self._hook(number, "pre_deploy", svc.hooks.pre_deploy, context,
                                          svc.hooks.timeout)
                if not result.ok:
                    raise DeployError(f"{service}: the pre-deploy hook failed, nothing was "
                                      f"changed\n{result.describe()}")
            held = self.holding.hold(number, service, hold, context, progress) \
                if hold is not None else None
            summary = await self._strategy(service, kind, target, strategy, progress, only,
                                           held, self.holding.controls.get(number))
            await asyncio.gather(*hook_tasks)
            if svc.hooks.post_deploy:
                await self._hook(number, "post_deploy", svc.hooks.post_deploy, context,
                                 svc.hooks.timeout)
            self.store.finish_deployment(number, "succeeded", actor=ACTOR, summary=summary)
            self.notifier.emit("promoted" if strategy == canary.STRATEGY else "succeeded",
                               **about, summary=summary)
        except HoldEnded as e:  # aborted or expired while held: burned, traffic never moved
            if e.expired:
                self.store.record(ACTOR, "deploy.hold-expired", f"{service}/deployment/{number}",
                                  {"why": e.message})
            self.store.finish_deployment(number, "aborted", actor=ACTOR, error=str(e))
            self.notifier.emit("aborted", **about, error=str(e))
        except HinotoriError as e:
            self.store.finish_deployment(number, "failed", actor=ACTOR, error=str(e))
            rolled_back = isinstance(e, canary.CanaryFailed)
            self.notifier.emit("rolled_back" if rolled_back else "failed", **about,
                               error=str(e))
        except asyncio.CancelledError:
            self.store.finish_deployment(number, "failed", actor=ACTOR,
                                         error="interrupted: the controller stopped")
            raise
        except Exception as e:  # a bug: keep the controller alive and say what happened
            log.exception("deployment %s crashed", number)
            self.store.finish_deployment(number, "failed", actor=ACTOR,
                                         error=f"internal error: {e!r}")
            self.notifier.emit("failed", **about, error=f"internal error: {e!r}")
        finally:
            self.controls.pop(service, None)
            self.fleet.pin(service, None)
            await self.holding.finished(number, service)

    async def _strategy(self, service: str, kind: str, target: int, strategy: str,
                        progress: Any, only: set[str] | None = None,
                        held: Any = None, control: Control | None = None
                        ) -> dict[str, Any]:
        """Run the deployment with the strategy of that name (the registry's)."""
        chosen = STRATEGIES[strategy]()
        run = StrategyRun(fleet=self.fleet, release=self.store.release(service, target),
                          progress=progress, spec=self.fleet.service(service).strategy,
                          kind=kind, only=frozenset(only) if only is not None else None,
                          hold=held, control=control or Control())
        if chosen.controllable:  # the API's pause/resume/promote/abort reach it
            self.controls[service] = run.control
        return await chosen.run(run)

    async def _hook(self, number: int, name: str, argv: list[str], context: dict[str, str],
                    timeout: float) -> HookResult:
        result = await run_hook(name, argv, env=context, cwd=self.project.root,
                                timeout=timeout)
        self.store.add_deployment_step(number, {"step": "hook", "hook": name, "rc": result.rc,
                                                "output": result.output})
        if not result.ok:
            self.store.record(ACTOR, "hook.failed", f"{context['HINOTORI_SERVICE']}/"
                              f"deployment/{number}", {"hook": name, "rc": result.rc})
        return result
