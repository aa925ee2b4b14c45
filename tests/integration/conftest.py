"""Fixtures for end-to-end tests: a throwaway project from examples/hello, the real `hinotori`
CLI in subprocesses, a real detached controller, router workers and process hosts on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HELLO = ROOT / "examples" / "hello"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Project:
    """A project directory plus helpers to drive it through the real CLI."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.router = ""

    def cli(self, *args: str, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "hinotori", *args, "--spec", str(self.path)]
        result = subprocess.run(argv,
                                capture_output=True, text=True, timeout=timeout,
                                env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"})
        if check and result.returncode != 0:
            raise AssertionError(f"hinotori {' '.join(args)} exited {result.returncode}\n"
                                 f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
        return result

    def json(self, *args: str) -> object:
        return json.loads(self.cli(*args, "--json").stdout)

    def set_version(self, version: str) -> None:
        (self.path / "VERSION").write_text(version + "\n")

    def controller_pid(self) -> int:
        return json.loads((self.path / ".hinotori" / "controller.json").read_text())["pid"]

    def serving(self) -> list[dict]:
        return [h for h in self.json("hosts") if h["state"] == "serving"]  # type: ignore[union-attr]


def make_project(tmp_path: Path, replicas: int = 2, extra: str = "") -> Project:
    path = tmp_path / "proj"
    shutil.copytree(HELLO, path, ignore=shutil.ignore_patterns("__pycache__", ".hinotori"))
    port = free_port()
    text = (path / "hinotori.toml").read_text()
    text = text.replace('listen = "127.0.0.1:8080"', f'listen = "127.0.0.1:{port}"')
    text = text.replace("replicas = 3", f"replicas = {replicas}")
    text = text.replace('command = ["python3", "app.py"]',
                        f'command = ["{sys.executable}", "app.py"]')
    (path / "hinotori.toml").write_text(text + extra)
    project = Project(path)
    project.router = f"127.0.0.1:{port}"
    return project


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    p = make_project(tmp_path)
    yield p
    _teardown(p)


@pytest.fixture
def running(project: Project) -> Project:
    """A project with its controller up and v1 baked."""
    project.cli("up", "-d")
    project.cli("bake", "web")
    return project


def _teardown(p: Project) -> None:
    state = p.path / ".hinotori"
    if not state.exists():
        return
    result = p.cli("down", check=False, timeout=120)
    if result.returncode != 0:  # leave nothing running whatever happened
        for pidfile in [*state.glob("router/*.pid")]:
            with contextlib.suppress(ValueError, ProcessLookupError):
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
    # Belt and braces: no host process of this project may outlive the test.
    for hostjson in state.glob("hosts/*/host.json"):
        pid = json.loads(hostjson.read_text()).get("pid")
        if pid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def require(ok: bool, message: str) -> None:
    """Skip with ``message`` when a real part is missing, except in CI (CI=true), where a test
    that silently does not run is a failure: integration tests must run there."""
    if ok:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI must run this test, not skip it; .ci/run installs it)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def engine_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A real Podman API service (the Docker Engine API) on a private socket, started by the
    test session itself. Exported as DOCKER_HOST so that `hinotori` subprocesses find it."""
    from hinotori.engine import EngineError, ensure_podman_service, stop_podman_service

    require(shutil.which("podman") is not None, "podman is not installed (apt-get install podman)")
    sock = tmp_path_factory.mktemp("podman") / "podman.sock"
    try:
        url = ensure_podman_service(sock)
    except EngineError as e:
        require(False, f"podman system service does not start: {e}")
    old = os.environ.get("DOCKER_HOST")
    os.environ["DOCKER_HOST"] = url
    yield url
    if old is None:
        os.environ.pop("DOCKER_HOST", None)
    else:
        os.environ["DOCKER_HOST"] = old
    stop_podman_service(sock)


@pytest.fixture(scope="session")
def docker_client(engine_url: str) -> Iterator[object]:
    """A docker SDK client of the session's Podman service, for tests that look inside it."""
    import docker

    client = docker.DockerClient(base_url=engine_url, timeout=120)
    yield client
    client.close()


# A project whose service runs in containers of a Debian OS image (app.py and VERSION copied
# from the project directory), for the end-to-end tests with container hosts.
CONTAINER_SPEC = """\
[project]
name = "{name}"

[router]
listen = "{listen}"

[services.web]
provider = "container"
replicas = 2
command = ["python3", "app.py"]
health = {{ path = "/healthz", status = 200, interval = "100ms", timeout = "2s", healthy = 2 }}
boot_timeout = "60s"
stop_grace = "10s"
keep_previous = "10m"

[services.web.image]
os = {{ suite = "bookworm", variant = "minbase", workdir = "/app" }}
steps = [
  {{ copy = "app.py", to = "app.py", mode = "0644" }},
  {{ copy = "VERSION", to = "VERSION", mode = "0644" }},
]

[[services.web.checks]]
process = "app.py"
running = true

[[services.web.checks]]
command = "python3 -c 'import os; print(os.environ[\\"HINOTORI_SERVICE\\"])'"
exit_status = 0
stdout = "web"
"""


# A canary strategy for the web service, judged quickly on error rate (5%) with a lenient p99
# ratio: fill in steps ("[10, 50, 100]"), pause and deadline.
CANARY_SPEC = """
[services.web.strategy]
kind = "canary"
steps = {steps}
pause = "{pause}"

[services.web.strategy.analysis]
interval = "300ms"
min_requests = 20
max_error_rate = 0.05
max_p99_ratio = 10.0
deadline = "{deadline}"
"""
