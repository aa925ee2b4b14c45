"""The Provider protocol: how a fresh host comes to exist (the bootstrapping layer).

A provider boots a host of a release from its image, finds hosts it booted earlier (after a
controller restart), runs commands inside them (``exec``: how verify checks reach a host), and
destroys them. It knows nothing of strategies, routers or the store.
What callers must know about a kind of host is a fact on the provider (``evaluator_python``,
``shares_process_table``, ``log_source``), never a comparison of its name: a new provider is one
module and one line in ``providers/registry.py`` (or an entry point in ``hinotori.providers``).
Hosts must outlive the process that booted them: a controller that dies must not take its hosts
with it, so that the next controller can adopt them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from hinotori.model import Host, Release

# exec returns what every command run by hinotori returns
from hinotori.processes import CommandResult as CommandResult

VOLUME_ENV = "HINOTORI_VOLUME_"  # + NAME: where an app finds a volume (README, stateful)


def volume_dirs(base: Path, names: Iterable[str]) -> dict[str, Path]:
    """The directories of a service's volumes under ``base`` (made if missing), by name: the
    one place a BootRequest's ``volumes`` are built."""
    volumes = {}
    for name in names:
        path = base / name
        path.mkdir(parents=True, exist_ok=True)
        volumes[name] = path
    return volumes


def volume_env(volumes: Mapping[str, Path]) -> dict[str, str]:
    """Each volume as the env var the app reads it from: HINOTORI_VOLUME_<NAME>=<path>."""
    return {f"{VOLUME_ENV}{name.upper().replace('-', '_')}": str(path)
            for name, path in volumes.items()}


@dataclass(frozen=True)
class ResolvedSecret:
    """A secret's value, resolved for one boot (hinotori/secrets.py): held in memory only.
    ``as_file``: a 0400 file on a tmpfs (providers/secretfiles.py), its path in NAME_FILE."""

    name: str
    value: str = field(repr=False)
    as_file: bool = False


@dataclass(frozen=True)
class BootRequest:
    """Everything a provider needs to boot one host."""

    host_id: str
    release: Release
    image_root: Path  # the image's read-only file tree in the image store
    state_dir: Path  # a directory the provider may use for this host (view, scratch, logs)
    extra_env: dict[str, str] = field(default_factory=dict)
    # Volume name -> a directory on this machine that outlives the host (stateful services);
    # the provider makes each reachable in the host at the same path, and names it in the
    # host's env (volume_env).
    volumes: dict[str, Path] = field(default_factory=dict)
    # The [machines.NAME] the host goes to (placement chose it); None: this machine.
    machine: str | None = None
    # The release's secrets, resolved for this boot: env vars or files, never written under
    # .hinotori/ (no env file, no host.json); the provider removes their files with the host.
    secrets: tuple[ResolvedSecret, ...] = ()
    # A one-shot host of [jobs.NAME] ``job``: runs ``command`` (instead of the release's) as
    # its main process, whose exit ends it; nobody health-checks or routes to it.
    job: str | None = None
    command: tuple[str, ...] = ()

    @property
    def argv(self) -> tuple[str, ...]:
        """What the host runs: the job's command, else the release's."""
        return self.command or self.release.config.command


@dataclass(frozen=True)
class ProviderContext:
    """What any provider may be built from (``Provider.create``): the project's identity, its
    directories and the spec's settings for providers."""

    project: str  # the project's name (labels, container names)
    hosts_dir: Path  # .hinotori/hosts: per-host state directories
    state_dir: Path  # .hinotori
    engine_url: str | None = None  # [engine] url, for providers that drive a container engine
    # The fleet's machines by name (providers.machines.Machine), for providers that place
    # hosts on them; and whether this machine's own engine is needed at all.
    machines: Mapping[str, Any] = field(default_factory=dict)
    local_engine: bool = True


@dataclass(frozen=True)
class HostUsage:
    """What a host consumes, for per-service resource metrics (summed over its hosts)."""

    cpu_seconds: float  # cumulative user+system CPU time of everything running in the host
    memory_bytes: int  # resident memory now


STDOUT = "stdout"  # the source name of a host's captured stdout+stderr (= logs.records.STDOUT)


@dataclass(frozen=True)
class SourceFile:
    """One file holding a host's log lines, readable on this machine."""

    name: str  # "stdout", "logs/app.log" (in the view), "$HINOTORI_SCRATCH/app.log"
    path: Path  # where this machine reads it
    unframe: Callable[[str], str] | None = None  # a line as written -> the host's own text


@dataclass(frozen=True)
class SourceFeed:
    """A host's output as its engine serves it through an API (a host on another machine: no
    file of it here). ``fetch(since_ns)`` returns, oldest first, every line the engine stamped
    at or after ``since_ns`` (unix time in nanoseconds) as (stamp in ns, text); it may return
    a few earlier ones too, never fewer."""

    name: str  # "stdout", as a file source names it
    ident: str  # what is read (a container id): another one starts a new generation
    fetch: Callable[[int], list[tuple[int, str]]]


@runtime_checkable
class FeedSource(Protocol):
    """A LogSource that can also serve hosts whose output is read through an API."""

    def feeds(self, host: Host) -> list[SourceFeed]:
        """The host's output as API feeds (empty for a host whose files are read here)."""
        ...


class LogSource(Protocol):
    """Where a provider's hosts' logs can be read on this machine (the log shipper's input)."""

    def files(self, host: Host, declared: Sequence[str]) -> list[SourceFile]:
        """The host's output (named ``stdout``) and its files matching ``declared`` globs
        that exist now."""
        ...


@runtime_checkable
class Provider(Protocol):
    name: str
    # Facts about this kind of host, for callers that must not compare provider names:
    # the interpreter verify's evaluator runs with inside a host ...
    evaluator_python: str
    # ... whether a host's pids are in this controller's process table (a host is then the
    # session whose id is its pid; otherwise a host has its own process namespace) ...
    shares_process_table: bool
    # ... whether it boots an engine image baked from [image] os (release.image) rather than
    # a copy of a file-tree image (BootRequest.image_root) ...
    runs_os_image: bool
    # ... and where its hosts' logs are read (a class attribute: no instance is needed).
    log_source: ClassVar[LogSource]

    @classmethod
    def create(cls, ctx: ProviderContext) -> Provider:
        """The provider of a project (how the controller and the CLI build it by name)."""
        ...

    async def boot(self, req: BootRequest) -> Host:
        """Start the host and return it in state BOOTING with address, pid and root set.

        Returns as soon as the host is started; health is the caller's business. Raises
        ProviderError (with the host's last output) if it cannot even start; leaves nothing
        behind in that case.
        """
        ...

    async def destroy(self, host: Host, grace: float = 10.0) -> None:
        """Stop the host (politely, then by force after ``grace`` seconds) and remove its view.
        Destroying a host that is already gone is not an error."""
        ...

    async def kill(self, host: Host) -> None:
        """Kill the host abruptly (SIGKILL or the engine's kill), leaving its view in place:
        what a crash or a chaos monkey does. Cleanup is destroy's job."""
        ...

    async def adopt(self, host: Host) -> bool:
        """True if the host recorded in the store is still running and is the same host
        (not a reused pid). Never changes the host."""
        ...

    async def exec(self, host: Host, argv: Sequence[str], *, stdin: bytes = b"",
                   timeout: float = 60.0) -> CommandResult:
        """Run ``argv`` (never a shell string) inside the host: in its view, as its working
        directory, with the env it was booted with. Returns whatever the exit status; raises
        ProviderError if the command cannot be started or outlives ``timeout`` (then it is
        killed, with anything it started)."""
        ...

    async def list(self) -> list[Host]:
        """Every host of this provider found on the machine, known to the store or not."""
        ...

    async def usage(self, host: Host) -> HostUsage | None:
        """CPU time and memory of the host now; None if it is gone or the provider can't tell."""
        ...

    def logs(self, host: Host, tail: int | None = None) -> list[str]:
        """The host's captured stdout/stderr lines (the last ``tail`` when given)."""
        ...

    def close(self, *, teardown: bool = False) -> None:
        """Let go of what the provider holds open (connections to machines) when the
        controller stops; with ``teardown`` (`hinotori down`) also stop the helpers it started
        (an image registry). Hosts are never touched."""
        ...


@runtime_checkable
class ExitStatus(Protocol):
    """A provider that can tell how a host's main process ended (what a job run needs)."""

    async def exit_status(self, host: Host) -> int | None:
        """The exit status of the host's main process once it ended (a signal N as 128+N);
        None while it runs or when nobody can know any more (not our child, removed)."""
        ...


@runtime_checkable
class MachineProvider(Protocol):
    """A provider that places hosts on the machines of a fleet (besides being a Provider):
    what the controller's machine watch needs of it."""

    machines: Mapping[str, Any]  # by name, as the spec declares them

    async def probe(self, name: str) -> str | None:
        """None if the machine's engine answers now (through SSH), else why not."""
        ...

    def engine_version(self, name: str) -> str | None:
        """The engine and version last seen on the machine ("Podman Engine 4.3.1")."""
        ...

    async def hosts_on(self, name: str) -> list[Host]:
        """Every host of the project found on that machine now."""
        ...

    async def destroy(self, host: Host, grace: float = 10.0) -> None:
        ...
