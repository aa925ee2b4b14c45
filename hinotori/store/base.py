"""One SQLite file under ``.hinotori/`` (state.db, logs.db, metrics.db), safe from any thread.

- **A connection per thread, one writer lock per file.** The controller writes from its event
  loop and from worker threads at once (bakes, the log shipper, the metric sampler), and one
  connection cannot hold two transactions ("cannot start a transaction within a
  transaction"). Each thread gets its own connection, so a read never waits for a Python lock:
  WAL lets it read the last committed state while another thread's write transaction runs
  (the controller reads hosts every 500 ms from its event loop, and must not stall behind a
  bake waiting for SQLite's write lock). Writers of one process queue on an ``RLock`` instead
  of polling SQLite's busy handler (which sleeps in millisecond steps); writers in other
  processes still wait on the busy timeout. The lock is re-entrant, and a transaction opened
  inside another on the same thread joins it (one commit, or one rollback, for both).
- **Modes from creation.** The file is created 0600 before SQLite opens it; SQLite gives its
  -wal and -shm files the database file's mode. A file an older hinotori made wider is
  tightened on open.
- **Migrations** (``schema[n]`` is migration n+1, ``PRAGMA user_version`` counts the applied
  ones): one transaction each; a file written by a newer hinotori is refused, and a process
  that loses the race to migrate simply finds the work done.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from hinotori.errors import HinotoriError, StoreError
from hinotori.statefiles import private_dir, private_file

BUSY_TIMEOUT = 30.0  # seconds a writer waits for another process's transaction


class SqliteBase:
    #: what the file holds, for messages ("the log store", "the metric history")
    what = "the database"
    #: what moving a damaged file aside loses, for the hint
    loses = "what is in it"
    error: type[HinotoriError] = StoreError
    schema: Sequence[str] = ()  # migration N+1 is schema[N]: SQL run in one transaction
    #: set on every connection, after WAL
    pragmas: Sequence[str] = ("synchronous=NORMAL",)  # WAL + NORMAL: durable at checkpoint
    row_factory: type | None = None

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        private_dir(self.path.parent)
        self._write_lock = threading.RLock()
        self._conns: dict[threading.Thread, sqlite3.Connection] = {}
        self._conns_lock = threading.Lock()
        self._closed = False
        try:
            private_file(self.path)
            db = self._connection()
            db.execute("PRAGMA journal_mode=WAL")
            self._migrate(db)
            for suffix in ("-wal", "-shm"):  # tighten those an older hinotori left wider
                side = Path(f"{self.path}{suffix}")
                if side.exists() and side.stat().st_mode & 0o077:
                    os.chmod(side, 0o600)
        except sqlite3.DatabaseError as e:
            self.close()
            raise self.error(f"cannot open {self.what} {self.path}: {e}",
                             hint=f"is the file damaged? move it aside to start afresh "
                                  f"(losing {self.loses})") from None
        except BaseException:
            self.close()
            raise

    # -- connections ---------------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use)."""
        me = threading.current_thread()
        db = self._conns.get(me)
        if db is not None:
            return db
        with self._conns_lock:
            if self._closed:
                raise sqlite3.ProgrammingError(f"{self.what} {self.path} is closed")
            # Threads come and go (a thread per bake): close what dead ones left behind.
            for thread in [t for t in self._conns if not t.is_alive()]:
                self._conns.pop(thread).close()
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None,
                                 check_same_thread=False)
            if self.row_factory is not None:
                db.row_factory = self.row_factory
            for pragma in self.pragmas:
                db.execute(f"PRAGMA {pragma}")
            self._conns[me] = db
        return db

    @property
    def _db(self) -> sqlite3.Connection:
        return self._connection()

    def close(self) -> None:
        """Close every thread's connection; the store is unusable afterwards."""
        with self._write_lock, self._conns_lock:
            self._closed = True
            for db in self._conns.values():
                db.close()
            self._conns.clear()

    # -- migrations ----------------------------------------------------------------------
    def _version(self, db: sqlite3.Connection) -> int:
        return db.execute("PRAGMA user_version").fetchone()[0]

    def _migrate(self, db: sqlite3.Connection) -> None:
        with self._write_lock:
            while (version := self._version(db)) < len(self.schema):
                try:
                    db.executescript(f"BEGIN IMMEDIATE;\n{self.schema[version]};\n"
                                     f"PRAGMA user_version = {version + 1};\nCOMMIT;")
                except sqlite3.Error:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    if self._version(db) == version:  # not another process migrating
                        raise
            if version > len(self.schema):
                raise self.error(
                    f"{self.what} {self.path} was written by a newer hinotori "
                    f"(schema {version}, this one knows {len(self.schema)})",
                    hint="upgrade hinotori")

    @property
    def schema_version(self) -> int:
        return self._version(self._connection())

    # -- transactions --------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction on this thread's connection (BEGIN IMMEDIATE: the write lock is
        taken at the start, so it never fails half-way for want of it)."""
        with self._write_lock:
            db = self._connection()
            if db.in_transaction:  # nested on this thread: part of the outer transaction
                yield db
                return
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:  # never leave this thread's connection inside one
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                raise

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection, for reads: no lock, WAL gives each statement the last
        committed state (several statements that must agree belong in a transaction)."""
        yield self._connection()
