"""The container provider with real engines, Podman and Docker, through the Docker Engine API
(every test runs on both): boot to
healthy, exec with stdin, logs, usage, destroy and kill, adoption by a fresh provider object,
list, ports on 127.0.0.1 only, and the errors a user can cause (missing image, port taken,
an engine that does not answer) leaving no container behind.

The image is the Debian base the OS-image bake uses (bootstrapped once per machine and cached,
see test_osimage.py) with examples/debian-web/app.py added by the engine's build API.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import tarfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from hinotori.errors import ProviderError
from hinotori.health import wait_healthy
from hinotori.loadgen import BackgroundLoad
from hinotori.model import HealthCheck, Host, Release, ReleaseConfig
from hinotori.providers.base import BootRequest, Provider
from hinotori.providers.container import CONTAINER_PORT, ContainerProvider, container_name
from tests.support import (
    DEBIAN_APP,
    FAST_HEALTH,
    CliProject,
    container_teardown,
    ensure_debian_base,
    remove_containers,
    wait_until,
    write_container_project,
)

# Every test on both engines the Engine API has: Podman and Docker.
pytestmark = [pytest.mark.integration,
              pytest.mark.parametrize("engine_url", ["podman", "docker"], indirect=True)]

COMMAND = ("python3", "app.py")


@pytest.fixture(scope="session")
def app_image(docker_client) -> str:
    """Engine image id of Debian bookworm minbase + python3 with the example app in /app."""
    base = ensure_debian_base(docker_client)
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        dockerfile = f"FROM {base}\nWORKDIR /app\nCOPY app.py /app/app.py\n".encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
        tar.add(DEBIAN_APP, arcname="app.py")
    context.seek(0)
    image, _ = docker_client.images.build(fileobj=context, custom_context=True,
                                          tag="localhost/hinotori-test/container-app:latest",
                                          rm=True)
    return image.id


def release(image: str, command: tuple[str, ...] = COMMAND, number: int = 1,
            **env: str) -> Release:
    return Release("web", number, image, ReleaseConfig(command=command, env=env), time.time())


@pytest.fixture
def provider(engine_url: str, docker_client) -> Iterator[ContainerProvider]:
    p = ContainerProvider(f"ct{uuid.uuid4().hex[:8]}", url=engine_url)
    yield p
    remove_containers(docker_client, p.project)  # no container may outlive its test


def ours(docker_client, provider: ContainerProvider) -> list:
    return docker_client.containers.list(
        all=True, filters={"label": f"hinotori.project={provider.project}"})


async def boot(provider: ContainerProvider, tmp_path: Path, rel: Release, host_id: str,
               volumes: dict[str, Path] | None = None, **extra_env: str) -> Host:
    host = await provider.boot(BootRequest(host_id, rel, tmp_path, tmp_path / host_id,
                                           extra_env=extra_env, volumes=volumes or {}))

    async def alive() -> bool:
        return await provider.adopt(host)

    result = await wait_healthy(host.address or "", FAST_HEALTH, deadline=30, alive=alive)
    assert result.ok, (result, provider.logs(host))
    return host


async def get(address: str, path: str = "/") -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.get(f"http://{address}{path}")


def test_boot_healthy_exec_logs_usage_destroy(provider: ContainerProvider, app_image: str,
                                              tmp_path: Path, docker_client,
                                              request: pytest.FixtureRequest) -> None:
    engine = request.node.callspec.params["engine_url"]
    volume = tmp_path / "volumes" / "data"
    volume.mkdir(parents=True)
    (volume / "seed.txt").write_text("kept\n")

    async def scenario() -> None:
        assert isinstance(provider, Provider)
        rel = release(app_image, GREETING="hello")
        host = await boot(provider, tmp_path, rel, "web-a1", volumes={"data": volume})
        assert host.provider == "container" and host.release == 1
        assert host.address and host.address.startswith("127.0.0.1:")
        assert (await get(host.address, "/healthz")).text == "ok\n"
        assert "web-a1" in (await get(host.address)).text  # HINOTORI_HOST_ID reached the app

        container = docker_client.containers.get(host.data["container"])
        assert container.name == container_name(provider.project, "web-a1")
        assert container.labels["hinotori.service"] == "web"
        assert container.labels["hinotori.release"] == "1"
        assert container.labels["hinotori.host"] == "web-a1"

        # exec: stdin fed in, stdout and stderr apart, the return code, the booted env and cwd.
        code = ("import os,sys; d=sys.stdin.read(); print(len(d), os.getcwd(), "
                "os.environ['GREETING'], os.environ['PORT']); print('oops', file=sys.stderr); "
                "sys.exit(3)")
        res = await provider.exec(host, ["python3", "-c", code], stdin=b"x" * 200_000)
        assert res.rc == 3 and not res.succeeded
        assert res.stdout.split() == ["200000", "/app", "hello", str(CONTAINER_PORT)]
        assert res.stderr == "oops\n"
        # The volume is the same directory inside, at the same path, writable, and named in
        # HINOTORI_VOLUME_DATA for the app.
        res = await provider.exec(host, ["python3", "-c", "import os, pathlib; p=pathlib.Path("
                                         "os.environ['HINOTORI_VOLUME_DATA']); print(p.joinpath("
                                         "'seed.txt').read_text(), end=''); "
                                         "p.joinpath('new.txt').write_text('w')"])
        assert res.stdout == "kept\n", res
        assert (volume / "new.txt").read_text() == "w"
        with pytest.raises(ProviderError, match=r"did not finish within 0\.5s"):
            await provider.exec(host, ["sleep", "31"], timeout=0.5)
        await provider.exec(host, ["sleep", "0.1"])  # one we let finish
        procs = ("import pathlib; print([p.joinpath('cmdline').read_bytes() for p in "
                 "pathlib.Path('/proc').iterdir() if p.name.isdigit()])")
        running = (await provider.exec(host, ["python3", "-c", procs])).stdout
        assert "app.py" in running  # sees the container's processes
        assert "sleep\\x0031" not in running  # the timed-out command was killed

        assert any("GET /healthz" in line for line in provider.logs(host))
        assert len(provider.logs(host, tail=1)) == 1
        assert host.data["log"] and Path(host.data["log"]).is_file()  # for the log shipper
        # The engine's log file, decoded as the log shipper would: the app's lines, unframed.
        from hinotori.providers.container_logs import decode

        raw_lines = Path(host.data["log"]).read_text().splitlines()
        # Each engine its own framing: Docker's json-file, Podman's k8s-file (though both
        # report "json-file").
        assert raw_lines and all(raw.startswith("{") == (engine == "docker")
                                 for raw in raw_lines), raw_lines[:3]
        lines = [decode(raw) for raw in raw_lines]
        assert any(line.stream == "stdout" and line.complete and
                   line.text == f"debian-web vdev listening on port {CONTAINER_PORT}"
                   for line in lines), lines
        assert any(line.text.endswith('"GET /healthz HTTP/1.1" 200 -') for line in lines), lines

        for _ in range(50):  # some CPU, so cpu_seconds is above zero
            await get(host.address, "/healthz")
        used = await provider.usage(host)
        assert used is not None and used.cpu_seconds > 0 and used.memory_bytes > 1_000_000

        await provider.destroy(host, grace=5)
        assert ours(docker_client, provider) == []
        assert not await provider.adopt(host)
        assert await provider.usage(host) is None
        assert provider.logs(host) == []
        await provider.destroy(host)  # gone is not an error

    asyncio.run(scenario())


def test_kill_then_destroy(provider: ContainerProvider, app_image: str, tmp_path: Path,
                           docker_client) -> None:
    async def scenario() -> None:
        host = await boot(provider, tmp_path, release(app_image), "web-k1")
        await provider.kill(host)
        assert not await provider.adopt(host)
        [left] = ours(docker_client, provider)  # the engine's kill leaves it for destroy
        left.reload()
        assert left.status == "exited" and left.attrs["State"]["ExitCode"] == 137
        assert await provider.list() == []
        with pytest.raises(ProviderError, match="no running container"):
            await provider.exec(host, ["true"])
        await provider.destroy(host)
        assert ours(docker_client, provider) == []

    asyncio.run(scenario())


def test_destroy_stops_politely_first(provider: ContainerProvider, app_image: str,
                                      tmp_path: Path, docker_client) -> None:
    volume = tmp_path / "volumes" / "out"
    volume.mkdir(parents=True)
    # Answers health checks, and records the SIGTERM it gets before exiting.
    code = ("import signal, sys, pathlib, http.server as h\n"
            "def term(*_):\n"
            f"    pathlib.Path('{volume}/term').write_text('got SIGTERM'); sys.exit(0)\n"
            "signal.signal(signal.SIGTERM, term)\n"
            "h.HTTPServer(('0.0.0.0', 8000), h.SimpleHTTPRequestHandler).serve_forever()\n")

    async def scenario() -> None:
        rel = release(app_image, ("python3", "-c", code))
        host = await provider.boot(BootRequest("web-g1", rel, tmp_path, tmp_path / "web-g1",
                                               volumes={"out": volume}))
        check = HealthCheck(path="/", interval=0.05, healthy=1)
        assert (await wait_healthy(host.address or "", check, deadline=30)).ok
        await provider.destroy(host, grace=20)
        assert (volume / "term").read_text() == "got SIGTERM"
        assert ours(docker_client, provider) == []

    asyncio.run(scenario())


def test_adopt_list_after_a_fresh_provider(provider: ContainerProvider, app_image: str,
                                           tmp_path: Path, engine_url: str) -> None:
    async def scenario() -> None:
        a = await boot(provider, tmp_path, release(app_image), "web-l1")
        b = await boot(provider, tmp_path, release(app_image, number=2), "web-l2")
        # A restarted controller: a new provider object, knowing only what the store recorded.
        fresh = ContainerProvider(provider.project, url=engine_url)
        assert await fresh.adopt(a) and await fresh.adopt(b)
        listed = await fresh.list()
        assert [(h.id, h.release, h.address, h.data["container"]) for h in listed] == [
            (a.id, 1, a.address, a.data["container"]), (b.id, 2, b.address, b.data["container"])]
        # Same host id, another container (say a later one under that name): not the same host.
        impostor = Host(**{**a.to_dict(), "state": a.state,
                           "data": {**a.data, "container": b.data["container"]}})
        assert not await fresh.adopt(impostor)
        other = ContainerProvider(f"other{uuid.uuid4().hex[:6]}", url=engine_url)
        assert await other.list() == []  # another project's hosts are not ours
        assert not await other.adopt(a)
        await fresh.destroy(a, grace=5)
        assert [h.id for h in await fresh.list()] == [b.id]

    asyncio.run(scenario())


def test_port_published_on_loopback_only(provider: ContainerProvider, app_image: str,
                                         tmp_path: Path, docker_client) -> None:
    async def scenario() -> None:
        host = await boot(provider, tmp_path, release(app_image), "web-p1")
        ports = docker_client.api.inspect_container(host.data["container"])[
            "NetworkSettings"]["Ports"]
        assert ports == {f"{CONTAINER_PORT}/tcp": [{"HostIp": "127.0.0.1",
                                                    "HostPort": str(host.data["port"])}]}

    asyncio.run(scenario())


def test_missing_image_is_clear_and_leaves_nothing(provider: ContainerProvider, tmp_path: Path,
                                                    docker_client, engine_url: str) -> None:
    rel = release("sha256:" + "ab" * 32, number=3)

    async def scenario() -> None:
        with pytest.raises(ProviderError) as err:
            await provider.boot(BootRequest("web-m1", rel, tmp_path, tmp_path / "web-m1"))
        assert f"image sha256:{'ab' * 32} of web v3 is not in the engine" in err.value.message
        assert "hinotori bake web" in (err.value.hint or "")
        assert ours(docker_client, provider) == []

    asyncio.run(scenario())


def test_command_missing_in_image_leaves_nothing(provider: ContainerProvider, app_image: str,
                                                 tmp_path: Path, docker_client) -> None:
    async def scenario() -> None:
        with pytest.raises(ProviderError, match="cannot start host web-c1") as err:
            await provider.boot(BootRequest("web-c1", release(app_image, ("no-such-program",)),
                                            tmp_path, tmp_path / "web-c1"))
        assert "command" in (err.value.hint or "")
        assert ours(docker_client, provider) == []

    asyncio.run(scenario())


def test_port_taken_is_clear_and_leaves_nothing(provider: ContainerProvider, app_image: str,
                                                tmp_path: Path, docker_client) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    provider._free_port = lambda: port  # every attempt races with the program holding it

    async def scenario() -> None:
        with pytest.raises(ProviderError, match=f"port 127.0.0.1:{port} was taken"):
            await provider.boot(BootRequest("web-t1", release(app_image), tmp_path,
                                            tmp_path / "web-t1"))
        assert ours(docker_client, provider) == []

    try:
        asyncio.run(scenario())
    finally:
        taken.close()


def test_unreachable_engine_is_clear(tmp_path: Path, app_image: str) -> None:
    dead = tmp_path / "dead.sock"  # a socket file nothing serves
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(dead))
    listener.close()
    provider = ContainerProvider("nowhere", url=f"unix://{dead}")

    async def scenario() -> None:
        with pytest.raises(ProviderError) as err:
            await provider.boot(BootRequest("web-u1", release(app_image), tmp_path,
                                            tmp_path / "web-u1"))
        assert str(dead) in err.value.message and "no container engine answers" in \
            err.value.message
        assert "podman system service" in err.value.message or "podman" in (err.value.hint
                                                                            or "")
        assert "Traceback" not in str(err.value)

    asyncio.run(scenario())


# -- end to end: the real CLI, controller and router with container hosts -------------------



@pytest.fixture
def container_projects(tmp_path: Path, engine_url: str, app_image: str,
                       docker_client) -> Iterator[Callable[..., CliProject]]:
    """Makes projects whose service runs in containers; takes every one down afterwards and
    removes its containers and image tags."""
    made: list[tuple[CliProject, str]] = []

    def make(app: str | None = None, extra: str = "") -> CliProject:
        name = f"cte2e{uuid.uuid4().hex[:6]}"
        project = write_container_project(tmp_path / f"proj{len(made)}", name,
                                    app if app is not None else DEBIAN_APP.read_text(),
                                    f"1-{uuid.uuid4().hex[:8]}",  # new to every cache
                                    extra=extra)
        made.append((project, name))
        return project

    yield make
    for project, name in made:
        container_teardown(project, docker_client, name)


@pytest.fixture
def container_project(container_projects: Callable[..., CliProject]) -> CliProject:
    return container_projects()


def running_containers(docker_client, project_name: str) -> dict[str, str]:
    """host id -> container id, for the project's running containers."""
    return {c.labels["hinotori.host"]: c.id for c in docker_client.containers.list(
        filters={"label": f"hinotori.project={project_name}", "status": "running"})}


def test_deploy_rollback_restart_with_container_hosts(container_project: CliProject,
                                                      docker_client) -> None:
    p = container_project
    name = (p.path / "hinotori.toml").read_text().split('"')[1]
    p.cli("up", "-d")
    baked = json.loads(p.cli("bake", "web", "--json").stdout)[0]
    assert baked["release"] == "v1" and baked["image"].startswith("sha256:")
    # `verify` on a throwaway container host: the checks run inside it, and it is gone after.
    report = json.loads(p.cli("verify", "web", "--json", timeout=300).stdout)
    assert report["ok"] and report["failed"] == 0 and report["total"] >= 2, report
    assert report["host"].startswith("web-verify-")
    assert running_containers(docker_client, name) == {}
    assert "now serves v1" in p.cli("deploy", "web", timeout=300).stdout
    serving = p.serving()
    assert len(serving) == 2
    containers = running_containers(docker_client, name)
    assert set(containers) == {h["id"] for h in serving}  # the hosts are these containers
    for cid in containers.values():  # each one published on 127.0.0.1 only
        bindings = docker_client.api.inspect_container(cid)["NetworkSettings"]["Ports"]
        assert [b["HostIp"] for bs in bindings.values() for b in bs] == ["127.0.0.1"]
    with urllib.request.urlopen(f"http://{p.router}/", timeout=10) as r:
        assert r.read().decode().startswith("debian-web v1-")

    (p.path / "VERSION").write_text(f"2-{uuid.uuid4().hex[:8]}\n")
    assert json.loads(p.cli("bake", "web", "--json").stdout)[0]["release"] == "v2"
    load = BackgroundLoad(p.router, clients=20, rate=200, record_header="x-hello-host")
    load.start()
    try:
        assert "now serves v2" in p.cli("deploy", "web", timeout=300).stdout
        out = p.cli("rollback", "web").stdout
        assert "now serves v1" in out and "instantly from warm hosts" in out
        assert "now serves v2" in p.cli("deploy", "web", "--release", "v2", timeout=300).stdout
    finally:
        stats = load.stop()
    assert stats.total > 200
    assert stats.failed == 0, stats.failures
    # Every response came from a container host that had passed its checks and been switched in.
    events = p.json("audit", "--action", "host.serving", "--limit", "10000")
    assert set(stats.by_header) <= {e["subject"].split("/", 1)[1] for e in events}
    assert len(set(stats.by_header)) >= 4  # both releases' hosts answered

    # A controller killed with SIGKILL: the containers stay, the next one adopts them.
    before = running_containers(docker_client, name)
    serving_before = {(h["id"], h["release"]) for h in p.serving()}
    load = BackgroundLoad(p.router, clients=10, rate=100)
    load.start()
    try:
        pid = p.controller_pid()
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: not Path(f"/proc/{pid}").exists(), timeout=10)
        p.cli("up", "-d")
        assert {(h["id"], h["release"]) for h in p.serving()} == serving_before
        assert running_containers(docker_client, name) == before  # the same containers
        out = p.cli("rollback", "web").stdout  # the restarted controller still deploys
        assert "now serves v1" in out
    finally:
        stats = load.stop()
    assert stats.failed == 0, stats.failures
    with urllib.request.urlopen(f"http://{p.router}/", timeout=10) as r:
        assert r.read().decode().startswith("debian-web v1-")

    p.cli("down", timeout=180)
    assert running_containers(docker_client, name) == {}
    # Their output reached the central log store, unframed, flushed before each went.
    shipped = p.json("logs", "web", "--grep", "listening on port", "--limit", "1000")
    served = {e["subject"].split("/", 1)[1] for e in events}
    # Every host that served shipped its output (so did the throwaway `verify` host).
    assert {ln["host"] for ln in shipped if not ln["host"].startswith("web-verify-")} == served
    assert all(line["line"].startswith("debian-web v") and line["line"].endswith(
        f"listening on port {CONTAINER_PORT}") for line in shipped), shipped
    assert docker_client.containers.list(all=True,
                                         filters={"label": f"hinotori.project={name}"}) == []
