"""Observing: the controller's log pipeline and metrics recorder, their loops, and what a
reloaded spec changes in ``[logs]`` and ``[metrics]``.

On a reload each changed key is applied where that is safe (``LIVE_KEYS``): retention, size and
ship interval at the next pass, the metrics interval and retentions at the next sample; a changed
``[[logs.forward]]`` list restarts the log pipeline (each forwarder resumes at its stored
cursor). Applied changes are recorded as ``spec.applied``; any other changed key as
``spec.restart-needed`` naming the table and what to do. Nothing is silently ignored.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection
from typing import Any

from pydantic import BaseModel

from hinotori.controller.hostcache import LiveHosts
from hinotori.controller.tasks import Tasks
from hinotori.controller.wiring import ACTOR
from hinotori.deploy.fleet import LIVE_STATES, Fleet
from hinotori.errors import RouterError
from hinotori.model import Host
from hinotori.observe.logs import LogPipeline, LogStore, logs_db
from hinotori.observe.logs.forward import forward_loop
from hinotori.observe.logs.sources import ProviderSources
from hinotori.observe.metrics import MetricsRecorder, MetricsStore, chain_destroying, metrics_db
from hinotori.project import Project
from hinotori.spec.schema import Spec

log = logging.getLogger("hinotori.controller")

LIVE_KEYS = {"logs": frozenset({"retention", "max_size", "ship_interval", "forward"}),
             "metrics": frozenset({"interval", "retention_10s", "retention_1m"})}
RESTART = ("restart the controller to apply it (stop it with SIGTERM or Ctrl-C, then "
           "`hinotori up`); hosts and router keep serving meanwhile")


def changed_keys(old: BaseModel, new: BaseModel, live: Collection[str]
                 ) -> tuple[list[str], list[str]]:
    """The keys of a table that differ: (applicable now, needing a restart)."""
    changed = [k for k in type(new).model_fields if getattr(old, k) != getattr(new, k)]
    return [k for k in changed if k in live], [k for k in changed if k not in live]


class Observing:
    def __init__(self, project: Project, fleet: Fleet, tasks: Tasks) -> None:
        self.project = project
        self.fleet = fleet
        self.store = project.store
        self.tasks = tasks
        self.logs = self._log_pipeline()
        self.metrics = self._metrics_recorder()
        # Before a host goes: flush its logs, and keep what it counted since the last sample.
        fleet.destroying = chain_destroying(self.logs.shipper.destroying,
                                            self.metrics.destroying)
        self._metrics_stopped = False
        self._restarting = asyncio.Lock()
        self._learned = False

    def _learn_secrets(self) -> None:
        """Let the masker know the secrets of the hosts this controller adopted (and of the
        spec as it is): their values were resolved by the controller before it."""
        releases = {(h.service, h.release) for h in self.store.hosts(states=LIVE_STATES)}
        configs = []
        for service, number in releases:
            try:
                configs.append(self.store.release(service, number).config)
            except Exception:  # a release the store lost: nothing to learn from it
                continue
        configs += [s.release_config() for s in self.project.spec.services.values()]
        self.project.secrets.learn(configs)

    def _event(self, action: str, subject: str, detail: dict[str, Any]) -> None:
        self.store.record(ACTOR, action, subject, detail)

    def _log_pipeline(self) -> LogPipeline:
        """Ships every live host's output (and its service's log_files) to .hinotori/logs.db."""
        def declared(service: str) -> list[str]:
            svc = self.fleet.spec.services.get(service)
            return list(svc.log_files) if svc else []

        store = LogStore(logs_db(self.project.state_dir))
        store.mask = self.project.secrets.masker.mask  # a line holding a secret: stored as ***
        return LogPipeline(store, self.project.spec.logs,
                           hosts=LiveHosts(self.store),  # re-read only when changed
                           declared=declared, on_event=self._event,
                           sources=ProviderSources(lambda: self.fleet.providers))

    def _metrics_recorder(self) -> MetricsRecorder:
        """Per-release history in .hinotori/metrics.db, sampled from the router and providers."""
        async def usage(host: Host) -> Any:
            provider = self.fleet.providers.get(host.provider)
            return await provider.usage(host) if provider is not None else None

        async def usages(hosts: list[Host]) -> dict[str, Any]:
            """One call per provider: the process provider reads /proc once for all."""
            by_provider: dict[str, list[Host]] = {}
            for h in hosts:
                by_provider.setdefault(h.provider, []).append(h)
            found: dict[str, Any] = {}
            for name, group in by_provider.items():
                provider = self.fleet.providers.get(name)
                if provider is None:
                    continue
                try:
                    if hasattr(provider, "usages"):
                        found.update(await provider.usages(group))
                        continue
                except Exception as e:  # this provider cannot tell now; the others can
                    log.warning("usage of %s hosts failed: %r", name, e)
                    continue
                each = await asyncio.gather(*(provider.usage(h) for h in group),
                                            return_exceptions=True)
                found.update((h.id, u) for h, u in zip(group, each, strict=True))
            return found

        return MetricsRecorder(MetricsStore(metrics_db(self.project.state_dir)),
                               self.project.spec.metrics, stats=self.fleet.router.stats,
                               # every host, destroyed ones too: read again only when
                               # the store changed
                               hosts=LiveHosts(self.store, states=None), usage=usage,
                               usages=usages)

    def start(self) -> None:
        async def logs() -> None:
            if not self._learned:  # before the first line is shipped
                await asyncio.to_thread(self._learn_secrets)
                self._learned = True
            await self.logs.run()

        self.tasks.loop("logs", logs)
        self.tasks.loop("metrics", self.metrics.run)

    async def stop_metrics(self) -> None:
        """Stop sampling after one last sample (run() takes it when cancelled; a controller
        that never started, as in `down` without one, takes it here while the router runs)."""
        if "metrics" in self.tasks.loops:
            await self.tasks.cancel("metrics")
        elif not self._metrics_stopped:
            try:
                await self.metrics.sample_once()
            except RouterError as e:  # no router running (a second `down`): nothing to count
                log.info("no last metrics sample: %s", e.message)
            except Exception as e:
                log.warning("last metrics sample failed: %r", e)
        self._metrics_stopped = True

    async def stop_logs(self) -> None:
        await self.tasks.cancel("logs")

    # -- a reloaded spec -----------------------------------------------------------------
    def apply(self, old: Spec, fresh: Spec, restart: Callable[[], Any]) -> None:
        """Apply what changed in [logs] and [metrics]; ``restart`` runs a coroutine in the
        background (the log pipeline restarts there when its forwarders changed)."""
        name = fresh.project.name
        for table, target in (("logs", self.logs), ("metrics", self.metrics)):
            live, later = changed_keys(getattr(old, table), getattr(fresh, table),
                                       LIVE_KEYS[table])
            if live:
                target.spec = getattr(fresh, table)
                self._event("spec.applied", name, {"table": table, "keys": live})
            if later:
                self._event("spec.restart-needed", name,
                            {"table": table, "keys": later, "note": f"[{table}] {RESTART}"})
            if table == "logs" and "forward" in live:
                restart()

    async def restart_logs(self) -> None:
        """New forwarders: stop the pipeline (a last ship pass), start it with the new list."""
        async with self._restarting:
            running = "logs" in self.tasks.loops
            await self.tasks.cancel("logs")
            self.logs.forwarders = [forward_loop(self.logs.store, f, self._event)
                                    for f in self.logs.spec.forward]
            if running and "logs" not in self.tasks.loops:
                self.tasks.loop("logs", self.logs.run)
