"""One deployment per service at a time: a second one fails at once, or waits if asked to."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from hinotori.durations import format_duration
from hinotori.errors import LockedError


class ServiceLocks:
    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._holders: dict[str, tuple[str, float]] = {}

    def holder(self, service: str) -> tuple[str, float] | None:
        """(what holds it, since when) or None."""
        return self._holders.get(service)

    def locked(self, service: str) -> bool:
        return service in self._holders

    @asynccontextmanager
    async def hold(self, service: str, what: str, wait: float = 0.0) -> AsyncIterator[None]:
        lock = self._locks.setdefault(service, asyncio.Lock())
        if lock.locked() and wait <= 0:
            raise self._busy(service)
        try:
            async with asyncio.timeout(max(wait, 0.001)):
                await lock.acquire()
        except TimeoutError:
            raise self._busy(service, waited=wait) from None
        self._holders[service] = (what, time.time())
        try:
            yield
        finally:
            self._holders.pop(service, None)
            lock.release()

    def _busy(self, service: str, waited: float = 0.0) -> LockedError:
        what, since = self._holders.get(service, ("another deployment", time.time()))
        waited_text = f" (waited {format_duration(waited)})" if waited else ""
        return LockedError(
            f"{service} is locked by {what}, running for "
            f"{format_duration(time.time() - since)}{waited_text}",
            hint="wait for it to finish, or pass --lock-wait DURATION to queue behind it")
