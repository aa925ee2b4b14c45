"""What a lab machine is, as plain data: names, addresses and the commands that make it.

A lab machine is a network namespace with its own address on a bridge, and inside it a PID and
mount namespace whose init runs ``sshd`` on that address and a container engine (Podman's API
service or dockerd) with private storage on a tmpfs. Nothing reaches the engine except through
SSH: its socket lives in the machine's own mount namespace.

Every command here is an argv list built by construction (never a shell string), so a test can
assert on exactly what would run without running it (the way Kamal builds its commands).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

SUBNET = "10.213"  # 10.213.<lab index>.0/24: addresses exist only inside namespaces we made
ENGINE_DIR = "/run/hinotori-engine"  # a tmpfs in the machine's own mount namespace
ZONES = ("a", "b", "c")


@dataclass(frozen=True)
class LabMachine:
    name: str  # m1, m2, …
    number: int  # 1-based
    lab_index: int
    engine: str  # "podman" or "docker"
    dir: Path  # the machine's own directory in the lab's state directory

    @property
    def address(self) -> str:
        return f"{SUBNET}.{self.lab_index}.{10 + self.number}"

    @property
    def netns(self) -> str:
        return f"hinolab{self.lab_index}-{self.name}"

    @property
    def veth(self) -> str:
        """The root namespace's end of the machine's cable (15 characters at most)."""
        return f"hl{self.lab_index}{self.name}"

    @property
    def zone(self) -> str:
        return ZONES[(self.number - 1) % len(ZONES)]

    @property
    def engine_socket(self) -> str:
        return f"{ENGINE_DIR}/{self.engine}.sock"

    @property
    def engine_url(self) -> str:
        return f"unix://{self.engine_socket}"

    @property
    def host_key(self) -> Path:
        return self.dir / "ssh_host_ed25519_key"


def bridge_name(lab_index: int) -> str:
    return f"hinolab{lab_index}"


def bridge_address(lab_index: int) -> str:
    return f"{SUBNET}.{lab_index}.1"


def network_up(lab_index: int) -> list[list[str]]:
    bridge = bridge_name(lab_index)
    return [["ip", "link", "add", bridge, "type", "bridge"],
            ["ip", "addr", "add", f"{bridge_address(lab_index)}/24", "dev", bridge],
            ["ip", "link", "set", bridge, "up"]]


def network_down(lab_index: int) -> list[list[str]]:
    return [["ip", "link", "del", bridge_name(lab_index)]]


def machine_network_up(m: LabMachine) -> list[list[str]]:
    """The namespace, its cable to the bridge, its address. The namespace outlives the
    machine's processes, so a killed machine comes back at the same address."""
    inside = ["nsenter", f"--net=/var/run/netns/{m.netns}"]
    return [["ip", "netns", "add", m.netns],
            ["ip", "link", "add", m.veth, "type", "veth", "peer", "name", "eth0",
             "netns", m.netns],
            ["ip", "link", "set", m.veth, "master", bridge_name(m.lab_index), "up"],
            [*inside, "ip", "addr", "add", f"{m.address}/24", "dev", "eth0"],
            [*inside, "ip", "link", "set", "eth0", "up"],
            [*inside, "ip", "link", "set", "lo", "up"]]


def machine_network_down(m: LabMachine) -> list[list[str]]:
    return [["ip", "netns", "del", m.netns]]  # takes the veth pair with it


def cut(m: LabMachine) -> list[str]:
    return ["ip", "link", "set", m.veth, "down"]


def mend(m: LabMachine) -> list[str]:
    return ["ip", "link", "set", m.veth, "up"]


def start(m: LabMachine) -> list[str]:
    """Enter the machine's network namespace, then give it its own PID and mount namespaces
    (`nsenter --net`, not `ip netns exec`: that one remounts /sys, and runc then finds no
    cgroup mount). Killing the init of that PID namespace kills everything the machine ran,
    its containers included."""
    return ["nsenter", f"--net=/var/run/netns/{m.netns}", "unshare", "--mount", "--pid",
            "--fork", "--mount-proc", "--propagation", "private", "/bin/sh",
            str(m.dir / "init.sh")]


def sshd_argv(m: LabMachine) -> list[str]:
    # -f /dev/null: no system sshd_config (it may ask for PAM or other addresses).
    # StrictModes=no: the lab's directory may sit under a world-writable /tmp.
    return ["/usr/sbin/sshd", "-D", "-e", "-f", "/dev/null",
            "-o", f"ListenAddress={m.address}", "-o", f"HostKey={m.host_key}",
            "-o", "PidFile=none", "-o", f"AuthorizedKeysFile={m.dir / 'authorized_keys'}",
            "-o", "StrictModes=no", "-o", "PasswordAuthentication=no",
            "-o", "KbdInteractiveAuthentication=no", "-o", "PermitRootLogin=prohibit-password",
            "-o", "AllowStreamLocalForwarding=yes", "-o", "AllowTcpForwarding=yes",
            "-o", "StreamLocalBindUnlink=yes"]


def engine_argv(m: LabMachine) -> list[str]:
    storage = m.dir / "storage"
    if m.engine == "docker":
        return ["dockerd", "-H", m.engine_url, "--data-root", str(storage / "docker"),
                "--exec-root", f"{ENGINE_DIR}/docker-exec", "--pidfile",
                f"{ENGINE_DIR}/docker.pid", "--iptables=false", "--ip-masq=false",
                "--storage-driver=overlay2"]
    # Podman refuses a runroot over 50 characters: it lives on the short-named tmpfs.
    return ["podman", "--root", str(storage / "root"), "--runroot", f"{ENGINE_DIR}/podman-run",
            "system", "service", "--time=0", m.engine_url]


def init_script(m: LabMachine) -> str:
    """PID 1 of the machine: private tmpfs for the engine's socket and storage, then sshd and
    the engine, until it is killed."""
    q = shlex.join
    storage = shlex.quote(str(m.dir / "storage"))
    return "\n".join([
        "#!/bin/sh",
        f"# lab machine {m.name} ({m.address}), written by `hinotori lab up`",
        "set -e",
        f"mkdir -p {ENGINE_DIR} {storage} /run/sshd",
        f"mount -t tmpfs -o mode=0700 tmpfs {ENGINE_DIR}",
        f"mount -t tmpfs -o mode=0700 tmpfs {storage}",
        # The engine's own network namespaces (Podman names them in /run/netns) stay inside.
        "mkdir -p /run/netns && mount -t tmpfs -o mode=0755 tmpfs /run/netns",
        f"{q(sshd_argv(m))} 2>>{shlex.quote(str(m.dir / 'sshd.log'))} &",
        f"{q(engine_argv(m))} >>{shlex.quote(str(m.dir / 'engine.log'))} 2>&1 &",
        "wait",
        "",
    ])
