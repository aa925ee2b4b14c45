"""`[machines.NAME]`: the computers of a fleet, reached over SSH, each running a container engine.

    [machines.m1]
    address = "10.0.0.11"                       # SSH and the hosts' published ports
    ssh = { user = "root", port = 22, key = "~/.ssh/id_ed25519",
            known_hosts = "~/.ssh/known_hosts" }
    engine = "unix:///run/podman/podman.sock"   # the engine's API socket ON that machine
    labels = { zone = "a" }                     # free-form; placement spreads over zones

A service lists the machines its hosts may run on (`machines = ["m1", "m2"]`); without the key
its hosts run on this machine. Host keys are checked against `known_hosts` (OpenSSH's own
default file when not given): an unknown or changed key is refused, never accepted.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field

from hinotori.spec.base import Strict

_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")


def _host(value: str) -> str:
    """An IPv4/IPv6 address or a host name: what goes after `user@` and before `:port`."""
    if _HOSTNAME.match(value) or re.fullmatch(r"[0-9A-Fa-f:]+", value):
        return value
    raise ValueError(f"write a machine's address as an IP address or a host name (got {value!r})")


class SshSpec(Strict):
    user: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_.-]{0,31}$")] = "root"
    port: int = Field(22, ge=1, le=65535)
    key: str | None = None  # a private key file; None: ssh's own defaults and agent
    known_hosts: str | None = None  # None: ~/.ssh/known_hosts (OpenSSH's default)


class MachineSpec(Strict):
    address: Annotated[str, AfterValidator(_host)]
    ssh: SshSpec = SshSpec()
    engine: Annotated[str, Field(pattern=r"^unix:///\S+$")] = "unix:///run/podman/podman.sock"
    labels: dict[str, str] = {}
