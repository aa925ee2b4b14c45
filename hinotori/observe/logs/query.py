"""Reading the central store the way people do: filters, grep, the newest N, and follow.

A query is compiled to one SELECT over lines joined with their stream. "since" becomes a rowid
bound (see LogStore.first_id_since), so the newest-N scan walks rowids backwards and stops at
the limit. grep uses the FTS5 index to find candidate lines and a LIKE to keep exact
substrings (LogQuery documents the semantics); text without word characters cannot be in the
index and is a LIKE scan only. ``follow`` is an iterator over a rowid cursor: it never misses
or repeats a line, whatever the ingest rate, because rowids only grow.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from typing import Any

from hinotori.observe.logs.records import LogLine, LogQuery
from hinotori.observe.logs.store import LINE_COLUMNS, LogStore

_WORD = re.compile(r"[^\W_]+")  # what FTS5's unicode61 tokenizer keeps as a token


def fts_phrase(text: str) -> str | None:
    """An FTS5 query for lines containing ``text`` at a word start, or None if it has no word.
    Tokens are alphanumeric, so quoting them needs no escaping; the last one is a prefix."""
    words = _WORD.findall(text)
    return f"\"{' '.join(words)}\"*" if words else None


def like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _where(store: LogStore, q: LogQuery, after: int) -> tuple[str, list[Any]]:
    clauses, args = ["l.id > ?"], [after]
    if q.since is not None:
        clauses.append("l.id >= ?")
        args.append(store.first_id_since(q.since))
    if q.until is not None:
        clauses.append("l.id < ?")
        args.append(store.first_id_since(q.until))
    for column, value in (("service", q.service), ("release", q.release), ("host", q.host),
                          ("source", q.source)):
        if value is not None:
            clauses.append(f"s.{column} = ?")
            args.append(value)
    if q.grep:
        phrase = fts_phrase(q.grep)
        if phrase:
            clauses.append("l.id IN (SELECT rowid FROM lines_fts WHERE lines_fts MATCH ?)")
            args.append(phrase)
        clauses.append("l.line LIKE ? ESCAPE '\\'")
        args.append(like_pattern(q.grep))
    return " AND ".join(clauses), args


def search(store: LogStore, q: LogQuery, after: int = 0) -> list[LogLine]:
    """The newest ``q.limit`` matching lines with rowid > ``after``, oldest first."""
    where, args = _where(store, q, after)
    sql = f"SELECT {LINE_COLUMNS} FROM lines l JOIN streams s ON s.id = l.stream WHERE {where}"
    if q.limit is None:
        sql += " ORDER BY l.id"
    else:
        sql += " ORDER BY l.id DESC LIMIT ?"
        args.append(q.limit)
    with store.reading() as db:
        rows = db.execute(sql, args).fetchall()
    lines = [LogLine(*r) for r in rows]
    return lines if q.limit is None else lines[::-1]


def newer(store: LogStore, q: LogQuery, after: int, limit: int = 10_000) -> list[LogLine]:
    """Matching lines with rowid > ``after``, oldest first, at most ``limit`` (a follow step)."""
    where, args = _where(store, q, after)
    sql = (f"SELECT {LINE_COLUMNS} FROM lines l JOIN streams s ON s.id = l.stream "
           f"WHERE {where} ORDER BY l.id LIMIT ?")
    with store.reading() as db:
        rows = db.execute(sql, [*args, limit]).fetchall()
    return [LogLine(*r) for r in rows]


def follow(store: LogStore, q: LogQuery, *, poll: float = 0.25,
           stop: Callable[[], bool] = lambda: False) -> Iterator[LogLine]:
    """The newest ``q.limit`` matches, then every new match as it is stored, until ``stop()``.
    "since"/"until" bound the first part only: following is about what comes next."""
    # Highest rowid read *before* each query: lines stored meanwhile are above it, so moving
    # the cursor there after an empty answer can never skip one.
    pos = store.bounds()[1]
    for line in search(store, q):
        pos = line.id
        yield line
    live = LogQuery(service=q.service, release=q.release, host=q.host, source=q.source,
                    grep=q.grep, limit=None)
    while not stop():
        high = store.bounds()[1]
        batch = newer(store, live, pos)
        for line in batch:
            pos = line.id
            yield line
        if not batch:
            pos = max(pos, high)  # a filter matching nothing still moves on
            time.sleep(poll)
