"""Logs: every line a host writes, kept after the host is gone (invariant 5).

::

    host files ──Shipper──▶ .hinotori/logs.db ──ForwardLoop──▶ syslog (RFC 5424) | Loki | Fluentd
    (output.log,   ship every    (SQLite, FTS5,      (a rowid cursor per forwarder,
     log_files)    200 ms; flush  WAL; retention)     retries with back-off)
                   on destroy)        │
                                      └──▶ `hinotori logs` (query, grep, follow; no controller)

Modules, one job each:

- ``store``     the central store: streams and offsets, ingest with dedup, cursors
- ``query``     filters, grep (FTS5 + LIKE), newest N, follow
- ``retention`` age and size limits
- ``tail``      complete lines from an offset
- ``sources``   LogSource: which files hold a host's logs, per provider
- ``shipper``   Shipper: ship(hosts), flush(host, final)
- ``forward/``  sinks (syslog, loki, fluentd), the forward loop, reference receivers
- ``pipeline``  LogPipeline: the controller's loops in one task
"""

from hinotori.observe.logs.errors import ForwardError, LogsError
from hinotori.observe.logs.pipeline import LogPipeline
from hinotori.observe.logs.query import follow, search
from hinotori.observe.logs.records import STDOUT, LogLine, LogQuery
from hinotori.observe.logs.retention import Retained, apply_retention
from hinotori.observe.logs.shipper import Shipper
from hinotori.observe.logs.sources import SOURCES, LogSource, SourceFile
from hinotori.observe.logs.store import LOGS_DB, LogStore, logs_db

__all__ = ["LOGS_DB", "SOURCES", "STDOUT", "ForwardError", "LogLine", "LogPipeline",
           "LogQuery", "LogSource", "LogStore", "LogsError", "Retained", "Shipper",
           "SourceFile", "apply_retention", "follow", "logs_db", "search"]
