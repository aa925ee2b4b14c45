"""The nouns every module shares, as typed values. No I/O here.

A Release is never edited; a Host moves through ``HostState``; a RoutingTable is a whole,
versioned picture of where traffic goes (a switch is a new version, never an in-place edit).

Each noun a user reads has one public JSON shape, ``view()`` (``deployment_view`` for the
store's deployment rows), given alike by the CLI's ``--json`` and by the API: a release is a
number wherever it appears (``release``, ``from_release``, ``to_release``), and hosts and
releases carry its name (``release_name``: "v3") beside it. ``to_dict()`` is a stored form.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class HostState(StrEnum):
    BOOTING = "booting"      # provider is starting it
    VERIFYING = "verifying"  # up; health (and verify) checks running; no traffic yet
    READY = "ready"          # passed its checks; may receive traffic
    SERVING = "serving"      # in the routing table
    DRAINING = "draining"    # out of the table; finishing in-flight requests
    WARM = "warm"            # drained, still running: kept for instant rollback until it expires
    JOB = "job"              # runs one run of a [jobs.NAME]: never routed, burned when it exits
    LOST = "lost"            # its machine cannot be reached: out of traffic for good; burned
                             # when the machine answers again
    DESTROYED = "destroyed"
    FAILED = "failed"

    @property
    def alive(self) -> bool:
        return self not in (HostState.DESTROYED, HostState.FAILED)


@dataclass(frozen=True)
class ReleaseConfig:
    """What a host of the release runs, besides the image. Part of the release's identity."""

    command: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    port_env: str = "PORT"
    # Namespaced kernel settings of each host (container hosts, through the engine).
    sysctls: dict[str, str] = field(default_factory=dict)
    # KEY -> {"source": {"env"|"file"|"command": …}, "as_file": bool, "fingerprint": hex}:
    # where a host's secret comes from at boot and a keyed hash of its value, never the value
    # (hinotori/secrets.py). A changed fingerprint is a changed config: a new release.
    secrets: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"command": list(self.command),
                             "env": dict(sorted(self.env.items())), "port_env": self.port_env}
        if self.sysctls:  # absent when empty: releases made before sysctls read the same
            d["sysctls"] = dict(sorted(self.sysctls.items()))
        if self.secrets:  # absent when none: releases made before secrets read back equal
            d["secrets"] = {k: self.secrets[k] for k in sorted(self.secrets)}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReleaseConfig:
        return cls(command=tuple(d["command"]), env=dict(d.get("env", {})),
                   port_env=d.get("port_env", "PORT"), sysctls=dict(d.get("sysctls", {})),
                   secrets=dict(d.get("secrets", {})))


@dataclass(frozen=True)
class Release:
    service: str
    number: int
    image: str  # "sha256:<hex>"
    config: ReleaseConfig
    created_at: float
    reason: str = ""

    @property
    def name(self) -> str:
        return f"v{self.number}"

    def view(self, role: str = "") -> dict[str, Any]:
        """As `hinotori releases --json` and `GET /v1/releases` show it; ``role`` is
        "current", "previous" or ""."""
        return {"service": self.service, "release": self.number, "release_name": self.name,
                "image": self.image, "created_at": self.created_at, "reason": self.reason,
                "role": role, "config": self.config.to_dict()}


MAX_NUMBER = 2**63 - 1  # the largest id or release number the store (SQLite INTEGER) holds


def release_number(name: str) -> int:
    """The number in a release's name as people write it: "v3", "V3" or "3". ValueError if
    it is none of those."""
    digits = name.lower().removeprefix("v")
    if not (digits.isascii() and digits.isdigit()):
        raise ValueError(f"{name!r} is not a release: write it as v3 (or 3)")
    if not 1 <= int(digits) <= MAX_NUMBER:
        raise ValueError(f"{name!r} is not a release: numbers go from v1 to v{MAX_NUMBER}")
    return int(digits)


@dataclass
class Host:
    id: str
    service: str
    release: int
    provider: str
    state: HostState
    born_at: float
    address: str | None = None  # "127.0.0.1:PORT" once booted
    pid: int | None = None
    root: str | None = None  # the host's own read-only view of its image
    data: dict[str, Any] = field(default_factory=dict)  # provider-private (log path, start ticks…)
    warm_until: float | None = None
    weight: int = 100  # relative share of its service's traffic while serving

    def to_dict(self) -> dict[str, Any]:
        """The stored form (a process host's host.json); ``Host(**d)`` reads it back."""
        d = asdict(self)
        d["state"] = str(self.state)
        return d

    def view(self) -> dict[str, Any]:
        """As `hinotori hosts --json` and `GET /v1/hosts` show it."""
        return {"id": self.id, "service": self.service, "release": self.release,
                "release_name": f"v{self.release}", "state": str(self.state),
                "provider": self.provider, "machine": self.data.get("machine"),
                "address": self.address, "pid": self.pid,
                "born_at": self.born_at, "warm_until": self.warm_until, "weight": self.weight,
                "root": self.root, "data": self.data}


DEPLOYMENT_KEYS = ("id", "service", "kind", "strategy", "from_release", "to_release", "state",
                   "started_at", "ended_at", "error", "summary", "steps", "hold")


def deployment_view(row: dict[str, Any]) -> dict[str, Any]:
    """A deployment as `hinotori deployments --json`, `hinotori deployment N --json` and
    `GET /v1/deployments[/N]` show it: only these keys, so a column the store adds later is
    not published by accident."""
    return {k: row.get(k) for k in DEPLOYMENT_KEYS}


@dataclass(frozen=True)
class ProbeResult:
    """One health probe's answer."""

    ok: bool
    detail: str  # "HTTP 200", "HTTP 503: <body>", "connection refused", "timed out after 2s"


@dataclass(frozen=True)
class HealthCheck:
    """How to tell a host is fit for traffic. ``path`` None means a plain TCP connect."""

    path: str | None = "/healthz"
    status: int = 200
    interval: float = 0.5
    timeout: float = 2.0
    healthy: int = 2  # consecutive passes before a host counts as healthy
    unhealthy: int = 3  # consecutive failures before a serving host counts as unhealthy


@dataclass(frozen=True)
class Backend:
    host_id: str
    address: str  # "127.0.0.1:PORT"
    release: int
    weight: int = 100


@dataclass(frozen=True)
class Maintenance:
    """A service in maintenance: the router answers its requests itself, 503 with
    ``Retry-After: retry_after`` and ``message`` (JSON, or HTML when the client asks for it),
    and sends nothing to its hosts (they keep running, checked and deployable)."""

    message: str = "This service is down for maintenance."
    retry_after: int = 300  # seconds, as the Retry-After header says them

    def to_dict(self) -> dict[str, Any]:
        return {"message": self.message, "retry_after": self.retry_after}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Maintenance:
        return cls(message=str(d["message"]), retry_after=int(d["retry_after"]))


@dataclass(frozen=True)
class ServiceRoute:
    """How requests reach one service: which requests match, and which backends serve them.

    A request matches when its Host header (without port) is in ``hosts`` (or ``hosts`` is empty)
    and its path starts with ``path_prefix``. The most specific match wins. A request may ask
    for a side with ``X-Hinotori-Release: canary | stable | vN``; with ``sticky``, a cookie
    keeps a client on the release it first got while a canary runs.
    """

    service: str
    backends: tuple[Backend, ...] = ()
    hosts: tuple[str, ...] = ()
    path_prefix: str = "/"
    canary: int | None = None  # the release being canaried, if any
    sticky: bool = False  # while two releases serve, a client keeps the one it first got
    maintenance: Maintenance | None = None  # set: every request gets a 503 from the router
    # A held release (`deploy --hold`): its backends have weight 0, so live traffic never
    # reaches them; the preview listener and `X-Hinotori-Release: preview | vN` do.
    preview: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"service": self.service, "hosts": list(self.hosts),
                             "path_prefix": self.path_prefix, "canary": self.canary,
                             "sticky": self.sticky,
                             # asdict() by hand: 1,000 backends per switch (Backend's field
                             # order, as asdict gave it)
                             "backends": [{"host_id": b.host_id, "address": b.address,
                                           "release": b.release, "weight": b.weight}
                                          for b in self.backends]}
        if self.maintenance is not None:  # absent otherwise: the wire form stays as it was
            d["maintenance"] = self.maintenance.to_dict()
        if self.preview is not None:
            d["preview"] = self.preview
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ServiceRoute:
        return cls(service=d["service"], hosts=tuple(d.get("hosts", ())),
                   path_prefix=d.get("path_prefix", "/"), canary=d.get("canary"),
                   sticky=bool(d.get("sticky", False)), preview=d.get("preview"),
                   backends=tuple(Backend(**b) for b in d.get("backends", ())),
                   maintenance=Maintenance.from_dict(d["maintenance"])
                   if d.get("maintenance") else None)


@dataclass(frozen=True)
class RoutingTable:
    version: int
    routes: tuple[ServiceRoute, ...] = ()
    # Backend addresses on a machine seen down: nothing will come back from them, so the data
    # plane drops its connections to them now and re-sends what it may (instead of draining).
    lost: tuple[str, ...] = ()

    def route(self, service: str) -> ServiceRoute | None:
        return next((r for r in self.routes if r.service == service), None)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"version": self.version, "routes": [r.to_dict() for r in self.routes]}
        if self.lost:
            d["lost"] = list(self.lost)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RoutingTable:
        return cls(version=int(d["version"]),
                   routes=tuple(ServiceRoute.from_dict(r) for r in d.get("routes", ())),
                   lost=tuple(str(a) for a in d.get("lost", ())))


# Upper bounds (ms) of the router's latency histogram buckets; one more bucket holds the rest.
LATENCY_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000)
# A data plane that logs requests to measure latency (HAProxy) logs at most about this many a
# second; above it, a uniform sample that stands for them all.
LATENCY_LOG_RATE = 1000


@dataclass(frozen=True)
class BackendStats:
    """What the data plane counted for one backend since it started."""

    host_id: str
    active: int = 0      # requests in flight now
    requests: int = 0    # responses relayed
    errors: int = 0      # connection failures and 5xx generated by the router itself
    statuses: dict[str, int] = field(default_factory=dict)  # "2xx".."5xx" -> responses
    latency: tuple[int, ...] = ()  # counts per LATENCY_BUCKETS_MS bucket (+1 overflow)
    latency_sum_ms: float = 0.0


@dataclass(frozen=True)
class Event:
    """One line of the append-only audit log: who did what to which subject, when and why."""

    ts: float
    actor: str
    action: str
    subject: str
    detail: dict[str, Any] = field(default_factory=dict)
    id: int | None = None

    # Keys of the detail that say why it happened, in the order they are looked for.
    WHY_KEYS = ("why", "reason", "error")

    @property
    def why(self) -> str:
        return next((str(self.detail[k]) for k in self.WHY_KEYS if self.detail.get(k)), "")

    def to_dict(self) -> dict[str, Any]:
        """As `hinotori audit --json` and `GET /v1/events` give it."""
        return {"id": self.id, "ts": self.ts, "actor": self.actor, "action": self.action,
                "subject": self.subject, "why": self.why, "detail": self.detail}
