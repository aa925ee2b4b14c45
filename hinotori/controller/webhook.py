"""The push webhook's defences: replays, floods of bad requests, and many bodies at once.

The webhook needs no token (it is signed), so anyone who can reach it can send it work:

- **Replays.** ``X-Hub-Signature-256`` signs the body only, so a captured signed push stays
  valid for ever. A signed delivery is remembered for ``WINDOW`` seconds in the state store
  (so a restarted controller still knows it) under its ``X-GitHub-Delivery`` id and, as that
  id is not signed, under the sha256 of its body too; either seen again inside the window is
  refused with 409 and nothing ships. GitHub never redelivers on its own; its "Redeliver"
  button resends the same id and body, so it ships again once the window has passed (or
  `hinotori ship` at once).
- **Floods of bad requests.** Each source address has ``BAD_PER_MINUTE`` bad requests a
  minute (a token bucket); past that it gets 429 before its body is read or any HMAC is
  computed. Rejections are recorded as at most one ``webhook.rejected`` event per reason per
  ``INTERVAL``, carrying the count of rejections it stands for.
- **Many bodies at once.** At most ``MAX_READING`` webhook requests are read and checked at
  once (each may be 25 MiB); the rest get 503 with Retry-After. A body must arrive within
  ``READ_TIMEOUT`` seconds (408), so slow senders cannot hold the slots.

Every table here is bounded: the sources (an LRU of ``MAX_SOURCES``), the reasons (a fixed
set, never text a client sent) and the store's deliveries (``KEEP`` rows, pruned by age).
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from hinotori.errors import ControllerError, HinotoriError
from hinotori.store import Store

WINDOW = 600.0  # seconds a delivery id or body digest is remembered
KEEP = 10_000  # deliveries remembered at most (signed pushes only: far more than ever arrive)
BAD_PER_MINUTE = 20  # bad requests a source may make a minute before it gets 429
MAX_SOURCES = 4096  # source addresses whose bad requests are counted (least recent dropped)
INTERVAL = 60.0  # seconds between two webhook.rejected events of one reason
MAX_READING = 4  # webhook requests read and checked at once
READ_TIMEOUT = 30.0  # seconds a webhook body may take to arrive
RETRY_AFTER = 5  # seconds a 503 asks the sender to wait

Clock = Callable[[], float]
Record = Callable[[dict[str, Any]], None]


class Refused(Exception):
    """A webhook request answered with ``status`` (and ``error``'s JSON) by the route."""

    def __init__(self, status: int, error: HinotoriError,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(error.message)
        self.status, self.error, self.headers = status, error, headers or {}


class BadRequests:
    """Bad requests per source address: a token bucket of ``per_minute`` tokens, refilled
    at ``per_minute`` a minute; a bad request takes one, an empty bucket means 429."""

    def __init__(self, per_minute: int = BAD_PER_MINUTE, *, clock: Clock = time.monotonic,
                 max_sources: int = MAX_SOURCES) -> None:
        self.per_minute, self.clock, self.max_sources = per_minute, clock, max_sources
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at

    def _tokens(self, source: str) -> float:
        tokens, at = self._buckets.get(source, (float(self.per_minute), self.clock()))
        return min(float(self.per_minute), tokens + (self.clock() - at) * self.per_minute / 60)

    def allowed(self, source: str) -> bool:
        return self._tokens(source) >= 1

    def bad(self, source: str) -> None:
        self._buckets[source] = (max(0.0, self._tokens(source) - 1), self.clock())
        self._buckets.move_to_end(source)
        while len(self._buckets) > self.max_sources:
            self._buckets.popitem(last=False)

    def __len__(self) -> int:
        return len(self._buckets)


class Rejections:
    """``webhook.rejected`` events, at most one per reason per ``interval``: the first
    rejection of a quiet reason is recorded at once, the ones after it are counted and recorded
    as one event by ``flush`` once the interval has passed (``force``: now, at shutdown)."""

    def __init__(self, record: Record, *, interval: float = INTERVAL,
                 clock: Clock = time.monotonic) -> None:
        self.record, self.interval, self.clock = record, interval, clock
        self._last: dict[str, float] = {}  # reason -> when its last event was recorded
        self._pending: dict[str, tuple[int, str]] = {}  # reason -> count, last source

    def reject(self, why: str, source: str) -> None:
        count, _ = self._pending.get(why, (0, ""))
        self._pending[why] = (count + 1, source)
        last = self._last.get(why)
        if last is None or self.clock() - last >= self.interval:
            self._emit(why)

    def flush(self, *, force: bool = False) -> None:
        for why in list(self._pending):
            if force or self.clock() - self._last.get(why, 0.0) >= self.interval:
                self._emit(why)

    def _emit(self, why: str) -> None:
        count, source = self._pending.pop(why)
        self._last[why] = self.clock()
        self.record({"why": why, "count": count, "source": source})


class Deliveries:
    """Signed deliveries seen within ``window`` seconds, kept in the state store."""

    def __init__(self, store: Store, *, window: float = WINDOW, keep: int = KEEP,
                 clock: Clock = time.time) -> None:
        self.store, self.window, self.keep, self.clock = store, window, keep, clock

    def check(self, delivery: str | None, body: bytes) -> None:
        """Remember this delivery, or raise Refused (409) if its id or body was seen within
        the window (a delivery without an id is known by its body alone)."""
        keys = ["sha256:" + hashlib.sha256(body).hexdigest()]
        if delivery:
            keys.insert(0, "delivery:" + hashlib.sha256(delivery.encode()).hexdigest())
        now = self.clock()
        seen = self.store.remember_delivery(keys, now=now, window=self.window, keep=self.keep)
        if seen is None:
            return
        key, at = seen
        what = (f"delivery {delivery[:64]!r}" if key.startswith("delivery:") and delivery
                else "this payload")
        minutes = max(1, round((at + self.window - now) / 60))
        raise Refused(409, ControllerError(
            f"push refused: {what} was already received {round(now - at)}s ago",
            hint=f"a replay ships nothing; GitHub's Redeliver works again in {minutes} min, "
                 "or `hinotori ship SERVICE` ships now"))


class Reading:
    """How many webhook requests are being read and checked; at most ``limit`` at once."""

    def __init__(self, limit: int = MAX_READING) -> None:
        self.limit, self.now = limit, 0

    @contextmanager
    def slot(self) -> Iterator[None]:
        if self.now >= self.limit:
            raise Refused(503, ControllerError(
                f"{self.limit} pushes are being read already", hint="send it again shortly"),
                {"retry-after": str(RETRY_AFTER)})
        self.now += 1
        try:
            yield
        finally:
            self.now -= 1


class Webhook:
    """The defences above, for one controller: ``source`` is the client's address."""

    def __init__(self, store: Store, *, clock: Clock = time.monotonic,
                 wall: Clock = time.time) -> None:
        self.bad_requests = BadRequests(clock=clock)
        self.rejections = Rejections(
            lambda detail: store.record("webhook", "webhook.rejected", "push", detail),
            clock=clock)
        self.deliveries = Deliveries(store, clock=wall)
        self.reading = Reading()

    def admit(self, source: str) -> None:
        """Refuse (429) a source past its bad requests, before anything of it is read."""
        if not self.bad_requests.allowed(source):
            self.rejections.reject("too many bad requests", source)
            raise Refused(429, ControllerError(
                f"push refused: more than {self.bad_requests.per_minute} bad requests a "
                "minute from this address", hint="check the webhook's secret, then wait a "
                                                  "minute"), {"retry-after": "60"})

    def reject(self, why: str, source: str) -> None:
        """Count a bad request against its source and record it (aggregated)."""
        self.bad_requests.bad(source)
        self.rejections.reject(why, source)
