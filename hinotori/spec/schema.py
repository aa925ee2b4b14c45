"""The hinotori.toml schema. Every model forbids unknown keys so a typo is an error, not a no-op.

Durations are strings ("500ms", "10s", "24h"); they become float seconds here. Converting a
service into the runtime nouns (HealthCheck, ReleaseConfig) happens on the model, so every caller
gets the same defaults.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    model_validator,
)

from hinotori.bake.aptstep import check_package
from hinotori.bake.paths import relative
from hinotori.bake.stepbase import parse_mode
from hinotori.bake.steps import Step, step_from_dict, step_kind
from hinotori.durations import parse_duration, parse_size
from hinotori.model import LATENCY_LOG_RATE, HealthCheck, ReleaseConfig
from hinotori.providers.registry import PROVIDERS
from hinotori.registry import Registry
from hinotori.router.registry import ROUTERS
from hinotori.spec.machines import MachineSpec
from hinotori.verify.checks import Check


def _duration(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f"durations are strings with a unit, e.g. \"10s\" (got {value!r})")
    return parse_duration(value)


def _address(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"write an address as HOST:PORT, e.g. \"127.0.0.1:8080\" (got {value!r})")
    return value


def _known(registry: Registry) -> AfterValidator:
    """A name the registry knows (built-in, registered or an installed entry point)."""
    def check(name: str) -> str:
        if name not in registry:
            raise ValueError(f"unknown {registry.what} {name!r}: known are "
                             f"{', '.join(map(repr, registry.names()))}")
        return name
    return AfterValidator(check)


Duration = Annotated[float, BeforeValidator(_duration)]
Address = Annotated[str, AfterValidator(_address)]
Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,39}$")]
EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProjectSpec(Strict):
    name: Name = "hinotori"


class ControllerSpec(Strict):
    listen: Address = "127.0.0.1:0"  # the API; port 0 picks a free one, written to .hinotori/


class RouterSpec(Strict):
    kind: Annotated[str, _known(ROUTERS)] = "builtin"
    listen: Address = "127.0.0.1:8080"
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

    @model_validator(mode="after")
    def _haproxy_keys_need_haproxy(self) -> RouterSpec:
        if self.kind != "haproxy":
            extra = [k for k in ("haproxy", "maxconn", "latency_log_rate", "retry_unanswered")
                     if k in self.model_fields_set]
            if extra:
                raise ValueError(f"router.{extra[0]} only applies to kind = \"haproxy\"")
        return self


class HealthSpec(Strict):
    path: str | None = "/healthz"
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


def _step_path(what: str, *, allow_root: bool = False) -> AfterValidator:
    """A path in a step: relative, no '..' (hinotori.bake.paths); kept as written."""
    def check(value: str) -> str:
        relative(value, what, allow_root=allow_root)
        return value
    return AfterValidator(check)


StepMode = Annotated[str, BeforeValidator(parse_mode)]


class RunStepSpec(Strict):
    """{ run = "shell line" | ["argv", ...], env = { K = "V" } }"""

    run: str | list[str] = Field(min_length=1)
    env: dict[EnvName, str] = {}


class EnvStepSpec(Strict):
    """{ env = { K = "V" } }: environment for every later run step."""

    env: dict[EnvName, str] = Field(min_length=1)


class CopyStepSpec(Strict):
    """{ copy = "src", to = "dest", mode = "0644" }: context path -> image path."""

    # Named by its alias: a field called `copy` would shadow BaseModel.copy.
    source: Annotated[str, _step_path("copy", allow_root=True), Field(alias="copy")]
    to: Annotated[str, _step_path("to", allow_root=True)]
    mode: StepMode | None = None


class FileStepSpec(Strict):
    """{ file = "path", content = "...", mode = "0644" }"""

    file: Annotated[str, _step_path("file")]
    content: str
    mode: StepMode = "0644"


class RemoveStepSpec(Strict):
    """{ remove = "path" }"""

    remove: Annotated[str, _step_path("remove")]


DebianPackage = Annotated[str, AfterValidator(check_package)]


class AptStepSpec(Strict):
    """{ apt = ["curl", ...] }: Debian packages, one cached layer (OS images only)."""

    apt: list[DebianPackage] = Field(min_length=1)


_STEP_SPECS: dict[type[BaseModel], str] = {RunStepSpec: "run", EnvStepSpec: "env",
                                           CopyStepSpec: "copy", FileStepSpec: "file",
                                           RemoveStepSpec: "remove", AptStepSpec: "apt"}


def _step_tag(value: object) -> str | None:
    # Tags are bracketed so the spec loader drops them from error locations (see load.py).
    if isinstance(value, dict):
        kind = step_kind(value)
        return f"step[{kind}]" if kind else None
    kind = _STEP_SPECS.get(type(value))  # type: ignore[arg-type]
    return f"step[{kind}]" if kind else None


def _one_step_kind(value: object) -> object:
    if isinstance(value, dict) and step_kind(value) is None:
        raise ValueError("a step is a table with exactly one of run, env, copy, file, remove, "
                         "apt (env may also go with run), e.g. { copy = \"src\", to = \"app/\" }")
    return value


StepSpec = Annotated[
    Annotated[RunStepSpec, Tag("step[run]")]
    | Annotated[EnvStepSpec, Tag("step[env]")]
    | Annotated[CopyStepSpec, Tag("step[copy]")]
    | Annotated[FileStepSpec, Tag("step[file]")]
    | Annotated[RemoveStepSpec, Tag("step[remove]")]
    | Annotated[AptStepSpec, Tag("step[apt]")],
    Discriminator(_step_tag, custom_error_type="step_kind",
                  custom_error_message="a step is a table naming one kind of step"),
    BeforeValidator(_one_step_kind),
]


class OsSpec(Strict):
    """`os = { ... }`: the image is a Debian system bootstrapped with mmdebstrap and imported
    into the container engine; the recipe's steps become its layers (hinotori.bake.osimage).
    python3 is always installed (verify runs its evaluator inside the host) besides
    `packages`."""

    suite: Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{1,30}$")] = "bookworm"
    # Only variants that include apt: apt steps and `packages` need it.
    variant: Literal["minbase", "apt", "buildd", "required", "important", "standard"] = "minbase"
    packages: list[DebianPackage] = []
    mirror: Annotated[str, Field(pattern=r"^(https?|file)://\S+$")] = (
        "http://deb.debian.org/debian")
    arch: Annotated[str, Field(pattern=r"^[a-z0-9]+$")] | None = None  # default: the host's
    workdir: Annotated[str, Field(pattern=r"^/\S*$")] = "/app"  # where step paths point


class ImageSpec(Strict):
    """How a service's image is baked: the build context and the recipe (hinotori.bake)."""

    context: str = "."
    steps: list[StepSpec] = []
    os: OsSpec | None = None  # None: a file tree (process hosts); else a Debian OS image

    @model_validator(mode="after")
    def _apt_needs_os(self) -> ImageSpec:
        if self.os is None and any(isinstance(s, AptStepSpec) for s in self.steps):
            raise ValueError("apt steps install Debian packages, so they need an OS image: add "
                             "os = { suite = \"bookworm\" } to this [image] table")
        return self

    def recipe(self) -> list[Step]:
        """The steps as the builder takes them."""
        return [step_from_dict(s.model_dump(exclude_unset=True, by_alias=True))
                for s in self.steps]


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
    hours: tuple[int, int] = (9, 17)  # local time, [start, end)
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
    post_switch: list[str] = []  # right after traffic moved to the new release
    post_deploy: list[str] = []  # after the deployment succeeded
    timeout: Duration = 60.0


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
            _address(self.address)
        return self


class LogsSpec(Strict):
    """`[logs]`: the central store (.hinotori/logs.db) that keeps every host's output and
    declared log files after the host is gone, and where it is forwarded."""

    retention: Duration = 7 * 86400.0  # lines older than this are deleted
    max_size: Annotated[int, BeforeValidator(lambda v: parse_size(v) if isinstance(v, str)
                                             else v), Field(ge=1 << 20)] = 1 << 30
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


class EngineSpec(Strict):
    """`[engine]`: the container engine (Docker or Podman) that runs `provider = "container"`
    hosts and builds OS images, through the Docker Engine API. No url: $DOCKER_HOST,
    $CONTAINER_HOST, the usual sockets, then a private Podman service under .hinotori/."""

    url: Annotated[str, Field(pattern=r"^(unix|tcp|ssh|http|https)://\S+$")] | None = None


class ServiceSpec(Strict):
    # process: a local process group in a copy of a file-tree image; container: a container of
    # an OS image ([image] os = { ... }) in the engine of [engine].
    provider: Annotated[str, _known(PROVIDERS)] = "process"
    # [machines.NAME] tables its hosts may run on (container hosts); empty: this machine.
    machines: list[Name] = []
    replicas: int = Field(1, ge=1, le=100)
    command: list[str] = Field(min_length=1)
    port_env: EnvName = "PORT"
    env: dict[EnvName, str] = {}
    hosts: list[str] = []  # Host headers routed to this service; empty = any
    path_prefix: str = "/"
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

    @model_validator(mode="after")
    def _prefix(self) -> ServiceSpec:
        if not self.path_prefix.startswith("/"):
            raise ValueError("path_prefix must start with '/'")
        if self.stateful and self.replicas != 1:
            raise ValueError("a stateful service has one host (one writer per volume): set "
                             "replicas = 1")
        if self.stateful and self.chaos is not None:
            raise ValueError("a stateful service is never chaos-killed: remove its chaos table")
        os_image = PROVIDERS[self.provider].runs_os_image
        if os_image and self.image.os is None:
            raise ValueError(f"a {self.provider} host runs an OS image: add os = {{ suite = "
                             "\"bookworm\" } to this service's [image] table (or use "
                             "provider = \"process\" for a file-tree image)")
        if not os_image and self.image.os is not None:
            raise ValueError(f"an OS image runs in the container engine, not as a "
                             f"{self.provider} host: set provider = \"container\" (or remove "
                             "`os` for a file-tree image)")
        if self.stateful and self.strategy.kind != "blue-green":
            raise ValueError("a stateful service is deployed stop-then-start; leave strategy "
                             "at its default")
        return self

    def release_config(self, env_overrides: dict[str, str] | None = None) -> ReleaseConfig:
        return ReleaseConfig(command=tuple(self.command),
                             env={**self.env, **(env_overrides or {})}, port_env=self.port_env)


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

    @model_validator(mode="after")
    def _machines_known(self) -> Spec:
        for name, svc in self.services.items():
            unknown = sorted(set(svc.machines) - set(self.machines))
            if unknown:
                raise ValueError(f"service {name!r} names machines with no [machines.NAME] "
                                 f"table: {', '.join(unknown)} (declared: "
                                 f"{', '.join(sorted(self.machines)) or 'none'})")
            if svc.machines and not PROVIDERS[svc.provider].runs_os_image:
                raise ValueError(f"service {name!r} runs on machines, which run containers: "
                                 "set provider = \"container\" (and an [image] os table)")
        return self

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


