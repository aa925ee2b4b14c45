"""The forward loop: from the central store to one sink, by a persisted rowid cursor.

The store is the buffer. The loop reads the next batch after its cursor, sends it, and only
then moves the cursor (saved in logs.db, so a restarted controller resumes there). A receiver
that is down does not move the cursor: its lines wait in the store, and the loop retries with
exponential back-off (with jitter, up to ``retry_max``). Ingest never waits for a forwarder;
the loop only reads.

The buffer is bounded: when the cursor falls more than ``max_backlog`` lines behind the
newest line, the oldest beyond the bound are skipped (the cursor jumps), counted in the
cursor's ``dropped`` and announced by a ``logs.forward-dropped`` event and a warning. Lines
that retention deleted before they were sent are counted the same way. Nothing is dropped
otherwise: delivery is at-least-once (a batch whose acknowledgement was lost is sent again).
A forwarder added to a project starts at the oldest stored line, or ``max_backlog`` lines
from the newest if there are more (those are not counted as its drops: it never had them).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from hinotori.observe.logs.forward.base import Rejected, Sink
from hinotori.observe.logs.store import LogStore

log = logging.getLogger("hinotori.logs.forward")

# Told of what an operator should know: (action, subject, detail), e.g. for Store.record.
EventSink = Callable[[str, str, dict[str, Any]], None]


def _no_events(_action: str, _subject: str, _detail: dict[str, Any]) -> None:
    pass


@dataclass
class ForwardStats:
    pos: int = 0  # the cursor: last rowid delivered or skipped
    sent: int = 0  # lines delivered since start
    dropped: int = 0  # lines given up since start (backlog bound, retention, rejected)
    failures: int = 0  # failed attempts since start
    backlog: int = 0  # lines waiting after the cursor, last time we looked
    down_since: float | None = None  # first failure of the current outage
    last_error: str | None = None


class ForwardLoop:
    def __init__(self, store: LogStore, sink: Sink, *, name: str, batch: int = 1000,
                 max_backlog: int = 1_000_000, services: Collection[str] = (),
                 timeout: float = 10.0, retry_min: float = 0.1, retry_max: float = 10.0,
                 poll: float = 0.2, on_event: EventSink = _no_events) -> None:
        self.store, self.sink, self.name = store, sink, name
        self.batch, self.max_backlog = batch, max_backlog
        self.services = frozenset(services)
        self.timeout, self.retry_min, self.retry_max, self.poll = (timeout, retry_min,
                                                                   retry_max, poll)
        self.on_event = on_event
        cursor = store.cursor(name)
        self.stats = ForwardStats(pos=cursor.pos)
        self._fresh = cursor.new  # a new forwarder starts within max_backlog, dropping nothing
        self._attempt = 0  # consecutive failures

    @property
    def subject(self) -> str:
        return f"logs/forward/{self.name}"

    async def run(self) -> None:
        """Forward forever (until cancelled); never raises for a receiver's failure."""
        try:
            while True:
                try:
                    moved = await self.step()
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    await self._failed(e)
                    continue
                if not moved:
                    await asyncio.sleep(self.poll)
        finally:
            await self.sink.close()

    async def drain(self, deadline: float = 30.0) -> bool:
        """Forward until the cursor reaches the newest line (benches, tests, shutdown)."""
        stop = time.monotonic() + deadline
        while time.monotonic() < stop:
            try:
                if not await self.step():
                    if self.stats.backlog == 0:
                        return True
                    await asyncio.sleep(self.poll)
            except Exception as e:
                await self._failed(e)
        return False

    async def step(self) -> int:
        """Send the next batch. Returns how many lines the cursor moved past (0: caught up);
        raises if the sink failed (the cursor did not move)."""
        await self._bound_backlog()
        lines = await asyncio.to_thread(self.store.after, self.stats.pos, self.batch)
        if not lines:
            return 0
        wanted = [ln for ln in lines if not self.services or ln.service in self.services]
        dropped = 0
        if wanted:
            try:
                async with asyncio.timeout(self.timeout):
                    await self.sink.send(wanted)
            except Rejected as e:
                dropped = len(wanted)
                self._warn_dropped(dropped, f"the receiver rejected them: {e}")
        await self._advance(lines[-1].id, dropped)
        self.stats.sent += len(wanted) - dropped
        self.stats.backlog = max(0, self.stats.backlog - len(lines))
        if self._attempt:
            self.on_event("logs.forward-recovered", self.subject, {
                "outage_s": round(time.time() - (self.stats.down_since or time.time()), 3),
                "attempts": self._attempt})
            self._attempt, self.stats.down_since = 0, None
        return len(lines)

    async def _bound_backlog(self) -> None:
        low, high = await asyncio.to_thread(self.store.bounds)
        pos = self.stats.pos
        self.stats.backlog = high - pos
        if pos < low - 1:  # retention deleted lines we had not sent yet
            lost = low - 1 - pos
            self._warn_dropped(lost, "retention deleted them before they were sent")
            await self._advance(low - 1, lost)
        if self._fresh:
            self._fresh = False
            if high - pos > self.max_backlog:  # lines from before it existed: not its losses
                await self._advance(high - self.max_backlog)
        if high - self.stats.pos > self.max_backlog:
            target = high - self.max_backlog
            lost = await asyncio.to_thread(self.store.count, self.stats.pos, target)
            self._warn_dropped(lost, f"more than max_backlog ({self.max_backlog}) lines behind")
            await self._advance(target, lost)
        self.stats.backlog = high - self.stats.pos

    async def _advance(self, pos: int, dropped: int = 0) -> None:
        await asyncio.to_thread(self.store.save_cursor, self.name, pos, dropped)
        self.stats.pos = pos
        self.stats.dropped += dropped

    def _warn_dropped(self, count: int, why: str) -> None:
        log.warning("log forwarder %s dropped %d lines: %s", self.name, count, why)
        self.on_event("logs.forward-dropped", self.subject,
                      {"dropped": count, "why": why, "total_dropped": self.stats.dropped + count})

    async def _failed(self, error: BaseException) -> None:
        self._attempt += 1
        self.stats.failures += 1
        self.stats.last_error = f"{type(error).__name__}: {error}"
        await self.sink.close()
        if self._attempt == 1:
            self.stats.down_since = time.time()
            log.warning("log forwarder %s failing: %s", self.name, self.stats.last_error)
            self.on_event("logs.forward-failed", self.subject,
                          {"error": self.stats.last_error[:300], "cursor": self.stats.pos})
        delay = min(self.retry_max, self.retry_min * 2 ** (self._attempt - 1))
        await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # jitter: no thundering herd
