"""Reaching a container engine (Docker or Podman) through the Docker Engine API.

One code path drives both: the docker SDK speaks the Engine API, and Podman serves the same API
from ``podman system service``. This module only finds and pings the engine, with errors that
say what to do; the container provider and the OS-image builder use the client it returns.

Where the engine is looked for, first answer wins:
  1. the URL the caller passes (``[engine] url`` in the spec),
  2. $DOCKER_HOST, then $CONTAINER_HOST,
  3. Podman's rootful socket, then Docker's.
When nothing answers and ``podman`` is installed, ``ensure_podman_service`` starts a private
``podman system service`` on a socket under the project's state directory, detached so that it
outlives the controller just as the hosts do.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

from hinotori.errors import EngineError as EngineError
from hinotori.processes import pid_alive
from hinotori.statefiles import open_private, private_dir, write_private

if TYPE_CHECKING:
    import docker

WELL_KNOWN = ("unix:///run/podman/podman.sock", "unix:///var/run/docker.sock")
PING_TIMEOUT = 5.0  # is anything there: answered at once when it is
# Every call after the ping: exporting an image, building, stopping a container with its grace
# period all take longer than a ping, much longer on a loaded machine.
CALL_TIMEOUT = 120
# Pinned rather than "auto": negotiating asks the engine for /version, which Podman answers in
# ~0.35 s (it gathers host facts), on every connect. 1.41 is Podman 4's API and well inside
# Docker's supported range (1.24 and up).
API_VERSION = "1.41"


def candidates(url: str | None = None) -> list[str]:
    found = [url] if url else []
    for var in ("DOCKER_HOST", "CONTAINER_HOST"):
        if os.environ.get(var):
            found.append(os.environ[var])
    return [*found, *WELL_KNOWN]


def _socket_path(url: str) -> Path | None:
    return Path(url.removeprefix("unix://")) if url.startswith("unix://") else None


def try_connect(url: str, *, timeout: float = PING_TIMEOUT) -> docker.DockerClient | None:
    """A pinged client for ``url``, or None when nothing answers there."""
    import docker  # imported here: the process provider and built-in router never need it

    path = _socket_path(url)
    if path is not None and not path.exists():
        return None
    try:
        client = docker.DockerClient(base_url=url, version=API_VERSION,
                                     timeout=int(max(timeout, 1)))
        client.ping()
    except Exception:  # the SDK raises requests', urllib3's and its own errors alike
        return None
    return client


def connect(url: str | None = None, *, state_dir: Path | None = None) -> docker.DockerClient:
    """The first engine that answers; with ``state_dir``, start a private Podman service there
    if none does. Raises EngineError saying where it looked and how to start one."""
    tried = candidates(url)
    for candidate in tried if url is None else tried[:1]:
        client = try_connect(candidate)
        if client is not None:
            client.api.timeout = CALL_TIMEOUT
            return client
    if url is None and state_dir is not None and shutil.which("podman"):
        return connect(ensure_podman_service(state_dir / "podman.sock"))
    where = ", ".join(tried if url is None else tried[:1])
    raise EngineError(
        f"no container engine answers (tried {where}). Start one, e.g. "
        "`podman system service --time=0 unix:///run/podman/podman.sock &`, "
        "or set [engine] url in hinotori.toml to the engine's API address")


def ensure_podman_service(sock: Path, *, timeout: float = 30.0) -> str:
    """Start ``podman system service`` on ``sock`` unless one already answers there; return
    its URL. The service is detached (own session) and never times out, like the hosts it runs.
    """
    url = f"unix://{sock}"
    if try_connect(url, timeout=2.0) is not None:
        return url
    podman = shutil.which("podman")
    if podman is None:
        raise EngineError("podman is not installed: install it (apt-get install podman) "
                          "or point [engine] url at a running Docker or Podman engine")
    private_dir(sock.parent)
    with contextlib.suppress(FileNotFoundError):
        sock.unlink()
    log = open_private(sock.with_suffix(".log"), "ab")  # handed to the child
    try:
        proc = subprocess.Popen([podman, "system", "service", "--time=0", url],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True)
    finally:
        log.close()
    write_private(sock.with_suffix(".pid"), f"{proc.pid}\n")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = sock.with_suffix(".log").read_text(errors="replace")[-2000:]
            raise EngineError(f"podman system service exited {proc.returncode}:\n{tail}")
        if try_connect(url, timeout=2.0) is not None:
            return url
        time.sleep(0.1)
    proc.kill()
    raise EngineError(f"podman system service did not answer on {sock} within {timeout:.0f}s")


def stop_podman_service(sock: Path, *, timeout: float = 30.0) -> None:
    """Stop the service ``ensure_podman_service`` started on ``sock`` (its pid file says which
    process); nothing to do if it is gone."""
    pidfile = sock.with_suffix(".pid")
    try:
        pid = int(pidfile.read_text())
    except (OSError, ValueError):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and pid_alive(pid):
            time.sleep(0.05)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
    pidfile.unlink(missing_ok=True)
