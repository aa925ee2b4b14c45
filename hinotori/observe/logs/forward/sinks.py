"""The log sinks by kind: what ``[[logs.forward]] kind = "..."`` builds.

A new kind is one module with a ``Sink`` (``forward/base.py``) and one line in ``SINKS``: its
kind and a factory from the forwarder's spec table. The spec's ``LogForwardSpec`` lists the
kinds and their own keys too (the spec cannot import this package: it imports the spec).
"""

from __future__ import annotations

from collections.abc import Callable

from hinotori.observe.logs.forward.base import Sink
from hinotori.observe.logs.forward.fluentd import DEFAULT_TAG, FluentdSink
from hinotori.observe.logs.forward.loki import LokiSink
from hinotori.observe.logs.forward.syslog import LOCAL0, SyslogSink
from hinotori.registry import Registry
from hinotori.spec.schema import LogForwardSpec

SinkFactory = Callable[[LogForwardSpec], Sink]

SINKS: Registry[SinkFactory] = Registry("log sink", {
    "syslog": lambda f: SyslogSink(f.address, facility=LOCAL0 if f.facility is None
                                   else f.facility, ack_timeout=f.timeout),
    "loki": lambda f: LokiSink(f.address, tenant=f.tenant, labels=f.labels, timeout=f.timeout),
    "fluentd": lambda f: FluentdSink(f.address, tag=f.tag or DEFAULT_TAG),
})


def build(f: LogForwardSpec) -> Sink:
    """The sink of ``f.kind`` (UnknownName, listing the known, if none)."""
    return SINKS[f.kind](f)
