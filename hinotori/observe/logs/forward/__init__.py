"""Forwarders: the central store's lines on to syslog (RFC 5424), Loki and Fluentd.

One ForwardLoop per ``[[logs.forward]]`` table, each with its own cursor in logs.db; a sink
per kind. A new kind is one module with a Sink and one line in ``SINKS`` (``sinks.py``).
"""

from __future__ import annotations

from hinotori.observe.logs.forward.base import Rejected, Sink
from hinotori.observe.logs.forward.fluentd import FluentdSink
from hinotori.observe.logs.forward.loki import LokiSink
from hinotori.observe.logs.forward.loop import EventSink, ForwardLoop, ForwardStats
from hinotori.observe.logs.forward.sinks import SINKS, build
from hinotori.observe.logs.forward.syslog import SyslogSink
from hinotori.observe.logs.store import LogStore
from hinotori.spec.schema import LogForwardSpec


def cursor_name(f: LogForwardSpec) -> str:
    return f.name or f"{f.kind} {f.address}"


def forward_loop(store: LogStore, f: LogForwardSpec, on_event: EventSink | None = None, *,
                 retry_min: float = 0.1, poll: float = 0.2) -> ForwardLoop:
    """The loop for one ``[[logs.forward]]`` table."""
    loop = ForwardLoop(store, build(f), name=cursor_name(f), batch=f.batch,
                       max_backlog=f.max_backlog, services=f.services, timeout=f.timeout,
                       retry_min=retry_min, retry_max=f.retry_max, poll=poll)
    if on_event is not None:
        loop.on_event = on_event
    return loop


__all__ = ["SINKS", "EventSink", "FluentdSink", "ForwardLoop", "ForwardStats", "LokiSink",
           "Rejected", "Sink", "SyslogSink", "cursor_name", "forward_loop"]
