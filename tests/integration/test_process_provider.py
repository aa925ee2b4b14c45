"""The process provider with real processes: boot, private views, drain on destroy, adoption
across a dead controller, and the errors a user can cause."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from hinotori.errors import ProviderError
from hinotori.health import wait_healthy
from hinotori.model import HealthCheck, Host, HostState, Release, ReleaseConfig
from hinotori.providers.base import BootRequest, Provider
from hinotori.providers.process import ProcessProvider

pytestmark = pytest.mark.integration

HELLO = Path(__file__).resolve().parents[2] / "examples" / "hello"
FAST = HealthCheck(interval=0.05, healthy=1)


def make_image(tmp_path: Path) -> Path:
    """examples/hello as a read-only tree, the way the image store keeps images."""
    image = tmp_path / "image"
    shutil.copytree(HELLO, image, ignore=shutil.ignore_patterns("__pycache__", ".hinotori"))
    for p in sorted(image.rglob("*"), reverse=True):
        p.chmod(0o555 if p.is_dir() else 0o444)
    image.chmod(0o555)
    return image


def release(command: tuple[str, ...] = (sys.executable, "app.py"), **env: str) -> Release:
    return Release("web", 1, "sha256:" + "0" * 64, ReleaseConfig(command=command, env=env),
                   time.time())


@pytest.fixture
def image(tmp_path: Path) -> Path:
    return make_image(tmp_path)


@pytest.fixture
def provider(tmp_path: Path) -> Iterator[ProcessProvider]:
    p = ProcessProvider(tmp_path / "hosts")
    yield p
    for hostjson in p.hosts_root.glob("*/host.json"):  # no host may outlive its test
        pid = json.loads(hostjson.read_text()).get("pid")
        with contextlib.suppress(ProcessLookupError, PermissionError, TypeError):
            os.killpg(pid, signal.SIGKILL)


async def boot(provider: ProcessProvider, image: Path, host_id: str, rel: Release | None = None,
               **extra_env: str) -> Host:
    req = BootRequest(host_id, rel or release(), image, provider.hosts_root / host_id,
                      extra_env=extra_env)
    host = await provider.boot(req)

    async def alive() -> bool:
        return await provider.adopt(host)

    result = await wait_healthy(host.address or "", FAST, deadline=15, alive=alive)
    assert result.ok, (result, provider.logs(host))
    return host


async def get(address: str, path: str = "/") -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.get(f"http://{address}{path}")


def test_provider_satisfies_the_protocol(tmp_path: Path) -> None:
    assert isinstance(ProcessProvider(tmp_path), Provider)


def test_boot_serves_its_version_with_the_release_env(provider: ProcessProvider,
                                                      image: Path) -> None:
    async def main() -> None:
        host = await boot(provider, image, "h1", release(HELLO_VERSION="7"))
        assert host.state == HostState.BOOTING and host.provider == "process"
        assert host.root == str(provider.hosts_root / "h1" / "root")
        assert host.address == f"127.0.0.1:{host.data['port']}" and host.pid
        r = await get(host.address or "")
        assert r.status_code == 200
        assert r.text == "hello from v7 (h1)\n"
        assert r.headers["x-hello-host"] == "h1"
        assert (provider.hosts_root / "h1" / "scratch").is_dir()
        assert [h.id for h in await provider.list()] == ["h1"]
        await provider.destroy(host)

    asyncio.run(main())


def test_extra_env_wins_over_release_env(provider: ProcessProvider, image: Path) -> None:
    async def main() -> None:
        host = await boot(provider, image, "h1", release(HELLO_VERSION="7"), HELLO_VERSION="8")
        assert (await get(host.address or "")).headers["x-hello-version"] == "8"
        await provider.destroy(host)

    asyncio.run(main())


def test_view_is_a_private_copy(provider: ProcessProvider, image: Path) -> None:
    async def main() -> None:
        a, b = await asyncio.gather(boot(provider, image, "a"), boot(provider, image, "b"))
        view_a, view_b = Path(a.root or ""), Path(b.root or "")
        assert oct((view_a / "app.py").stat().st_mode)[-3:] == "444"  # modes preserved
        assert (view_a / "app.py").stat().st_ino != (image / "app.py").stat().st_ino
        # Play root inside host a: change a file in place and add one.
        view_a.chmod(0o755)
        (view_a / "app.py").chmod(0o644)
        with open(view_a / "app.py", "a") as f:
            f.write("# tampered\n")
        (view_a / "planted").write_text("x")
        for other in (image, view_b):
            assert "tampered" not in (other / "app.py").read_text()
            assert not (other / "planted").exists()
        await asyncio.gather(provider.destroy(a), provider.destroy(b))

    asyncio.run(main())


def test_destroy_drains_in_flight_requests_and_keeps_the_log(provider: ProcessProvider,
                                                             image: Path) -> None:
    async def main() -> None:
        host = await boot(provider, image, "h1")
        state_dir = provider.hosts_root / "h1"
        slow = asyncio.create_task(get(host.address or "", "/sleep?ms=800"))
        await asyncio.sleep(0.2)
        await provider.destroy(host, grace=5)
        assert (await slow).status_code == 200  # SIGTERM honoured: the request finished
        assert not await provider.adopt(host)
        assert not (state_dir / "root").exists() and not (state_dir / "scratch").exists()
        log = provider.logs(host)
        assert log[0].startswith("hello v1 listening") and "stopped (drained)" in log[-1]
        assert provider.logs(host, tail=1) == log[-1:]
        assert json.loads((state_dir / "host.json").read_text())["state"] == "destroyed"
        assert await provider.list() == []
        await provider.destroy(host)  # already gone: not an error

    asyncio.run(main())


def test_destroy_kills_a_host_that_ignores_sigterm(provider: ProcessProvider,
                                                   image: Path) -> None:
    code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('stubborn', flush=True); time.sleep(60)")
    rel = release((sys.executable, "-c", code))

    async def main() -> None:
        host = await provider.boot(BootRequest("h1", rel, image, provider.hosts_root / "h1"))
        await asyncio.sleep(0.3)
        assert await provider.adopt(host)
        started = time.monotonic()
        await provider.destroy(host, grace=0.3)
        assert time.monotonic() - started < 5
        assert not await provider.adopt(host)
        assert provider.logs(host) == ["stubborn"]

    asyncio.run(main())


def test_adopt_checks_pid_and_start_time(provider: ProcessProvider, image: Path) -> None:
    async def main() -> None:
        host = await boot(provider, image, "h1")
        assert await provider.adopt(host)
        wrong_ticks = replace(host, data={**host.data, "start_ticks": 1})
        assert not await provider.adopt(wrong_ticks)  # a reused pid is another process
        gone = subprocess.Popen(["true"])
        gone.wait()
        assert not await provider.adopt(replace(host, pid=gone.pid))
        assert not await provider.adopt(replace(host, pid=None))
        os.killpg(host.pid or 0, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while await provider.adopt(host) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert not await provider.adopt(host)  # dead (a zombie counts as dead)
        # ... and reaped by the provider rather than left a zombie (the leader shows Z while
        # its other threads still exit, so give the kernel a moment).
        deadline = time.monotonic() + 5
        while Path(f"/proc/{host.pid}").exists() and time.monotonic() < deadline:
            assert not await provider.adopt(host)
            await asyncio.sleep(0.02)
        assert not Path(f"/proc/{host.pid}").exists()
        await provider.destroy(host)

    asyncio.run(main())


BOOTER = """
import asyncio, json, sys, time
from pathlib import Path
from hinotori.model import Release, ReleaseConfig
from hinotori.providers.base import BootRequest
from hinotori.providers.process import ProcessProvider

async def main():
    p = ProcessProvider(Path(sys.argv[2]))
    rel = Release("web", 1, "sha256:x", ReleaseConfig(command=(sys.executable, "app.py")), 0.0)
    host = await p.boot(BootRequest("orphan", rel, Path(sys.argv[1]), Path(sys.argv[2]) / "orphan"))
    print(json.dumps(host.to_dict()), flush=True)
    time.sleep(60)

asyncio.run(main())
"""


def test_host_outlives_a_killed_controller_and_is_adopted(provider: ProcessProvider,
                                                          image: Path) -> None:
    booter = subprocess.Popen([sys.executable, "-c", BOOTER, str(image), str(provider.hosts_root)],
                              stdout=subprocess.PIPE, text=True)
    try:
        line = booter.stdout.readline() if booter.stdout else ""
    finally:
        booter.kill()  # SIGKILL: the "controller" gets no chance to clean up
        booter.wait()
    recorded = json.loads(line)

    async def main() -> None:
        fresh = ProcessProvider(provider.hosts_root)
        found = await fresh.list()
        assert [h.id for h in found] == ["orphan"] and found[0].pid == recorded["pid"]
        host = found[0]
        assert await fresh.adopt(host)
        assert (await wait_healthy(host.address or "", FAST, deadline=15)).ok
        assert (await get(host.address or "")).headers["x-hello-host"] == "orphan"
        await fresh.destroy(host, grace=5)
        assert not await fresh.adopt(host)
        assert await fresh.list() == []

    asyncio.run(main())


def test_bad_command_is_a_provider_error_and_leaves_nothing(provider: ProcessProvider,
                                                            image: Path) -> None:
    async def main() -> None:
        for command in (("/nonexistent/hello",), ("./VERSION",)):  # missing, not executable
            req = BootRequest("bad", release(command), image, provider.hosts_root / "bad")
            with pytest.raises(ProviderError) as caught:
                await provider.boot(req)
            assert command[0] in str(caught.value) and caught.value.hint
            assert not (provider.hosts_root / "bad").exists()

    asyncio.run(main())


def test_missing_image_is_a_provider_error(provider: ProcessProvider, tmp_path: Path) -> None:
    req = BootRequest("h1", release(), tmp_path / "no-such-image", provider.hosts_root / "h1")
    with pytest.raises(ProviderError, match="cannot copy image"):
        asyncio.run(provider.boot(req))
    assert not (provider.hosts_root / "h1").exists()
