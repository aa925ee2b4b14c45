"""The fleet: the one owner of a project's hosts and of the routing table.

Strategies, the health monitor and the warm-host reaper all change hosts and traffic through
this class, so there is one place where the invariants live:

- a host receives traffic only after it passed its health checks (``boot_healthy``);
- the routing table is derived from the hosts the store says are SERVING; a switch applies the
  new table to the router first and records the new states only after every router worker
  acknowledged it, so a failed switch leaves traffic and state where they were;
- every host state change is saved to the store, which logs it as an event.

It knows providers and the router only through their protocols.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hinotori import faults
from hinotori.deploy.placement import DOWN, USABLE, Seat, place
from hinotori.errors import (
    DeployError,
    MachineUnreachable,
    NotFound,
    ProviderError,
    SecretError,
)
from hinotori.health import Prober, probe, wait_healthy
from hinotori.model import (
    Backend,
    Host,
    HostState,
    ProbeResult,
    Release,
    RoutingTable,
    ServiceRoute,
)
from hinotori.providers.base import BootRequest, Provider, ResolvedSecret, volume_dirs
from hinotori.router.base import Router
from hinotori.spec.schema import ServiceSpec, Spec
from hinotori.store import Store

if TYPE_CHECKING:
    from hinotori.secrets import Secrets

Progress = Callable[[str, dict[str, Any]], None]
# Runs a service's verify checks on a healthy host before it may take traffic: None if they
# passed, else a report of what failed (expected versus got).
Verifier = Callable[[Host], Awaitable[str | None]]
# Told after every switch which hosts joined and which left a service's traffic.
Membership = Callable[[str, list[Host], list[Host]], None]
# Wraps every provider destroy: the log shipper flushes the host before and after it, so a
# host's output is in the central store before the host is gone (invariant 5).
Destroying = Callable[[Host], AbstractAsyncContextManager[None]]

LIVE_STATES = (HostState.BOOTING, HostState.VERIFYING, HostState.READY, HostState.SERVING,
               HostState.DRAINING, HostState.WARM, HostState.JOB)


class StaleSwitch(Exception):
    """A switch decided from serving hosts that another switch changed first: undoing it."""


def _quiet(_: str, __: dict[str, Any]) -> None:
    pass


class Fleet:
    # At most this many provider boots (copy the image, start the host) run at once, whatever
    # the number of hosts asked for: the boots of 1,000 hosts queue instead of starting 1,000
    # copies together. Health and verify waits are not bounded: they are cheap and slow.
    BOOT_PARALLEL = 16

    def __init__(self, *, spec: Spec, store: Store, providers: dict[str, Provider],
                 router: Router, image_root: Callable[[str], Path], hosts_dir: Path,
                 verifier: Verifier | None = None, membership: Membership | None = None,
                 actor: str = "controller", prober: Prober = probe,
                 secrets: Secrets | None = None) -> None:
        self._latest = spec
        self._pinned: dict[str, ServiceSpec] = {}  # service -> as its deployment started
        self._spec = spec
        self.store = store
        self.providers = providers
        self.router = router
        self.image_root = image_root  # digest -> the image's read-only tree
        self.hosts_dir = hosts_dir
        self.verifier = verifier
        self.membership = membership
        self.destroying: Destroying | None = None
        self.actor = actor
        self.prober = prober  # health checks of hosts (a fake provider's in unit tests)
        # Resolves a release's secrets at each boot and masks their values in what is kept.
        self.secrets = secrets
        # up | down | draining of a [machines.NAME]: the controller's machine watch sets it.
        self.machine_state: Callable[[str], str] = lambda _: USABLE
        self._table_lock = asyncio.Lock()
        self.boot_parallel = self.BOOT_PARALLEL
        # Held releases (`deploy --hold`), by service: reachable by preview only. Kept in memory
        # alone: a restarted controller routes without them and burns their hosts (adoption).
        self.previews: dict[str, tuple[int, list[Host]]] = {}

    @property
    def boot_parallel(self) -> int:
        """How many provider boots may run at once."""
        return self._boot_parallel

    @boot_parallel.setter
    def boot_parallel(self, value: int) -> None:
        self._boot_parallel = value
        self._boots: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None

    def _boot_slots(self) -> asyncio.Semaphore:
        """The bound's semaphore of the running loop (a fleet driven by successive
        ``asyncio.run`` calls gets one per loop: a semaphore is bound to its loop)."""
        loop = asyncio.get_running_loop()
        if self._boots is None or self._boots[0] is not loop:
            self._boots = (loop, asyncio.Semaphore(self._boot_parallel))
        return self._boots[1]

    # -- the spec ------------------------------------------------------------------------
    @property
    def spec(self) -> Spec:
        """The spec the fleet acts on: the latest one given, except that a service with a
        running deployment keeps the definition that deployment started with (``pin``)."""
        return self._spec

    @spec.setter
    def spec(self, latest: Spec) -> None:
        self._latest = latest
        self._merge()

    def pin(self, service: str, definition: ServiceSpec | None) -> None:
        """Hold ``service`` at ``definition`` whatever spec arrives later (None: follow the
        latest again). One deployment per service runs at a time, so one pin per service."""
        if definition is None:
            self._pinned.pop(service, None)
        else:
            self._pinned[service] = definition
        self._merge()

    def _merge(self) -> None:
        pinned = {n: s for n, s in self._pinned.items() if self._latest.services.get(n) != s}
        self._spec = self._latest.model_copy(
            update={"services": {**self._latest.services, **pinned}}) if pinned else self._latest

    # -- lookups -------------------------------------------------------------------------
    def service(self, name: str) -> ServiceSpec:
        try:
            return self.spec.services[name]
        except KeyError:
            known = ", ".join(sorted(self.spec.services)) or "none"
            raise NotFound(f"no service {name!r} in the spec (services: {known})") from None

    def provider(self, host_or_service: Host | str) -> Provider:
        if isinstance(host_or_service, Host):
            return self.providers[host_or_service.provider]
        return self.providers[self.service(host_or_service).provider]

    def hosts(self, service: str, *states: HostState) -> list[Host]:
        return self.store.hosts(service, states or None)

    # -- booting -------------------------------------------------------------------------
    async def boot_healthy(self, service: str, release: Release, count: int,
                           progress: Progress = _quiet) -> list[Host]:
        """Boot ``count`` hosts in parallel and return them READY, or destroy every one of
        them and raise DeployError naming the first that failed, its health answer and its last
        log lines."""
        try:  # once for the batch: every host of it gets the same values
            resolved = await self.secrets.boot(release) if self.secrets is not None else ()
        except SecretError as e:
            raise SecretError(f"{service} v{release.number} refused: {e.message}",
                              hint=e.hint) from None
        results = await asyncio.gather(
            *(self._boot_one(service, release, progress, machine, resolved)
              for machine in self.place(service, release, count)),
            return_exceptions=True)
        hosts = [r[0] for r in results if isinstance(r, tuple)]
        failures = [r for r in results if isinstance(r, BaseException)]
        failures += [DeployError(r[1]) for r in results if isinstance(r, tuple) and r[1]]
        if not failures:
            return hosts
        await self.destroy(hosts, why="deployment refused: a new host failed")
        first = failures[0]
        if not isinstance(first, DeployError | ProviderError):
            raise first
        raise DeployError(f"{service} v{release.number} refused: {first.message}",
                          hint="traffic was not switched; fix the release and deploy again")

    def place(self, service: str, release: Release, count: int) -> list[str | None]:
        """The machine of each of ``count`` new hosts: None (this machine) for a service with
        no `machines`; else spread over its usable machines, counting the release's live hosts
        already there (a heal fills the machine that lost one)."""
        svc = self.service(service)
        if not svc.machines:
            return [None] * count
        seats = [Seat(name, self.machine_state(name),
                      self.spec.machines[name].labels.get("zone", "")) for name in svc.machines]
        running = [h.data.get("machine") for h in self.hosts(service, *LIVE_STATES)
                   if h.release == release.number
                   and h.state not in (HostState.WARM, HostState.JOB)]
        return list(place(service, seats, [m for m in running if m], count))

    async def _boot_one(self, service: str, release: Release, progress: Progress,
                        machine: str | None = None, resolved: tuple[ResolvedSecret, ...] = ()
                        ) -> tuple[Host, str | None]:
        """(host, None) when healthy; (host, why) when it booted but failed its checks."""
        svc = self.service(service)
        provider = self.provider(service)
        host_id = f"{service}-{secrets.token_hex(4)}"
        async with self._boot_slots():
            host = await provider.boot(self.boot_request(service, release, host_id, machine,
                                                         resolved=resolved))
        with self.store.transaction():  # booted and verifying: one commit
            self.store.save_host(host, actor=self.actor)
            self._set(host, HostState.VERIFYING)
        progress("host.booted", {"host": host.id, "address": host.address})

        async def alive() -> bool:
            return await provider.adopt(host)

        result = await wait_healthy(host.address or "", svc.health.check(),
                                    deadline=svc.boot_timeout, alive=alive,
                                    prober=self.prober)
        if not result.ok:
            self._set(host, HostState.FAILED, result.detail)
            progress("host.failed", {"host": host.id, "detail": result.detail})
            return host, self._failure_report(host, result)
        failed_checks = await self.verifier(host) if self.verifier else None
        if failed_checks:
            failed_checks = self.mask(failed_checks)
            self._set(host, HostState.FAILED, "failed its verify checks")
            progress("host.failed", {"host": host.id, "detail": "failed its verify checks"})
            return host, f"host {host.id} failed its verify checks:\n{failed_checks}"
        self._set(host, HostState.READY, "passed its checks")
        progress("host.ready", {"host": host.id})
        faults.point("host.ready")
        return host, None

    def boot_request(self, service: str, release: Release, host_id: str,
                     machine: str | None, job: str | None = None,
                     command: tuple[str, ...] = (),
                     resolved: tuple[ResolvedSecret, ...] = ()) -> BootRequest:
        """What a provider is asked to boot: the one place a serving host's and a job
        host's requests are built, so both get the same image, env, volumes and secrets."""
        return BootRequest(host_id=host_id, release=release,
                           image_root=self.image_root(release.image),
                           state_dir=self.hosts_dir / host_id, volumes=self.volumes(service),
                           machine=machine, job=job, command=command, secrets=resolved)

    async def boot_job(self, service: str, release: Release, job: str,
                       command: tuple[str, ...]) -> Host:
        """One run's host of [jobs.``job``], in state JOB: ``command`` is its main process,
        never health-checked nor routed; it is burned when that exits (controller/jobs.py)."""
        host_id = f"{job}-{secrets.token_hex(4)}"
        machine = self.place(service, release, 1)[0]
        resolved = await self.secrets.boot(release) if self.secrets is not None else ()
        request = self.boot_request(service, release, host_id, machine, job, command, resolved)
        host = await self.provider(service).boot(request)
        host.data["job"] = job
        self._set(host, HostState.JOB, f"runs job {job}")
        return host

    def _failure_report(self, host: Host, result: ProbeResult) -> str:
        lines = self.provider(host).logs(host, tail=15)
        log = "\n".join(f"    | {line}" for line in lines) or "    | (no output)"
        return self.mask(f"host {host.id} failed its health check: {result.detail}\n"
                         f"  last log lines of {host.id}:\n{log}")

    def mask(self, text: str) -> str:
        """``text`` with every secret value this controller resolved as ***."""
        return self.secrets.masker.mask(text) if self.secrets is not None else text

    def volumes(self, service: str) -> dict[str, Path]:
        """Each declared volume: a directory that outlives every host of the service."""
        return volume_dirs(self.hosts_dir.parent / "volumes" / service,
                           self.service(service).volumes)

    # -- traffic -------------------------------------------------------------------------
    def routing_table(self, version: int,
                      overrides: Mapping[str, tuple[list[Host], int | None]] | None = None
                      ) -> RoutingTable:
        """The table the store describes; ``overrides`` replaces a service's serving hosts
        and canary release (a switch in the making)."""
        overrides = overrides or {}
        routes = []
        for name, svc in sorted(self.spec.services.items()):
            if name in overrides:
                serving, canary = overrides[name]
            else:
                serving, canary = self.hosts(name, HostState.SERVING), self.store.canary(name)
            backends = tuple(Backend(host_id=h.id, address=h.address or "", release=h.release,
                                     weight=h.weight)
                             for h in serving if h.address and not self.unreachable(h))
            held, held_hosts = self.previews.get(name, (None, []))
            # Weight 0: live traffic never picks them; the preview listener and the header do.
            backends += tuple(Backend(host_id=h.id, address=h.address or "", release=h.release,
                                      weight=0)
                              for h in held_hosts if h.address and not self.unreachable(h))
            routes.append(ServiceRoute(service=name, backends=backends, hosts=tuple(svc.hosts),
                                       path_prefix=svc.path_prefix, canary=canary,
                                       sticky=getattr(svc.strategy, "sticky", False),
                                       maintenance=self.store.maintenance(name),
                                       preview=held))
        fleet = any(svc.machines for svc in self.spec.services.values())
        lost = sorted({h.address for h in self.store.hosts(states=[*LIVE_STATES, HostState.LOST])
                       if h.address and self.unreachable(h)}) if fleet else []
        return RoutingTable(version=version, routes=tuple(routes), lost=tuple(lost))

    async def switch(self, service: str, serve: list[Host], retire: list[Host], why: str, *,
                     weights: Mapping[str, int] | None = None,
                     canary: int | None = None,
                     expect: Collection[str] | None = None) -> float:
        """Atomically route ``service`` to exactly ``serve`` (with ``weights`` by host id,
        default 100 each, and ``canary`` naming the release under test); ``retire`` go
        DRAINING. Returns how long the router took to acknowledge, in seconds. ``expect``: the
        serving ids the caller decided from; if another switch changed them first, StaleSwitch."""
        # A host on a machine seen down is never routed again, whoever still holds it in a list
        # (a running canary's stable set, a heal): it is LOST, and burned when the machine is back.
        serve = [h for h in serve if not self.unreachable(h)]
        async with self._table_lock:
            self.previews.pop(service, None)  # a switch ends any hold: its hosts serve or go
            before = {h.id for h in self.hosts(service, HostState.SERVING)}
            if expect is not None and before != set(expect):
                raise StaleSwitch(f"{service}'s serving hosts changed before this switch")
            for host in serve:
                host.weight = (weights or {}).get(host.id, 100)
            table = self.routing_table(self.store.next_counter("table_version"),
                                       {service: (serve, canary)})
            faults.point("switch.before-apply")
            started = time.perf_counter()
            try:
                await self.router.apply(table)
            except BaseException:
                # Traffic stayed where it was; hosts booted for this switch would serve nobody
                # and leak (invariant 3), whichever strategy or heal booted them.
                fresh = [h for h in serve if h.state == HostState.READY]
                with contextlib.suppress(Exception):
                    await self.destroy(fresh, why="the switch that would have routed it failed")
                raise
            took = time.perf_counter() - started
            faults.point("switch.after-apply")  # the router is ahead of the store here
            serving_ids = {h.id for h in serve}
            leaving = [h for h in retire if h.id not in serving_ids]
            for host in leaving:
                host.weight = 100
            with self.store.transaction():  # one commit for the whole switch, not one per host
                self._set_many(serve, HostState.SERVING, why)
                self._set_many(leaving, HostState.DRAINING, why)
            if self.store.canary(service) != canary:
                self.store.set_canary(service, canary, actor=self.actor, why=why)
            joined = [h for h in serve if h.id not in before]
            left = [h for h in retire if h.id in before and h.id not in serving_ids]
            if self.membership and (joined or left):
                self.membership(service, joined, left)
        return took

    async def preview(self, service: str, release: int | None, hosts: list[Host]) -> float:
        """Route ``hosts`` (READY, of ``release``) for preview only, or (None) stop; live
        traffic is untouched either way. Returns how long the router took to acknowledge."""
        async with self._table_lock:
            before = self.previews.get(service)
            if release is None:
                self.previews.pop(service, None)
            else:
                self.previews[service] = (release, list(hosts))
            started = time.perf_counter()
            try:
                await self.router.apply(self.routing_table(
                    self.store.next_counter("table_version")))
            except BaseException:
                if before is None:
                    self.previews.pop(service, None)
                else:
                    self.previews[service] = before
                raise
            return time.perf_counter() - started

    async def sync_router(self) -> None:
        """Make the router serve what the store says (at controller start)."""
        async with self._table_lock:
            await self.router.apply(self.routing_table(self.store.next_counter("table_version")))

    async def drain(self, hosts: list[Host], timeout: float) -> float:
        """Wait until the router has no request in flight to ``hosts`` (or ``timeout``)."""
        started = time.monotonic()
        ids = {h.id for h in hosts}
        while ids and time.monotonic() - started < timeout:
            stats = await self.router.stats()
            if all(stats[i].active == 0 for i in ids if i in stats):
                break
            await asyncio.sleep(0.05)
        return time.monotonic() - started

    def keep_warm(self, hosts: list[Host], seconds: float) -> None:
        until = time.time() + seconds
        for host in hosts:
            host.warm_until = until
        self._set_many(hosts, HostState.WARM, "kept warm for instant rollback")

    async def healthy_now(self, hosts: list[Host]) -> bool:
        """One probe of each host: all alive and answering their health check."""
        async def one(host: Host) -> bool:
            check = self.service(host.service).health.check()
            return await self.provider(host).adopt(host) and \
                (await self.prober(host.address or "", check)).ok
        return all(await asyncio.gather(*(one(h) for h in hosts)))

    # -- burning -------------------------------------------------------------------------
    def unreachable(self, host: Host) -> bool:
        """The host is on a machine the controller sees down."""
        machine = host.data.get("machine")
        return machine is not None and self.machine_state(machine) == DOWN

    async def destroy(self, hosts: list[Host], why: str) -> None:
        async def one(host: Host) -> None:
            grace = self.service(host.service).stop_grace if host.service in \
                self.spec.services else 10.0
            around = self.destroying(host) if self.destroying else contextlib.nullcontext()
            try:
                async with around:
                    await self.provider(host).destroy(host, grace=grace)
            except MachineUnreachable as e:
                # Nothing can be burned on a machine nobody reaches: burned when it is back.
                host.warm_until = None
                self._set(host, HostState.LOST, f"{why}; its machine is unreachable: "
                                                f"{e.message[:200]}")
                return
            host.warm_until = None
            self._set(host, HostState.DESTROYED, why)
        await asyncio.gather(*(one(h) for h in hosts))

    def _set(self, host: Host, state: HostState, why: str = "") -> None:
        """Save the host in ``state``; the store logs an event when the state changed."""
        host.state = state
        self.store.save_host(host, actor=self.actor, why=why)

    def _set_many(self, hosts: list[Host], state: HostState, why: str = "") -> None:
        """``_set`` for each of ``hosts``, in one transaction."""
        for host in hosts:
            host.state = state
        self.store.save_hosts(hosts, actor=self.actor, why=why)
