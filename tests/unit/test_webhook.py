"""The push webhook's defences (hinotori/controller/webhook.py), each on an injected clock: the
replay window in the state store, the bad-request limiter, the aggregated rejection events and
the cap on pushes read at once. The real controller's answers are in
tests/integration/test_ship.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hinotori.controller.webhook import (
    BadRequests,
    Deliveries,
    Reading,
    Refused,
    Rejections,
    Webhook,
)
from hinotori.store import Store


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "state.db")


def rows(store: Store) -> int:
    return store._db.execute("SELECT COUNT(*) FROM webhook_deliveries").fetchone()[0]


def test_a_delivery_is_refused_again_within_the_window_even_after_a_restart(
        tmp_path: Path, store: Store) -> None:
    clock = Clock()
    seen = Deliveries(store, window=600, clock=clock)
    seen.check("guid-1", b"push one")
    store.close()
    again = Deliveries(Store(tmp_path / "state.db"), window=600, clock=clock)  # a new controller
    clock.now += 599
    with pytest.raises(Refused) as refused:
        again.check("guid-1", b"push one")
    assert refused.value.status == 409
    assert "delivery 'guid-1' was already received 599s ago" in refused.value.error.message
    clock.now += 1  # the window has passed: GitHub's Redeliver ships again
    again.check("guid-1", b"push one")


def test_a_replay_under_another_delivery_id_or_none_is_known_by_its_body(store: Store) -> None:
    clock = Clock()
    seen = Deliveries(store, window=600, clock=clock)
    seen.check("guid-1", b"push one")
    for delivery in ("guid-2", None):  # the id is not signed: an attacker may change it
        with pytest.raises(Refused) as refused:
            seen.check(delivery, b"push one")
        assert "this payload was already received" in refused.value.error.message
    seen.check(None, b"push two")  # no id: known by its digest alone
    with pytest.raises(Refused):
        seen.check(None, b"push two")
    seen.check("guid-3", b"push three")
    with pytest.raises(Refused):  # a known id with a new body is a replay too
        seen.check("guid-3", b"push three, changed")


def test_a_refused_replay_remembers_nothing_new(store: Store) -> None:
    clock = Clock()
    seen = Deliveries(store, window=600, clock=clock)
    seen.check("guid-1", b"one")
    with pytest.raises(Refused):
        seen.check("guid-2", b"one")
    seen.check("guid-2", b"two")  # guid-2 was not remembered by the refused replay


def test_the_seen_set_is_bounded_by_age_and_by_count(store: Store) -> None:
    clock = Clock()
    seen = Deliveries(store, window=600, keep=10, clock=clock)
    for n in range(3):
        seen.check(f"guid-{n}", f"push {n}".encode())
    assert rows(store) == 6  # an id and a digest each
    clock.now += 601
    seen.check("guid-new", b"new")
    assert rows(store) == 2  # the old ones are forgotten with the window
    for n in range(20):
        clock.now += 1
        seen.check(f"more-{n}", f"more {n}".encode())
    assert rows(store) == 10
    with pytest.raises(Refused):  # the newest are the ones kept
        seen.check("more-19", b"x")
    seen.check("more-0", b"more 0")  # the oldest were dropped


def test_a_source_past_its_bad_requests_is_refused_until_the_bucket_refills() -> None:
    clock = Clock()
    limiter = BadRequests(per_minute=3, clock=clock)
    for _ in range(3):
        assert limiter.allowed("10.0.0.1")
        limiter.bad("10.0.0.1")
    assert not limiter.allowed("10.0.0.1")
    assert limiter.allowed("10.0.0.2")  # per source
    clock.now += 19
    assert not limiter.allowed("10.0.0.1")
    clock.now += 1  # 20 s: one bad request's worth back
    assert limiter.allowed("10.0.0.1")
    limiter.bad("10.0.0.1")
    assert not limiter.allowed("10.0.0.1")
    clock.now += 3600  # refilled to the cap, not beyond
    for _ in range(3):
        limiter.bad("10.0.0.1")
    assert not limiter.allowed("10.0.0.1")


def test_the_limiter_keeps_a_bounded_number_of_sources() -> None:
    clock = Clock()
    limiter = BadRequests(per_minute=1, clock=clock, max_sources=100)
    for n in range(10_000):
        limiter.bad(f"10.{n // 65536}.{n // 256 % 256}.{n % 256}")
    assert len(limiter) == 100
    assert not limiter.allowed("10.0.39.15")  # the most recent are the ones kept
    assert limiter.allowed("10.0.0.0")


def test_rejections_are_one_event_per_reason_per_interval_with_their_count() -> None:
    clock = Clock()
    events: list[dict[str, Any]] = []
    rejections = Rejections(events.append, interval=60, clock=clock)
    for n in range(200):
        rejections.reject("unsigned", f"10.0.0.{n % 3}")
    rejections.reject("bad signature", "10.0.0.9")
    assert events == [{"why": "unsigned", "count": 1, "source": "10.0.0.0"},
                      {"why": "bad signature", "count": 1, "source": "10.0.0.9"}]
    clock.now += 59
    rejections.flush()
    assert len(events) == 2  # not before the interval
    clock.now += 1
    rejections.flush()
    assert events[2:] == [{"why": "unsigned", "count": 199, "source": "10.0.0.1"}]
    rejections.flush()
    clock.now += 600
    rejections.flush()
    assert len(events) == 3  # nothing pending, nothing recorded
    rejections.reject("unsigned", "10.0.0.5")  # a quiet reason is recorded at once again
    assert events[3] == {"why": "unsigned", "count": 1, "source": "10.0.0.5"}
    rejections.reject("unsigned", "10.0.0.5")
    rejections.flush(force=True)  # the controller stopping: nothing is lost
    assert events[4] == {"why": "unsigned", "count": 1, "source": "10.0.0.5"}
    assert sum(e["count"] for e in events) == 203


def test_at_most_so_many_pushes_are_read_at_once() -> None:
    reading = Reading(limit=2)
    with reading.slot(), reading.slot():
        with pytest.raises(Refused) as refused, reading.slot():
            pass
        assert refused.value.status == 503 and "retry-after" in refused.value.headers
    assert reading.now == 0
    with pytest.raises(RuntimeError), reading.slot():
        raise RuntimeError("a failing push frees its slot")
    with reading.slot():
        assert reading.now == 1


def test_a_flooding_source_is_refused_before_anything_is_read(store: Store) -> None:
    clock = Clock()
    gate = Webhook(store, clock=clock)
    limit = gate.bad_requests.per_minute
    for _ in range(limit):
        gate.admit("10.0.0.1")
        gate.reject("unsigned", "10.0.0.1")
    for _ in range(5):
        with pytest.raises(Refused) as refused:
            gate.admit("10.0.0.1")
        assert refused.value.status == 429
    gate.rejections.flush(force=True)
    events = store.events(action="webhook.rejected")
    assert {e.detail["why"]: e.detail["count"] for e in events if e.detail["count"] > 1} == {
        "unsigned": limit - 1, "too many bad requests": 4}
    assert sum(e.detail["count"] for e in events) == limit + 5
