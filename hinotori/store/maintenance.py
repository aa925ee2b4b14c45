"""Maintenance mode in the state store: which services the router answers for itself.

A mixin of ``Store`` (it uses the store's transaction, connection and event helpers): one row
per service in maintenance, gone when it is off, so a restarted controller builds its first
routing table with the same answer the router was giving (state survives a restart).
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any, Protocol

from hinotori.model import Maintenance


class _StoreParts(Protocol):
    @property
    def _db(self) -> sqlite3.Connection: ...

    def transaction(self) -> Any: ...

    def _event(self, db: sqlite3.Connection, actor: str, action: str, subject: str,
               detail: dict[str, Any] | None = None) -> None: ...


class MaintenanceStore:
    def maintenance(self: _StoreParts, service: str) -> Maintenance | None:
        """The service's maintenance answer, or None when it serves normally."""
        row = self._db.execute("SELECT message, retry_after FROM maintenance WHERE service = ?",
                               (service,)).fetchone()
        return Maintenance(row[0], int(row[1])) if row else None

    def maintenance_all(self: _StoreParts) -> dict[str, dict[str, Any]]:
        """service -> {message, retry_after, since, actor} for every service in maintenance."""
        rows = self._db.execute("SELECT service, message, retry_after, since, actor "
                                "FROM maintenance ORDER BY service").fetchall()
        return {r[0]: {"message": r[1], "retry_after": int(r[2]), "since": r[3], "actor": r[4]}
                for r in rows}

    def set_maintenance(self: _StoreParts, service: str, state: Maintenance | None, *,
                        actor: str, why: str = "") -> None:
        """Turn maintenance on (``state``) or off (None); the event log says who and why."""
        with self.transaction() as db:
            if state is None:
                db.execute("DELETE FROM maintenance WHERE service = ?", (service,))
                self._event(db, actor, "service.maintenance-off", service, {"why": why})
                return
            db.execute("INSERT INTO maintenance (service, message, retry_after, since, actor) "
                       "VALUES (?,?,?,?,?) ON CONFLICT(service) DO UPDATE SET "
                       "message = excluded.message, retry_after = excluded.retry_after, "
                       "actor = excluded.actor",
                       (service, state.message, state.retry_after, time.time(), actor))
            self._event(db, actor, "service.maintenance-on", service,
                        {**state.to_dict(), "why": why})
