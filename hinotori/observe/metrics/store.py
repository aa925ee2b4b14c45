"""The metric history: SQLite in its own file, ``.hinotori/metrics.db``.

Its own file, like logs.db, so the sampler's writes never wait for (or make wait) a routing
switch writing state.db. WAL, so `hinotori metrics` reads it while the controller writes.

Tables:

- ``points``: (service, release, resolution, ts) -> counters over ``span`` seconds and gauges
  (see points.Point). Never a host's name. ``resolution`` is RAW (0: one point per sample,
  ``ts`` = the sample's time) or MINUTE (60: rolled up from the raw points, ``ts`` = the
  minute's start). Status classes and latency buckets are plain integer columns, so rollups
  and queries are one ``GROUP BY`` in SQLite: a 30-day query reads 130,000 rows per 3 releases
  and must not decode them one by one in Python.
- ``totals``: per (service, release), every counter since the history began, and the gauges of
  the last sample: what the Prometheus endpoint exposes as counters that survive hosts,
  routers and controllers.
- ``meta``: the sampler's baseline (moved in the same transaction as the points it produced,
  so a crash never counts a delta twice or loses it) and the rollup cursor.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hinotori.errors import BadQuery as BadQuery
from hinotori.errors import MetricsError as MetricsError
from hinotori.observe.metrics.points import N_BUCKETS, Counts, Point
from hinotori.store.base import SqliteBase

METRICS_DB = "metrics.db"
RAW, MINUTE = 0, 60

_SCHEMA = [
    """
    CREATE TABLE points (
        service TEXT NOT NULL,
        release INTEGER NOT NULL,
        resolution INTEGER NOT NULL,
        ts REAL NOT NULL,
        span REAL NOT NULL,
        samples INTEGER NOT NULL,
        requests INTEGER NOT NULL,
        errors INTEGER NOT NULL,
        {statuses},
        {buckets},
        latency_sum_ms REAL NOT NULL,
        cpu_seconds REAL NOT NULL,
        memory_sum REAL NOT NULL,
        memory_max INTEGER NOT NULL,
        hosts_sum REAL NOT NULL,
        hosts_max INTEGER NOT NULL,
        PRIMARY KEY (service, resolution, ts, release)
    ) WITHOUT ROWID;
    CREATE INDEX points_age ON points (resolution, ts);
    CREATE TABLE totals (
        service TEXT NOT NULL,
        release INTEGER NOT NULL,
        counts TEXT NOT NULL,
        memory_bytes INTEGER NOT NULL DEFAULT 0,
        hosts INTEGER NOT NULL DEFAULT 0,
        updated REAL NOT NULL,
        PRIMARY KEY (service, release)
    );
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
]

STATUS_CLASSES = ("2xx", "3xx", "4xx", "5xx")  # what the routers count (1xx counts as 2xx)
_STATUS_COLS = [f"s{c}" for c in STATUS_CLASSES]
_BUCKET_COLS = [f"l{i}" for i in range(N_BUCKETS)]
_SCHEMA = [_SCHEMA[0].format(
    statuses=",\n        ".join(f"{c} INTEGER NOT NULL" for c in _STATUS_COLS),
    buckets=",\n        ".join(f"{c} INTEGER NOT NULL" for c in _BUCKET_COLS))]
_COUNTERS = ["span", "samples", "requests", "errors", *_STATUS_COLS, *_BUCKET_COLS,
             "latency_sum_ms", "cpu_seconds", "memory_sum"]
_COLUMNS = ", ".join(["service", "release", "ts", *_COUNTERS, "memory_max", "hosts_sum",
                      "hosts_max"])
_PLACES = ", ".join("?" * (3 + len(_COUNTERS) + 3))
# Summing points into one (rollup, a query's bucket): counters add up, maxima stay maxima.
_SUMMED = ", ".join([*(f"SUM({c})" for c in _COUNTERS), "MAX(memory_max)", "SUM(hosts_sum)",
                     "MAX(hosts_max)"])


@dataclass(frozen=True)
class Total:
    service: str
    release: int
    counts: Counts
    memory_bytes: int  # at the last sample, summed over the release's live hosts
    hosts: int  # serving at the last sample
    updated: float


def metrics_db(state_dir: Path) -> Path:
    return Path(state_dir) / METRICS_DB


def _row(p: Point) -> tuple[Any, ...]:
    c = p.counts
    return (p.service, p.release, p.ts, p.span, p.samples, c.requests, c.errors,
            *(c.statuses.get(k, 0) for k in STATUS_CLASSES), *c.latency, c.latency_sum_ms,
            c.cpu_seconds, p.memory_sum, p.memory_max, p.hosts_sum, p.hosts_max)


def _point(r: Sequence[Any]) -> Point:
    """A row of (service, release, ts, *_COUNTERS, memory_max, hosts_sum, hosts_max)."""
    statuses = r[7:7 + len(STATUS_CLASSES)]
    at = 7 + len(STATUS_CLASSES) + N_BUCKETS
    counts = Counts(requests=r[5], errors=r[6],
                    statuses={k: v for k, v in zip(STATUS_CLASSES, statuses, strict=True) if v},
                    latency=list(r[7 + len(STATUS_CLASSES):at]), latency_sum_ms=r[at],
                    cpu_seconds=r[at + 1])
    return Point(service=r[0], release=r[1], ts=r[2], span=r[3], samples=r[4], counts=counts,
                 memory_sum=r[at + 2], memory_max=r[at + 3], hosts_sum=r[at + 4],
                 hosts_max=r[at + 5])


class MetricsStore(SqliteBase):
    what = "the metric history"
    loses = "the history in it"
    error = MetricsError
    schema = _SCHEMA

    # -- meta --------------------------------------------------------------------------------
    def _meta(self, key: str) -> Any:
        with self.reading() as db:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    @staticmethod
    def _set_meta(db: sqlite3.Connection, key: str, value: Any) -> None:
        db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                   (key, json.dumps(value)))

    def rolled_until(self) -> float | None:
        """Raw points before this time are rolled up into minute points."""
        return self._meta("rolled_until")

    def sampler_state(self) -> dict[str, Any]:
        return self._meta("sampler") or {}

    # -- writes ------------------------------------------------------------------------------
    def write_sample(self, points: Sequence[Point], sampler_state: dict[str, Any],
                     now: float) -> None:
        """Raw points, the totals they add to and the sampler's new baseline: all or nothing."""
        with self.transaction() as db:
            db.executemany(f"INSERT OR REPLACE INTO points (resolution, {_COLUMNS}) "
                           f"VALUES ({RAW}, {_PLACES})", [_row(p) for p in points])
            db.execute("UPDATE totals SET memory_bytes = 0, hosts = 0")
            for p in points:
                row = db.execute("SELECT counts FROM totals WHERE service = ? AND release = ?",
                                 (p.service, p.release)).fetchone()
                total = Counts.from_dict(json.loads(row[0])) if row else Counts()
                total.add(p.counts)
                db.execute("INSERT OR REPLACE INTO totals (service, release, counts, "
                           "memory_bytes, hosts, updated) VALUES (?, ?, ?, ?, ?, ?)",
                           (p.service, p.release, json.dumps(total.to_dict()),
                            int(p.memory_bytes), int(p.hosts_max), now))
            self._set_meta(db, "sampler", sampler_state)

    def rollup(self, now: float) -> int:
        """Sum the raw points of every complete minute not rolled up yet into 1-minute points.
        Idempotent (a minute is rewritten whole); returns how many minute points were written."""
        upto = (now // MINUTE) * MINUTE  # the current minute may still get raw points
        with self.transaction() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'rolled_until'").fetchone()
            start = json.loads(row[0]) if row else None
            if start is None:
                first = db.execute("SELECT min(ts) FROM points WHERE resolution = ?",
                                   (RAW,)).fetchone()[0]
                if first is None:
                    return 0
                start = (first // MINUTE) * MINUTE
            if start >= upto:
                return 0
            minute = f"CAST(ts / {MINUTE} AS INTEGER) * {MINUTE}"
            written = db.execute(
                f"INSERT OR REPLACE INTO points (resolution, {_COLUMNS}) "
                f"SELECT {MINUTE}, service, release, {minute}, {_SUMMED} FROM points "
                f"WHERE resolution = ? AND ts >= ? AND ts < ? GROUP BY service, release, "
                f"{minute}", (RAW, start, upto)).rowcount
            self._set_meta(db, "rolled_until", upto)
        return written

    def prune(self, now: float, *, keep_raw: float, keep_minute: float) -> int:
        """Delete raw points older than ``keep_raw`` (only once rolled up) and minute points
        older than ``keep_minute``. Returns how many were deleted."""
        rolled = self._meta("rolled_until")
        raw_before = min(now - keep_raw, rolled if rolled is not None else float("-inf"))
        with self.transaction() as db:
            before = db.total_changes
            db.execute("DELETE FROM points WHERE resolution = ? AND ts < ?", (RAW, raw_before))
            db.execute("DELETE FROM points WHERE resolution = ? AND ts < ?",
                       (MINUTE, now - keep_minute))
            return db.total_changes - before

    # -- reads -------------------------------------------------------------------------------
    def buckets(self, service: str, *, step: int, ranges: Sequence[tuple[int, float, float]],
                release: int | None = None) -> list[tuple[Point, float, float]]:
        """Points summed per (release, bucket of ``step`` seconds), ``ts`` = the bucket's
        start, read from (resolution, since, until) ranges; ordered by ts, then release. With
        each, the first and last ``ts`` of the points in it."""
        where = " OR ".join("(resolution = ? AND ts >= ? AND ts < ?)" for _ in ranges)
        args: list[Any] = [service, *(v for r in ranges for v in r)]
        sql = (f"SELECT service, release, CAST(ts / {step} AS INTEGER) * {step} AS t, "
               f"{_SUMMED}, MIN(ts), MAX(ts) FROM points WHERE service = ? AND ({where})")
        if release is not None:
            sql += " AND release = ?"
            args.append(release)
        with self.reading() as db:
            rows = db.execute(sql + " GROUP BY release, t ORDER BY t, release",
                                    args).fetchall()
        return [(_point(r[:-2]), r[-2], r[-1]) for r in rows]

    def points(self, service: str, *, resolution: int, since: float, until: float,
               release: int | None = None) -> list[Point]:
        sql = (f"SELECT {_COLUMNS} FROM points WHERE service = ? AND resolution = ? "
               "AND ts >= ? AND ts < ?")
        args: list[Any] = [service, resolution, since, until]
        if release is not None:
            sql += " AND release = ?"
            args.append(release)
        with self.reading() as db:
            rows = db.execute(sql + " ORDER BY ts, release", args).fetchall()
        return [_point(r) for r in rows]

    def oldest(self, resolution: int) -> float | None:
        with self.reading() as db:
            return db.execute("SELECT min(ts) FROM points WHERE resolution = ?",
                                    (resolution,)).fetchone()[0]

    def totals(self, service: str | None = None) -> list[Total]:
        sql = "SELECT service, release, counts, memory_bytes, hosts, updated FROM totals"
        args: list[Any] = []
        if service is not None:
            sql += " WHERE service = ?"
            args.append(service)
        with self.reading() as db:
            rows = db.execute(sql + " ORDER BY service, release", args).fetchall()
        return [Total(service=r[0], release=r[1], counts=Counts.from_dict(json.loads(r[2])),
                      memory_bytes=r[3], hosts=r[4], updated=r[5]) for r in rows]

    def services(self) -> list[str]:
        with self.reading() as db:
            return [r[0] for r in db.execute(
                "SELECT DISTINCT service FROM totals ORDER BY service")]
