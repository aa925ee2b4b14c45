"""The Provider protocol: how a fresh host comes to exist (the bootstrapping layer).

A provider boots a host of a release from its image, finds hosts it booted earlier (after a
controller restart), runs commands inside them (``exec``: how verify checks reach a host), and
destroys them. It knows nothing of strategies, routers or the store.
Hosts must outlive the process that booted them: a controller that dies must not take its hosts
with it, so that the next controller can adopt them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from hinotori.model import Host, Release

# exec returns what every command run by hinotori returns
from hinotori.processes import CommandResult as CommandResult


@dataclass(frozen=True)
class BootRequest:
    """Everything a provider needs to boot one host."""

    host_id: str
    release: Release
    image_root: Path  # the image's read-only file tree in the image store
    state_dir: Path  # a directory the provider may use for this host (view, scratch, logs)
    extra_env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class HostUsage:
    """What a host consumes, for per-service resource metrics (summed over its hosts)."""

    cpu_seconds: float  # cumulative user+system CPU time of everything running in the host
    memory_bytes: int  # resident memory now


@runtime_checkable
class Provider(Protocol):
    name: str

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
