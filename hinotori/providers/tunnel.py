"""The road to a machine's container engine: one OpenSSH connection that forwards the engine's
unix socket on the machine to a unix socket here.

Why OpenSSH and not a Python SSH library: it is what every machine already trusts, it reads the
operator's own known_hosts and keys the way they expect, and forwarding a unix socket
(`-L local.sock:remote.sock`) is built in, so the docker SDK talks to a remote engine exactly as
to a local one (`unix://…`), with no agent of ours on the machine. The command is plain data
(`forward_argv`), tested without a server.

Host keys are checked strictly against the machine's `known_hosts` (StrictHostKeyChecking=yes,
nothing global): an unknown or changed key is an error that names the machine, never accepted.
ServerAliveInterval makes a dead or cut-off machine end the connection within ~3 s; `ensure()`
then opens a new one on next use.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hinotori.errors import MachineUnreachable
from hinotori.processes import pid_alive
from hinotori.statefiles import private_dir, socket_dir, write_private

if TYPE_CHECKING:
    import docker

CONNECT_TIMEOUT = 5  # seconds for TCP connect + SSH handshake
ALIVE_INTERVAL = 1  # a keepalive a second; three unanswered end the connection


@dataclass(frozen=True)
class SshTarget:
    machine: str  # the [machines.NAME] it belongs to, for messages
    address: str
    user: str = "root"
    port: int = 22
    key: Path | None = None
    known_hosts: Path | None = None


def forward_argv(t: SshTarget, local_socket: Path, remote_socket: str,
                 reverse_ports: tuple[int, ...] = ()) -> list[str]:
    """``reverse_ports``: loopback ports of this machine that the machine sees on its own
    loopback (the image registry), on the same connection."""
    argv = ["ssh", "-N", "-T",
            "-o", "BatchMode=yes",  # never prompt: a controller has nobody to ask
            "-o", "StrictHostKeyChecking=yes",
            "-o", "ExitOnForwardFailure=yes",
            "-o", f"ConnectTimeout={CONNECT_TIMEOUT}",
            "-o", f"ServerAliveInterval={ALIVE_INTERVAL}", "-o", "ServerAliveCountMax=3",
            "-o", "StreamLocalBindUnlink=yes", "-o", "StreamLocalBindMask=0177",
            "-o", "ControlMaster=no", "-o", "ControlPath=none",
            "-p", str(t.port), "-L", f"{local_socket}:{remote_socket}"]
    if t.known_hosts is not None:
        argv[3:3] = ["-o", f"UserKnownHostsFile={t.known_hosts}",
                     "-o", "GlobalKnownHostsFile=/dev/null"]
    if t.key is not None:
        argv[3:3] = ["-i", str(t.key), "-o", "IdentitiesOnly=yes"]
    for port in reverse_ports:
        # Port 0: the machine picks a free one (two controllers, or a controller and a CLI,
        # may reach one machine at once) and ssh says which ("Allocated port N …").
        argv += ["-R", f"127.0.0.1:0:127.0.0.1:{port}"]
    return [*argv, f"{t.user}@{t.address}"]


def explain(t: SshTarget, stderr: str) -> MachineUnreachable:
    """What OpenSSH's last words mean, for the operator."""
    text = stderr.strip()
    where = f"machine {t.machine} ({t.user}@{t.address}:{t.port})"
    if "IDENTIFICATION HAS CHANGED" in text:
        return MachineUnreachable(
            f"{where}: its SSH host key CHANGED since it was recorded in "
            f"{t.known_hosts or '~/.ssh/known_hosts'}; refusing to connect",
            hint="if the machine was rebuilt, replace its line in known_hosts "
                 f"(ssh-keygen -R {t.address}); otherwise treat it as an attack")
    if "Host key verification failed" in text or "host key is known" in text:
        return MachineUnreachable(
            f"{where}: its SSH host key is not in {t.known_hosts or '~/.ssh/known_hosts'}; "
            "refusing to connect to a machine we cannot identify",
            hint=f"add it after checking its fingerprint: ssh-keyscan {t.address} >> "
                 f"{t.known_hosts or '~/.ssh/known_hosts'}")
    if "Permission denied" in text:
        return MachineUnreachable(f"{where} refused our SSH key",
                                  hint="add the key's .pub to the machine's authorized_keys")
    last = text.splitlines()[-1] if text else "ssh exited"
    return MachineUnreachable(f"{where} cannot be reached: {last}",
                              hint="is it up, and is sshd listening on that address and port?")


_ALLOCATED = re.compile(r"Allocated port (\d+) for remote forward to 127\.0\.0\.1:(\d+)")


class EngineTunnel:
    """One SSH connection forwarding ``remote_socket`` on the machine to a socket of this
    process in ``sockets`` (named ``<machine>-<pid>.sock``: a CLI and the controller may each
    hold one), and ``reverse_ports`` of this machine's loopback to ports the machine chose
    (``remote_port``). A tunnel whose process died without closing it (SIGKILL) is found by its
    pid file and ended by the next one opened for the same machine."""

    def __init__(self, target: SshTarget, remote_socket: str, sockets: Path,
                 reverse_ports: tuple[int, ...] = ()) -> None:
        self.target = target
        self.reverse_ports = reverse_ports
        self.remote_socket = remote_socket
        # OpenSSH refuses a socket path over ~100 bytes: a deep project's go somewhere short.
        self.sockets = socket_dir(sockets, f"{target.machine}-{os.getpid()}.ssh.log", 100)
        self.local_socket = self.sockets / f"{target.machine}-{os.getpid()}.sock"
        self.remote_ports: dict[int, int] = {}  # our loopback port -> the machine's
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr = self.local_socket.with_suffix(".ssh.log")
        self._pidfile = self.local_socket.with_suffix(".pid")

    def remote_port(self, port: int) -> int:
        return self.remote_ports[port]

    def _sweep(self) -> None:
        """End the tunnels of this machine left by processes that are gone."""
        for pidfile in self.sockets.glob(f"{self.target.machine}-*.pid"):
            owner = pidfile.stem.rsplit("-", 1)[-1]
            if not owner.isdigit() or pid_alive(int(owner)):
                continue
            with contextlib.suppress(ValueError, OSError):
                ssh = int(pidfile.read_text())
                if pid_alive(ssh) and "ssh" in Path(f"/proc/{ssh}/cmdline").read_text():
                    os.killpg(ssh, signal.SIGTERM)
            for leftover in (pidfile, pidfile.with_suffix(".sock"),
                             pidfile.with_suffix(".ssh.log")):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()

    @property
    def url(self) -> str:
        return f"unix://{self.local_socket}"

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None \
            and self.local_socket.exists()

    def ensure(self) -> str:
        """The local socket's URL, with a live connection behind it (opened if needed)."""
        if self.alive():
            return self.url
        self.close()
        private_dir(self.sockets)
        self._sweep()
        with contextlib.suppress(FileNotFoundError):
            self.local_socket.unlink()
        fd = os.open(self._stderr, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            # Its own session: a controller's Ctrl-C is not the tunnel's, and close() ends it.
            self._proc = subprocess.Popen(
                forward_argv(self.target, self.local_socket, self.remote_socket,
                             self.reverse_ports),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=fd,
                start_new_session=True)
        finally:
            os.close(fd)
        write_private(self._pidfile, str(self._proc.pid))
        deadline = time.monotonic() + CONNECT_TIMEOUT + 2
        while time.monotonic() < deadline:
            if self.local_socket.exists() and self._read_remote_ports():
                return self.url
            if self._proc.poll() is not None:
                break
            time.sleep(0.02)
        stderr = self._stderr.read_text(errors="replace") if self._stderr.exists() else ""
        self.close()
        raise explain(self.target, stderr or "no answer within the connect timeout")

    def _read_remote_ports(self) -> bool:
        """True once the machine said which port each reverse forward got."""
        text = self._stderr.read_text(errors="replace") if self._stderr.exists() else ""
        self.remote_ports = {int(ours): int(theirs)
                             for theirs, ours in _ALLOCATED.findall(text)}
        return set(self.remote_ports) >= set(self.reverse_ports)

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for path in (self.local_socket, self._pidfile, self._stderr):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def engine_client(tunnel: EngineTunnel) -> docker.DockerClient:
    """A pinged docker SDK client of the machine's engine, through the tunnel."""
    from hinotori.engine import CALL_TIMEOUT, try_connect

    url = tunnel.ensure()
    client = try_connect(url)
    if client is None:
        t = tunnel.target
        raise MachineUnreachable(
            f"machine {t.machine} ({t.address}) is reachable over SSH, but no container engine "
            f"answers at {tunnel.remote_socket} there",
            hint="start one on the machine (`podman system service --time=0 "
                 f"unix://{tunnel.remote_socket}`, or dockerd -H unix://"
                 f"{tunnel.remote_socket}), or fix `engine` in [machines.{t.machine}]")
    client.api.timeout = CALL_TIMEOUT
    return client
