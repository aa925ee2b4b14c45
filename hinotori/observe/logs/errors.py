"""Errors of the log pipeline: LogsError (logs.db unreadable, or a query a user got wrong) and
ForwardError (a receiver refused or could not be reached; never raised to a user). Defined, with
every other HinotoriError, in hinotori.errors; re-exported here under their old names."""

from __future__ import annotations

from hinotori.errors import ForwardError as ForwardError
from hinotori.errors import LogsError as LogsError
