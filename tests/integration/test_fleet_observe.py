"""Logs and drift of container hosts on machines of a fleet, where nothing of a host is on this
machine: a lab of two machines (m1 Podman, m2 Docker) reached over SSH, one project deployed
once for the module (examples/hello, one host per machine).

- a host's printed lines reach `hinotori logs` through the engine's log API within seconds;
- a file written inside a remote container is drift (the engine's diff), and `drift --replace`
  replaces the hosts; the lines they printed just before are in the store once they are gone;
- both engines answer `since` as the feed needs it;
- the shipper's flush around a destroy, alone (no ship pass), ships a remote host's last lines,
  each once, also when a second shipper (a restarted controller) reads the host again.
Needs root, podman, docker.io, openssh-server, docker-registry and mmdebstrap.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hinotori.lab.lab import Lab
from hinotori.model import Host
from hinotori.observe.logs import LogQuery, LogStore, Shipper, search
from hinotori.observe.logs.sources import ProviderSources
from tests.support import (
    CONTAINER_SPEC,
    HELLO,
    CliProject,
    free_port,
    teardown,
    up_lab,
    wait_until,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lab = up_lab(tmp_path_factory, 2, {"m2"},
                 ("ip", "/usr/sbin/sshd", "podman", "dockerd", "docker-registry", "mmdebstrap"))
    yield lab
    lab.down()


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory, lab: Lab, engine_url: str
             ) -> Iterator[CliProject]:
    """examples/hello, one container host on each machine, serving v1."""
    path = tmp_path_factory.mktemp("fleetobs") / "proj"
    shutil.copytree(HELLO, path, ignore=shutil.ignore_patterns("__pycache__", ".hinotori",
                                                                "hinotori.toml"))
    (path / "VERSION").write_text("1\n")
    port = free_port()
    spec = CONTAINER_SPEC.format(name=f"fobs{uuid.uuid4().hex[:6]}", listen=f"127.0.0.1:{port}")
    spec = spec.replace('provider = "container"\n', 'provider = "container"\nmachines = '
                        '["m1", "m2"]\n')
    (path / "hinotori.toml").write_text(spec + "\n" + lab.snippet())
    p = CliProject(path)
    p.router = f"127.0.0.1:{port}"
    try:
        p.cli("up", "-d")
        p.cli("bake", "web")
        assert "now serves v1" in p.cli("deploy", "web", timeout=300).stdout
        yield p
    finally:
        teardown(p)


def hosts_by_machine(p: CliProject) -> dict[str, str]:
    """machine -> its serving host id."""
    return {h["machine"]: h["id"] for h in p.serving()}


def logged(p: CliProject, host: str, grep: str) -> list[str]:
    out = p.cli("logs", "--host", host, "--grep", grep, "--limit", "10000", "--json").stdout
    return [ln["line"] for ln in json.loads(out)]


def providers_of(p: CliProject) -> dict[str, Any]:
    from hinotori.controller.wiring import make_providers
    from hinotori.project import Project

    return make_providers(Project.load(p.path))


def store_host(p: CliProject, host_id: str) -> Host:
    from hinotori.project import Project

    return next(h for h in Project.load(p.path).store.hosts() if h.id == host_id)


async def print_inside(providers: dict[str, Any], host: Host, tag: str, n: int) -> None:
    """``n`` lines on the host's own output (its pid 1's stdout), as if the app printed them."""
    script = f'for i in $(seq 1 {n}); do echo "{tag} $i" > /proc/1/fd/1; done'
    result = await providers["container"].exec(host, ["sh", "-c", script])
    assert result.rc == 0, result


def test_a_remote_hosts_printed_lines_reach_hinotori_logs(deployed: CliProject) -> None:
    p = deployed
    hosts = hosts_by_machine(p)
    assert sorted(hosts) == ["m1", "m2"]
    tag = f"shipped-{uuid.uuid4().hex[:6]}"
    printed: dict[str, float] = {}
    deadline = time.monotonic() + 30
    while set(printed) != set(hosts.values()) and time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://{p.router}/print?n=50&tag={tag}", timeout=5) as r:
            printed.setdefault(r.headers["X-Hello-Host"], time.monotonic())
    assert set(printed) == set(hosts.values())
    arrived: dict[str, float] = {}
    central = LogStore(p.path / ".hinotori" / "logs.db")  # read here: a CLI call takes ~1 s

    def all_arrived() -> bool:
        for host in set(hosts.values()) - set(arrived):
            if len(search(central, LogQuery(host=host, grep=tag, limit=None))) >= 50:
                arrived[host] = time.monotonic()
        return len(arrived) == len(hosts)

    try:
        assert wait_until(all_arrived, timeout=15), arrived
    finally:
        central.close()
    for machine, host in hosts.items():
        lines = logged(p, host, tag)
        # Every request to this host printed 50 lines, each stored once.
        assert len(lines) % 50 == 0 and len(set(lines)) == 50, (machine, len(lines))
        print(f"{machine}: 50 lines in logs.db {arrived[host] - printed[host]:.2f} s after "
              "printing")


def test_drift_on_remote_hosts_is_found_and_replaced_with_their_last_lines_kept(
        deployed: CliProject) -> None:
    p = deployed
    hosts = hosts_by_machine(p)
    providers = providers_of(p)
    clean = p.cli("drift", "--json", check=False)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert sorted(r["host"] for r in json.loads(clean.stdout)) == sorted(hosts.values())
    try:
        for host in hosts.values():
            planted = asyncio.run(providers["container"].exec(
                store_host(p, host), ["sh", "-c", "echo x > /app/extra && rm /app/VERSION"]))
            assert planted.rc == 0, planted
        found = p.cli("drift", "--json", check=False)
        assert found.returncode == 1
        report = {r["host"]: r for r in json.loads(found.stdout)}
        for machine, host in hosts.items():  # Podman's diff and Docker's, the same report
            assert report[host]["drifted"], machine
            assert report[host]["added"] == ["app/extra"], (machine, report[host])
            assert report[host]["removed"] == ["app/VERSION"], (machine, report[host])
            assert report[host]["changed"] == [], (machine, report[host])
        for host in hosts.values():
            asyncio.run(print_inside(providers, store_host(p, host), "last-words", 40))
    finally:
        for provider in providers.values():
            provider.close()
    replaced = p.cli("drift", "--replace", check=False, timeout=300)
    assert replaced.returncode == 1 and "replaced web" in replaced.stdout, replaced.stdout
    assert not set(hosts.values()) & {h["id"] for h in p.json("hosts")}  # type: ignore[union-attr]
    for machine, host in hosts.items():  # gone, and what they printed last is kept
        assert sorted(logged(p, host, "last-words"),
                      key=lambda s: int(s.split()[1])) == [f"last-words {i}"
                                                           for i in range(1, 41)], machine
    assert p.cli("drift", check=False).returncode == 0


def test_the_engines_answer_since_a_time_as_the_feed_needs(deployed: CliProject) -> None:
    """The feed's contract on both engines: asked since a line's stamp, the answer is the log
    from some line on, holding every line so stamped or later (Podman 4 stamps whole seconds
    and filters by the exact time; Docker stamps nanoseconds)."""
    from hinotori.providers.container_logs import engine_lines

    def suffix_holding(got: list[tuple[int, str]], every: list[tuple[int, str]],
                       since: int) -> bool:
        return got == every[len(every) - len(got):] and \
            all(ln in got for ln in every if ln[0] >= since)

    providers = providers_of(p := deployed)
    try:
        for machine, host_id in hosts_by_machine(p).items():
            host = store_host(p, host_id)
            asyncio.run(print_inside(providers, host, "since", 200))
            client = providers["container"]._engine_of(host)
            started = time.monotonic()
            every = engine_lines(client, host.data["container"], 0)
            took = time.monotonic() - started
            assert len(every) >= 200
            assert [s for s, _ in every] == sorted(s for s, _ in every), machine
            for k in (len(every) // 3, len(every) - 7):
                for since in (every[k][0], every[k][0] + 1):
                    got = engine_lines(client, host.data["container"], since)
                    assert suffix_holding(got, every, since), (machine, since)
            print(f"{machine}: {len(every)} lines through the API in {took * 1000:.0f} ms, "
                  f"stamps like {every[-1][0]}")
    finally:
        for provider in providers.values():
            provider.close()


def test_the_flush_around_a_destroy_ships_a_remote_hosts_last_lines_once(
        deployed: CliProject, tmp_path: Path) -> None:
    p = deployed
    host = store_host(p, hosts_by_machine(p)["m1"])
    providers = providers_of(p)
    store = LogStore(tmp_path / "logs.db")
    shipper = Shipper(store, sources=ProviderSources(lambda: providers))
    again = Shipper(store, sources=ProviderSources(lambda: providers))  # a restarted one

    def mine() -> list[str]:
        return [ln.line for ln in search(store, LogQuery(host=host.id, grep="flush-",
                                                         limit=10000))]

    async def scenario() -> None:
        await print_inside(providers, host, "flush-a", 30)
        await shipper.ship([host])
        await shipper.ship([host])  # the same lines asked for again: none stored twice
        assert await again.ship([host]) == 0
        await print_inside(providers, host, "flush-b", 30)
        async with shipper.destroying(host):  # no pass from here on: the flush alone
            await providers["container"].destroy(host, grace=2)
        assert await again.ship([host]) == 0  # gone: nothing more, no error

    try:
        asyncio.run(scenario())
        assert sorted(mine()) == sorted([f"flush-a {i}" for i in range(1, 31)]
                                        + [f"flush-b {i}" for i in range(1, 31)])
        assert shipper.stats.errors == 0, shipper.stats.last_error
    finally:
        for provider in providers.values():
            provider.close()
        store.close()
