"""Everything the controller runs for logs, as one task: ship, retain, forward.

- the ship loop: every ``[logs] ship_interval`` one Shipper pass over the live hosts;
- the retention loop: every ``retention_every`` seconds, age and size limits (one event per
  pass that deleted anything);
- one ForwardLoop per ``[[logs.forward]]``.

Each loop survives its own errors (logged, retried next round); cancelling ``run`` stops them
all after one last (non-final) ship pass, so a controller that stops cleanly leaves every
complete line in the store. The pieces are usable alone: the controller wires
``pipeline.shipper.destroying(host)`` around a provider's destroy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from hinotori.model import Host
from hinotori.observe.logs.forward import EventSink, ForwardLoop, forward_loop
from hinotori.observe.logs.retention import apply_retention
from hinotori.observe.logs.shipper import Declared, Shipper, no_declared_files
from hinotori.observe.logs.sources import SOURCES, LogSource
from hinotori.observe.logs.store import LogStore
from hinotori.spec.schema import LogsSpec

log = logging.getLogger("hinotori.logs")


def _no_events(_action: str, _subject: str, _detail: dict[str, Any]) -> None:
    pass


class LogPipeline:
    def __init__(self, store: LogStore, spec: LogsSpec, *, hosts: Callable[[], Iterable[Host]],
                 declared: Declared = no_declared_files, on_event: EventSink = _no_events,
                 retention_every: float = 60.0,
                 sources: Mapping[str, LogSource] = SOURCES) -> None:
        self.store = store
        self.spec = spec
        self.hosts = hosts
        self.on_event = on_event
        self.retention_every = retention_every
        self.shipper = Shipper(store, declared=declared, sources=sources)
        self.forwarders: list[ForwardLoop] = [forward_loop(store, f, on_event)
                                              for f in spec.forward]

    async def run(self) -> None:
        # One retention pass before anything is forwarded: lines that expired while the
        # controller was down are not sent on.
        await self._retain_logged()
        tasks = [asyncio.create_task(self._ship_loop()),
                 asyncio.create_task(self._retention_loop()),
                 *(asyncio.create_task(f.run()) for f in self.forwarders)]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                await asyncio.shield(self.shipper.ship(self.hosts()))
            self.shipper.close()

    async def ship_once(self) -> int:
        return await self.shipper.ship(self.hosts())

    async def _ship_loop(self) -> None:
        while True:
            try:
                await self.ship_once()
            except Exception:
                log.exception("log ship pass failed")
            await asyncio.sleep(self.spec.ship_interval)

    async def retain_once(self) -> int:
        done = await asyncio.to_thread(apply_retention, self.store, max_age=self.spec.retention,
                                       max_size=self.spec.max_size)
        if done.deleted:
            self.on_event("logs.retained", "logs", {"by_age": done.by_age,
                                                    "by_size": done.by_size})
        return done.deleted

    async def _retention_loop(self) -> None:
        while True:
            await asyncio.sleep(self.retention_every)
            await self._retain_logged()

    async def _retain_logged(self) -> None:
        try:
            await self.retain_once()
        except Exception:
            log.exception("log retention pass failed")
