"""Retention by age and by size: oldest lines go, their FTS entries with them, rowids go on."""

from __future__ import annotations

from pathlib import Path

from hinotori.observe.logs import LogQuery, LogStore, apply_retention, search
from tests.support import put


def test_age_deletes_lines_older_than_retention(tmp_path: Path) -> None:
    store = LogStore(tmp_path / "logs.db")
    put(store, "h", ["old alpha", "old beta"], ts=1000.0)
    put(store, "h", ["new alpha"], ts=5000.0)
    done = apply_retention(store, max_age=3600.0, max_size=None, now=5000.0)
    assert (done.by_age, done.by_size) == (2, 0)
    assert [ln.line for ln in search(store, LogQuery(grep="alpha"))] == ["new alpha"]
    with store.reading() as db:  # the external-content index agrees with its table
        db.execute("INSERT INTO lines_fts (lines_fts) VALUES ('integrity-check')")


def test_age_can_empty_the_store_and_rowids_still_go_on(tmp_path: Path) -> None:
    store = LogStore(tmp_path / "logs.db")
    put(store, "h", ["a", "b", "c"], ts=10.0)
    assert apply_retention(store, max_age=1.0, max_size=None, now=100.0).by_age == 3
    put(store, "h", ["d"], ts=100.0)
    assert [(ln.id, ln.line) for ln in search(store, LogQuery())] == [(4, "d")]


def test_size_deletes_oldest_until_under_max_size(tmp_path: Path) -> None:
    store = LogStore(tmp_path / "logs.db")
    for i in range(40):
        put(store, "h", [f"line {i}-{j} " + "x" * 200 for j in range(100)], ts=1000.0 + i)
    before = store.used_bytes()
    limit = before // 3
    done = apply_retention(store, max_age=None, max_size=limit)
    assert done.by_size > 0 and done.by_age == 0
    assert store.used_bytes() <= limit
    kept = search(store, LogQuery(limit=None))
    assert kept[-1].line.startswith("line 39-99 ")  # the newest stay
    assert kept[0].id == done.by_size + 1  # the oldest went, in order
    put(store, "h", ["after"], ts=2000.0)  # freed pages are reused: no growth past the limit
    assert store.used_bytes() <= limit


def test_nothing_to_do_is_cheap_and_zero(tmp_path: Path) -> None:
    store = LogStore(tmp_path / "logs.db")
    assert apply_retention(store, max_age=60.0, max_size=1 << 30).deleted == 0
    put(store, "h", ["x"], ts=1000.0)
    assert apply_retention(store, max_age=60.0, max_size=1 << 30, now=1001.0).deleted == 0
