"""Retention: the central store keeps lines for ``[logs] retention`` and within ``max_size``.

Oldest lines go first, always: rowids grow with ingest time, so "older than" is "below some
rowid" and deletion is a rowid range. Deletes run in chunks, each its own short transaction,
so ingest is never blocked for long; FTS5 entries are deleted with the lines (an
external-content index needs the old text to forget a row). Freed pages go to SQLite's free
list and are reused by later inserts, so the file stops growing at about ``max_size`` without
a VACUUM (which would rewrite the whole file while holding the write lock).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from hinotori.observe.logs.store import LogStore

CHUNK = 20_000  # rows per delete transaction
SIZE_SLACK = 0.9  # over max_size, delete down to this fraction of it


@dataclass(frozen=True)
class Retained:
    by_age: int = 0
    by_size: int = 0

    @property
    def deleted(self) -> int:
        return self.by_age + self.by_size


def delete_through(store: LogStore, last_id: int, chunk: int = CHUNK) -> int:
    """Delete every line with rowid <= ``last_id``, oldest first. Returns how many."""
    deleted = 0
    low, _ = store.bounds()
    while low <= last_id:
        upto = min(last_id, low + chunk - 1)
        with store.transaction() as db:
            store.remember_high(db)  # rowids must go on above it even if the table empties
            db.execute("INSERT INTO lines_fts (lines_fts, rowid, line) "
                       "SELECT 'delete', id, line FROM lines WHERE id BETWEEN ? AND ?",
                       (low, upto))
            deleted += db.execute("DELETE FROM lines WHERE id BETWEEN ? AND ?",
                                  (low, upto)).rowcount
        low = upto + 1
    return deleted


def apply_retention(store: LogStore, *, max_age: float | None, max_size: int | None,
                    now: float | None = None) -> Retained:
    """Delete lines older than ``max_age`` seconds, then oldest lines while the store uses
    more than ``max_size`` bytes."""
    by_age = by_size = 0
    if max_age is not None:
        cutoff = (time.time() if now is None else now) - max_age
        by_age = delete_through(store, store.first_id_since(cutoff) - 1)
    if max_size is not None:
        for _ in range(20):  # each round deletes an estimate; a few rounds converge
            used = store.used_bytes()
            low, high = store.bounds()
            rows = high - low + 1
            if used <= max_size or rows <= 0:
                break
            per_row = used / rows
            excess = int((used - max_size * SIZE_SLACK) / per_row) + 1
            by_size += delete_through(store, low + min(excess, rows) - 1)
    return Retained(by_age=by_age, by_size=by_size)
