"""The lab's and the SSH tunnel's commands as data: what would run, checked without running it."""

from __future__ import annotations

import shlex
from pathlib import Path

from hinotori.lab import plan
from hinotori.lab.plan import LabMachine
from hinotori.providers.tunnel import SshTarget, explain, forward_argv


def machine(number: int = 2, engine: str = "podman") -> LabMachine:
    return LabMachine(f"m{number}", number, 7, engine, Path("/lab dir/m2"))


def test_names_fit_the_kernel_and_addresses_stay_in_the_lab_subnet() -> None:
    m = machine()
    assert m.address == "10.213.7.12" and plan.bridge_address(7) == "10.213.7.1"
    assert len(m.veth) <= 15 and len(plan.bridge_name(7)) <= 15  # IFNAMSIZ - 1
    assert [m.zone for m in (machine(1), machine(2), machine(3), machine(4))] == \
        ["a", "b", "c", "a"]


def test_a_machine_is_entered_with_nsenter_and_gets_its_own_pid_and_mount_namespaces() -> None:
    argv = plan.start(machine())
    assert argv[:2] == ["nsenter", "--net=/var/run/netns/hinolab7-m2"]
    assert "ip" not in argv  # never `ip netns exec`: it remounts /sys and runc breaks
    assert {"--mount", "--pid", "--fork", "--mount-proc"} <= set(argv)


def test_the_init_script_quotes_paths_and_keeps_the_engine_private() -> None:
    script = plan.init_script(machine(engine="docker"))
    assert "'/lab dir/m2/storage'" in script  # a space in the path survives the shell
    assert f"mount -t tmpfs -o mode=0700 tmpfs {plan.ENGINE_DIR}" in script
    dockerd = next(line for line in script.splitlines() if line.startswith("dockerd"))
    assert "--iptables=false" in shlex.split(dockerd)
    sshd = next(line for line in script.splitlines() if "sshd" in line and "-D" in line)
    assert "PasswordAuthentication=no" in shlex.split(sshd)


def test_cut_and_mend_act_on_the_machines_cable_only() -> None:
    m = machine()
    assert plan.cut(m) == ["ip", "link", "set", "hl7m2", "down"]
    assert plan.mend(m) == ["ip", "link", "set", "hl7m2", "up"]


def test_the_tunnel_never_prompts_and_checks_host_keys_strictly() -> None:
    t = SshTarget("m1", "10.213.7.11", "root", 2222, Path("/k/id"), Path("/k/known_hosts"))
    argv = forward_argv(t, Path("/s/m1.sock"), "/run/podman/podman.sock")
    options = {argv[i + 1] for i, a in enumerate(argv) if a == "-o"}
    assert {"BatchMode=yes", "StrictHostKeyChecking=yes", "UserKnownHostsFile=/k/known_hosts",
            "GlobalKnownHostsFile=/dev/null", "IdentitiesOnly=yes"} <= options
    assert argv[argv.index("-L") + 1] == "/s/m1.sock:/run/podman/podman.sock"
    assert argv[argv.index("-p") + 1] == "2222" and argv[-1] == "root@10.213.7.11"


def test_ssh_failures_are_explained_naming_the_machine() -> None:
    t = SshTarget("m3", "10.213.7.13", known_hosts=Path("/k/kh"))
    changed = explain(t, "@@@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @@@\n...")
    assert "m3" in changed.message and "CHANGED" in changed.message
    unknown = explain(t, "No ED25519 host key is known for 10.213.7.13 and you have requested "
                         "strict checking.\nHost key verification failed.")
    assert "not in /k/kh" in unknown.message and "ssh-keyscan" in (unknown.hint or "")
    down = explain(t, "ssh: connect to host 10.213.7.13 port 22: No route to host")
    assert "cannot be reached: ssh: connect to host" in down.message
