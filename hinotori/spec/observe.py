"""`[logs]` (the central log store and its forwarders) and `[metrics]` (per-release history)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, model_validator

from hinotori.durations import parse_size
from hinotori.spec.base import Duration, Name, Strict, check_address


def _size(value: object) -> int:
    if isinstance(value, str):
        return parse_size(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError(f"a size is a number of bytes or a string like \"512MiB\" (got {value!r})")


class LogForwardSpec(Strict):
    """One `[[logs.forward]]` table: ship the central log store on to another system. Each
    forwarder reads the store by its own persisted cursor, so a receiver that is down only
    makes its backlog grow (up to `max_backlog` lines, then oldest first are dropped and
    counted); it never slows ingest or another forwarder."""

    kind: Literal["syslog", "loki", "fluentd"]
    address: str  # HOST:PORT for syslog and fluentd; an http(s) URL for loki
    name: Name | None = None  # names its cursor in logs.db; default "<kind> <address>"
    services: list[Name] = []  # only these services; empty = every service
    batch: int = Field(1000, ge=1, le=100_000)
    max_backlog: int = Field(1_000_000, ge=1)
    retry_max: Duration = 10.0  # exponential back-off between attempts tops out here
    timeout: Duration = 10.0  # one batch must be delivered (and acknowledged) within this
    facility: int | None = Field(None, ge=0, le=23)  # syslog: default 16 (local0)
    tenant: str | None = None  # loki: X-Scope-OrgID
    labels: dict[str, str] = {}  # loki: extra static labels on every stream
    tag: str | None = None  # fluentd: tag prefix, default "hinotori" (tag = prefix.service)

    @model_validator(mode="after")
    def _kind_keys(self) -> LogForwardSpec:
        own = {"syslog": {"facility"}, "loki": {"tenant", "labels"}, "fluentd": {"tag"}}
        for kind, keys in own.items():
            stray = sorted(keys & self.model_fields_set)
            if kind != self.kind and stray:
                raise ValueError(f"{', '.join(stray)} only apply to kind = \"{kind}\"")
        if self.kind == "loki":
            if not self.address.startswith(("http://", "https://")):
                raise ValueError("a loki address is a URL, e.g. \"http://127.0.0.1:3100\"")
        else:
            check_address(self.address)
        return self


class LogsSpec(Strict):
    """`[logs]`: the central store (.hinotori/logs.db) that keeps every host's output and
    declared log files after the host is gone, and where it is forwarded."""

    retention: Duration = 7 * 86400.0  # lines older than this are deleted
    max_size: Annotated[int, BeforeValidator(_size), Field(ge=1 << 20)] = 1 << 30
    ship_interval: Duration = 0.2  # how often live hosts' new lines are shipped
    forward: list[LogForwardSpec] = []

    @model_validator(mode="after")
    def _names(self) -> LogsSpec:
        names = [f.name for f in self.forward if f.name]
        if len(names) != len(set(names)):
            raise ValueError("each [[logs.forward]] needs a distinct name")
        return self

    @staticmethod
    def relative_glob(value: str) -> str:
        """A declared log file: a glob relative to the host's view or scratch directory."""
        parts = value.split("/")
        if not value or value.startswith("/") or ".." in parts or "" in parts:
            raise ValueError(f"log_files are globs relative to the host's view or scratch dir, "
                             f"without '..', e.g. \"logs/*.log\" (got {value!r})")
        return value


class MetricsSpec(Strict):
    """`[metrics]`: the per-release history in .hinotori/metrics.db (request rate, errors,
    latency, CPU, memory) that outlives hosts; raw points roll up into 1-minute points."""

    interval: Annotated[Duration, Field(ge=1.0, le=60.0)] = 10.0  # one sample this often
    retention_10s: Duration = 86400.0  # raw (one per interval) points are kept this long
    retention_1m: Duration = 30 * 86400.0  # 1-minute points are kept this long

    @model_validator(mode="after")
    def _retentions(self) -> MetricsSpec:
        if self.retention_10s < 3600 or self.retention_1m < self.retention_10s:
            raise ValueError("metrics retention_10s must be at least 1h, and retention_1m at "
                             "least retention_10s")
        return self
