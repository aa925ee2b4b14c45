"""A log-forwarding scenario shared by the forwarder tests: a host writes numbered lines while a
receiver goes down and comes back; nothing stored may be lost on the way."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

from hinotori.observe.logs import LogQuery, LogStore, Shipper, search
from hinotori.observe.logs.forward import ForwardLoop
from tests.support import make_host

OUTAGE = float(os.environ.get("HINOTORI_LOG_OUTAGE", "3"))


class Producer:
    """A host writing numbered lines to its output.log, shipped into the store every 20 ms."""

    def __init__(self, tmp_path: Path, store: LogStore) -> None:
        self.host = make_host(tmp_path / "hosts" / "web-1")
        self.shipper = Shipper(store)
        self.n = 0
        self._stop = asyncio.Event()

    async def run(self) -> None:
        with open(self.host.data["log"], "a") as out:
            while not self._stop.is_set():
                out.write("".join(f"line {self.n + i}\n" for i in range(50)))
                out.flush()
                self.n += 50
                await self.shipper.ship([self.host])
                await asyncio.sleep(0.02)
        await self.shipper.flush(self.host)

    def stop(self) -> None:
        self._stop.set()


async def through_an_outage(tmp_path: Path, store: LogStore, loop: ForwardLoop,
                            stop: Callable[[], Awaitable[None]],
                            start: Callable[[], Awaitable[None]], *,
                            outage: float = OUTAGE) -> dict[str, int]:
    producer = Producer(tmp_path, store)
    making = asyncio.create_task(producer.run())
    forwarding = asyncio.create_task(loop.run())
    await asyncio.sleep(0.8)
    await stop()
    stored_at_stop = store.bounds()[1]
    await asyncio.sleep(outage)
    during = {"ingested": store.bounds()[1] - stored_at_stop,
              "cursor_moved": store.cursor(loop.name).pos - loop.stats.pos,
              "failures": loop.stats.failures}
    await start()
    await asyncio.sleep(0.5)
    producer.stop()
    await making
    high = store.bounds()[1]
    for _ in range(400):
        if loop.stats.pos >= high:
            break
        await asyncio.sleep(0.05)
    forwarding.cancel()
    await asyncio.gather(forwarding, return_exceptions=True)
    return during


def check(store: LogStore, received: list[str], during: dict[str, int]) -> None:
    stored = [ln.line for ln in search(store, LogQuery(limit=None))]
    assert len(stored) > 500
    counts = Counter(received)
    missing = [s for s in stored if s not in counts]
    assert not missing, f"{len(missing)} lines lost, e.g. {missing[:3]}"
    assert set(counts) == set(stored)
    duplicates = sum(counts.values()) - len(counts)
    assert duplicates <= 1000, duplicates  # at most a resent batch
    assert during["ingested"] > 0  # the outage never blocked ingest
    assert during["failures"] > 0
