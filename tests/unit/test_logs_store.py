"""The central log store: dedup on ingest, offsets moving with their lines, monotone ingest
time, rowids that are never reused, cursors."""

from __future__ import annotations

from pathlib import Path

import pytest

from hinotori.observe.logs import LogStore
from hinotori.observe.logs.retention import delete_through
from hinotori.observe.logs.store import Batch


def rows(stream: int, texts: list[str], ts: float = 1000.0, start: int = 0) -> list:
    out, off = [], start
    for t in texts:
        out.append((stream, off, ts, t))
        off += len(t.encode()) + 1
    return out


@pytest.fixture
def store(tmp_path: Path) -> LogStore:
    return LogStore(tmp_path / "logs.db")


def test_ingest_twice_stores_each_line_once(store: LogStore) -> None:
    s = store.open_stream(host="web-1", service="web", release=1, source="stdout", inode="1:2")
    batch = Batch(s.id, rows(s.id, ["a", "b", "c"]), 6)
    assert store.ingest([batch], 1000.0) == 3
    assert store.ingest([batch], 1000.0) == 0  # at-least-once in, exactly once stored
    assert [ln.line for ln in store.after(0, 10)] == ["a", "b", "c"]
    assert store.stream("web-1", "stdout").shipped == 6  # type: ignore[union-attr]


def test_offset_never_moves_back(store: LogStore) -> None:
    s = store.open_stream(host="h", service="web", release=1, source="stdout", inode=None)
    store.ingest([Batch(s.id, rows(s.id, ["a", "b"]), 4)])
    store.ingest([Batch(s.id, rows(s.id, ["a"]), 2)])  # a late, older batch
    assert store.stream("h", "stdout").shipped == 4  # type: ignore[union-attr]


def test_rows_carry_service_release_host_source_offset(store: LogStore) -> None:
    s = store.open_stream(host="web-9", service="web", release=3, source="logs/app.log",
                          inode=None)
    store.ingest([Batch(s.id, rows(s.id, ["one", "two"], start=100), 108)])
    first, second = store.after(0, 10)
    assert (first.service, first.release, first.host, first.source, first.offset) == \
        ("web", 3, "web-9", "logs/app.log", 100)
    assert second.offset == 104


def test_ingest_time_never_decreases_with_rowid(store: LogStore) -> None:
    s = store.open_stream(host="h", service="web", release=1, source="stdout", inode=None)
    store.ingest([Batch(s.id, rows(s.id, ["late"], ts=2000.0), 5)], 2000.0)
    # the clock went back: the new rows are lifted to the newest ts
    store.ingest([Batch(s.id, rows(s.id, ["next"], ts=1500.0, start=5), 10)], 1500.0)
    assert [ln.ts for ln in store.after(0, 10)] == [2000.0, 2000.0]
    assert store.now() >= 2000.0


def test_first_id_since_is_a_binary_search_over_rowids(store: LogStore) -> None:
    s = store.open_stream(host="h", service="web", release=1, source="stdout", inode=None)
    for off, ts in enumerate((10.0, 20.0, 20.0, 30.0, 40.0)):
        store.ingest([Batch(s.id, [(s.id, off, ts, f"at {ts}")], off + 1)], ts)
    assert store.first_id_since(0) == 1
    assert store.first_id_since(20.0) == 2
    assert store.first_id_since(25.0) == 4
    assert store.first_id_since(99.0) == 6  # one past the newest


def test_rowids_are_never_reused_after_everything_was_deleted(store: LogStore) -> None:
    s = store.open_stream(host="h", service="web", release=1, source="stdout", inode=None)
    store.ingest([Batch(s.id, rows(s.id, ["a", "b"]), 4)])
    assert delete_through(store, 2) == 2
    assert store.bounds() == (3, 2)  # empty, and the next rowid is 3
    store.ingest([Batch(s.id, rows(s.id, ["c"], start=4), 6)])
    assert [ln.id for ln in store.after(0, 10)] == [3]


def test_cursors_persist_and_count_drops(tmp_path: Path) -> None:
    store = LogStore(tmp_path / "logs.db")
    assert store.cursor("loki").pos == 0
    store.save_cursor("loki", 10)
    store.save_cursor("loki", 50, dropped=7)
    store.save_cursor("loki", 60, dropped=3)
    store.close()
    again = LogStore(tmp_path / "logs.db")
    assert again.cursor("loki").pos == 60
    assert again.cursor("loki").dropped == 10


def test_a_new_generation_restarts_offsets_without_colliding(store: LogStore) -> None:
    g0 = store.open_stream(host="h", service="web", release=1, source="app.log", inode="1:1")
    store.ingest([Batch(g0.id, rows(g0.id, ["old"]), 4)])
    g1 = store.open_stream(host="h", service="web", release=1, source="app.log", inode="1:2",
                           gen=1)
    assert store.ingest([Batch(g1.id, rows(g1.id, ["new"]), 4)]) == 1  # offset 0 again
    assert store.stream("h", "app.log") == g1.__class__(g1.id, "h", "app.log", 1, "1:2", 4)


def test_damaged_file_is_a_logs_error(tmp_path: Path) -> None:
    from hinotori.observe.logs import LogsError

    bad = tmp_path / "logs.db"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(LogsError) as info:
        LogStore(bad)
    assert info.value.hint
