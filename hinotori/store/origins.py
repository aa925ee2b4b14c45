"""Where promoted releases came from, and another environment's state read without writing it.

A release made by `deploy --from ENV` records its origin (environment, release there, image
digest) in ``release_origins``, in the transaction that creates the release. ``SourceState``
opens the source environment's state.db read-only (SQLite ``mode=ro``): a promotion never
writes, migrates or locks the source's store, and works whether its controller runs or not.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hinotori.errors import StoreError
from hinotori.model import Release, ReleaseConfig


class OriginsMixin:
    """Store methods for release origins (mixed into Store)."""

    _db: sqlite3.Connection

    @staticmethod
    def _save_origin(db: sqlite3.Connection, service: str, number: int,
                     origin: dict[str, Any]) -> None:
        db.execute("INSERT INTO release_origins VALUES (?,?,?,?,?,?)",
                   (service, number, origin["environment"], origin["release"],
                    origin["image"], time.time()))

    def origin(self, service: str, number: int) -> dict[str, Any] | None:
        """The origin of release ``number`` of ``service``; None for a release baked here."""
        row = self._db.execute("SELECT * FROM release_origins WHERE service = ? AND number = ?",
                               (service, number)).fetchone()
        return _origin(row) if row else None

    def origins(self) -> dict[tuple[str, int], dict[str, Any]]:
        """(service, release number) -> origin, for every promoted release."""
        return {(r["service"], r["number"]): _origin(r)
                for r in self._db.execute("SELECT * FROM release_origins")}


def _origin(row: sqlite3.Row) -> dict[str, Any]:
    return {"environment": row["environment"], "release": row["release"],
            "release_name": f"v{row['release']}", "image": row["image"],
            "promoted_at": row["promoted_at"]}


@dataclass(frozen=True)
class Trouble:
    """A deployment in the source that speaks against an image."""

    deployment: int
    what: str  # "failed" | "rolled back"
    at: float


class SourceState:
    """Another environment's state.db, read-only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.exists():
            raise StoreError(f"no state store at {path}: that environment has never run",
                             hint="bake and deploy there first")
        try:
            self._db = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True,
                                       timeout=30.0)
            self._db.row_factory = sqlite3.Row
            self._db.execute("SELECT 1 FROM releases LIMIT 1")
        except sqlite3.Error as e:
            raise StoreError(f"cannot read {path}: {e}") from None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> SourceState:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def current(self, service: str) -> Release | None:
        """The release the service serves in the source (its current one)."""
        row = self._db.execute(
            "SELECT r.* FROM services s JOIN releases r ON r.service = s.name AND "
            "r.number = s.current WHERE s.name = ?", (service,)).fetchone()
        if row is None:
            return None
        return Release(service=row["service"], number=row["number"], image=row["image"],
                       config=ReleaseConfig.from_dict(json.loads(row["config"])),
                       created_at=row["created_at"], reason=row["reason"])

    def _images(self, service: str) -> dict[int, str]:
        return {r["number"]: r["image"] for r in self._db.execute(
            "SELECT number, image FROM releases WHERE service = ?", (service,))}

    def serving_hosts(self, service: str, image: str) -> list[str]:
        """Ids of the service's hosts serving ``image`` now."""
        images = self._images(service)
        return [r["id"] for r in self._db.execute(
            "SELECT id, release FROM hosts WHERE service = ? AND state = 'serving'", (service,))
            if images.get(r["release"]) == image]

    def served_since(self, service: str, image: str) -> float | None:
        """Since when ``image`` has been the service's current image without a break (None if
        it is not current now): from the service's release changes in the event log."""
        images = self._images(service)
        since: float | None = None
        for row in self._db.execute("SELECT ts, detail FROM events WHERE subject = ? AND "
                                    "action = 'service.releases' ORDER BY id", (service,)):
            current = json.loads(row["detail"]).get("current")
            if images.get(current) == image:
                since = row["ts"] if since is None else since
            else:
                since = None
        return since

    def troubles(self, service: str, image: str) -> list[Trouble]:
        """Deployments of the service that failed while going to ``image``, and rollbacks away
        from it: each says the image misbehaved there."""
        images = self._images(service)
        out = []
        for row in self._db.execute("SELECT * FROM deployments WHERE service = ? ORDER BY id",
                                    (service,)):
            if row["state"] == "failed" and images.get(row["to_release"]) == image:
                out.append(Trouble(row["id"], "failed", row["ended_at"] or row["started_at"]))
            elif (row["kind"] == "rollback" and images.get(row["from_release"]) == image
                  and row["state"] != "failed"):
                out.append(Trouble(row["id"], "rolled back",
                                   row["ended_at"] or row["started_at"]))
        return out
