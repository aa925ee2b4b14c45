"""Deployment notifications: JSON events POSTed to the spec's webhooks.

Sending is decoupled from deploying, and receivers from each other: each receiver has its own
bounded queue drained by its own task, with a short timeout and a couple of retries. A slow,
failing or absent receiver can therefore never block or fail a deployment, nor delay the other
receivers; when its queue is full the oldest event is dropped and counted, and every failure is
logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import httpx

log = logging.getLogger("hinotori.notify")

QUEUE_SIZE = 1000


class Notifier:
    def __init__(self, urls: list[str], timeout: float = 2.0, retries: int = 2) -> None:
        self.urls = urls
        self.timeout = timeout
        self.retries = retries
        self.queues: dict[str, asyncio.Queue[dict[str, Any]]] = {
            url: asyncio.Queue(QUEUE_SIZE) for url in urls}
        self.dropped = 0
        self.failed = 0

    def set_urls(self, urls: list[str]) -> None:
        """New receivers (spec reloaded): kept receivers keep their queued events."""
        self.urls = urls
        self.queues = {url: self.queues.get(url) or asyncio.Queue(QUEUE_SIZE) for url in urls}

    def emit(self, event: str, **detail: Any) -> None:
        item = {"event": event, "ts": time.time(), **detail}
        for queue in self.queues.values():
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
                    self.dropped += 1
            queue.put_nowait(item)

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            await asyncio.gather(*(self._drain(client, url, queue)
                                   for url, queue in self.queues.items()))

    async def _drain(self, client: httpx.AsyncClient, url: str,
                     queue: asyncio.Queue[dict[str, Any]]) -> None:
        while True:
            item = await queue.get()
            for attempt in range(self.retries + 1):
                try:
                    if (await client.post(url, json=item)).status_code < 500:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.2 * (attempt + 1))
            else:
                self.failed += 1
                log.warning("notification %s not delivered to %s", item["event"], url)
