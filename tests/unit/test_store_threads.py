"""Every SQLite store is safe from several threads at once: the controller writes state.db from
its event loop and its bake threads, logs.db from the shipper and metrics.db from the sampler."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from hinotori.errors import StoreError
from hinotori.model import Host, HostState, ReleaseConfig
from hinotori.observe.logs import LogStore
from hinotori.observe.logs.store import Batch
from hinotori.observe.metrics.store import MetricsStore
from hinotori.store import Store
from hinotori.store.base import SqliteBase
from tests.support import point

CONFIG = ReleaseConfig(command=("python3", "app.py"), env={"A": "1"})


def run_threads(n: int, work: Callable[[int], None]) -> None:
    """Run ``work(i)`` on ``n`` threads started together; re-raise the first failure."""
    errors: list[BaseException] = []
    start = threading.Barrier(n)

    def body(i: int) -> None:
        try:
            start.wait()
            work(i)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def test_state_store_takes_writes_from_eight_threads(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    n, per = 8, 200
    stop = threading.Event()
    reads = []

    def reader() -> None:  # the controller's 500 ms poll, without the pause
        while not stop.is_set():
            reads.append(len(store.hosts("web")))

    poller = threading.Thread(target=reader)
    poller.start()

    def work(t: int) -> None:
        for i in range(per):
            store.record(f"thread-{t}", "test.step", f"t{t}", {"i": i})
            if i % 20 == 0:
                release = store.create_release("web", f"sha256:{t}{i}", CONFIG, actor="t",
                                               reason="bake")
                store.save_host(Host(id=f"h{t}-{i}", service="web", release=release.number,
                                     provider="process", state=HostState.SERVING,
                                     born_at=float(i)), actor="t")

    try:
        run_threads(n, work)
    finally:
        stop.set()
        poller.join()
    for t in range(n):
        events = store.events(subject=f"t{t}", limit=10_000)
        assert [e.detail["i"] for e in events] == list(range(per))  # in order of their ids
        assert [e.id for e in events] == sorted(e.id for e in events)
    assert [r.number for r in store.releases("web")] == list(range(1, n * per // 20 + 1))
    assert len(store.hosts("web")) == n * per // 20
    assert len(store.events(action="release.created", limit=10_000)) == n * per // 20
    assert reads and reads[-1] <= n * per // 20


def test_a_transaction_opened_inside_another_on_one_thread_joins_it(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    with pytest.raises(RuntimeError), store.transaction():
        store.record("t", "outer", "s")
        store.record("t", "inner", "s")  # its own transaction() joins the outer one
        raise RuntimeError("boom")
    assert store.events() == []  # rolled back together
    with store.transaction():
        store.record("t", "outer", "s")
        store.record("t", "inner", "s")
    assert [e.action for e in store.events()] == ["outer", "inner"]


def test_a_failed_transaction_rolls_back_and_leaves_the_connection_usable(
        tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    store.record("t", "before", "s")
    with pytest.raises(sqlite3.IntegrityError), store.transaction() as db:
        store.record("t", "lost", "s")
        db.execute("UPDATE events SET actor = 'x'")  # the log is append-only
    store.record("t", "after", "s")
    assert [e.action for e in store.events()] == ["before", "after"]


def test_connections_of_finished_threads_are_closed_and_close_closes_all(
        tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    for i in range(5):  # a thread per bake, as the controller does
        t = threading.Thread(target=store.record, args=("t", "bake", f"s{i}"))
        t.start()
        t.join()
    store.record("t", "main", "s")
    assert len(store._conns) == 2  # this thread's and the last thread's, not one per thread
    store.close()
    with pytest.raises(sqlite3.ProgrammingError):
        store.events()


def test_migrations_refuse_a_newer_file_and_tolerate_a_rerun(tmp_path: Path) -> None:
    class Two(SqliteBase):
        schema = ("CREATE TABLE a (x)", "CREATE TABLE b (y)")

    class One(SqliteBase):
        schema = ("CREATE TABLE a (x)",)

    assert Two(tmp_path / "x.db").schema_version == 2
    assert Two(tmp_path / "x.db").schema_version == 2  # reopened: nothing to do
    with pytest.raises(StoreError, match="newer hinotori"):
        One(tmp_path / "x.db")


def test_log_store_ingests_from_two_threads(tmp_path: Path) -> None:
    store = LogStore(tmp_path / "logs.db")
    streams = [store.open_stream(host=f"h{t}", service="web", release=1, source="stdout",
                                 inode=None) for t in range(2)]
    per, lines = 200, 5
    seen: list[int] = []
    stop = threading.Event()

    def follower() -> None:  # a forwarder reading while the shipper writes
        pos = 0
        while not stop.is_set():
            for line in store.after(pos, 1000):
                assert line.id > pos
                pos = line.id
                seen.append(pos)

    reader = threading.Thread(target=follower)
    reader.start()

    def work(t: int) -> None:
        sid, off = streams[t].id, 0
        for b in range(per):
            rows = []
            for k in range(lines):
                rows.append((sid, off, store.now(), f"thread {t} batch {b} line {k}"))
                off += 100
            store.ingest([Batch(sid, rows, off)], store.now())

    try:
        run_threads(2, work)
    finally:
        stop.set()
        reader.join()
    assert store.count() == 2 * per * lines
    for t, s in enumerate(streams):
        with store.reading() as db:
            offs = [r[0] for r in db.execute("SELECT off FROM lines WHERE stream = ? ORDER BY id",
                                              (s.id,))]
            hits = db.execute("SELECT count(*) FROM lines_fts WHERE lines_fts MATCH ?",
                              (f'"thread {t}"',)).fetchone()[0]
        assert offs == [100 * i for i in range(per * lines)]  # each stream's lines in order
        assert hits == per * lines
        assert store.stream(f"h{t}", "stdout").shipped == 100 * per * lines
    assert seen == sorted(seen) and len(seen) == len(set(seen))


def test_metrics_store_takes_samples_from_two_threads(tmp_path: Path) -> None:
    store = MetricsStore(tmp_path / "metrics.db")
    per = 200

    def work(t: int) -> None:
        for i in range(per):
            store.write_sample([point(1000.0 + 10 * i, release=t + 1, requests=10)],
                               {"thread": t, "i": i}, 1000.0 + 10 * i)
            if i % 50 == 0:
                store.rollup(1000.0 + 10 * i)
                store.totals("web")

    run_threads(2, work)
    totals = {t.release: t.counts.requests for t in store.totals("web")}
    assert totals == {1: 10 * per, 2: 10 * per}
    raw = store.points("web", resolution=0, since=0, until=1e9)
    assert len(raw) == 2 * per
    assert store.sampler_state()["i"] == per - 1
