"""Fixtures for end-to-end tests: a throwaway project from examples/hello, the real `hinotori`
CLI in subprocesses, a real detached controller, router workers and process hosts on 127.0.0.1.
The helpers they use (and that tests import) live in tests/support.py.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import CliProject, make_project, require, serve_v1, teardown
from tests.support_backends import Backends

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium tries to reach Google's servers; nothing
# here may leave 127.0.0.1.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def backends() -> Iterator[Backends]:
    """Real HTTP servers on 127.0.0.1 for a router test module to route to."""
    b = Backends()
    yield b
    b.close()


@pytest.fixture
def browser() -> Iterator[object]:
    """A real headless Chromium (the Debian system browser) driven through Playwright."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require(False, "playwright is not installed (pip install -e '.[test]')")
    require(CHROMIUM.exists(), "chromium is not installed (apt-get install chromium)")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def project(tmp_path: Path) -> Iterator[CliProject]:
    p = make_project(tmp_path)
    yield p
    teardown(p)


@pytest.fixture
def three(tmp_path: Path) -> Iterator[CliProject]:
    """examples/hello with 3 replicas, deployed (v1) and serving."""
    p = make_project(tmp_path, replicas=3)
    yield serve_v1(p)
    teardown(p)


@pytest.fixture
def running(project: CliProject) -> CliProject:
    """A project with its controller up and v1 baked."""
    project.cli("up", "-d")
    project.cli("bake", "web")
    return project


@pytest.fixture(scope="session")
def podman_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Podman API service (the Docker Engine API) on a private socket, started by the
    test session itself."""
    from hinotori.engine import EngineError, ensure_podman_service, stop_podman_service

    require(shutil.which("podman") is not None, "podman is not installed (apt-get install podman)")
    sock = tmp_path_factory.mktemp("podman") / "podman.sock"
    try:
        url = ensure_podman_service(sock)
    except EngineError as e:
        require(False, f"podman system service does not start: {e}")
    yield url
    stop_podman_service(sock)


@pytest.fixture(scope="session")
def dockerd_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private Docker Engine (dockerd with its own data root, bridge and socket), started by
    the test session itself; its images and containers are removed with it."""
    from hinotori.engine import EngineError, ensure_docker_service, stop_docker_service

    require(shutil.which("dockerd") is not None,
            "dockerd is not installed (apt-get install docker.io)")
    root = tmp_path_factory.mktemp("dockerd")
    try:
        url = ensure_docker_service(root)
    except EngineError as e:
        require(False, f"dockerd does not start: {e}")
    yield url
    stop_docker_service(root)
    shutil.rmtree(root / "data", ignore_errors=True)  # unmounted by now: its images, GBs


@pytest.fixture(scope="session")
def engine_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The Engine API address of a real engine, exported as DOCKER_HOST so that `hinotori`
    subprocesses find it: Podman, unless a module runs its tests on both engines with
    ``pytest.mark.parametrize("engine_url", ["podman", "docker"], indirect=True)``."""
    kind = getattr(request, "param", "podman")
    assert kind in ("podman", "docker"), kind
    url = request.getfixturevalue("podman_url" if kind == "podman" else "dockerd_url")
    old = os.environ.get("DOCKER_HOST")
    os.environ["DOCKER_HOST"] = url
    yield url
    if old is None:
        os.environ.pop("DOCKER_HOST", None)
    else:
        os.environ["DOCKER_HOST"] = old


@pytest.fixture(scope="session")
def docker_client(engine_url: str) -> Iterator[object]:
    """A docker SDK client of the session's engine, for tests that look inside it."""
    import docker

    client = docker.DockerClient(base_url=engine_url, timeout=120)
    yield client
    client.close()


# A project whose service runs in containers of a Debian OS image (app.py and VERSION copied
# from the project directory), for the end-to-end tests with container hosts.
