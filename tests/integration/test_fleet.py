"""A fleet of real machines: a lab of network namespaces, each with sshd and its own container
engine (two Podman, one Docker), reached only over SSH; a real controller, the built-in router
and container hosts of a Debian OS image shipped to the machines through the project's registry.

Under a keep-alive GET load that runs through everything: deploys, a canary and a rollback
across the machines; a machine killed and a machine cut off (seen as down within 5 s, its hosts
out of traffic and replaced on the others, burned when it comes back); a drained machine; a
controller SIGKILLed mid-deploy; and machines that cannot be trusted or reached. Needs root,
podman, docker.io, openssh-server, docker-registry and mmdebstrap (.ci/run installs them).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hinotori.lab.lab import Lab
from hinotori.loadgen import BackgroundLoad
from tests.support import (
    CANARY_SPEC,
    CONTAINER_SPEC,
    HELLO,
    CliProject,
    free_port,
    require,
    teardown,
    up_lab,
    wait_until,
)

pytestmark = pytest.mark.integration

DOWN_WITHIN = 5.0  # seconds from a kill or a cut to the machine seen down (the bound)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lab = up_lab(tmp_path_factory, 3, {"m3"},
                 ("ip", "/usr/sbin/sshd", "podman", "dockerd", "docker-registry",
                       "mmdebstrap"))
    yield lab
    lab.down()


def fleet_project(tmp_path: Path, lab: Lab, machines: str = '["m1", "m2", "m3"]',
                  extra: str = "", snippet: str | None = None) -> CliProject:
    """examples/hello in containers on the lab's machines, 3 replicas, with a quick canary."""
    path = tmp_path / "proj"
    shutil.copytree(HELLO, path, ignore=shutil.ignore_patterns("__pycache__", ".hinotori",
                                                                "hinotori.toml"))
    (path / "VERSION").write_text("1\n")
    port = free_port()
    spec = CONTAINER_SPEC.format(name=f"fleet{uuid.uuid4().hex[:6]}", listen=f"127.0.0.1:{port}")
    spec = spec.replace('provider = "container"\n', f'provider = "container"\nmachines = '
                        f'{machines}\n').replace("replicas = 2", "replicas = 3")
    spec += CANARY_SPEC.format(steps="[50, 100]", pause="1s", deadline="30s")
    (path / "hinotori.toml").write_text(spec + "\n" + (lab.snippet() if snippet is None
                                                       else snippet) + extra)
    project = CliProject(path)
    project.router = f"127.0.0.1:{port}"
    return project


@pytest.fixture
def project(tmp_path: Path, lab: Lab, engine_url: str) -> Iterator[CliProject]:
    p = fleet_project(tmp_path, lab)
    yield p
    teardown(p)


def machine_of(p: CliProject) -> dict[str, str]:
    """Serving host id -> its machine."""
    return {h["id"]: h["machine"] for h in p.serving()}


def replaced_off(p: CliProject, name: str) -> bool:
    """3 hosts serve, none on machine ``name`` (one ``hosts`` call per look: a wait polls it)."""
    machines = machine_of(p)
    return len(machines) == 3 and name not in set(machines.values())


def host_state(p: CliProject, host: str) -> str | None:
    return next((x["state"] for x in p.json("hosts", "--all")  # type: ignore[union-attr]
                 if x["id"] == host), None)


def machine_state(p: CliProject, name: str) -> str:
    return next(r["state"] for r in p.json("machines") if r["name"] == name)  # type: ignore[union-attr]


def event_time(p: CliProject, action: str, subject: str, after: float) -> float | None:
    for e in p.json("audit", "--action", action, "--limit", "1000"):  # type: ignore[union-attr]
        if e["subject"] == subject and e["ts"] >= after:
            return e["ts"]
    return None


def deploy_v1(p: CliProject) -> None:
    p.cli("up", "-d")
    p.cli("bake", "web")
    assert "now serves v1" in p.cli("deploy", "web", timeout=300).stdout


def test_deploy_canary_and_rollback_across_three_machines_under_load(project: CliProject
                                                                      ) -> None:
    p = project
    deploy_v1(p)
    assert sorted(machine_of(p).values()) == ["m1", "m2", "m3"]  # one host per machine
    assert [r["state"] for r in p.json("machines")] == ["up", "up", "up"]  # type: ignore[union-attr]
    load = BackgroundLoad(p.router, clients=20, rate=200, record_header="x-hello-host")
    load.start()
    try:
        p.set_version("2")
        p.cli("bake", "web")
        p.cli("deploy", "web", timeout=300)  # the canary: 50%, judged, then 100%
        assert {h["release_name"] for h in p.serving()} == {"v2"}
        assert sorted(machine_of(p).values()) == ["m1", "m2", "m3"]
        out = p.cli("rollback", "web").stdout
        assert "now serves v1" in out and "instantly from warm hosts" in out
        # Chaos on remote hosts: killed through their machine's engine, healed on the fleet.
        chaos = p.cli("chaos", "web", "--interval", "1s", "--duration", "3s", "--seed", "3",
                      "--json", check=False)
        report = json.loads(chaos.stdout)
        assert chaos.returncode == 0 and report["kills"] >= 1, chaos.stdout + chaos.stderr
        assert report["not_recovered"] == 0
        assert len(p.serving()) == 3
    finally:
        stats = load.stop()
    assert stats.total > 300 and stats.failed == 0, stats.failures
    assert len(stats.by_header) >= 6  # both releases' hosts on every machine answered
    steps = p.json("deployments", "web")[1]["summary"]["steps"]  # type: ignore[index]
    assert [s["weight"] for s in steps] == [50]


def test_a_machine_killed_and_a_machine_cut_off_under_load(project: CliProject,
                                                           lab: Lab) -> None:
    p = project
    deploy_v1(p)
    load = BackgroundLoad(p.router, clients=20, rate=200)
    load.start()
    try:
        for name, fail in (("m2", lab.kill), ("m3", lab.cut)):
            lost = [h for h, m in machine_of(p).items() if m == name]
            started = time.time()
            fail(name)
            assert wait_until(lambda n=name: machine_state(p, n) == "down", timeout=15)
            seen = event_time(p, "machine.down", name, started)
            assert seen is not None and seen - started <= DOWN_WITHIN, seen and seen - started
            # Its host left the table and is lost; the replicas come back on the others.
            assert wait_until(lambda n=name: replaced_off(p, n), timeout=60), (
                "\n".join(f'{e["action"]} {e["subject"]} {e["detail"]}' for e in p.json(
                    "audit", "--limit", "40")))  # type: ignore[union-attr]
            states = {h["id"]: h["state"] for h in p.json("hosts")}  # type: ignore[union-attr]
            assert [states.get(h) for h in lost] == ["lost"]
            # Back again: the stale host is burned, never routed again.
            lab.mend(name)
            assert wait_until(lambda n=name: machine_state(p, n) == "up", timeout=30)
            assert wait_until(lambda h=lost[0]: host_state(p, h) == "destroyed", timeout=30)
    finally:
        stats = load.stop()
    assert stats.total > 500
    assert stats.failed == 0, stats.failures  # the built-in router re-sends what a lost host held


def test_a_machine_killed_and_a_machine_cut_off_under_load_through_haproxy(
        tmp_path: Path, lab: Lab, engine_url: str) -> None:
    """The same through HAProxy with L7 retries: a lost host's held GETs are re-sent (its
    sessions shut down when the table names it lost), and a GET that picks the cut machine
    before it is seen down gives up connecting after 1 s and goes to another: 0 failed."""
    require(shutil.which("haproxy") is not None, "haproxy is not installed")
    p = fleet_project(tmp_path, lab)
    spec = p.path / "hinotori.toml"
    spec.write_text(spec.read_text().replace(
        "[router]\n", '[router]\nkind = "haproxy"\nretry_unanswered = true\n', 1))
    try:
        test_a_machine_killed_and_a_machine_cut_off_under_load(p, lab)
        assert (p.path / ".hinotori" / "router" / "haproxy.pid").exists()  # HAProxy served it
    finally:
        teardown(p)


def test_a_drained_machine_hands_its_hosts_over_without_a_failed_request(
        project: CliProject) -> None:
    p = project
    deploy_v1(p)
    load = BackgroundLoad(p.router, clients=20, rate=200)
    load.start()
    try:
        p.cli("machine", "drain", "m1")
        assert wait_until(lambda: replaced_off(p, "m1"), timeout=120)
        assert machine_state(p, "m1") == "draining"
        p.cli("deploy", "web", "--env", "HELLO_VERSION=3", timeout=300)
        assert "m1" not in set(machine_of(p).values())  # no new host on it
        p.cli("machine", "undrain", "m1")
        assert machine_state(p, "m1") == "up"
    finally:
        stats = load.stop()
    assert stats.failed == 0, stats.failures
    drained = p.json("audit", "--action", "machine.drained")
    assert drained and drained[0]["subject"] == "m1"  # type: ignore[index]


def test_a_controller_killed_mid_deploy_finds_its_remote_hosts_again(
        project: CliProject) -> None:
    p = project
    deploy_v1(p)
    serving = machine_of(p)
    p.set_version("2")
    p.cli("bake", "web")
    deploy = subprocess.Popen([sys.executable, "-m", "hinotori", "deploy", "web", "--spec",
                               str(p.path)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        # v2 hosts boot on the machines; the controller dies before they take traffic.
        assert wait_until(lambda: any(h["release_name"] == "v2" for h in p.json("hosts")),
                          timeout=60)
        pid = p.controller_pid()
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: not Path(f"/proc/{pid}").exists(), timeout=10)
    finally:
        deploy.wait(timeout=60)
    p.cli("up", "-d")
    assert machine_of(p) == serving  # the same remote hosts, adopted
    live = {h["id"]: h for h in p.json("hosts")}  # type: ignore[union-attr]
    assert all(h["release_name"] == "v1" for h in live.values())  # v2's unrouted ones burned
    # No traffic to judge a canary by here: blue-green.
    assert "now serves v2" in p.cli("deploy", "web", "--strategy", "blue-green",
                                    timeout=300).stdout


@pytest.mark.parametrize("fault", ["host key", "unreachable", "no engine"])
def test_a_machine_that_cannot_be_trusted_or_reached_is_a_clear_error(
        tmp_path: Path, lab: Lab, engine_url: str, fault: str) -> None:
    """A wrong host key, an address nobody answers at, a socket with no engine behind it."""
    m1 = lab.machine("m1")
    other_key = (lab.machine("m2").dir / "ssh_host_ed25519_key.pub").read_text().split()[:2]
    known = tmp_path / "known_hosts"
    known.write_text(f"{m1.address} {' '.join(other_key)}\n" if fault == "host key" else
                     lab.known_hosts.read_text())
    address = m1.address.rsplit(".", 1)[0] + ".99" if fault == "unreachable" else m1.address
    engine = "unix:///run/nothing-here.sock" if fault == "no engine" else m1.engine_url
    bad = (f'[machines.bad]\naddress = "{address}"\nssh = {{ key = "{lab.key}", '
           f'known_hosts = "{known}" }}\nengine = "{engine}"\n\n')
    p = fleet_project(tmp_path, lab, machines='["bad"]', snippet=bad)
    try:
        p.cli("up", "-d")
        p.cli("bake", "web")
        expected = {"host key": "host key CHANGED", "unreachable": "cannot be reached",
                    "no engine": "no container engine answers"}[fault]
        # The machine watch says why, naming the machine; a deploy refuses with a pointer to it.
        def detail() -> str:
            return next(r["detail"] for r in p.json("machines")  # type: ignore[union-attr]
                        if r["name"] == "bad")

        assert wait_until(lambda: machine_state(p, "bad") == "down", timeout=15)
        assert wait_until(lambda: expected in detail(), timeout=15), detail()
        assert "machine bad" in detail()
        result = p.cli("deploy", "web", check=False, timeout=300)
        said = result.stdout + result.stderr
        assert result.returncode != 0 and "Traceback" not in said
        assert "no machine can take a host of web (machines: bad down)" in said, said
        assert "hinotori machines" in said
        assert p.json("hosts") == []  # nothing half-started
    finally:
        teardown(p)
