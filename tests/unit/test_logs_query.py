"""Queries over the central store: filters, newest N, since, grep (FTS5 + LIKE), follow."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from hinotori.observe.logs import LogQuery, LogStore, follow, search
from hinotori.observe.logs.query import fts_phrase
from tests.support import put


@pytest.fixture
def store(tmp_path: Path) -> LogStore:
    st = LogStore(tmp_path / "logs.db")
    put(st, "web-a", ["GET /healthz 200", "connection refused by upstream"], ts=100.0)
    put(st, "web-b", ["GET /api/items 500 took=3ms", "50% done -> next"], release=2, ts=200.0)
    put(st, "db-a", ["checkpoint complete", "Connection Refused again"], service="db",
        ts=300.0)
    put(st, "web-b", ["audit: user_id=7 logged in"], release=2, source="logs/audit.log",
        ts=400.0)
    return st


def texts(store: LogStore, **q: object) -> list[str]:
    return [ln.line for ln in search(store, LogQuery(**q))]  # type: ignore[arg-type]


def test_filters_by_service_release_host_and_source(store: LogStore) -> None:
    assert texts(store, service="db") == ["checkpoint complete", "Connection Refused again"]
    assert texts(store, service="web", release=2) == [
        "GET /api/items 500 took=3ms", "50% done -> next", "audit: user_id=7 logged in"]
    assert texts(store, host="web-a") == ["GET /healthz 200", "connection refused by upstream"]
    assert texts(store, source="logs/audit.log") == ["audit: user_id=7 logged in"]
    assert texts(store, service="nope") == []


def test_limit_is_the_newest_n_oldest_first(store: LogStore) -> None:
    assert texts(store, limit=2) == ["Connection Refused again", "audit: user_id=7 logged in"]
    assert len(texts(store, limit=None)) == 7


def test_since_and_until_use_ingest_time(store: LogStore) -> None:
    assert texts(store, since=300.0) == ["checkpoint complete", "Connection Refused again",
                                         "audit: user_id=7 logged in"]
    assert texts(store, since=150.0, until=300.0) == ["GET /api/items 500 took=3ms",
                                                      "50% done -> next"]
    assert texts(store, since=999.0) == []


def test_grep_words_case_insensitive(store: LogStore) -> None:
    assert texts(store, grep="refused") == ["connection refused by upstream",
                                            "Connection Refused again"]
    assert texts(store, grep="connection refused", service="web") == [
        "connection refused by upstream"]
    assert texts(store, grep="refu") == texts(store, grep="refused")  # the last word: a prefix


def test_grep_is_a_substring_not_a_bag_of_words(store: LogStore) -> None:
    assert texts(store, grep="refused connection") == []  # both words, wrong order
    assert texts(store, grep="/api/items 500") == ["GET /api/items 500 took=3ms"]
    assert texts(store, grep="user_id=7") == ["audit: user_id=7 logged in"]


def test_grep_text_without_words_falls_back_to_like(store: LogStore) -> None:
    assert fts_phrase("->") is None
    assert texts(store, grep="->") == ["50% done -> next"]
    assert texts(store, grep="%") == ["50% done -> next"]  # LIKE wildcards are escaped
    assert texts(store, grep="_") == ["audit: user_id=7 logged in"]


def test_grep_quotes_and_fts_syntax_are_just_text(store: LogStore) -> None:
    assert texts(store, grep='"OR" AND NEAR(') == []  # no FTS syntax error, just no match
    put(store, "web-a", ['say "OR" AND NEAR( x'], ts=500.0)
    assert texts(store, grep='"OR" AND NEAR(') == ['say "OR" AND NEAR( x']


def test_follow_yields_the_newest_then_every_new_line_once(store: LogStore) -> None:
    rounds = itertools.count()
    lines = follow(store, LogQuery(service="web", limit=1), poll=0.001,
                   stop=lambda: next(rounds) > 3)
    assert next(lines).line == "audit: user_id=7 logged in"
    put(store, "web-a", ["new one", "new two"], ts=600.0)
    put(store, "db-a", ["not web"], service="db", ts=600.0)
    assert [next(lines).line, next(lines).line] == ["new one", "new two"]
    put(store, "web-a", ["later"], ts=700.0)
    assert [ln.line for ln in lines] == ["later"]


def test_follow_with_no_match_yet_starts_at_the_top(store: LogStore) -> None:
    rounds = itertools.count()
    lines = follow(store, LogQuery(grep="zebra"), poll=0.001, stop=lambda: next(rounds) > 5)
    put(store, "web-a", ["a zebra"], ts=800.0)
    assert [ln.line for ln in lines] == ["a zebra"]
