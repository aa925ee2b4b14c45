"""The metric history that outlives hosts: per-release deltas from per-host cumulative counters
(appeared, reset, vanished hosts; CPU rates), rollup to minutes, retention, queries and their
derived values. Deterministic clocks, no sleeps; real SQLite files in tmp."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hinotori.controller.metrics import ReleaseMetrics, from_totals, prometheus_text
from hinotori.errors import SpecError
from hinotori.model import LATENCY_BUCKETS_MS, BackendStats, Host, HostState
from hinotori.observe.metrics import (
    MINUTE,
    RAW,
    BadQuery,
    MetricsError,
    MetricsRecorder,
    MetricsStore,
    Point,
    Sampler,
    bucket_percentile,
    chain_destroying,
    history,
    history_text,
)
from hinotori.observe.metrics.query import pick
from hinotori.providers.base import HostUsage
from hinotori.spec import parse_spec
from hinotori.spec.schema import MetricsSpec
from tests.support import N, lat, point

T0 = 1_764_000_000.0  # a minute boundary (divisible by 60)


def stats(host: str, requests: int, *, s5: int = 0, errors: int = 0,
          latency: tuple[int, ...] | None = None, sum_ms: float | None = None) -> BackendStats:
    statuses = {"2xx": requests - s5, **({"5xx": s5} if s5 else {})}
    return BackendStats(host_id=host, requests=requests, errors=errors, statuses=statuses,
                        latency=latency if latency is not None else lat(b5=requests),
                        latency_sum_ms=sum_ms if sum_ms is not None else 4.0 * requests)


def host(hid: str, release: int = 1, state: HostState = HostState.SERVING,
         born: float = T0 - 3600, service: str = "web") -> Host:
    return Host(id=hid, service=service, release=release, provider="process", state=state,
                born_at=born)


def by_key(points: list[Point]) -> dict[tuple[str, int], Point]:
    return {(p.service, p.release): p for p in points}


# -- the sampler ------------------------------------------------------------------------------
def test_deltas_per_release_from_per_host_counters() -> None:
    s = Sampler()
    hosts = [host("a"), host("b"), host("c", release=2)]
    first = by_key(s.sample(T0, {"a": stats("a", 10), "b": stats("b", 5)}, hosts, {}, 10))
    assert first[("web", 1)].counts.requests == 15  # appeared hosts: everything is new
    assert first[("web", 2)].counts.requests == 0  # live, no traffic yet: still a point
    second = by_key(s.sample(T0 + 10, {"a": stats("a", 30), "b": stats("b", 5),
                                       "c": stats("c", 7, s5=2)}, hosts, {}, 10))
    v1, v2 = second[("web", 1)], second[("web", 2)]
    assert (v1.counts.requests, v1.span, v1.rps) == (20, 10, 2.0)
    assert v1.counts.latency[LATENCY_BUCKETS_MS.index(5)] == 20
    assert v1.counts.latency_sum_ms == pytest.approx(80.0)
    assert (v2.counts.requests, v2.counts.statuses) == (7, {"2xx": 5, "5xx": 2})
    assert v2.error_rate == pytest.approx(2 / 7)


def test_a_router_restart_is_a_reset_not_a_negative_delta() -> None:
    s = Sampler()
    hosts = [host("a")]
    s.sample(T0, {"a": stats("a", 100)}, hosts, {}, 10)
    after = by_key(s.sample(T0 + 10, {"a": stats("a", 4)}, hosts, {}, 10))
    assert after[("web", 1)].counts.requests == 4  # counted since the reset
    assert after[("web", 1)].counts.latency_sum_ms == pytest.approx(16.0)
    again = by_key(s.sample(T0 + 20, {"a": stats("a", 9)}, hosts, {}, 10))
    assert again[("web", 1)].counts.requests == 5


def test_a_vanished_host_loses_its_last_increments_unless_sampled_on_destroy() -> None:
    hosts = [host("a"), host("b")]
    lossy, kept = Sampler(), Sampler()
    for s in (lossy, kept):
        s.sample(T0, {"a": stats("a", 10), "b": stats("b", 10)}, hosts, {}, 10)
    gone = [host("a"), host("b", state=HostState.DESTROYED)]
    kept.final(host("b"), stats("b", 13), None)  # the destroy hook saw b's last 3 requests
    # b vanished from the router's stats before the next sample (e.g. HAProxy dropped it):
    lost = by_key(lossy.sample(T0 + 10, {"a": stats("a", 11)}, gone, {}, 10))
    saved = by_key(kept.sample(T0 + 10, {"a": stats("a", 11)}, gone, {}, 10))
    assert lost[("web", 1)].counts.requests == 1
    assert saved[("web", 1)].counts.requests == 4
    assert "b" not in kept.router and kept.pending == {}


def test_final_then_the_same_counters_again_count_nothing_twice() -> None:
    s = Sampler()
    hosts = [host("a")]
    s.sample(T0, {"a": stats("a", 10)}, hosts, {}, 10)
    s.final(host("a"), stats("a", 12), None)
    # The built-in router keeps a destroyed host's counters: the next sample sees 12 again.
    p = by_key(s.sample(T0 + 10, {"a": stats("a", 12)}, [host("a", state=HostState.DESTROYED)],
                        {}, 10))
    assert p[("web", 1)].counts.requests == 2


def test_a_backend_the_store_does_not_know_is_not_attributed() -> None:
    s = Sampler()
    assert s.sample(T0, {"zzz": stats("zzz", 10)}, [], {}, 10) == []


def test_cpu_is_a_rate_memory_and_serving_hosts_are_summed() -> None:
    s = Sampler()
    old = host("a")
    warm = host("w", state=HostState.WARM)
    s.sample(T0, {}, [old, warm], {"a": HostUsage(5.0, 100), "w": HostUsage(1.0, 50)}, 10)
    young = host("n", born=T0 + 4)
    p = by_key(s.sample(T0 + 10, {}, [old, warm, young],
                        {"a": HostUsage(7.0, 200), "w": HostUsage(1.0, 50),
                         "n": HostUsage(0.5, 30)}, 10))[("web", 1)]
    # a: 2 s; w: 0; n was born since the last sample: its 0.5 s all belong here.
    assert p.counts.cpu_seconds == pytest.approx(2.5)
    assert p.cpu_percent == pytest.approx(25.0)
    assert (p.memory_bytes, p.hosts) == (280, 2)  # warm hosts use memory but do not serve
    # A child process exited and took its CPU time along: a decrease counts as zero.
    p = by_key(s.sample(T0 + 20, {}, [old], {"a": HostUsage(6.0, 200)}, 10))[("web", 1)]
    assert p.counts.cpu_seconds == 0.0


def test_an_old_host_seen_for_the_first_time_does_not_dump_its_lifetime_cpu() -> None:
    s = Sampler()
    s.sample(T0, {}, [], {}, 10)
    p = by_key(s.sample(T0 + 10, {}, [host("a")], {"a": HostUsage(3600.0, 1)}, 10))
    assert p[("web", 1)].counts.cpu_seconds == 0.0


def test_the_baseline_survives_a_restart_through_its_state() -> None:
    s = Sampler()
    s.sample(T0, {"a": stats("a", 10)}, [host("a")], {"a": HostUsage(1.0, 1)}, 10)
    s.final(host("b"), stats("b", 3), None)
    restarted = Sampler(json.loads(json.dumps(s.state())))
    p = by_key(restarted.sample(T0 + 30, {"a": stats("a", 12)}, [host("a")],
                                {"a": HostUsage(2.0, 1)}, 10))[("web", 1)]
    assert (p.counts.requests, p.span, p.counts.cpu_seconds) == (5, 30, 1.0)


def test_a_rolled_back_sample_leaves_the_baseline_as_it_was() -> None:
    s = Sampler()
    s.sample(T0, {"a": stats("a", 10), "c": stats("c", 1)}, [host("a"), host("c")],
             {"a": HostUsage(1.0, 1), "c": HostUsage(1.0, 1)}, 10)
    s.final(host("b"), stats("b", 3), None)
    before, snapshot = json.dumps(s.state()), s.snapshot()
    # Moves every part: router and CPU baselines, a vanished host, pending, the clock.
    s.sample(T0 + 10, {"a": stats("a", 14)}, [host("a")], {"a": HostUsage(2.0, 1)}, 10)
    assert json.dumps(s.state()) != before
    s.rollback(snapshot)
    assert json.dumps(s.state()) == before
    p = by_key(s.sample(T0 + 20, {"a": stats("a", 14)}, [host("a")], {}, 10))[("web", 1)]
    assert p.counts.requests == 4 + 3  # a's delta and b's pending, counted once


def test_peek_counts_without_moving_the_baseline() -> None:
    s = Sampler()
    s.sample(T0, {"a": stats("a", 10)}, [host("a")], {}, 10)
    assert s.peek({"a": stats("a", 14)}, [host("a")])[("web", 1)].requests == 4
    assert s.peek({"a": stats("a", 14)}, [host("a")])[("web", 1)].requests == 4
    p = by_key(s.sample(T0 + 10, {"a": stats("a", 14)}, [host("a")], {}, 10))
    assert p[("web", 1)].counts.requests == 4


def test_unchanged_counters_skip_the_arithmetic_and_give_what_it_gives(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A host whose counters did not move since its baseline is skipped (idle fleets): over
    random samples, finals, peeks, rollbacks and restores, a sampler that skips gives the
    same points and state as one that converts every host every time."""
    import random

    from hinotori.observe.metrics import sampler as module

    converted = []
    real = module.router_counts

    def counting(s: BackendStats):  # type: ignore[no-untyped-def]
        converted.append(s.host_id)
        return real(s)

    monkeypatch.setattr(module, "router_counts", counting)
    rng = random.Random(7)
    ids = [f"h{i}" for i in range(12)]
    hosts = [host(h, release=1 + i % 2) for i, h in enumerate(ids)]
    counters = {h: 0 for h in ids}
    fast, full = Sampler(), Sampler()
    full_calls = 0
    for step in range(60):
        for h in rng.sample(ids, 3):  # a few hosts get traffic, the rest stay idle
            counters[h] += rng.randint(1, 5)
        if rng.random() < 0.1:
            counters[rng.choice(ids)] = 0  # a router restart for one host
        now = {h: stats(h, n) for h, n in counters.items() if rng.random() < 0.95}
        action = rng.random()
        if action < 0.1:
            gone = rng.choice(ids)
            for s in (fast, full):
                s.final(host(gone), stats(gone, counters[gone]), None)
        elif action < 0.2:
            assert fast.peek(now, hosts) == full.peek(now, hosts)
        elif action < 0.3:
            snap_fast, snap_full = fast.snapshot(), full.snapshot()
            fast.sample(T0 + step, now, hosts, {}, 10)
            full.sample(T0 + step, now, hosts, {}, 10)
            fast.rollback(snap_fast)
            full.rollback(snap_full)
        elif action < 0.35:
            fast = Sampler(json.loads(json.dumps(fast.state())))
            full = Sampler(json.loads(json.dumps(full.state())))
        before = len(converted)
        got = fast.sample(T0 + step, now, hosts, {}, 10)
        fast_calls = len(converted) - before
        with monkeypatch.context() as m:
            m.setattr(module, "same_counts", lambda a, b: False)
            before = len(converted)
            want = full.sample(T0 + step, now, hosts, {}, 10)
            full_calls += len(converted) - before
        assert got == want, step
        assert fast.state() == full.state(), step
        assert fast_calls <= len(now)
    assert len(converted) - full_calls < full_calls / 2  # idle hosts were skipped


# -- percentiles ----------------------------------------------------------------------------
def test_percentiles_from_summed_buckets_match_the_live_metrics_method() -> None:
    latency = list(lat(b5=90, b50=9, b1000=1))
    m = ReleaseMetrics(service="web", release=1, requests=100, latency=latency)
    for q in (50, 95, 99, 100):
        assert bucket_percentile(latency, q) == m.percentile_ms(q)
    assert (bucket_percentile(latency, 50), bucket_percentile(latency, 95),
            bucket_percentile(latency, 100)) == (5, 50, 1000)
    assert bucket_percentile([0] * N, 99) is None
    assert bucket_percentile([0] * (N - 1) + [3], 50) == float("inf")


# -- the store: samples, totals, rollup, retention ------------------------------------------
@pytest.fixture
def store(tmp_path: Path) -> MetricsStore:
    return MetricsStore(tmp_path / "metrics.db")


def test_samples_add_to_totals_and_rows_never_name_a_host(store: MetricsStore) -> None:
    s = Sampler()
    hosts = [host("host-a1b2"), host("host-c3d4", release=2)]
    for i, n in enumerate((10, 25, 40)):
        pts = s.sample(T0 + 10 * i, {"host-a1b2": stats("host-a1b2", n)}, hosts,
                       {"host-a1b2": HostUsage(float(i), 1000)}, 10)
        store.write_sample(pts, s.state(), T0 + 10 * i)
    totals = {t.release: t for t in store.totals("web")}
    assert totals[1].counts.requests == 40 and totals[1].memory_bytes == 1000
    assert totals[2].counts.requests == 0
    assert store.sampler_state() == s.state()
    db = sqlite3.connect(store.path)
    dumped = "\n".join(db.iterdump())
    points_sql = [line for line in dumped.splitlines() if "INTO \"points\"" in line
                  or "INTO \"totals\"" in line]
    assert points_sql and not any("host-" in line for line in points_sql)


def test_rollup_sums_counters_and_histograms_and_averages_gauges(store: MetricsStore) -> None:
    raw = [point(T0 + 10 * i, requests=6, s5=1 if i == 0 else 0, memory=100 * (i + 1),
                 hosts=1 + i % 2, latency=lat(b5=5, b200=1)) for i in range(6)]
    raw.append(point(T0 + 60, requests=100))  # the next minute: not complete yet
    store.write_sample(raw, {}, T0 + 60)
    assert store.rollup(T0 + 65) == 1
    (m,) = store.points("web", resolution=MINUTE, since=T0, until=T0 + 120)
    assert (m.ts, m.span, m.samples, m.counts.requests) == (T0, 60, 6, 36)
    assert m.counts.statuses == {"2xx": 35, "5xx": 1}
    assert m.counts.latency == list(lat(b5=30, b200=6))
    assert m.counts.cpu_seconds == pytest.approx(6.0)
    assert (m.memory_bytes, m.memory_max) == (350, 600)
    assert (m.hosts, m.hosts_max) == (1.5, 2)
    assert store.rollup(T0 + 65) == 0  # idempotent: nothing new
    assert store.rollup(T0 + 125) == 1  # the second minute, once complete
    assert len(store.points("web", resolution=MINUTE, since=T0, until=T0 + 180)) == 2


def test_retention_prunes_raw_after_rollup_and_minutes_after_their_age(
        store: MetricsStore) -> None:
    day = 86400.0
    store.write_sample([point(T0), point(T0 + day)], {}, T0 + day)
    # Not rolled up yet: raw points are kept whatever their age.
    assert store.prune(T0 + 3 * day, keep_raw=day, keep_minute=30 * day) == 0
    store.rollup(T0 + 3 * day)
    assert store.prune(T0 + 3 * day, keep_raw=day, keep_minute=30 * day) == 2
    assert store.points("web", resolution=RAW, since=0, until=T0 + 4 * day) == []
    assert len(store.points("web", resolution=MINUTE, since=0, until=T0 + 4 * day)) == 2
    assert store.prune(T0 + 30.5 * day, keep_raw=day, keep_minute=30 * day) == 1
    assert [p.ts for p in store.points("web", resolution=MINUTE, since=0,
                                       until=T0 + 40 * day)] == [T0 + day]


# -- queries --------------------------------------------------------------------------------
def test_resolution_and_step_follow_the_range() -> None:
    day = 86400.0
    now = T0 + 10 * day
    assert pick(now - 3600, now, now=now, interval=10, retention_raw=day) == (RAW, 10)
    assert pick(now - 6 * 3600, now, now=now, interval=10, retention_raw=day) == (RAW, 30)
    assert pick(now - 2 * day, now, now=now, interval=10, retention_raw=day) == (MINUTE, 240)
    assert pick(now - 3600, now, now=now, interval=10, retention_raw=day, step=300) == \
        (MINUTE, 300)
    assert pick(now - 600, now, now=now, interval=1, retention_raw=day, step=2) == (RAW, 2)
    with pytest.raises(BadQuery):
        pick(now, now - 1, now=now, interval=10, retention_raw=day)


def test_history_derives_rates_percentiles_cpu_and_keeps_gone_releases(
        store: MetricsStore) -> None:
    pts = [point(T0 + 10 * i, release=1, requests=50, s5=5, cpu=2.0,
                 latency=lat(b5=45, b50=4, b1000=1)) for i in range(3)]
    pts += [point(T0 + 30 + 10 * i, release=2, requests=20, memory=10 << 20) for i in range(3)]
    store.write_sample(pts, {}, T0 + 60)
    data = history(store, "web", since=T0, until=T0 + 60, now=T0 + 60, interval=10,
                   retention_raw=86400)
    assert (data["resolution"], data["step"]) == ("10s", 10)
    first = data["points"][0]
    assert (first["t"], first["release"], first["rps"], first["error_rate"]) == (T0, 1, 5.0, 0.1)
    assert (first["p50_ms"], first["p95_ms"], first["p99_ms"]) == (5.0, 50.0, 1000.0)
    assert (first["cpu"], first["hosts"]) == (20.0, 2)
    assert {r["release"]: r["requests"] for r in data["releases"]} == {1: 150, 2: 60}
    v1 = history(store, "web", since=T0, until=T0 + 60, now=T0 + 60, interval=10,
                 retention_raw=86400, release=1, step=30)
    assert [(p["t"], p["requests"], p["rps"]) for p in v1["points"]] == \
        [(T0, 150, 5.0)]  # 10 s-spans summed: rps over the bucket's covered time
    assert (v1["points"][0]["p95_ms"], v1["points"][0]["p99_ms"]) == (50.0, 1000.0)


def test_minute_queries_include_the_minutes_not_rolled_up_yet(store: MetricsStore) -> None:
    store.write_sample([point(T0 + 10 * i, requests=6) for i in range(6)], {}, T0 + 60)
    store.rollup(T0 + 61)
    store.write_sample([point(T0 + 60 + 10 * i, requests=1) for i in range(3)], {}, T0 + 90)
    data = history(store, "web", since=T0, until=T0 + 120, now=T0 + 100, interval=10,
                   retention_raw=86400, step=60)
    assert data["resolution"] == "1m"
    assert [(p["t"], p["requests"]) for p in data["points"]] == [(T0, 36), (T0 + 60, 3)]


def test_overflow_percentile_shows_as_the_last_bound(store: MetricsStore) -> None:
    over = [0] * N
    over[-1] = 5
    store.write_sample([point(T0, latency=tuple(over))], {}, T0)
    data = history(store, "web", since=T0 - 10, until=T0 + 10, now=T0 + 10, interval=10,
                   retention_raw=86400)
    assert data["points"][0]["p99_ms"] == float(LATENCY_BUCKETS_MS[-1])
    json.dumps(data, allow_nan=False)  # what an API answer must be


def test_history_text_checks_what_a_user_wrote(store: MetricsStore) -> None:
    store.write_sample([point(T0, release=3)], {}, T0)
    data = history_text(store, "web", interval=10, retention_raw=86400, release="v3",
                        since="1h", now=T0 + 5)
    assert [p["release"] for p in data["points"]] == [3]
    for bad in ({"since": "yesterday"}, {"release": "three"}, {"step": "fast"},
                {"since": "1h", "until": "2h"}):
        with pytest.raises(BadQuery) as info:
            history_text(store, "web", interval=10, retention_raw=86400, now=T0, **bad)
        assert info.value.hint and info.value.exit_code == 2  # bad arguments
        assert isinstance(info.value, MetricsError)


# -- the recorder -----------------------------------------------------------------------------
class Plain:
    """The recorder's sources as plain data a test sets (a router's stats, the store's hosts,
    providers' usage), and a clock it moves."""

    def __init__(self) -> None:
        self.stats: dict[str, BackendStats] = {}
        self.hosts: list[Host] = []
        self.usage: dict[str, HostUsage] = {}
        self.now = T0

    async def get_stats(self) -> dict[str, BackendStats]:
        return dict(self.stats)

    async def get_usage(self, h: Host) -> HostUsage | None:
        return self.usage.get(h.id)

    def recorder(self, store: MetricsStore, spec: MetricsSpec | None = None) -> MetricsRecorder:
        return MetricsRecorder(store, spec or MetricsSpec(), stats=self.get_stats,
                               hosts=lambda: list(self.hosts), usage=self.get_usage,
                               clock=lambda: self.now)


def test_recorder_keeps_a_destroyed_hosts_last_counts_and_totals_are_live(
        store: MetricsStore) -> None:
    src = Plain()
    src.hosts = [host("a"), host("b")]
    src.stats = {"a": stats("a", 10), "b": stats("b", 10)}

    async def scenario() -> None:
        rec = src.recorder(store)
        await rec.sample_once()
        src.stats["b"] = stats("b", 15)
        async with rec.destroying(src.hosts[1]):
            src.stats.pop("b")  # a router that forgets a backend once it is gone
            src.hosts[1] = host("b", state=HostState.DESTROYED)
        src.stats["a"] = stats("a", 12)
        live = {t.release: t.counts.requests for t in await rec.totals("web")}
        assert live == {1: 27}  # stored 20 + pending 5 + router's 2 since the sample
        src.now += 10
        await rec.sample_once()
        stored = {t.release: t.counts.requests for t in store.totals("web")}
        assert stored == {1: 27}
        assert {t.release: t.counts.requests for t in await rec.totals()} == {1: 27}

    asyncio.run(scenario())


def test_destroys_waiting_together_share_one_router_fetch_never_one_from_before_a_sample(
        store: MetricsStore) -> None:
    """`down` destroys every host at once: each one's last counts come from a stats fetch
    started after it asked, shared by those waiting together; a sample in between (its
    baseline moved) makes the next destroy fetch again. The totals come out exact."""
    src = Plain()
    src.hosts = [host(f"h{i}") for i in range(40)]
    src.stats = {h.id: stats(h.id, 10) for h in src.hosts}
    fetches = 0

    async def slow_stats() -> dict[str, BackendStats]:
        nonlocal fetches
        fetches += 1
        await asyncio.sleep(0.01)
        return dict(src.stats)

    async def destroy(h: Host) -> None:
        async with rec.destroying(h):
            src.stats.pop(h.id)

    rec = MetricsRecorder(store, MetricsSpec(), stats=slow_stats,
                          hosts=lambda: list(src.hosts), usage=src.get_usage,
                          clock=lambda: src.now)

    async def scenario() -> None:
        await rec.sample_once()
        for h in src.hosts:
            src.stats[h.id] = stats(h.id, 13)
        before = fetches
        await asyncio.gather(*(destroy(h) for h in src.hosts[:30]))
        assert fetches - before <= 2  # one per wave of waiters, not one per host
        before = fetches
        await asyncio.gather(rec.sample_once(), destroy(src.hosts[30]), rec.sample_once(),
                             destroy(src.hosts[31]))
        assert fetches - before == 4  # the second destroy's shared fetch predates a sample
        src.now += 10
        await rec.sample_once()

    asyncio.run(scenario())
    stored = {t.release: t.counts.requests for t in store.totals("web")}
    assert stored == {1: 40 * 13}


def test_destroys_waiting_together_read_their_usage_once(store: MetricsStore) -> None:
    """A process host's usage is a scan of all /proc: destroys waiting together share one
    read, and each host still gets its own figures; a host whose read failed is read again."""
    src = Plain()
    src.hosts = [host(f"h{i}") for i in range(30)]
    src.stats = {h.id: stats(h.id, 10) for h in src.hosts}
    src.usage = {h.id: HostUsage(cpu_seconds=i, memory_bytes=1000 + i)
                 for i, h in enumerate(src.hosts)}
    reads: list[list[str]] = []
    fail: set[str] = set()

    async def usages(hosts: list[Host]) -> dict[str, HostUsage]:
        reads.append([h.id for h in hosts])
        await asyncio.sleep(0.01)
        if fail & {h.id for h in hosts}:
            fail.clear()
            raise OSError("no /proc")
        return {h.id: src.usage[h.id] for h in hosts}

    rec = MetricsRecorder(store, MetricsSpec(), stats=src.get_stats,
                          hosts=lambda: list(src.hosts), usage=src.get_usage, usages=usages,
                          clock=lambda: src.now)
    finals: dict[str, HostUsage | None] = {}
    final = rec.sampler.final

    def keep(h: Host, stat: BackendStats | None, usage: HostUsage | None) -> None:
        finals[h.id] = usage
        final(h, stat, usage)

    rec.sampler.final = keep  # type: ignore[method-assign]

    async def destroy(h: Host) -> None:
        async with rec.destroying(h):
            src.stats.pop(h.id)

    async def scenario() -> None:
        await rec.sample_once()
        reads.clear()
        await asyncio.gather(*(destroy(h) for h in src.hosts[:29]))
        read = sorted(i for ids in reads for i in ids)
        assert len(reads) <= 2 and read == sorted(h.id for h in src.hosts[:29])
        assert finals == {h.id: src.usage[h.id] for h in src.hosts[:29]}
        reads.clear()
        fail.add("h29")
        await destroy(src.hosts[29])  # its read fails: logged, no usage, nothing left behind
        assert reads == [["h29"]] and "h29" not in finals
        assert not rec._usage_wanted and not rec._usage_read

    asyncio.run(scenario())


def test_a_failed_write_counts_the_same_deltas_at_the_next_sample(tmp_path: Path) -> None:
    src = Plain()
    src.hosts = [host("a")]
    src.stats = {"a": stats("a", 10)}

    class Flaky(MetricsStore):
        fail = True

        def write_sample(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            if self.fail:
                self.fail = False
                raise sqlite3.OperationalError("disk I/O error")
            return super().write_sample(*args, **kwargs)

    store = Flaky(tmp_path / "metrics.db")

    async def scenario() -> None:
        rec = src.recorder(store)
        with pytest.raises(sqlite3.OperationalError):
            await rec.sample_once()
        src.now += 10
        await rec.sample_once()

    asyncio.run(scenario())
    assert store.totals()[0].counts.requests == 10


def test_recorder_maintains_by_the_spec(store: MetricsStore) -> None:
    src = Plain()
    src.hosts = [host("a")]
    spec = MetricsSpec(retention_10s="1h", retention_1m="2h")  # type: ignore[arg-type]

    async def scenario() -> None:
        rec = src.recorder(store, spec)
        for i in range(7):
            src.stats = {"a": stats("a", 10 * (i + 1))}
            src.now = T0 + 10 * i
            await rec.sample_once()
        src.now = T0 + 3 * 3600
        assert await rec.maintain() == (2, 9)  # 2 minutes rolled up; then 7 raw + 2 too old

    asyncio.run(scenario())
    assert store.points("web", resolution=RAW, since=0, until=T0 * 2) == []


def test_run_takes_a_last_sample_when_cancelled(store: MetricsStore) -> None:
    src = Plain()
    src.hosts = [host("a")]
    src.stats = {"a": stats("a", 3)}

    async def scenario() -> None:
        rec = src.recorder(store, MetricsSpec(interval="60s"))  # type: ignore[arg-type]
        task = asyncio.create_task(rec.run())
        while not store.totals():
            await asyncio.sleep(0)
        src.stats = {"a": stats("a", 8)}
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
    assert store.totals()[0].counts.requests == 8


def test_chain_destroying_enters_in_order_and_leaves_in_reverse() -> None:
    seen: list[str] = []

    def hook(name: str):  # type: ignore[no-untyped-def]
        @contextlib.asynccontextmanager
        async def around(_: Host) -> AsyncIterator[None]:
            seen.append(f"{name} before")
            yield
            seen.append(f"{name} after")
        return around

    async def scenario() -> None:
        async with chain_destroying(hook("logs"), None, hook("metrics"))(host("a")):
            seen.append("destroy")

    asyncio.run(scenario())
    assert seen == ["logs before", "metrics before", "destroy", "metrics after", "logs after"]


# -- Prometheus and the spec ------------------------------------------------------------------
def test_prometheus_exposes_totals_with_cpu_and_memory_never_hosts(store: MetricsStore) -> None:
    store.write_sample([point(T0, release=1, requests=30, memory=5 << 20, cpu=1.5)], {}, T0)
    text = prometheus_text(from_totals(store.totals(), {}, []), []).decode()
    assert 'hinotori_requests_total{code="2xx",release="v1",service="web"} 30.0' in text
    assert 'hinotori_cpu_seconds_total{release="v1",service="web"} 1.5' in text
    assert 'hinotori_memory_bytes{release="v1",service="web"} 5.24288e+06' in text
    assert "host=" not in text and "host_id=" not in text  # labels: service, release, code


def test_metrics_spec_defaults_and_errors() -> None:
    base = '[services.web]\ncommand = ["python3", "app.py"]\n'
    m = parse_spec(base).metrics
    assert (m.interval, m.retention_10s, m.retention_1m) == (10, 86400, 30 * 86400)
    m = parse_spec(base + '[metrics]\ninterval = "1s"\nretention_10s = "2d"\n'
                          'retention_1m = "90d"\n').metrics
    assert (m.interval, m.retention_10s, m.retention_1m) == (1, 2 * 86400, 90 * 86400)
    for bad in ('interval = "5m"', 'retention_10s = "10m"', 'retention_1m = "1h"',
                'keep = "1d"'):
        with pytest.raises(SpecError):
            parse_spec(base + "[metrics]\n" + bad + "\n")


def test_recorder_asks_a_batch_usage_source_once_per_sample(store: MetricsStore,
                                                             tmp_path: Path) -> None:
    """Given ``usages``, a sample reads every live host's usage in one call (one /proc scan
    for process hosts) and records the same memory as per-host reads would."""
    src = Plain()
    src.hosts = [host("a"), host("b"), host("c", state=HostState.DESTROYED)]
    src.usage = {"a": HostUsage(cpu_seconds=1.0, memory_bytes=100),
                 "b": HostUsage(cpu_seconds=2.0, memory_bytes=50)}
    calls: list[list[str]] = []

    async def usages(hosts: list[Host]) -> dict[str, HostUsage]:
        calls.append([h.id for h in hosts])
        return {h.id: src.usage[h.id] for h in hosts if h.id in src.usage}

    async def per_host(h: Host) -> HostUsage | None:
        raise AssertionError("a sample must not read hosts one by one")

    async def scenario() -> None:
        batched = MetricsRecorder(store, MetricsSpec(), stats=src.get_stats,
                                  hosts=lambda: list(src.hosts), usage=per_host,
                                  usages=usages, clock=lambda: src.now)
        plain = src.recorder(MetricsStore(tmp_path / "plain.db"))
        got, want = await batched.sample_once(), await plain.sample_once()
        assert calls == [["a", "b"]]  # one call, live hosts only
        assert [(p.release, p.memory_sum) for p in got] == \
            [(p.release, p.memory_sum) for p in want] == [(1, 150)]

    asyncio.run(scenario())
