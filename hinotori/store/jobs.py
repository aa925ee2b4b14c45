"""The runs of scheduled jobs in state.db (tables ``job_runs`` and ``job_cursors``).

A helper over the Store rather than more methods on it: each change appends its event in the
same transaction, as every store change does (invariant 7).
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from hinotori.errors import NotFound
from hinotori.store.sqlite import Store

RUNNING = "running"
# How a run ended: its command exited 0 / non-zero (or its host could not boot), it outlived
# its timeout, a newer run replaced it (concurrency = "replace"), or its host was gone with
# its exit status unknown (the controller was down when it ended).
ENDINGS = ("succeeded", "failed", "timed-out", "replaced", "lost")
TRIGGERS = ("schedule", "manual", "missed")


def run_view(row: sqlite3.Row) -> dict[str, Any]:
    """A run as `hinotori jobs NAME --json` and `GET /v1/jobs/NAME` show it."""
    d = dict(row)
    d["release_name"] = f"v{d['release']}" if d["release"] is not None else None
    end = d["ended_at"]
    d["duration_s"] = round(end - d["started_at"], 3) if end is not None else None
    return d


class JobRuns:
    def __init__(self, store: Store) -> None:
        self.store = store

    def start(self, job: str, service: str, release: int, *, trigger: str, due: float | None,
              actor: str) -> int:
        with self.store.transaction() as db:
            cur = db.execute(
                "INSERT INTO job_runs (job, service, release, trigger, due, started_at, state) "
                "VALUES (?,?,?,?,?,?,?)",
                (job, service, release, trigger, due, time.time(), RUNNING))
            run = int(cur.lastrowid or 0)
            self.store._event(db, actor, "job.started", f"{job}/{run}",
                              {"service": service, "release": f"v{release}",
                               "trigger": trigger})
        return run

    def set_host(self, run: int, host: str) -> None:
        with self.store.transaction() as db:
            db.execute("UPDATE job_runs SET host = ? WHERE id = ?", (host, run))

    def finish(self, run: int, state: str, *, actor: str, exit_code: int | None = None,
               error: str | None = None) -> dict[str, Any]:
        """Record how the run ended; its event is ``job.succeeded``, ``job.replaced`` or
        ``job.failed`` (every ending that is an error has "failed" in its action)."""
        assert state in ENDINGS, state
        with self.store.transaction() as db:
            db.execute("UPDATE job_runs SET state = ?, exit_code = ?, error = ?, ended_at = ? "
                       "WHERE id = ? AND state = ?",
                       (state, exit_code, error, time.time(), run, RUNNING))
            row = run_view(db.execute("SELECT * FROM job_runs WHERE id = ?", (run,)).fetchone())
            action = state if state in ("succeeded", "replaced") else "failed"
            self.store._event(db, actor, f"job.{action}", f"{row['job']}/{run}", {
                "result": row["state"], "exit_code": row["exit_code"], "host": row["host"],
                "duration_s": row["duration_s"], "trigger": row["trigger"],
                **({"error": error} if error else {})})
        return row

    def run(self, run: int) -> dict[str, Any]:
        row = self.store._db.execute("SELECT * FROM job_runs WHERE id = ?", (run,)).fetchone()
        if row is None:
            raise NotFound(f"no job run {run}", hint="`hinotori jobs NAME` lists a job's runs")
        return run_view(row)

    def runs(self, job: str | None = None, *, limit: int = 20) -> list[dict[str, Any]]:
        """Newest first."""
        sql, args = "SELECT * FROM job_runs", [job] if job else []
        if job:
            sql += " WHERE job = ?"
        rows = self.store._db.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit))
        return [run_view(r) for r in rows]

    def running(self) -> list[dict[str, Any]]:
        rows = self.store._db.execute("SELECT * FROM job_runs WHERE state = ? ORDER BY id",
                                      (RUNNING,))
        return [run_view(r) for r in rows]

    def cursor(self, job: str) -> float | None:
        """The last moment a run of ``job`` was due (run or skipped); None if never."""
        row = self.store._db.execute("SELECT last_due FROM job_cursors WHERE job = ?",
                                     (job,)).fetchone()
        return row[0] if row else None

    def set_cursor(self, job: str, due: float) -> None:
        with self.store.transaction() as db:
            db.execute("INSERT INTO job_cursors (job, last_due) VALUES (?, ?) ON CONFLICT(job) "
                       "DO UPDATE SET last_due = excluded.last_due", (job, due))
