"""A real lab (network namespaces, sshd, Podman and Docker) and the SSH tunnel to its engines.

Needs root, iproute2, openssh-server, podman and docker.io (installed by .ci/run)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hinotori.lab.lab import Lab, LabError
from hinotori.providers.tunnel import EngineTunnel, MachineUnreachable, SshTarget, engine_client
from tests.support import up_lab

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lab = up_lab(tmp_path_factory, 3, {"m3"},
                 ("ip", "nsenter", "/usr/sbin/sshd", "podman", "dockerd"))
    yield lab
    lab.down()


def target(lab: Lab, name: str, **over: object) -> SshTarget:
    m = lab.machine(name)
    return SshTarget(**{"machine": name, "address": m.address, "key": lab.key,
                        "known_hosts": lab.known_hosts, **over})  # type: ignore[arg-type]


def tunnel(lab: Lab, name: str, tmp_path: Path, **over: object) -> EngineTunnel:
    m = lab.machine(name)
    return EngineTunnel(target(lab, name, **over), m.engine_socket, tmp_path)


def test_each_machine_has_its_own_engine_reached_only_through_ssh(lab: Lab,
                                                                  tmp_path: Path) -> None:
    engines = {}
    for name in ("m1", "m2", "m3"):
        t = tunnel(lab, name, tmp_path)
        try:
            client = engine_client(t)
            engines[name] = client.version()["Components"][0]["Name"]
            client.close()
        finally:
            t.close()
    assert engines == {"m1": "Podman Engine", "m2": "Podman Engine", "m3": "Engine"}
    # From this machine, the engine's socket path does not exist: it lives in the machine's
    # own mount namespace.
    assert not Path(lab.machine("m1").engine_socket).exists()


def test_unknown_and_changed_host_keys_are_refused_naming_the_machine(lab: Lab,
                                                                      tmp_path: Path) -> None:
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    with pytest.raises(MachineUnreachable, match=r"m1.*host key is not in"):
        tunnel(lab, "m1", tmp_path, known_hosts=empty).ensure()
    # m2's key recorded under m1's address: m1 now shows a key that changed.
    m2_key = (lab.machine("m2").dir / "ssh_host_ed25519_key.pub").read_text().split()
    wrong = tmp_path / "wrong_known_hosts"
    wrong.write_text(f"{lab.machine('m1').address} {m2_key[0]} {m2_key[1]}\n")
    with pytest.raises(MachineUnreachable, match=r"m1.*CHANGED"):
        tunnel(lab, "m1", tmp_path, known_hosts=wrong).ensure()
    assert not list(tmp_path.glob("m1-*"))  # nothing half-opened left behind


def test_an_unreachable_machine_and_a_missing_engine_are_clear_errors(lab: Lab,
                                                                      tmp_path: Path) -> None:
    nobody = lab.machine("m1").address.rsplit(".", 1)[0] + ".99"  # in the lab, no machine
    with pytest.raises(MachineUnreachable, match=r"m9.*cannot be reached"):
        EngineTunnel(SshTarget("m9", nobody, key=lab.key, known_hosts=lab.known_hosts),
                     "/run/x.sock", tmp_path).ensure()
    t = EngineTunnel(target(lab, "m2"), "/run/no-engine-here.sock", tmp_path)
    try:
        with pytest.raises(MachineUnreachable, match=r"m2.*no container engine answers"):
            engine_client(t)
    finally:
        t.close()


def test_kill_cut_and_mend(lab: Lab, tmp_path: Path) -> None:
    m2 = lab.machine("m2")
    t = tunnel(lab, "m2", tmp_path)
    t.ensure()
    lab.cut("m2")
    try:
        # The keepalives go unanswered: the connection ends by itself.
        deadline = time.monotonic() + 15
        while t.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not t.alive()
        assert lab.status()[1]["connected"] is False
        with pytest.raises(MachineUnreachable, match="m2"):
            t.ensure()
    finally:
        lab.mend("m2")
    t.ensure()
    lab.kill("m2")
    assert lab.status()[1]["running"] is False
    with pytest.raises(OSError), socket.create_connection((m2.address, 22), timeout=2):
        pass
    lab.mend("m2")  # started again, empty, same address and host key
    t.close()
    client = engine_client(t)
    assert client.containers.list(all=True) == []
    client.close()
    t.close()


def test_lab_refuses_a_second_lab_in_the_same_directory(lab: Lab) -> None:
    with pytest.raises(LabError, match="already lives"):
        Lab.up(lab.dir, 1)
    with pytest.raises(LabError, match="no machine 'm7'"):
        lab.kill("m7")
