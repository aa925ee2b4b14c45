"""The Sink protocol: one way of handing stored lines to another system.

A sink's ``send`` returns only when the receiver has the lines, as far as its protocol can
tell (an HTTP 2xx, a Fluentd ack, TCP acknowledgement of every byte for plain syslog), and
raises otherwise. It never retries and never buffers: the forward loop does both, with the
store itself as the buffer. ``Rejected`` means "retrying will not help" (e.g. Loki answering
400 for a line it will never take): the loop drops the batch, counts it and says so, instead
of retrying forever behind it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from hinotori.errors import Rejected as Rejected
from hinotori.observe.logs.records import LogLine


class Sink(Protocol):
    kind: str

    async def send(self, lines: Sequence[LogLine]) -> None:
        """Deliver ``lines`` (in rowid order); raise ForwardError (or OSError) if not sure
        they arrived."""
        ...

    async def close(self) -> None:
        """Drop the connection; the next send opens a fresh one."""
        ...
