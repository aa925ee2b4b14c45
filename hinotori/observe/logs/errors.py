"""Errors of the log pipeline, in the HinotoriError family.

    HinotoriError
    └── LogsError            logs.db unreadable, or a query a user got wrong (--since, --release)
        └── ForwardError     a receiver refused or could not be reached (retried, never raised
                             to a user: the forward loop turns it into back-off and an event)
"""

from __future__ import annotations

from hinotori.errors import HinotoriError


class LogsError(HinotoriError):
    pass


class ForwardError(LogsError):
    pass
