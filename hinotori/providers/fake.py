"""An in-memory Provider for tests of orchestration: no process, no socket, no sleep.

Hosts live in a dict. Their health is answered by ``probe`` (hand it to the Fleet as its
prober), so a strategy runs its real code path, health gate included, in microseconds. Faults
are switches a test sets before or during a run:

- ``fail_boot``: releases (by number) whose boots raise ProviderError, as an image that does not
  start would; ``boot_failures_left`` fails just the next N boots of any release;
- ``unhealthy``: releases whose hosts never pass their health check;
- ``slow_health``: probes each new host fails before it starts passing;
- ``die(host_id)``: the host is gone (adopt() turns False), as a crash or a chaos kill;
  ``die(host_id, exit_code)``: its main process exited so (what a job host's end looks like);
- ``error_rate``: per release, the share of requests its hosts answer with a 5xx (read by
  hinotori.router.fake.FakeRouter when it makes up traffic).

Everything the fake did is in ``calls`` (("boot", host_id), ("destroy", host_id), …) for tests that
assert on the order of operations.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from hinotori.errors import ProviderError
from hinotori.model import HealthCheck, Host, HostState, ProbeResult
from hinotori.providers.base import (
    BootRequest,
    CommandResult,
    HostUsage,
    ProviderContext,
    SourceFile,
)


class _NoLogs:
    """Fake hosts write no files: the log shipper finds nothing to read."""

    def files(self, host: Host, declared: Sequence[str]) -> list[SourceFile]:
        return []


@dataclass
class FakeHost:
    host: Host
    alive: bool = True
    probes: int = 0  # health probes answered so far


@dataclass
class FakeProvider:
    name: str = "fake"
    evaluator_python: str = "python3"
    shares_process_table: bool = False
    runs_os_image: bool = False
    log_source: ClassVar[_NoLogs] = _NoLogs()
    fail_boot: set[int] = field(default_factory=set)
    boot_failures_left: int = 0
    unhealthy: set[int] = field(default_factory=set)
    slow_health: int = 0
    error_rate: dict[int, float] = field(default_factory=dict)
    hosts: dict[str, FakeHost] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    requests: dict[str, BootRequest] = field(default_factory=dict)  # host id -> its boot
    exits: dict[str, int] = field(default_factory=dict)  # host id -> its exit status

    # -- what a test sees and does -------------------------------------------------------
    def live(self) -> list[Host]:
        return [f.host for f in self.hosts.values() if f.alive]

    def die(self, host_id: str, exit_code: int | None = None) -> None:
        self.hosts[host_id].alive = False
        if exit_code is not None:
            self.exits[host_id] = exit_code

    async def probe(self, address: str, check: HealthCheck) -> ProbeResult:
        """The Fleet's prober: a host answers by its release's switches."""
        found = next((f for f in self.hosts.values() if f.host.address == address), None)
        if found is None or not found.alive:
            return ProbeResult(False, "connection refused")
        found.probes += 1
        if found.host.release in self.unhealthy:
            return ProbeResult(False, f"status 500, wanted {check.status}")
        if found.probes <= self.slow_health:
            return ProbeResult(False, "connection refused (still starting)")
        return ProbeResult(True, f"status {check.status}")

    # -- the Provider protocol -----------------------------------------------------------
    @classmethod
    def create(cls, ctx: ProviderContext) -> FakeProvider:
        return cls()

    async def boot(self, req: BootRequest) -> Host:
        self.calls.append(("boot", req.host_id))
        if req.release.number in self.fail_boot or self.boot_failures_left > 0:
            self.boot_failures_left = max(0, self.boot_failures_left - 1)
            raise ProviderError(f"host {req.host_id} did not start (fake boot failure)")
        host = Host(id=req.host_id, service=req.release.service, release=req.release.number,
                    provider=self.name, state=HostState.BOOTING, born_at=time.time(),
                    address=f"fake-{req.host_id}:80", root=str(req.state_dir / "root"))
        self.hosts[host.id] = FakeHost(host)
        self.requests[host.id] = req
        return host

    async def destroy(self, host: Host, grace: float = 10.0) -> None:
        self.calls.append(("destroy", host.id))
        self.hosts.pop(host.id, None)

    async def kill(self, host: Host) -> None:
        self.calls.append(("kill", host.id))
        if host.id in self.hosts:
            self.hosts[host.id].alive = False

    async def adopt(self, host: Host) -> bool:
        found = self.hosts.get(host.id)
        return found is not None and found.alive

    async def exit_status(self, host: Host) -> int | None:
        return None if await self.adopt(host) else self.exits.get(host.id)

    async def exec(self, host: Host, argv: Sequence[str], *, stdin: bytes = b"",
                   timeout: float = 60.0) -> CommandResult:
        self.calls.append(("exec", host.id))
        if not await self.adopt(host):
            raise ProviderError(f"host {host.id} is gone")
        return CommandResult(0, "", "")

    async def list(self) -> list[Host]:
        return self.live()

    async def usage(self, host: Host) -> HostUsage | None:
        return HostUsage(0.0, 0) if await self.adopt(host) else None

    def close(self, *, teardown: bool = False) -> None:
        pass  # nothing held open

    def logs(self, host: Host, tail: int | None = None) -> list[str]:
        return [f"{host.id}: fake output"]
