"""The state store: SQLite (WAL) under ``.hinotori/``.

One writer at a time is SQLite's rule; WAL lets the CLI read while the controller writes, and a
busy timeout makes concurrent writers wait instead of failing. Safe from any thread (the
controller writes from its event loop and its bake threads): see store.base. Every
state-changing method appends its event in the same transaction, so the audit log can never miss
a change (invariant 7). Calls are short and synchronous: each is well under a millisecond on
local disk, cheaper than handing it to a thread.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterable, Sequence
from typing import Any

from hinotori.errors import NotFound, StoreError
from hinotori.model import Event, Host, HostState, Release, ReleaseConfig
from hinotori.store.base import SqliteBase
from hinotori.store.holds import HoldsMixin, decode_hold
from hinotori.store.maintenance import MaintenanceStore
from hinotori.store.migrations import MIGRATIONS
from hinotori.store.origins import OriginsMixin


def default_actor() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no user name in some containers
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


class Store(MaintenanceStore, OriginsMixin, HoldsMixin, SqliteBase):
    what = "the state store"
    loses = "releases, hosts and the event log"
    error = StoreError
    schema = MIGRATIONS
    pragmas = ("synchronous=NORMAL", "foreign_keys=ON")
    row_factory = sqlite3.Row

    def _event(self, db: sqlite3.Connection, actor: str, action: str, subject: str,
               detail: dict[str, Any] | None = None) -> None:
        db.execute("INSERT INTO events (ts, actor, action, subject, detail) VALUES (?,?,?,?,?)",
                   (time.time(), actor, action, subject, json.dumps(detail or {}, default=str)))

    # -- events --------------------------------------------------------------------------
    def record(self, actor: str, action: str, subject: str,
               detail: dict[str, Any] | None = None) -> None:
        with self.transaction() as db:
            self._event(db, actor, action, subject, detail)

    def record_many(self, actor: str, events: Iterable[tuple[str, str, dict[str, Any]]]) -> None:
        """Several events (action, subject, detail) in one transaction."""
        with self.transaction() as db:
            for action, subject, detail in events:
                self._event(db, actor, action, subject, detail)

    def events(self, *, subject: str | None = None, action: str | None = None,
               actor: str | None = None, since: float | None = None,
               until: float | None = None, text: str | None = None,
               limit: int = 100) -> list[Event]:
        """Newest last. ``subject`` matches exactly or as a prefix ("web" matches "web/v2");
        ``action`` and ``actor`` are prefixes ("host." / "ci:"); ``text`` is a
        case-insensitive substring of the detail (the why, the reason, a host id…)."""
        where, args = [], []
        if subject:
            where.append("(subject = ? OR subject LIKE ? ESCAPE '\\')")
            args += [subject, f"{_like_escape(subject)}/%"]
        for column, prefix in (("action", action), ("actor", actor)):
            if prefix:
                where.append(f"{column} LIKE ? ESCAPE '\\'")
                args.append(_like_escape(prefix) + "%")
        if since is not None:
            where.append("ts >= ?")
            args.append(since)
        if until is not None:
            where.append("ts < ?")
            args.append(until)
        if text:
            where.append("detail LIKE ? ESCAPE '\\'")
            args.append(f"%{_like_escape(text)}%")
        sql = "SELECT * FROM events" + (" WHERE " + " AND ".join(where) if where else "")
        rows = self._db.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        return [Event(id=r["id"], ts=r["ts"], actor=r["actor"], action=r["action"],
                      subject=r["subject"], detail=json.loads(r["detail"]))
                for r in reversed(rows)]

    # -- releases ------------------------------------------------------------------------
    def create_release(self, service: str, image: str, config: ReleaseConfig, *, actor: str,
                       reason: str, origin: dict[str, Any] | None = None) -> Release:
        """A new release; ``origin`` (environment, release, image) for a promoted one."""
        with self.transaction() as db:
            row = db.execute("SELECT MAX(number) FROM releases WHERE service = ?",
                             (service,)).fetchone()
            number = (row[0] or 0) + 1
            release = Release(service=service, number=number, image=image, config=config,
                              created_at=time.time(), reason=reason)
            db.execute("INSERT INTO releases VALUES (?,?,?,?,?,?)",
                       (service, number, image, json.dumps(config.to_dict()),
                        release.created_at, reason))
            if origin is not None:
                self._save_origin(db, service, number, origin)
            self._event(db, actor, "release.created", f"{service}/v{number}",
                        {"image": image, "reason": reason, "config": config.to_dict(),
                         **({"origin": origin} if origin else {})})
        return release

    def release(self, service: str, number: int) -> Release:
        row = self._db.execute("SELECT * FROM releases WHERE service = ? AND number = ?",
                               (service, number)).fetchone()
        if row is None:
            raise NotFound(f"{service} has no release v{number}",
                           hint=f"`hinotori releases {service}` lists them")
        return _release(row)

    def releases(self, service: str | None = None) -> list[Release]:
        if service:
            rows = self._db.execute("SELECT * FROM releases WHERE service = ? ORDER BY number",
                                    (service,))
        else:
            rows = self._db.execute("SELECT * FROM releases ORDER BY service, number")
        return [_release(r) for r in rows]

    def latest_release(self, service: str) -> Release | None:
        row = self._db.execute("SELECT * FROM releases WHERE service = ? ORDER BY number DESC "
                               "LIMIT 1", (service,)).fetchone()
        return _release(row) if row else None

    # -- services ------------------------------------------------------------------------
    def service_releases(self, service: str) -> tuple[int | None, int | None]:
        """(current, previous) release numbers of the service."""
        row = self._db.execute("SELECT current, previous FROM services WHERE name = ?",
                               (service,)).fetchone()
        return (row["current"], row["previous"]) if row else (None, None)

    def set_service_releases(self, service: str, current: int | None, previous: int | None, *,
                             actor: str, why: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT INTO services (name, current, previous, updated_at) "
                       "VALUES (?,?,?,?) ON CONFLICT(name) DO UPDATE SET "
                       "current = excluded.current, previous = excluded.previous, "
                       "updated_at = excluded.updated_at", (service, current, previous,
                                                            time.time()))
            self._event(db, actor, "service.releases", service,
                        {"current": current, "previous": previous, "why": why})

    def canary(self, service: str) -> int | None:
        """The release being canaried for ``service`` (None when no canary runs)."""
        row = self._db.execute("SELECT canary FROM services WHERE name = ?",
                               (service,)).fetchone()
        return row["canary"] if row else None

    def set_canary(self, service: str, release: int | None, *, actor: str, why: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT INTO services (name, updated_at, canary) VALUES (?,?,?) "
                       "ON CONFLICT(name) DO UPDATE SET canary = excluded.canary, "
                       "updated_at = excluded.updated_at", (service, time.time(), release))
            self._event(db, actor, "service.canary", service, {"canary": release, "why": why})

    # -- hosts ---------------------------------------------------------------------------
    def save_host(self, host: Host, *, actor: str, why: str = "") -> None:
        """Insert or update; an event records the state it moved to (and why)."""
        with self.transaction() as db:
            old = db.execute("SELECT state FROM hosts WHERE id = ?", (host.id,)).fetchone()
            db.execute(
                "INSERT INTO hosts (id, service, release, provider, state, born_at, address, pid, "
                "root, data, warm_until, updated_at, weight, rev) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,(SELECT COALESCE(MAX(rev), 0) + 1 FROM hosts)) "
                "ON CONFLICT(id) DO UPDATE SET "
                "state=excluded.state, address=excluded.address, pid=excluded.pid, "
                "root=excluded.root, data=excluded.data, warm_until=excluded.warm_until, "
                "updated_at=excluded.updated_at, weight=excluded.weight, rev=excluded.rev",
                (host.id, host.service, host.release, host.provider, str(host.state),
                 host.born_at, host.address, host.pid, host.root, json.dumps(host.data),
                 host.warm_until, time.time(), host.weight))
            if old is None or old["state"] != str(host.state):
                detail = {"release": f"v{host.release}", "address": host.address}
                if why:
                    detail["why"] = why
                self._event(db, actor, f"host.{host.state}", f"{host.service}/{host.id}", detail)

    def save_hosts(self, hosts: Iterable[Host], *, actor: str, why: str = "") -> None:
        """save_host for each of ``hosts``, in one transaction (one commit for a fleet)."""
        with self.transaction():
            for host in hosts:
                self.save_host(host, actor=actor, why=why)

    def host_counts(self, service: str) -> dict[str, int]:
        """How many live hosts ``service`` has in each state (counted by the database: no
        host of the service's history is read)."""
        alive = [str(s) for s in HostState if s.alive]
        rows = self._db.execute(
            "SELECT state, COUNT(*) FROM hosts WHERE service = ? AND state IN "
            f"({','.join('?' * len(alive))}) GROUP BY state", (service, *alive))
        return {state: count for state, count in rows}

    def host(self, host_id: str) -> Host:
        row = self._db.execute("SELECT * FROM hosts WHERE id = ?", (host_id,)).fetchone()
        if row is None:
            raise NotFound(f"no host {host_id}", hint="`hinotori hosts` lists them")
        return _host(row)

    def hosts(self, service: str | None = None,
              states: Iterable[HostState] | None = None) -> list[Host]:
        where, args = [], []
        if service:
            where.append("service = ?")
            args.append(service)
        if states is not None:
            states = list(states)
            where.append(f"state IN ({','.join('?' * len(states))})")
            args += [str(s) for s in states]
        sql = "SELECT * FROM hosts" + (" WHERE " + " AND ".join(where) if where else "")
        return [_host(r) for r in self._db.execute(sql + " ORDER BY born_at, id", args)]

    def host_mark(self) -> int:
        """The mark of the last host row written (each ``save_host`` stamps its row with the
        next one): the same mark, the same hosts."""
        return self._db.execute("SELECT COALESCE(MAX(rev), 0) FROM hosts").fetchone()[0]

    def hosts_written_after(self, mark: int) -> list[Host]:
        """The hosts whose rows were written after ``mark`` (-1: every host), in that order."""
        return [_host(r) for r in self._db.execute(
            "SELECT * FROM hosts WHERE rev > ? ORDER BY rev", (mark,))]

    # -- deployments ---------------------------------------------------------------------
    def create_deployment(self, service: str, *, strategy: str, kind: str,
                          from_release: int | None, to_release: int, actor: str,
                          reason: str = "", claimed_actor: str | None = None) -> int:
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO deployments (service, strategy, kind, from_release, to_release, "
                "state, started_at) VALUES (?,?,?,?,?,?,?)",
                (service, strategy, kind, from_release, to_release, "running", time.time()))
            number = int(cur.lastrowid or 0)
            self._event(db, actor, f"{kind}.started", f"{service}/deployment/{number}",
                        {"strategy": strategy, "from": from_release, "to": to_release,
                         "reason": reason,
                         **({"claimed_actor": claimed_actor} if claimed_actor else {})})
        return number

    def add_deployment_step(self, number: int, step: dict[str, Any]) -> None:
        """Append one step: one small row, whatever the number of steps before it."""
        with self.transaction() as db:
            db.execute("INSERT INTO deployment_steps (deployment, seq, step) SELECT ?, "
                       "COALESCE(MAX(seq) + 1, 0), ? FROM deployment_steps WHERE deployment = ?",
                       (number, json.dumps({"ts": time.time(), **step}, default=str), number))

    def finish_deployment(self, number: int, state: str, *, actor: str,
                          summary: dict[str, Any] | None = None, error: str | None = None) -> None:
        with self.transaction() as db:
            row = db.execute("SELECT service, kind FROM deployments WHERE id = ?",
                             (number,)).fetchone()
            db.execute("UPDATE deployments SET state = ?, ended_at = ?, summary = ?, error = ? "
                       "WHERE id = ?", (state, time.time(), json.dumps(summary or {}), error,
                                        number))
            detail = {**(summary or {}), **({"error": error} if error else {})}
            self._event(db, actor, f"{row['kind']}.{state}",
                        f"{row['service']}/deployment/{number}", detail)

    def deployment(self, number: int, steps_after: int = 0) -> dict[str, Any]:
        """One deployment; with ``steps_after``, only its steps from that index on (a
        follower polling a long deployment fetches what is new, not every step again)."""
        row = self._db.execute("SELECT * FROM deployments WHERE id = ?", (number,)).fetchone()
        if row is None:
            raise NotFound(f"no deployment {number}")
        d = _deployment(row)
        legacy = d["steps"]  # a deployment made before deployment_steps keeps its steps there
        rows = self._db.execute(  # only the steps asked for: a follower polls this (readapi)
            "SELECT step FROM deployment_steps WHERE deployment = ? AND seq >= ? ORDER BY seq",
            (number, max(0, steps_after - len(legacy))))
        d["steps"] = legacy[steps_after:] + [json.loads(step) for (step,) in rows]
        return d

    def deployments(self, service: str | None = None, limit: int = 50,
                    last_steps: int | None = None) -> list[dict[str, Any]]:
        """The newest ``limit`` deployments, each with its steps, or only its ``last_steps``
        (what the dashboard polls each second: a 1,000-host deployment has ~2,000)."""
        sql, args = "SELECT * FROM deployments", []
        if service:
            sql += " WHERE service = ?"
            args.append(service)
        rows = self._db.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        found = [_deployment(r) for r in reversed(rows)]
        if last_steps is None:
            steps = self._steps([d["id"] for d in found])
            for d in found:
                d["steps"] += steps.get(d["id"], [])
            return found
        for d in found:
            newest = [json.loads(step) for (step,) in self._db.execute(
                "SELECT step FROM deployment_steps WHERE deployment = ? ORDER BY seq DESC "
                "LIMIT ?", (d["id"], last_steps))][::-1]
            missing = last_steps - len(newest)  # taken from the legacy column's last steps
            d["steps"] = (d["steps"][-missing:] if missing else []) + newest
        return found

    def _steps(self, numbers: list[int]) -> dict[int, list[dict[str, Any]]]:
        """The steps of deployments ``numbers`` from deployment_steps, in order, by number."""
        out: dict[int, list[dict[str, Any]]] = {}
        for chunk in (numbers[i:i + 500] for i in range(0, len(numbers), 500)):
            rows = self._db.execute(
                "SELECT deployment, step FROM deployment_steps WHERE deployment IN "
                f"({','.join('?' * len(chunk))}) ORDER BY deployment, seq", chunk)
            for number, step in rows:
                out.setdefault(number, []).append(json.loads(step))
        return out

    # -- webhook deliveries --------------------------------------------------------------
    def remember_delivery(self, keys: Sequence[str], *, now: float, window: float,
                          keep: int) -> tuple[str, float] | None:
        """In one transaction: the first of ``keys`` seen within ``window`` seconds before
        ``now``, with when (and nothing remembered); else None, every key remembered as seen
        now. Forgets what is older than the window, and all but the ``keep`` newest."""
        with self.transaction() as db:
            db.execute("DELETE FROM webhook_deliveries WHERE seen_at <= ?", (now - window,))
            for key in keys:
                row = db.execute("SELECT seen_at FROM webhook_deliveries WHERE key = ?",
                                 (key,)).fetchone()
                if row is not None:
                    return key, row["seen_at"]
            db.executemany("INSERT OR REPLACE INTO webhook_deliveries VALUES (?, ?)",
                           [(key, now) for key in keys])
            db.execute("DELETE FROM webhook_deliveries WHERE key NOT IN (SELECT key FROM "
                       "webhook_deliveries ORDER BY seen_at DESC LIMIT ?)", (keep,))
        return None

    # -- machines of a fleet --------------------------------------------------------------
    def machines(self) -> dict[str, dict[str, Any]]:
        """Each machine the controller has seen: state, drained, last_seen, engine, detail."""
        rows = self._db.execute("SELECT * FROM machines ORDER BY name").fetchall()
        return {r["name"]: {"state": r["state"], "drained": bool(r["drained"]),
                            "last_seen": r["last_seen"], "engine": r["engine"],
                            "detail": r["detail"]} for r in rows}

    def save_machine(self, name: str, *, state: str, last_seen: float | None,
                     engine: str | None, detail: str = "", actor: str = "controller",
                     why: str = "") -> None:
        """Record what the controller sees of ``name``; a change of state is an event."""
        with self.transaction() as db:
            row = db.execute("SELECT state FROM machines WHERE name = ?", (name,)).fetchone()
            db.execute("INSERT INTO machines (name, state, last_seen, engine, detail, "
                       "updated_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
                       "state = excluded.state, last_seen = COALESCE(excluded.last_seen, "
                       "last_seen), engine = COALESCE(excluded.engine, engine), detail = "
                       "excluded.detail, updated_at = excluded.updated_at",
                       (name, state, last_seen, engine, detail, time.time()))
            if row is None or row["state"] != state:
                self._event(db, actor, f"machine.{state}", name,
                            {"was": row["state"] if row else None, "why": why or detail})

    def set_drained(self, name: str, drained: bool, *, actor: str, why: str = "") -> None:
        with self.transaction() as db:
            db.execute("INSERT INTO machines (name, state, drained, updated_at) VALUES "
                       "(?, 'up', ?, ?) ON CONFLICT(name) DO UPDATE SET drained = "
                       "excluded.drained, updated_at = excluded.updated_at",
                       (name, int(drained), time.time()))
            self._event(db, actor, "machine.drained" if drained else "machine.undrained", name,
                        {"why": why})

    # -- small counters ------------------------------------------------------------------
    def next_counter(self, key: str) -> int:
        with self.transaction() as db:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            value = int(row["value"]) + 1 if row else 1
            db.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET "
                       "value = excluded.value", (key, str(value)))
        return value


def _release(row: sqlite3.Row) -> Release:
    return Release(service=row["service"], number=row["number"], image=row["image"],
                   config=ReleaseConfig.from_dict(json.loads(row["config"])),
                   created_at=row["created_at"], reason=row["reason"])


def _host(row: sqlite3.Row) -> Host:
    return Host(id=row["id"], service=row["service"], release=row["release"],
                provider=row["provider"], state=HostState(row["state"]), born_at=row["born_at"],
                address=row["address"], pid=row["pid"], root=row["root"],
                data=json.loads(row["data"]), warm_until=row["warm_until"], weight=row["weight"])


def _deployment(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    d["steps"] = json.loads(d["steps"])
    d["summary"] = json.loads(d["summary"])
    d["hold"] = decode_hold(d.get("hold"))
    return d


def _like_escape(text: str) -> str:
    """``text`` taken literally in a LIKE pattern (escape character: backslash)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
