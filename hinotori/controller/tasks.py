"""The controller's background work, each piece its own named asyncio task, under guard.

- ``loop(name, body)``: a loop (the health monitor, the reaper, the log pipeline...). When
  ``body`` raises, the failure is logged and recorded as a ``controller.loop-failed`` event, and
  ``body`` starts again after an exponential back-off (doubling up to ``backoff_max``, back to
  ``backoff_min`` once the loop ran ``healthy_after`` seconds without failing). One loop's
  failure never stops another. A body that returns ends its loop.
- ``spawn(coro, name)``: one-shot work (a deployment, a heal, a hook). An unexpected exception is
  logged and recorded as ``controller.task-failed``, never dropped.
- ``stop(keep=...)``: cancel and await everything but the named loops kept for later (the
  controller stops its metrics and log loops last, in a set order).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any

log = logging.getLogger("hinotori.controller")

CANCEL_AGAIN_AFTER = 1.0  # seconds a cancelled task may take to end before it is cancelled again

# Told of a failure: (action, subject, detail), e.g. Store.record with the controller as actor.
EventSink = Callable[[str, str, dict[str, Any]], None]


def _error(e: BaseException) -> str:
    return repr(e)[:500]


class Tasks:
    def __init__(self, on_event: EventSink, *, backoff_min: float = 0.5,
                 backoff_max: float = 30.0, healthy_after: float = 60.0) -> None:
        self.on_event = on_event
        self.backoff_min, self.backoff_max = backoff_min, backoff_max
        self.healthy_after = healthy_after
        self.loops: dict[str, asyncio.Task[None]] = {}
        self.failures: dict[str, int] = {}  # failures of each loop since it started
        self._oneshots: set[asyncio.Task[Any]] = set()

    def loop(self, name: str, body: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        """Run ``body`` as the loop ``name`` under guard (a loop of that name must be done)."""
        old = self.loops.get(name)
        if old is not None and not old.done():
            raise RuntimeError(f"loop {name} is already running")
        task = asyncio.create_task(self._guard(name, body), name=name)
        self.loops[name] = task
        return task

    async def _guard(self, name: str, body: Callable[[], Awaitable[None]]) -> None:
        delay = self.backoff_min
        while True:
            started = time.monotonic()
            try:
                await body()
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if time.monotonic() - started >= self.healthy_after:
                    delay = self.backoff_min  # a healthy spell: start the back-off afresh
                self.failures[name] = self.failures.get(name, 0) + 1
                log.exception("loop %s failed; restarting in %.1fs", name, delay)
                self._record("controller.loop-failed", name,
                             {"loop": name, "error": _error(e), "restart_in_s": delay})
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff_max)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None
              ) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._oneshots.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._oneshots.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        e = task.exception()
        log.error("task %s failed", task.get_name(), exc_info=e)
        self._record("controller.task-failed", task.get_name(),
                     {"task": task.get_name(), "error": _error(e)})  # type: ignore[arg-type]

    def _record(self, action: str, name: str, detail: dict[str, Any]) -> None:
        try:
            self.on_event(action, f"controller/{name}", detail)
        except Exception:  # the store itself may be what fails: the log line stays
            log.exception("could not record %s of %s", action, name)

    async def cancel(self, *names: str) -> None:
        """Cancel the named loops and wait until they are done."""
        tasks = [self.loops.pop(n) for n in names if n in self.loops]
        await _cancel(tasks)

    async def stop(self, keep: Iterable[str] = ()) -> None:
        """Cancel and await every loop (but ``keep``) and every one-shot task."""
        kept = set(keep)
        await self.cancel(*[n for n in self.loops if n not in kept])
        while self._oneshots:  # cancelling a task may spawn others (e.g. a membership hook)
            await _cancel(list(self._oneshots))


def every(seconds: float, once: Callable[[], Coroutine[Any, Any, Any]]
          ) -> Callable[[], Coroutine[Any, Any, None]]:
    """A loop body: wait ``seconds``, make one pass, again (a failing pass ends the body: the
    guard records it and starts the loop again after its back-off)."""
    async def body() -> None:
        while True:
            await asyncio.sleep(seconds)
            await once()
    return body


async def _cancel(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait until every one has ended. A cancellation can be lost on its
    way (code that catches it, or Python 3.11's wait_for when the awaited thing completes at
    the same moment): a task still running a second later is cancelled again, so a stop never
    hangs on a loop that carried on."""
    for task in tasks:
        task.cancel()
    pending = set(tasks)
    while pending:
        _, pending = await asyncio.wait(pending, timeout=CANCEL_AGAIN_AFTER)
        for task in pending:
            log.warning("task %s carried on when cancelled; cancelling it again",
                        task.get_name())
            task.cancel()
    for task in tasks:  # retrieved, so asyncio does not log them as never retrieved
        if not task.cancelled():
            task.exception()


class Phases:
    """Times the named phases of a long stop, logging each as it starts, so a stop that hangs
    says where (``async with phases("logs"): ...``; ``str(phases)`` sums them up)."""

    def __init__(self) -> None:
        self.took: dict[str, float] = {}
        self._started = time.monotonic()

    def __call__(self, name: str) -> _Phase:
        return _Phase(self, name)

    def __str__(self) -> str:
        spent = ", ".join(f"{n} {s:.2f}s" for n, s in self.took.items())
        return f"{time.monotonic() - self._started:.2f}s ({spent})"


class _Phase:
    def __init__(self, phases: Phases, name: str) -> None:
        self.phases, self.name = phases, name

    async def __aenter__(self) -> None:
        log.info("stopping: %s", self.name)
        self.started = time.monotonic()

    async def __aexit__(self, *exc: object) -> None:
        took = self.phases.took
        took[self.name] = took.get(self.name, 0.0) + time.monotonic() - self.started
