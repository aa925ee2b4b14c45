"""Container hosts on this machine and on the machines of a fleet, behind one provider.

``provider = "container"`` with ``machines = [...]`` puts a service's hosts on those machines;
without it, on this one. Each machine is "SSH + a container engine", no agent of ours: one
OpenSSH connection per machine (``tunnel.EngineTunnel``) forwards its engine's socket here, and
the same ``ContainerProvider`` code drives it, publishing ports on the machine's address. A host
remembers its machine (``host.data["machine"]``), so everything after boot (adopt, destroy,
exec, usage, logs) goes to the right engine, and a controller restarted finds them all again.

Images travel before the first host of a release boots on a machine, and only the layers it
lacks (``shipping``: the project's loopback registry, pulled through the machine's tunnel). A
machine that cannot be reached makes its calls fail fast with MachineUnreachable (the tunnel's
keepalives end a dead connection within ~3 s); what to do about it is the controller's.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hinotori.errors import HinotoriError, MachineUnreachable, ProviderError
from hinotori.model import Host
from hinotori.providers.base import BootRequest, CommandResult, HostUsage, ProviderContext
from hinotori.providers.container import ContainerProvider
from hinotori.providers.container_logs import ContainerLogSource
from hinotori.providers.shipping import (
    LocalRegistry,
    has_image,
    machine_ref,
    pull,
    push,
    repository,
)
from hinotori.providers.tunnel import EngineTunnel, SshTarget, engine_client

if TYPE_CHECKING:
    import docker

# How long a probe may take at most: an SSH connect (ConnectTimeout 5 s) and a ping. The
# machine watch waits far less and counts a late answer as a failed probe.
PROBE_BOUND = 10.0


@dataclass(frozen=True)
class Machine:
    """A machine as the provider needs it (built from the spec's [machines.NAME])."""

    name: str
    ssh: SshTarget
    engine_socket: str  # the engine's API socket on the machine
    labels: Mapping[str, str] = field(default_factory=dict)


class _Remote:
    """One machine: its tunnel, and the container provider that drives its engine."""

    def __init__(self, machine: Machine, project: str, sockets: Path, registry_port: int) -> None:
        self.machine = machine
        self.tunnel = EngineTunnel(machine.ssh, machine.engine_socket, sockets,
                                   reverse_ports=(registry_port,))
        self.provider = ContainerProvider(project, machine=machine.name,
                                          publish=machine.ssh.address, connect=self.connect)
        self.ship_lock = threading.Lock()

    def connect(self) -> docker.DockerClient:
        return engine_client(self.tunnel)

    def ensure(self) -> None:
        """A live connection (re-opened after the machine came back); the provider's client
        is dropped with a dead tunnel so the next call connects again."""
        if not self.tunnel.alive():
            self.provider.forget_engine()
            self.provider.client()


class ContainerHosts:
    """The ``container`` provider: hosts on this machine's engine or on a machine's."""

    name = "container"
    evaluator_python = ContainerProvider.evaluator_python
    shares_process_table = False
    runs_os_image = True
    log_source = ContainerLogSource()

    @classmethod
    def create(cls, ctx: ProviderContext) -> ContainerHosts:
        return cls(ContainerProvider.create(ctx), ctx.machines, ctx.project, ctx.state_dir,
                   local_in_use=ctx.local_engine)

    def __init__(self, local: ContainerProvider, machines: Mapping[str, Machine], project: str,
                 state_dir: Path, *, local_in_use: bool = True) -> None:
        self.local = local
        self.local_in_use = local_in_use  # else this machine's engine is never needed
        self.machines = dict(machines)
        self.project = project
        self.state_dir = state_dir
        self.registry = LocalRegistry(state_dir / "registry")
        self._remotes: dict[str, _Remote] = {}
        self._lock = threading.Lock()  # the remotes dict
        self._push_lock = threading.Lock()
        self._pushed: set[str] = set()
        # This instance's source also reads hosts on machines, through their tunnels; never
        # opening one itself (the machine watch does): a pass must not wait on an SSH connect.
        self.log_source = ContainerLogSource(engine=lambda h: self._engine_of(h, connect=False))

    # -- reaching machines ---------------------------------------------------------------
    def remote(self, name: str) -> _Remote:
        with self._lock:
            if name not in self._remotes:
                if name not in self.machines:
                    raise ProviderError(f"no machine {name!r} in the spec",
                                        hint="declare it in a [machines.NAME] table")
                port = self.registry.ensure()  # the tunnels forward it: start it first
                self._remotes[name] = _Remote(self.machines[name], self.project,
                                              self.state_dir / "machines", port)
            return self._remotes[name]

    def _on(self, host: Host) -> ContainerProvider:
        machine = host.data.get("machine")
        return self.local if machine is None else self.remote(machine).provider

    def _engine_of(self, host: Host, *, connect: bool = True) -> docker.DockerClient:
        """The engine client of a host's machine, reconnected if the tunnel died (or, without
        ``connect``, MachineUnreachable then)."""
        machine = host.data.get("machine")
        if machine is None:
            return self.local.client()
        remote = self.remote(machine)
        if not connect and not remote.tunnel.alive():
            raise MachineUnreachable(f"machine {machine} is not connected now")
        remote.ensure()
        return remote.provider.client()

    async def probe(self, name: str) -> str | None:
        """None if the machine's engine answers through SSH now, else why not."""
        remote = self.remote(name)

        def ping() -> None:
            remote.ensure()
            remote.provider.client().api.ping()

        try:
            async with asyncio.timeout(PROBE_BOUND):
                await asyncio.to_thread(ping)
        except (HinotoriError, OSError, TimeoutError) as e:
            remote.provider.forget_engine()
            return str(e).splitlines()[0] if str(e) else type(e).__name__
        except Exception as e:  # the SDK's requests/urllib3 errors: not answering
            remote.provider.forget_engine()
            return f"engine: {type(e).__name__}"
        return None

    def engine_version(self, name: str) -> str | None:
        remote = self._remotes.get(name)
        if remote is None or not remote.provider.connected:
            return None
        try:
            component = (remote.provider.client().version().get("Components") or [{}])[0]
            name = component.get("Name", "?")
            name = "Docker Engine" if name == "Engine" else name  # Docker says just "Engine"
            return f"{name} {component.get('Version', '?')}"
        except Exception:
            return None

    def close(self, *, teardown: bool = False) -> None:
        for remote in self._remotes.values():
            remote.tunnel.close()
        if teardown:
            self.registry.stop()

    # -- shipping ------------------------------------------------------------------------
    def _ship(self, remote: _Remote, image: str, service: str) -> None:
        """The image on the machine's engine: pushed once to the registry, pulled there (only
        missing layers travel), its id checked. One ship per machine at a time."""
        with remote.ship_lock:
            remote.ensure()
            client = remote.provider.client()
            # Asked every time, not remembered: a machine may come back empty (a new disk).
            if has_image(client, image):
                return
            port = self.registry.ensure()
            repo = repository(self.project, service)
            # One push per image, whichever machine asks first (its own lock: a push takes
            # seconds, and the machine watch must reach the other machines meanwhile).
            with self._push_lock:
                if image not in self._pushed:
                    push(self.local.client(), image, port, repo)
                    self._pushed.add(image)
            # The machine sees the registry on its own loopback, at the port its end of the
            # tunnel got.
            ref = machine_ref(repo, image, remote.tunnel.remote_port(port))
            pull(client, ref, image, remote.machine.name)

    # -- the Provider protocol -----------------------------------------------------------
    async def boot(self, req: BootRequest) -> Host:
        if req.machine is None:
            return await self.local.boot(req)
        remote = self.remote(req.machine)
        await asyncio.to_thread(self._ship, remote, req.release.image, req.release.service)
        return await remote.provider.boot(req)

    async def destroy(self, host: Host, grace: float = 10.0) -> None:
        await self._on(host).destroy(host, grace)

    async def kill(self, host: Host) -> None:
        await self._on(host).kill(host)

    async def adopt(self, host: Host) -> bool:
        return await self._on(host).adopt(host)

    async def exit_status(self, host: Host) -> int | None:
        return await self._on(host).exit_status(host)

    async def exec(self, host: Host, argv: Sequence[str], *, stdin: bytes = b"",
                   timeout: float = 60.0) -> CommandResult:
        return await self._on(host).exec(host, argv, stdin=stdin, timeout=timeout)

    async def list(self) -> list[Host]:
        """Every host found on this machine's engine (if it is in use) and on every machine
        that answers; an unreachable machine's hosts are not listed (nor burned as orphans)."""
        found = await self.local.list() if self.local_in_use else []
        for name in sorted(self.machines):
            if await self.probe(name) is None:
                found += await self.remote(name).provider.list()
        return found

    async def changes(self, host: Host) -> list[dict[str, Any]]:
        """The engine's diff of a host's container against its image (``GET
        /containers/{id}/changes``): what drift reads for a host with no view here."""
        provider = self._on(host)
        cid = host.data.get("container")
        if not cid:
            raise ProviderError(f"host {host.id} has no container id")
        return await provider._call(f"reading the changes of host {host.id}",
                                    lambda: provider.client().api.diff(cid) or [])

    async def hosts_on(self, name: str) -> list[Host]:
        return await self.remote(name).provider.list()

    async def usage(self, host: Host) -> HostUsage | None:
        try:
            return await self._on(host).usage(host)
        except MachineUnreachable:
            return None

    def logs(self, host: Host, tail: int | None = None) -> list[str]:
        try:
            return self._on(host).logs(host, tail)
        except ProviderError:
            return []


def machines_of(spec_machines: Mapping[str, Any], root: Path) -> dict[str, Machine]:
    """The spec's [machines.NAME] tables as the provider needs them: key and known_hosts
    paths with ~ expanded and relative ones taken from the spec's directory."""
    def path(value: str | None) -> Path | None:
        if value is None:
            return None
        p = Path(value).expanduser()
        return p if p.is_absolute() else root / p

    return {name: Machine(name, SshTarget(name, m.address, m.ssh.user, m.ssh.port,
                                          path(m.ssh.key), path(m.ssh.known_hosts)),
                          m.engine.removeprefix("unix://"), dict(m.labels))
            for name, m in spec_machines.items()}

