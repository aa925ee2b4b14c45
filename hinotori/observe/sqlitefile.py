"""A SQLite file of its own beside state.db (logs.db, metrics.db): one connection shared by the
controller's threads under a lock, WAL, versioned schema (``PRAGMA user_version``).

Kept apart from the state store so that their hot write paths (log ingest, metric samples)
never contend with deployments for the state store's write lock.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from hinotori.errors import HinotoriError


class SqliteFile:
    #: what the file holds, for messages ("the log store", "the metric history")
    what = "the database"
    #: what moving a damaged file aside loses, for the hint
    loses = "what is in it"
    error: type[HinotoriError] = HinotoriError
    schema: Sequence[str] = ()  # migration N is schema[N]: SQL run in one transaction

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None,
                                       check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable at checkpoint
            self._migrate()
        except sqlite3.DatabaseError as e:
            raise self.error(f"cannot open {self.what} {self.path}: {e}",
                             hint=f"is the file damaged? move it aside to start afresh "
                                  f"(losing {self.loses})") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(self.schema):
            raise self.error(f"{self.what} {self.path} was written by a newer hinotori",
                             hint="upgrade hinotori")
        for number in range(version, len(self.schema)):
            self._db.executescript(f"BEGIN IMMEDIATE;\n{self.schema[number]}\n"
                                   f"PRAGMA user_version = {number + 1};\nCOMMIT;")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._db
