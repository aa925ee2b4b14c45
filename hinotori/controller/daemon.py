"""The controller: the long-running control plane of one project (`hinotori up`).

It owns the router and the providers through a Fleet, serves the local API, and runs two small
loops: the health monitor (a serving host that dies or keeps failing its health check is taken
out of traffic while a healthy one remains) and the reaper (warm hosts past keep_previous are
burned).

The data plane and the hosts are separate processes that outlive the controller. So a controller
killed with SIGKILL loses nothing: the next one adopts the router workers, re-adopts every live
host the store knows, destroys hosts nobody knows (orphans) and hosts a half-done deployment
left unrouted, marks that deployment failed, and re-applies the table the store describes.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import math
import os
import random
import signal
import socket
import sys
import time
from typing import Any

from hinotori.controller.discovery import render_discovery
from hinotori.controller.notify import Notifier
from hinotori.deploy import bluegreen, canary, rolling
from hinotori.deploy.fleet import LIVE_STATES, Fleet
from hinotori.deploy.hooks import HookResult, run_hook
from hinotori.deploy.locks import ServiceLocks
from hinotori.errors import (
    ControllerError,
    DeployError,
    HinotoriError,
    LockedError,
    Unauthorised,
)
from hinotori.health import probe
from hinotori.model import Host, HostState
from hinotori.observe.logs import LogPipeline, LogStore, logs_db
from hinotori.observe.metrics import MetricsRecorder, MetricsStore, chain_destroying, metrics_db
from hinotori.project import Project
from hinotori.providers.base import Provider
from hinotori.providers.container import ContainerProvider
from hinotori.providers.process import ProcessProvider
from hinotori.router.base import Router
from hinotori.router.builtin import BuiltinRouter
from hinotori.router.haproxy import HaproxyRouter
from hinotori.spec.schema import CanarySpec, RollingSpec
from hinotori.statefiles import open_private, write_private
from hinotori.verify.runner import VerifyPlan, fleet_verifier

log = logging.getLogger("hinotori.controller")

ACTOR = "controller"
UNROUTED = (HostState.BOOTING, HostState.VERIFYING, HostState.READY)


def make_providers(project: Project) -> dict[str, Provider]:
    providers: dict[str, Provider] = {"process": ProcessProvider(project.hosts_dir)}
    # Only a project with container hosts (declared, or still recorded) gets the container
    # provider, and it reaches the engine on first use: process-only projects never need one.
    if any(s.provider == "container" for s in project.spec.services.values()) or any(
            h.provider == "container" for h in project.store.hosts(states=LIVE_STATES)):
        providers["container"] = ContainerProvider(
            project.spec.project.name, url=project.spec.engine.url, state_dir=project.state_dir)
    return providers


def make_router(project: Project) -> Router:
    r = project.spec.router
    if r.kind == "haproxy":
        return HaproxyRouter(project.router_dir, r.listen, workers=r.workers,
                             haproxy=r.haproxy, maxconn=r.maxconn,
                             latency_log_rate=r.latency_log_rate,
                             retry_unanswered=r.retry_unanswered)
    return BuiltinRouter(project.router_dir, r.listen, workers=r.workers)


def make_fleet(project: Project, actor: str = ACTOR) -> Fleet:
    providers = make_providers(project)
    fleet = Fleet(spec=project.spec, store=project.store, providers=providers,
                  router=make_router(project), image_root=lambda d: project.images.rootfs(d),
                  hosts_dir=project.hosts_dir, actor=actor)

    def plan_of(service: str) -> VerifyPlan | None:
        """The service's checks, read from the spec as it is now (reloaded per deployment)."""
        svc = fleet.spec.services.get(service)
        if svc is None:
            return None
        return VerifyPlan(checks=tuple(svc.checks),
                          testinfra=tuple(project.root / t for t in svc.testinfra),
                          # A container runs its image's python3, not this controller's.
                          python=sys.executable if svc.provider == "process" else "python3")

    # No host takes traffic before its service's checks pass on it (invariant 2).
    fleet.verifier = fleet_verifier(providers, plan_of)
    return fleet


class Controller:
    def __init__(self, project: Project) -> None:
        self.project = project
        self.store = project.store
        self.fleet = make_fleet(project)
        self.fleet.membership = self._membership
        self.locks = ServiceLocks()
        self.controls: dict[str, canary.Control] = {}  # running canaries, by service
        notify = project.spec.notify
        self.notifier = Notifier(notify.webhooks, timeout=notify.timeout)
        self._notify_task: asyncio.Task[Any] | None = None
        self.stopping = asyncio.Event()
        self.teardown = False  # set by `down`: also destroy hosts and stop the router
        self.started_at = time.time()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._failures: dict[str, int] = {}
        self._heal_after: dict[str, float] = {}  # back-off after a failed heal
        self._rng = random.Random()
        self._lock_file: Any = None
        self.logs = self._log_pipeline()
        self.metrics = self._metrics_recorder()
        # Before a host goes: flush its logs, and keep what it counted since the last sample.
        self.fleet.destroying = chain_destroying(self.logs.shipper.destroying,
                                                 self.metrics.destroying)
        self._logs_task: asyncio.Task[Any] | None = None
        self._metrics_task: asyncio.Task[Any] | None = None
        self._metrics_stopped = False

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
        await self.adopt()
        self.spawn(self._monitor_loop())
        self._notify_task = self.spawn(self.notifier.run())
        # Not in spawn()'s set: it stops last, after a teardown has flushed every host.
        self._logs_task = asyncio.create_task(self.logs.run())
        # Not in spawn()'s set either: its last sample needs the router, after a teardown's
        # destroys (whose final counts it stores) and before the router stops.
        self._metrics_task = asyncio.create_task(self.metrics.run())
        self.spawn(self._reaper_loop())
        self.store.record(ACTOR, "controller.started", self.project.spec.project.name,
                          {"pid": os.getpid()})

    async def adopt(self) -> None:
        """Find the same truth after a restart (see the module docstring).

        Order matters: first make the router serve exactly what the store says (live serving
        hosts; an abandoned canary rolled back), and only then burn what is not routed. A
        controller killed between a router switch and its store write leaves the router ahead
        of the store; routing first means no request goes to a host we are about to burn."""
        fleet, known = self.fleet, set()
        unrouted: list[Host] = []
        for host in self.store.hosts(states=LIVE_STATES):
            known.add(host.id)
            if host.provider not in fleet.providers or not await fleet.provider(host).adopt(host):
                fleet._set(host, HostState.FAILED, "found dead when the controller started")
                await fleet.destroy([host], why="found dead when the controller started")
            elif host.state in UNROUTED:
                unrouted.append(host)
            elif host.state == HostState.DRAINING:
                fleet.keep_warm([host], fleet.service(host.service).keep_previous
                                if host.service in fleet.spec.services else 0)
        for dep in self.store.deployments():
            if dep["state"] == "running":
                self.store.finish_deployment(dep["id"], "failed", actor=ACTOR,
                                             error="interrupted: the controller stopped")
        for name in fleet.spec.services:
            await self._abandon_canary(name)
        await fleet.sync_router()
        await fleet.destroy(unrouted, why="left unrouted by an interrupted deployment")
        for provider in fleet.providers.values():
            orphans = [h for h in await provider.list() if h.id not in known]
            for orphan in orphans:
                await provider.destroy(orphan, grace=5.0)
                self.store.record(ACTOR, "host.orphan-destroyed", f"{orphan.service}/{orphan.id}",
                                  {"pid": orphan.pid})
        render_discovery(self.project.state_dir / "discovery", fleet)

    def _membership(self, service: str, joined: list[Host], left: list[Host]) -> None:
        """Hosts joined or left a service's traffic: re-render the discovery files and run the
        spec's on_join/on_leave hooks (in the background: membership never blocks a switch)."""
        render_discovery(self.project.state_dir / "discovery", self.fleet)
        svc = self.fleet.service(service)
        for event, hosts, argv in (("join", joined, svc.hooks.on_join),
                                   ("leave", left, svc.hooks.on_leave)):
            for host in hosts:
                self.store.record(ACTOR, f"member.{event}", f"{service}/{host.id}",
                                  {"address": host.address, "release": f"v{host.release}"})
                if self.fleet.spec.membership.serf:
                    self.spawn(self._serf_event(event, service, host))
                if argv:
                    env = {"HINOTORI_SERVICE": service, "HINOTORI_EVENT": event,
                           "HINOTORI_HOST_ID": host.id, "HINOTORI_HOST_ADDRESS":
                           host.address or "", "HINOTORI_RELEASE": f"v{host.release}"}
                    self.spawn(run_hook(f"on_{event}", argv, env=env, cwd=self.project.root,
                                        timeout=svc.hooks.timeout))

    async def _serf_event(self, event: str, service: str, host: Host) -> None:
        """Tell the Serf cluster (through the local agent's RPC) that a member joined or left;
        a failure is an event here, never a failed switch."""
        payload = json.dumps({"event": event, "service": service, "host": host.id,
                              "address": host.address, "release": f"v{host.release}"},
                             separators=(",", ":"))
        argv = ["serf", "event", f"-rpc-addr={self.fleet.spec.membership.serf}",
                "-coalesce=false", "hinotori-member", payload]
        result = await run_hook("serf", argv, env={}, cwd=self.project.root, timeout=10)
        if not result.ok:
            self.store.record(ACTOR, "member.serf-failed", f"{service}/{host.id}",
                              {"rc": result.rc, "output": result.output[-300:]})

    async def _abandon_canary(self, service: str) -> None:
        """A canary nobody judges any more (its controller died) goes back to stable."""
        release = self.store.canary(service)
        if release is None:
            return
        serving = self.fleet.hosts(service, HostState.SERVING)
        stable = [h for h in serving if h.release != release]
        tested = [h for h in serving if h.release == release]
        why = "interrupted canary rolled back when the controller started"
        if stable:
            await self.fleet.switch(service, stable, tested, why=why, canary=None)
            await self.fleet.destroy(tested, why=why)
        else:
            self.store.set_canary(service, None, actor=ACTOR, why=why)

    def _log_pipeline(self) -> LogPipeline:
        """Ships every live host's output (and its service's log_files) to .hinotori/logs.db."""
        def declared(service: str) -> list[str]:
            svc = self.fleet.spec.services.get(service)
            return list(svc.log_files) if svc else []

        def event(action: str, subject: str, detail: dict[str, Any]) -> None:
            self.store.record(ACTOR, action, subject, detail)

        return LogPipeline(LogStore(logs_db(self.project.state_dir)), self.project.spec.logs,
                           hosts=lambda: self.store.hosts(states=LIVE_STATES),
                           declared=declared, on_event=event)

    def _metrics_recorder(self) -> MetricsRecorder:
        """Per-release history in .hinotori/metrics.db, sampled from the router and providers."""
        async def usage(host: Host) -> Any:
            provider = self.fleet.providers.get(host.provider)
            return await provider.usage(host) if provider is not None else None

        return MetricsRecorder(MetricsStore(metrics_db(self.project.state_dir)),
                               self.project.spec.metrics, stats=self.fleet.router.stats,
                               hosts=self.store.hosts, usage=usage)

    async def _stop_metrics(self) -> None:
        """Stop sampling after one last sample (run() takes it when cancelled; a controller
        that never started, as in `down` without one, takes it here while the router runs)."""
        if self._metrics_task is not None:
            self._metrics_task.cancel()
            await asyncio.gather(self._metrics_task, return_exceptions=True)
            self._metrics_task = None
        elif not self._metrics_stopped:
            try:
                await self.metrics.sample_once()
            except Exception as e:  # the router may be gone already: nothing left to count
                log.warning("last metrics sample failed: %r", e)
        self._metrics_stopped = True

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.teardown:
            hosts = self.store.hosts(states=LIVE_STATES)
            await self.fleet.destroy(hosts, why="hinotori down")
            await self._stop_metrics()
            await self.fleet.router.stop()
        await self._stop_metrics()
        if self._logs_task is not None:
            self._logs_task.cancel()
            await asyncio.gather(self._logs_task, return_exceptions=True)
        self.store.record(ACTOR, "controller.stopped", self.project.spec.project.name,
                          {"teardown": self.teardown})
        with contextlib.suppress(FileNotFoundError):
            self.project.controller_file.unlink()

    # -- deployments ---------------------------------------------------------------------
    async def start_deployment(self, service: str, *, kind: str, release: int | None,
                               lock_wait: float, actor: str, replace: bool = False,
                               reason: str = "", strategy: str | None = None,
                               only: set[str] | None = None) -> int | None:
        """Take the service's lock, record the deployment and run it in the background.
        Returns its id, or None when the wanted release is already serving (unless
        ``replace``: then its hosts are replaced by fresh ones, e.g. because they drifted)."""
        self.reload_spec()
        self.fleet.service(service)
        hold = self.locks.hold(service, f"a {kind} by {actor}", wait=lock_wait)
        await hold.__aenter__()
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
                serving = self.fleet.hosts(service, HostState.SERVING)
                if target == current and serving and not replace:
                    await hold.__aexit__(None, None, None)
                    return None
            spec_strategy = self.fleet.service(service).strategy
            chosen = strategy or spec_strategy.kind
            if chosen not in (bluegreen.STRATEGY, canary.STRATEGY, rolling.STRATEGY):
                raise DeployError(f"unknown strategy {chosen!r}",
                                  hint="use blue-green, canary or rolling")
            if kind == "rollback":
                chosen = bluegreen.STRATEGY  # going back is one switch, never a slow ramp
            if kind == "phoenix":
                chosen = rolling.STRATEGY  # one host at a time, never below replicas
            number = self.store.create_deployment(
                service, strategy=chosen, kind=kind, from_release=current,
                to_release=target, actor=actor, reason=reason)
        except BaseException:
            await hold.__aexit__(None, None, None)
            raise
        self.spawn(self._run_deployment(number, service, kind, target, hold, chosen, only))
        return number

    def reload_spec(self) -> None:
        """Each deployment runs with the spec as it is on disk now (strategy, hooks, replicas,
        timeouts), like the CLI that asked for it; an invalid spec refuses the deployment."""
        fresh = Project.load(self.project.loaded.path).spec
        if fresh == self.fleet.spec:
            return
        if fresh.router != self.project.spec.router:
            note = "takes effect at the next `hinotori up`"
            if fresh.router.kind != self.project.spec.router.kind:
                # Two data planes cannot share the listen address: the running one must go.
                note = (f"router kind {self.project.spec.router.kind} -> {fresh.router.kind}: "
                        "run `hinotori down` then `hinotori up` to switch data planes")
            self.store.record(ACTOR, "spec.router-changed", fresh.project.name, {"note": note})
        self.fleet.spec = fresh
        if fresh.notify != self.project.spec.notify:
            if self._notify_task is not None:
                self._notify_task.cancel()
            self.notifier.set_urls(fresh.notify.webhooks)
            self.notifier.timeout = fresh.notify.timeout
            self._notify_task = self.spawn(self.notifier.run())
        self.project.spec = fresh
        # A service that moved to (or arrived with) a new provider: add it in place, so the
        # fleet and its verifier, which share this dict, both see it.
        for name, provider in make_providers(self.project).items():
            self.fleet.providers.setdefault(name, provider)

    def control(self, service: str, action: str) -> None:
        """pause | resume | promote | abort the running canary of ``service``."""
        self.fleet.service(service)
        control = self.controls.get(service)
        if control is None:
            raise DeployError(f"{service} has no canary deployment running",
                              hint="pause, resume, promote and abort act on a running canary")
        control.request(action)
        self.store.record(ACTOR, f"deploy.{action}", service, {"by": "operator"})

    async def _run_deployment(self, number: int, service: str, kind: str, target: int,
                              hold: Any, strategy: str, only: set[str] | None = None) -> None:
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
            summary = await self._strategy(service, kind, target, strategy, progress, only)
            await asyncio.gather(*hook_tasks)
            if svc.hooks.post_deploy:
                await self._hook(number, "post_deploy", svc.hooks.post_deploy, context,
                                 svc.hooks.timeout)
            self.store.finish_deployment(number, "succeeded", actor=ACTOR, summary=summary)
            self.notifier.emit("promoted" if strategy == canary.STRATEGY else "succeeded",
                               **about, summary=summary)
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
            await hold.__aexit__(None, None, None)

    async def _strategy(self, service: str, kind: str, target: int, strategy: str,
                        progress: Any, only: set[str] | None = None) -> dict[str, Any]:
        spec = self.fleet.service(service).strategy
        if kind == "rollback":
            return await bluegreen.rollback(self.fleet, service, progress)
        release = self.store.release(service, target)
        if kind == "phoenix":
            return await rolling.deploy(self.fleet, release, progress,
                                        RollingSpec(kind="rolling", max_surge=1,
                                                    max_unavailable=0),
                                        kind="phoenix", only=only)
        if strategy == canary.STRATEGY:
            control = self.controls[service] = canary.Control()
            return await canary.deploy(
                self.fleet, release, progress, control,
                spec if isinstance(spec, CanarySpec) else CanarySpec(kind="canary"))
        if strategy == rolling.STRATEGY:
            return await rolling.deploy(
                self.fleet, release, progress,
                spec if isinstance(spec, RollingSpec) else RollingSpec(kind="rolling"))
        return await bluegreen.deploy(self.fleet, release, progress)

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

    # -- loops ---------------------------------------------------------------------------
    async def _monitor_loop(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            try:
                await self._monitor_once()
            except Exception:
                log.exception("health monitor pass failed")

    async def _monitor_once(self) -> None:
        """Self-healing. A serving host that died or keeps failing its health check is taken
        out of traffic while a healthy one remains (invariant 2, without emptying a service);
        then a service below its replicas gets fresh, health-gated hosts of its release."""
        for service in self.fleet.spec.services:
            if self.locks.locked(service):
                continue  # a deployment (or a heal) owns the service's hosts right now
            serving = self.fleet.hosts(service, HostState.SERVING)
            bad: list[tuple[Host, str]] = []
            check = self.fleet.service(service).health.check()
            for host in serving:
                if not await self.fleet.provider(host).adopt(host):
                    bad.append((host, "process exited"))
                    continue
                result = await probe(host.address or "", check)
                fails = 0 if result.ok else self._failures.get(host.id, 0) + 1
                self._failures[host.id] = fails
                if fails >= check.unhealthy:
                    bad.append((host, f"failed {fails} health checks: {result.detail}"))
            healthy = [h for h in serving if h.id not in {b.id for b, _ in bad}]
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
                self.spawn(self._heal(service, current, missing))

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
        except LockedError:
            pass  # a deployment started meanwhile: it owns the hosts
        except HinotoriError as e:
            self._heal_after[service] = time.time() + 5.0  # back off, then try again
            self.store.record(ACTOR, "service.heal-failed", service, {"error": str(e)[:500]})

    async def _rotate_aged(self) -> None:
        """Phoenix by age: serving hosts older than the service's max_age are replaced, one at a
        time, by the same release from its image."""
        now = time.time()
        for name, svc in self.fleet.spec.services.items():
            if svc.max_age is None or svc.stateful or self.locks.locked(name):
                continue  # stateful services are never burned on purpose
            aged = {h.id for h in self.fleet.hosts(name, HostState.SERVING)
                    if now - h.born_at > svc.max_age}
            if aged:
                await self.start_deployment(name, kind="phoenix", release=None, lock_wait=0,
                                            actor="controller (max_age)", only=aged,
                                            reason=f"{len(aged)} host(s) older than max_age")

    async def push(self, body: bytes, signature: str | None) -> list[str]:
        """Continuous delivery: verify a push's HMAC-SHA256 signature, then bake and deploy
        every service whose `ship_on` names its repository and branch."""
        secret = os.environ.get(self.fleet.spec.webhook.secret_env, "")
        expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        if not secret or not signature or not hmac.compare_digest(signature, expected):
            self.store.record("webhook", "webhook.rejected", "push",
                              {"why": "no secret configured" if not secret else
                               "unsigned" if not signature else "bad signature"})
            raise Unauthorised("push refused: missing or bad X-Hub-Signature-256",
                               hint=f"sign the body with the secret in "
                                    f"${self.fleet.spec.webhook.secret_env}")
        try:
            event = json.loads(body)
            repository = event["repository"]["full_name"]
            branch = event["ref"].removeprefix("refs/heads/")
        except (ValueError, KeyError, TypeError, AttributeError):
            raise DeployError("push payload is not a GitHub-style push event",
                              hint="it needs ref and repository.full_name") from None
        self.reload_spec()
        shipped = [name for name, svc in self.fleet.spec.services.items()
                   if svc.ship_on and svc.ship_on.repository == repository
                   and svc.ship_on.branch == branch]
        self.store.record("webhook", "webhook.push", repository,
                          {"branch": branch, "commit": event.get("after"), "ships": shipped})
        for name in shipped:
            self.spawn(self._ship(name, f"push {repository}@{branch} "
                                        f"{str(event.get('after', ''))[:12]}"))
        return shipped

    async def _ship(self, service: str, why: str) -> None:
        """bake -> deploy with the spec's strategy (the bake runs in a thread: it is slow)."""
        from hinotori.releases import bake_service

        try:
            _, outcome = await asyncio.to_thread(bake_service, self.project, service)
            await self.start_deployment(service, kind="deploy", release=outcome.release.number,
                                        lock_wait=600, actor="webhook", reason=why)
        except HinotoriError as e:
            self.store.record("webhook", "ship.failed", service, {"error": str(e)[:500]})

    async def _scheduled_chaos(self, tick: float = 1.0) -> None:
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

    async def kill(self, host_id: str, actor: str) -> Host:
        """Chaos: kill one serving host abruptly; the self-healing loop replaces it."""
        host = self.store.host(host_id)
        if host.state != HostState.SERVING:
            raise DeployError(f"host {host_id} is {host.state}, not serving")
        if self.fleet.service(host.service).stateful:
            raise DeployError(f"{host.service} is stateful: chaos never kills it",
                              hint="stateful services are left alone by chaos and phoenix")
        await self.fleet.provider(host).kill(host)
        self.store.record(actor, "chaos.kill", f"{host.service}/{host.id}", {"pid": host.pid})
        return host

    async def _reaper_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                now = time.time()
                expired = [h for h in self.store.hosts(states=[HostState.WARM])
                           if (h.warm_until or 0) <= now and not self.locks.locked(h.service)]
                if expired:
                    await self.fleet.destroy(expired, why="keep_previous expired")
                await self._rotate_aged()
                await self._scheduled_chaos()
            except Exception:
                log.exception("reaper pass failed")


def bind_api_socket(listen: str) -> socket.socket:
    host, _, port = listen.rpartition(":")
    # proto=IPPROTO_TCP, so the connections it accepts carry it too and asyncio sets
    # TCP_NODELAY on them (it checks sock.proto): otherwise uvicorn's separate header and body
    # writes meet Nagle and delayed ACKs, and every API answer takes 40 ms more.
    sock = socket.socket(socket.AF_INET6 if host.startswith("[") else socket.AF_INET,
                         socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), int(port)))
    except OSError as e:
        sock.close()
        raise ControllerError(f"cannot listen on {listen} for the API: {e.strerror}",
                              hint="change [controller] listen, or use port 0 for any") from None
    sock.listen(128)
    return sock


async def serve(project: Project) -> None:
    """Run the controller until SIGTERM/SIGINT (controller only) or `down` (everything)."""
    import uvicorn

    from hinotori.controller.api import create_app

    controller = Controller(project)
    await controller.start()
    sock = bind_api_socket(project.spec.controller.listen)
    address = "{}:{}".format(*sock.getsockname()[:2])
    app = create_app(controller, project.token())
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off",
                                           access_log=False))
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, controller.stopping.set)
    api = asyncio.create_task(server.serve(sockets=[sock]))
    info = {"pid": os.getpid(), "address": address, "started_at": controller.started_at,
            "router": project.spec.router.listen}
    write_private(project.controller_file, json.dumps(info),
                  tmp=project.controller_file.with_suffix(".tmp"))
    log.info("controller up: api http://%s, router %s", address, project.spec.router.listen)
    try:
        await controller.stopping.wait()
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(api, 5)
        await controller.stop()
