"""The forward loop with an in-memory sink (the real receivers are in tests/integration):
the cursor moves only after delivery, back-off and recovery, the backlog bound, rejections,
retention overtaking, service filters. The fake is a Sink in a few lines, as the protocol
intends."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from hinotori.observe.logs import LogLine, LogStore, apply_retention
from hinotori.observe.logs.errors import ForwardError
from hinotori.observe.logs.forward import ForwardLoop, Rejected
from tests.support import put


class FakeSink:
    kind = "fake"

    def __init__(self) -> None:
        self.got: list[int] = []
        self.down = False
        self.reject = False
        self.closed = 0

    async def send(self, lines: Sequence[LogLine]) -> None:
        if self.down:
            raise ForwardError("receiver down")
        if self.reject:
            raise Rejected("never")
        self.got += [ln.id for ln in lines]

    async def close(self) -> None:
        self.closed += 1


def lines(store: LogStore, n: int, service: str = "web", ts: float = 1000.0) -> None:
    put(store, f"{service}-1", [f"{service} {i}" for i in range(n)], service=service, ts=ts)


@pytest.fixture
def store(tmp_path: Path) -> LogStore:
    return LogStore(tmp_path / "logs.db")


def make(store: LogStore, sink: FakeSink, events: list[Any] | None = None,
         **kw: Any) -> ForwardLoop:
    sink_events = events if events is not None else []
    return ForwardLoop(store, sink, name="t", batch=100, retry_min=0.001, retry_max=0.01,
                       poll=0.001, on_event=lambda *e: sink_events.append(e), **kw)


def test_delivers_in_batches_and_persists_the_cursor(store: LogStore) -> None:
    lines(store, 250)
    sink = FakeSink()
    assert asyncio.run(make(store, sink).drain(5))
    assert sink.got == list(range(1, 251))
    assert store.cursor("t").pos == 250
    lines(store, 10)
    again = FakeSink()
    asyncio.run(make(store, again).drain(5))  # a restarted controller resumes at the cursor
    assert again.got == list(range(251, 261))


def test_a_down_receiver_does_not_move_the_cursor_and_loses_nothing(store: LogStore) -> None:
    lines(store, 150)
    sink, events = FakeSink(), []
    loop = make(store, sink, events)

    async def scenario() -> None:
        task = asyncio.create_task(loop.run())
        while store.cursor("t").pos < 150:  # the first lines delivered (however slow the box)
            await asyncio.sleep(0.01)
        sink.down = True
        lines(store, 100)  # ingest goes on while the receiver is down
        while loop.stats.failures < 2:  # it keeps trying...
            await asyncio.sleep(0.01)
        assert store.cursor("t").pos == 150  # ...and the cursor waits
        sink.down = False
        while len(sink.got) < 250:
            await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(scenario())
    assert sink.got == list(range(1, 251))
    assert [e[0] for e in events] == ["logs.forward-failed", "logs.forward-recovered"]
    assert sink.closed >= 1


def test_back_off_grows_exponentially_to_retry_max(store: LogStore,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The delays the loop asks for, not how many fit in a wall-clock window (a loaded
    machine runs fewer)."""
    lines(store, 1)
    sink = FakeSink()
    sink.down = True
    loop = ForwardLoop(store, sink, name="t", retry_min=0.01, retry_max=0.04, poll=0.001)
    real_sleep, delays = asyncio.sleep, []

    async def recorded(delay: float, *args: Any, **kwargs: Any) -> None:
        delays.append(delay)
        await real_sleep(0)

    async def scenario() -> None:
        task = asyncio.create_task(loop.run())
        while len(delays) < 6 and loop.stats.failures < 100:  # 100: a busy loop, no back-off
            await real_sleep(0)
        task.cancel()

    monkeypatch.setattr(asyncio, "sleep", recorded)
    asyncio.run(scenario())
    assert len(delays) >= 6 and loop.stats.failures <= 7
    for delay, ceiling in zip(delays, (0.01, 0.02, 0.04, 0.04, 0.04, 0.04), strict=False):
        assert ceiling / 2 <= delay <= ceiling  # doubling up to retry_max, jittered down


def test_backlog_over_the_bound_drops_oldest_and_says_so(store: LogStore) -> None:
    lines(store, 100)
    asyncio.run(make(store, FakeSink()).drain(5))  # delivered up to 100, then a long outage
    lines(store, 1000)
    sink, events = FakeSink(), []
    assert asyncio.run(make(store, sink, events, max_backlog=300).drain(5))
    assert sink.got == list(range(801, 1101))
    assert store.cursor("t").dropped == 700
    assert events[0][0] == "logs.forward-dropped" and events[0][2]["dropped"] == 700


def test_a_new_forwarder_starts_within_max_backlog_and_drops_nothing(store: LogStore) -> None:
    lines(store, 1000)
    sink, events = FakeSink(), []
    assert asyncio.run(make(store, sink, events, max_backlog=300).drain(5))
    assert sink.got == list(range(701, 1001))
    assert store.cursor("t").dropped == 0 and events == []


def test_retention_overtaking_the_cursor_is_counted(store: LogStore) -> None:
    lines(store, 50, ts=10.0)
    lines(store, 50, ts=5000.0)
    apply_retention(store, max_age=60.0, max_size=None, now=5000.0)
    sink, events = FakeSink(), []
    assert asyncio.run(make(store, sink, events).drain(5))
    assert sink.got == list(range(51, 101))
    assert store.cursor("t").dropped == 50
    assert "retention" in events[0][2]["why"]


def test_a_rejected_batch_is_dropped_and_counted_not_retried_forever(store: LogStore) -> None:
    lines(store, 100)
    sink, events = FakeSink(), []
    sink.reject = True
    loop = make(store, sink, events)
    assert asyncio.run(loop.drain(5))
    assert store.cursor("t").pos == 100 and loop.stats.dropped == 100
    assert events[0][0] == "logs.forward-dropped"


def test_service_filter_skips_but_moves_past(store: LogStore) -> None:
    lines(store, 20, service="web")
    lines(store, 20, service="db")
    sink = FakeSink()
    assert asyncio.run(make(store, sink, services={"db"}).drain(5))
    assert sink.got == list(range(21, 41))
    assert store.cursor("t").pos == 40


def test_a_hanging_receiver_times_out_and_is_retried(store: LogStore) -> None:
    lines(store, 5)

    class Hangs(FakeSink):
        async def send(self, batch: Sequence[LogLine]) -> None:
            if not self.closed:
                await asyncio.sleep(60)
            await super().send(batch)

    sink = Hangs()
    assert asyncio.run(make(store, sink, timeout=0.05).drain(5))
    assert sink.got == [1, 2, 3, 4, 5]
