"""Schema versions of the state store. Append a migration; never edit a released one.

``PRAGMA user_version`` holds the number of migrations applied. A store written by a newer
hinotori (more migrations than this one knows) is refused rather than misread.
"""

MIGRATIONS: list[str] = [
    # 1: the nouns, and the append-only event log.
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE releases (
        service TEXT NOT NULL, number INTEGER NOT NULL, image TEXT NOT NULL,
        config TEXT NOT NULL, created_at REAL NOT NULL, reason TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (service, number));
    CREATE TABLE hosts (
        id TEXT PRIMARY KEY, service TEXT NOT NULL, release INTEGER NOT NULL,
        provider TEXT NOT NULL, state TEXT NOT NULL, born_at REAL NOT NULL,
        address TEXT, pid INTEGER, root TEXT, data TEXT NOT NULL DEFAULT '{}',
        warm_until REAL, updated_at REAL NOT NULL);
    CREATE INDEX hosts_by_service ON hosts (service, state);
    CREATE TABLE services (
        name TEXT PRIMARY KEY, current INTEGER, previous INTEGER, updated_at REAL NOT NULL);
    CREATE TABLE deployments (
        id INTEGER PRIMARY KEY AUTOINCREMENT, service TEXT NOT NULL, strategy TEXT NOT NULL,
        kind TEXT NOT NULL, from_release INTEGER, to_release INTEGER NOT NULL,
        state TEXT NOT NULL, started_at REAL NOT NULL, ended_at REAL,
        steps TEXT NOT NULL DEFAULT '[]', summary TEXT NOT NULL DEFAULT '{}', error TEXT);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, actor TEXT NOT NULL,
        action TEXT NOT NULL, subject TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '{}');
    CREATE INDEX events_by_subject ON events (subject, id);
    CREATE TRIGGER events_no_update BEFORE UPDATE ON events
        BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;
    CREATE TRIGGER events_no_delete BEFORE DELETE ON events
        BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;
    CREATE TRIGGER releases_no_update BEFORE UPDATE ON releases
        BEGIN SELECT RAISE(ABORT, 'releases are never edited'); END;
    """,
    # 2: canary traffic: each serving host's weight, and which release of a service is the canary.
    """
    ALTER TABLE hosts ADD COLUMN weight INTEGER NOT NULL DEFAULT 100;
    ALTER TABLE services ADD COLUMN canary INTEGER;
    """,
    # 3: push webhook deliveries seen lately (delivery ids and body digests), so a replay is
    # refused even by a controller started since; rows older than the window are deleted.
    """
    CREATE TABLE webhook_deliveries (key TEXT PRIMARY KEY, seen_at REAL NOT NULL);
    CREATE INDEX webhook_deliveries_by_time ON webhook_deliveries (seen_at);
    """,
    # 4: the machines of a fleet as the controller last saw them (state up/down, engine, last
    # answer) and whether an operator drained them, so `hinotori machines` works without it.
    """
    CREATE TABLE machines (
        name TEXT PRIMARY KEY, state TEXT NOT NULL, drained INTEGER NOT NULL DEFAULT 0,
        last_seen REAL, engine TEXT, detail TEXT NOT NULL DEFAULT '', updated_at REAL NOT NULL);
    """,
    # 5 (maintenance mode): the services the router answers 503 for, with the message and
    # Retry-After it sends, since when and on whose word.
    """
    CREATE TABLE maintenance (
        service TEXT PRIMARY KEY, message TEXT NOT NULL, retry_after INTEGER NOT NULL,
        since REAL NOT NULL, actor TEXT NOT NULL);
    """,
    # 6 (scheduled jobs): one row per run of a [jobs.NAME] (its host, trigger, exit status,
    # times) and, per job, the last moment a run was due, so a restarted controller knows
    # which runs it missed.
    """
    CREATE TABLE job_runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT, job TEXT NOT NULL, service TEXT NOT NULL,
        release INTEGER, host TEXT, trigger TEXT NOT NULL, due REAL, started_at REAL NOT NULL,
        ended_at REAL, state TEXT NOT NULL, exit_code INTEGER, error TEXT);
    CREATE INDEX job_runs_by_job ON job_runs (job, id);
    CREATE TABLE job_cursors (job TEXT PRIMARY KEY, last_due REAL NOT NULL);
    """,
    # 7 (environments): where a promoted release came from: the source environment, its release
    # there and the image digest (`deploy --from`); none for a release baked here.
    """
    CREATE TABLE release_origins (
        service TEXT NOT NULL, number INTEGER NOT NULL, environment TEXT NOT NULL,
        release INTEGER NOT NULL, image TEXT NOT NULL, promoted_at REAL NOT NULL,
        PRIMARY KEY (service, number));
    """,
    # 8: held deployments (`deploy --hold`, preview before the switch): what the hold is
    # (release, preview address, expiry) as JSON; the state is "held" meanwhile.
    """
    ALTER TABLE deployments ADD COLUMN hold TEXT;
    """,
    # 9: a deployment's steps, one row each: appending to the JSON list in deployments.steps
    # rewrote the whole list per step, quadratic in a 1,000-host deployment's ~2,000 steps.
    # Steps of deployments made before this stay in that column (read first). And the live
    # hosts of every service found without reading every host ever booted.
    """
    CREATE TABLE deployment_steps (
        deployment INTEGER NOT NULL, seq INTEGER NOT NULL, step TEXT NOT NULL,
        PRIMARY KEY (deployment, seq)) WITHOUT ROWID;
    CREATE INDEX hosts_by_state ON hosts (state);
    """,
    # 10: every host row written carries the next mark (``rev``), so the controller's host cache
    # reads only the rows written since its last read, and only when a host was written (any
    # commit moved the store's change mark, and 2,000 hosts read again cost 25-40 ms).
    """
    ALTER TABLE hosts ADD COLUMN rev INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX hosts_by_rev ON hosts (rev);
    """,
]
