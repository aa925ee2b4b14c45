"""The hinotori.toml schema. Every model forbids unknown keys so a typo is an error, not a no-op.

Durations are strings ("500ms", "10s", "24h"); they become float seconds here. Converting a
service into the runtime nouns (HealthCheck, ReleaseConfig) happens on the model, so every caller
gets the same defaults.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from hinotori.model import LATENCY_LOG_RATE, HealthCheck, ReleaseConfig
from hinotori.providers.registry import PROVIDERS, runs_os_image
from hinotori.registry import Registry
from hinotori.router.registry import ROUTERS
from hinotori.spec.base import (
    Address,
    Duration,
    EnvName,
    HostName,
    Name,
    Strict,
    UrlPath,
)
from hinotori.spec.environments import EnvironmentSpec
from hinotori.spec.image import ImageSpec
from hinotori.spec.jobs import JobSpec
from hinotori.spec.machines import MachineSpec
from hinotori.spec.observe import LogForwardSpec, LogsSpec, MetricsSpec
from hinotori.spec.secrets import SecretSpec, check_secret_keys
from hinotori.spec.tls import TlsCertSpec, check_tls
from hinotori.sysctls import NAMESPACED_TEXT, check_name, check_namespaced, check_value, namespaced
from hinotori.verify.checks import Check

__all__ = ["ImageSpec", "LogForwardSpec", "LogsSpec", "MetricsSpec", "Spec"]


def _known(registry: Registry) -> AfterValidator:
    """A name the registry knows (built-in, registered or an installed entry point)."""
    def check(name: str) -> str:
        if name not in registry:
            raise ValueError(f"unknown {registry.what} {name!r}: known are "
                             f"{', '.join(map(repr, registry.names()))}")
        return name
    return AfterValidator(check)


class ProjectSpec(Strict):
    name: Name = "hinotori"


class ControllerSpec(Strict):
    listen: Address = "127.0.0.1:0"  # the API; port 0 picks a free one, written to .hinotori/


class RouterSpec(Strict):
    kind: Annotated[str, _known(ROUTERS)] = "builtin"
    listen: Address = "127.0.0.1:8080"
    # A second listener of the same data plane where a held release (`deploy --hold`) answers
    # in place of the live one; services with nothing held answer as on `listen`.
    preview_listen: Address | None = None
    workers: int = Field(1, ge=1, le=64)  # builtin: worker processes; haproxy: nbthread
    # kind = "haproxy" only:
    haproxy: str = "haproxy"  # the executable (a name on PATH or a path)
    maxconn: int = Field(4096, ge=1)
    # Latency log lines HAProxy writes a second, at most about: above it, it logs a uniform
    # sample that stands for every request (0: log every request, whatever it costs).
    latency_log_rate: int = Field(LATENCY_LOG_RATE, ge=0)
    # Re-send an idempotent request a host took but never answered (the built-in router always
    # does); costs HAProxy a copy of every request (L7 retries), so off unless asked for.
    retry_unanswered: bool = False
    # HTTPS (spec/tls.py): off unless tls_listen is set.
    tls_listen: Address | None = None
    tls_cert: str | None = None  # the default certificate (no SNI, or an unknown name)
    tls_key: str | None = None
    tls: list[TlsCertSpec] = []  # more certificates, picked by SNI
    redirect_http: bool = False  # the plain listener answers 308 to https

    @model_validator(mode="after")
    def _haproxy_keys_need_haproxy(self) -> RouterSpec:
        check_tls(self)
        if self.kind != "haproxy":
            extra = [k for k in ("haproxy", "maxconn", "latency_log_rate", "retry_unanswered")
                     if k in self.model_fields_set]
            if extra:
                raise ValueError(f"router.{extra[0]} only applies to kind = \"haproxy\"")
        if self.preview_listen is not None and self.preview_listen == self.listen:
            raise ValueError("router.preview_listen must differ from router.listen")
        return self


class HealthSpec(Strict):
    path: UrlPath | None = "/healthz"  # sent as written in the probe's request line
    tcp: bool = False  # a plain TCP connect instead of an HTTP request
    status: int = Field(200, ge=100, le=599)
    interval: Duration = 0.5
    timeout: Duration = 2.0
    healthy: int = Field(2, ge=1)
    unhealthy: int = Field(3, ge=1)

    @model_validator(mode="after")
    def _path_starts_with_slash(self) -> HealthSpec:
        if not self.tcp and (not self.path or not self.path.startswith("/")):
            raise ValueError("health.path must start with '/' (or set tcp = true)")
        return self

    def check(self) -> HealthCheck:
        return HealthCheck(path=None if self.tcp else self.path, status=self.status,
                           interval=self.interval, timeout=self.timeout,
                           healthy=self.healthy, unhealthy=self.unhealthy)


class BlueGreenSpec(Strict):
    kind: Literal["blue-green"] = "blue-green"


class AnalysisSpec(Strict):
    """How each canary step is judged (canary against stable on the same window)."""

    interval: Duration = 5.0  # judge this often during a step
    max_error_rate: float = Field(0.01, ge=0, le=1)  # canary 5xx share, absolute
    max_error_rate_diff: float = Field(0.01, ge=0, le=1)  # canary minus stable
    max_p95_ratio: float | None = Field(None, gt=0)
    max_p99_ratio: float | None = Field(1.5, gt=0)
    min_requests: int = Field(50, ge=1)  # fewer canary requests than this: inconclusive
    deadline: Duration = 120.0  # inconclusive this long into a step: decide by `inconclusive`
    inconclusive: Literal["fail", "pass"] = "fail"  # no data is not a pass, unless you say so
    webhook: str | None = None  # custom analysis: POST JSON, answer {"result": "pass"|"fail"}


class CanarySpec(Strict):
    kind: Literal["canary"]
    steps: list[Annotated[int, Field(ge=1, le=100)]] = Field([5, 25, 50, 100], min_length=1)
    pause: Duration = 30.0  # each step lasts at least this long before it may pass
    analysis: AnalysisSpec = AnalysisSpec()
    sticky: bool = True  # a client keeps the release it first got while the canary runs

    @model_validator(mode="after")
    def _ascending(self) -> CanarySpec:
        if self.steps != sorted(set(self.steps)):
            raise ValueError("canary steps must be distinct weights in ascending order")
        if self.steps[-1] != 100:
            raise ValueError("the last canary step must be 100 (full promotion)")
        return self


class RollingSpec(Strict):
    kind: Literal["rolling"]
    max_surge: int = Field(1, ge=0)  # hosts above replicas while rolling
    max_unavailable: int = Field(0, ge=0)  # hosts below replicas while rolling

    @model_validator(mode="after")
    def _can_move(self) -> RollingSpec:
        if self.max_surge + self.max_unavailable < 1:
            raise ValueError("max_surge + max_unavailable must be at least 1, or nothing can "
                             "be replaced")
        return self


StrategySpec = Annotated[BlueGreenSpec | CanarySpec | RollingSpec, Field(discriminator="kind")]


DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class ChaosSpec(Strict):
    """Opt-in chaos monkey schedule: while in its days and hours, the controller kills a random
    serving host now and then (a Poisson process with this mean time between kills), never
    during a deployment and never leaving fewer than `min_healthy` hosts serving."""

    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = list(DAYS[:5])
    # local time, [start, end); TOML writes it as an array
    hours: Annotated[tuple[int, int], BeforeValidator(
        lambda v: tuple(v) if isinstance(v, list) else v)] = (9, 17)
    mean_time_between_kills: Duration = 3600.0
    min_healthy: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _hours(self) -> ChaosSpec:
        start, end = self.hours
        if not (0 <= start < end <= 24):
            raise ValueError("hours is [start, end) within 0..24, e.g. [9, 17]")
        return self


class HooksSpec(Strict):
    """Commands (argv lists) run around a deployment, with its context in HINOTORI_* env."""

    on_join: list[str] = []  # a host started serving (HINOTORI_HOST_ID, _ADDRESS, _EVENT set)
    on_leave: list[str] = []  # a host stopped serving
    pre_deploy: list[str] = []  # a failure aborts the deployment before any host boots
    # `deploy --hold`: run against the held release (HINOTORI_PREVIEW_URL) before it may be
    # promoted; a failure burns it, traffic untouched.
    pre_switch: list[str] = []
    post_switch: list[str] = []  # right after traffic moved to the new release
    post_deploy: list[str] = []  # after the deployment succeeded
    timeout: Duration = 60.0


class EngineSpec(Strict):
    """`[engine]`: the container engine (Docker or Podman) that runs `provider = "container"`
    hosts and builds OS images, through the Docker Engine API. No url: $DOCKER_HOST,
    $CONTAINER_HOST, the usual sockets, then a private Podman service under .hinotori/."""

    url: Annotated[str, Field(pattern=r"^(unix|tcp|ssh|http|https)://\S+$")] | None = None


# A sysctl a container host gets through the engine: only namespaced ones (hinotori/sysctls.py).
SysctlName = Annotated[str, AfterValidator(check_name), AfterValidator(check_namespaced)]
SysctlValue = Annotated[str, BeforeValidator(check_value)]


class ServiceSpec(Strict):
    # process: a local process group in a copy of a file-tree image; container: a container of
    # an OS image ([image] os = { ... }) in the engine of [engine].
    provider: Annotated[str, _known(PROVIDERS)] = "process"
    # [machines.NAME] tables its hosts may run on (container hosts); empty: this machine.
    machines: list[Name] = []
    replicas: int = Field(1, ge=1, le=1000)
    command: list[str] = Field(min_length=1)
    port_env: EnvName = "PORT"
    env: dict[EnvName, str] = {}
    # Values resolved at each boot (env var, file, command), never stored: spec/secrets.py.
    secrets: dict[EnvName, SecretSpec] = {}
    hosts: list[HostName] = []  # Host headers routed to this service; empty = any
    path_prefix: UrlPath = "/"
    health: HealthSpec = HealthSpec()
    strategy: StrategySpec = BlueGreenSpec()
    hooks: HooksSpec = HooksSpec()
    max_age: Duration | None = None  # phoenix: hosts older than this are replaced, one by one
    ship_on: ShipOnSpec | None = None  # a signed push to this repository/branch ships it
    # "The database: don't break it". A stateful service keeps its volumes across releases
    # (HINOTORI_VOLUME_<NAME> in the host's env), is never burned by phoenix or chaos, and its
    # deploys stop the old host before the new one gets the volume: one writer, always.
    stateful: bool = False
    volumes: list[Name] = []
    # Files the service writes logs to besides stdout/stderr (globs relative to the host's
    # view or its scratch dir, $HINOTORI_SCRATCH): shipped to the central log store too.
    log_files: list[Annotated[str, AfterValidator(LogsSpec.relative_glob)]] = []
    # Verify: serverspec-style checks ([[services.NAME.checks]], see hinotori/verify/checks.py)
    # and pytest-testinfra files (paths relative to this spec) a new host must pass before it
    # takes traffic; `hinotori verify NAME` runs them on a throwaway host.
    checks: list[Check] = []
    testinfra: list[Annotated[str, Field(min_length=1)]] = []
    chaos: ChaosSpec | None = None  # opt-in: no schedule, no scheduled kills
    boot_timeout: Duration = 60.0  # from boot to healthy, per host
    drain: Duration = 10.0  # longest wait for in-flight requests of a host taken out of traffic
    keep_previous: Duration = 600.0  # previous release stays warm this long for instant rollback
    stop_grace: Duration = 10.0  # SIGTERM, then SIGKILL after this long
    image: ImageSpec = ImageSpec()
    # Kernel settings of each host's own namespaces (container hosts), e.g.
    # { "net.ipv4.ip_unprivileged_port_start" = "0" }; part of the release's config.
    sysctls: dict[SysctlName, SysctlValue] = {}

    @model_validator(mode="after")
    def _prefix(self) -> ServiceSpec:
        if self.stateful and self.replicas != 1:
            raise ValueError("a stateful service has one host (one writer per volume): set "
                             "replicas = 1")
        if self.stateful and self.chaos is not None:
            raise ValueError("a stateful service is never chaos-killed: remove its chaos table")
        os_image = runs_os_image(self.provider)
        if os_image and self.image.os is None:
            raise ValueError(f"a {self.provider} host runs an OS image: add os = {{ suite = "
                             "\"bookworm\" } to this service's [image] table (or use "
                             "provider = \"process\" for a file-tree image)")
        if not os_image and self.image.os is not None:
            raise ValueError(f"an OS image runs in the container engine, not as a "
                             f"{self.provider} host: set provider = \"container\" (or remove "
                             "`os` for a file-tree image)")
        if not os_image and (self.sysctls or self.image.sysctls()):
            raise ValueError(f"a {self.provider} host shares the machine's kernel, so sysctls "
                             "cannot be set per host: set them on the machine (its "
                             "/etc/sysctl.d), or run the service with provider = \"container\" "
                             "and an OS image")
        for name in self.image.sysctls():
            if os_image and not namespaced(name):
                raise ValueError(f"the image's sysctl step sets {name}, which a container host "
                                 f"shares with the machine and cannot have its own of: allowed "
                                 f"are {NAMESPACED_TEXT}; set others on the machine itself")
        if self.stateful and self.strategy.kind != "blue-green":
            raise ValueError("a stateful service is deployed stop-then-start; leave strategy "
                             "at its default")
        return self

    def declared_sysctls(self) -> dict[str, str]:
        """Every sysctl the service sets: its image's sysctl steps, then its own (which win,
        as the container provider applies them)."""
        return {**self.image.sysctls(), **self.sysctls}

    @field_validator("secrets")
    @classmethod
    def _secrets_apart_from_env(cls, secrets: dict[str, SecretSpec], info: ValidationInfo
                                ) -> dict[str, SecretSpec]:
        check_secret_keys(info.data.get("env") or {}, secrets)
        return secrets

    def release_config(self, env_overrides: dict[str, str] | None = None) -> ReleaseConfig:
        """The release's config from the spec; secrets carry their sources and an empty
        fingerprint, which ``secrets.fingerprinted`` fills in before a release is made."""
        secrets = {k: {"source": s.source(), "as_file": s.as_file, "fingerprint": ""}
                   for k, s in self.secrets.items()}
        return ReleaseConfig(command=tuple(self.command),
                             env={**self.env, **(env_overrides or {})}, port_env=self.port_env,
                             sysctls=dict(self.sysctls), secrets=secrets)


class ShipOnSpec(Strict):
    repository: str  # "org/app", as in the push payload's repository.full_name
    branch: str = "main"


class WebhookSpec(Strict):
    secret_env: EnvName = "HINOTORI_WEBHOOK_SECRET"  # where the controller finds the secret


class MembershipSpec(Strict):
    # RPC address of a local Serf agent: joins and leaves also go out as Serf user events
    # ("hinotori-member", JSON payload), so other machines' handlers see them.
    serf: Address | None = None


class NotifySpec(Strict):
    webhooks: list[str] = []  # receive JSON deployment events (started, step, promoted, …)
    timeout: Duration = 2.0


class Spec(Strict):
    project: ProjectSpec = ProjectSpec()
    notify: NotifySpec = NotifySpec()
    webhook: WebhookSpec = WebhookSpec()
    membership: MembershipSpec = MembershipSpec()
    controller: ControllerSpec = ControllerSpec()
    router: RouterSpec = RouterSpec()
    logs: LogsSpec = LogsSpec()
    metrics: MetricsSpec = MetricsSpec()
    engine: EngineSpec = EngineSpec()
    machines: dict[Name, MachineSpec] = {}
    services: dict[Name, ServiceSpec] = Field(min_length=1)
    jobs: dict[Name, JobSpec] = {}  # spec/jobs.py (their services: check_jobs)
    # [environments.NAME]: only their own settings here; their tables are merged into the
    # spec before validation (hinotori/spec/environments.py)
    environments: dict[Name, EnvironmentSpec] = {}

    @model_validator(mode="after")
    def _routes_distinct(self) -> Spec:
        seen: dict[tuple[tuple[str, ...], str], str] = {}
        for name, svc in self.services.items():
            key = (tuple(sorted(h.lower() for h in svc.hosts)), svc.path_prefix)
            if key in seen:
                raise ValueError(f"services {seen[key]!r} and {name!r} match the same requests: "
                                 "give one of them other `hosts` or another `path_prefix`")
            seen[key] = name
        return self


