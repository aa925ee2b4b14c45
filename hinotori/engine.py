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
outlives the controller just as the hosts do. ``ensure_docker_service`` starts a private
``dockerd`` (own data root, bridge and socket) beside any system one: the tests run every
engine-dependent test on it as well as on Podman, and a lab machine can run one.
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
from hinotori.statefiles import open_private, private_dir, socket_dir, write_private

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
    _terminate(pid, timeout)
    pidfile.unlink(missing_ok=True)


# -- a private Docker Engine --------------------------------------------------------------------
# For tests and lab machines: Docker beside Podman on one machine, never touching a system one.
BRIDGE_PREFIX = "hinotori-d"  # + the third octet: at most 13 characters (IFNAMSIZ is 16)
BRIDGE_NET = "10.214.{}"  # each private dockerd's bridge takes one /24 of 10.214.0.0/16


def exec_root(root: Path) -> Path:
    """dockerd's exec root: containerd's sockets live there, so a short path when ``root`` is
    deep (a unix socket path has 108 bytes)."""
    return socket_dir(root / "exec", "containerd/containerd.sock.ttrpc", 100)


def ensure_docker_service(root: Path, *, timeout: float = 60.0) -> str:
    """Start a private ``dockerd`` with all its state under ``root`` unless one answers there;
    return its URL (``unix://<root>/docker.sock``).

    It has its own data root, exec root, empty config file and containerd namespace, so it never
    meets a system Docker, and sets up no iptables rules (``--iptables=false``,
    ``--ip-masq=false``): published ports reach containers through docker-proxy, and OS-image
    builds run their steps in the machine's network. Docker's default bridge ``docker0`` lives
    in the machine's network namespace, where a second private dockerd would fight over it, so
    each gets its own bridge: ``hinotori-d<N>`` with 10.214.N.1/24, claimed by creating it
    (creation fails when another dockerd holds that N). ``stop_docker_service`` removes it.
    """
    sock = root / "docker.sock"
    url = f"unix://{sock}"
    if try_connect(url, timeout=2.0) is not None:
        return url
    dockerd, ip = shutil.which("dockerd"), shutil.which("ip")
    if dockerd is None or ip is None:
        raise EngineError(f"{'dockerd' if dockerd is None else 'ip'} is not installed: install "
                          "it (apt-get install docker.io iproute2) or point [engine] url at a "
                          "running Docker or Podman engine")
    private_dir(root)
    with contextlib.suppress(FileNotFoundError):
        sock.unlink()
    bridge = _claim_bridge(ip)
    write_private(root / "bridge", f"{bridge}\n")
    write_private(root / "daemon.json", "{}\n")  # not /etc/docker/daemon.json
    namespace = f"hinotori-{bridge}"
    argv = [dockerd, "--config-file", str(root / "daemon.json"), "-H", url,
            "--data-root", str(root / "data"), "--exec-root", str(exec_root(root)),
            "--pidfile", str(root / "docker.pid"), "--storage-driver=overlay2",
            "--iptables=false", "--ip-masq=false", f"--bridge={bridge}",
            # A system containerd, if one runs, is shared: our own namespaces in it.
            "--containerd-namespace", namespace,
            "--containerd-plugins-namespace", f"{namespace}-plugins",
            "--shutdown-timeout=5"]
    log = open_private(root / "dockerd.log", "ab")  # handed to the child
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True)
    finally:
        log.close()
    write_private(root / "dockerd.pid", f"{proc.pid}\n")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (root / "dockerd.log").read_text(errors="replace")[-2000:]
            stop_docker_service(root)
            raise EngineError(f"dockerd exited {proc.returncode}:\n{tail}")
        if try_connect(url, timeout=2.0) is not None:
            return url
        time.sleep(0.1)
    stop_docker_service(root)
    raise EngineError(f"dockerd did not answer on {sock} within {timeout:.0f}s "
                      f"(its log: {root / 'dockerd.log'})")


def _claim_bridge(ip: str) -> str:
    """Create a bridge no other private dockerd has (``ip link add`` is the atomic claim),
    with its /24 address, up."""
    start = os.getpid() % 256
    for n in ((start + i) % 256 for i in range(256)):
        name = f"{BRIDGE_PREFIX}{n}"
        made = subprocess.run([ip, "link", "add", name, "type", "bridge"],
                              capture_output=True, text=True)
        if made.returncode != 0:
            if "exists" in made.stderr:
                continue
            raise EngineError(f"cannot create the bridge {name} for dockerd: "
                              f"{made.stderr.strip()}",
                              hint="a private dockerd needs root (CAP_NET_ADMIN)")
        for argv in (["addr", "add", f"{BRIDGE_NET.format(n)}.1/24", "dev", name],
                     ["link", "set", name, "up"]):
            done = subprocess.run([ip, *argv], capture_output=True, text=True)
            if done.returncode != 0:
                subprocess.run([ip, "link", "del", name], capture_output=True)
                raise EngineError(f"cannot set up the bridge {name}: {done.stderr.strip()}")
        return name
    raise EngineError(f"all 256 bridges {BRIDGE_PREFIX}0..255 exist",
                      hint=f"remove stale ones: `ip link del {BRIDGE_PREFIX}<N>`")


def stop_docker_service(root: Path, *, timeout: float = 30.0) -> None:
    """Stop the dockerd ``ensure_docker_service`` started under ``root`` (and the containerd it
    started, should dockerd have had to be killed), and remove its bridge."""
    for pidfile in (root / "dockerd.pid", exec_root(root) / "containerd" / "containerd.pid"):
        try:
            pid = int(pidfile.read_text())
        except (OSError, ValueError):
            continue
        _terminate(pid, timeout)
        pidfile.unlink(missing_ok=True)
    _unmount_under(root)
    if exec_root(root) != root / "exec":  # a short one under /tmp: it goes with the service
        _unmount_under(exec_root(root))
        shutil.rmtree(exec_root(root), ignore_errors=True)
    try:
        bridge = (root / "bridge").read_text().strip()
    except OSError:
        return
    ip = shutil.which("ip")
    if bridge.startswith(BRIDGE_PREFIX) and ip:
        subprocess.run([ip, "link", "del", bridge], capture_output=True)
    (root / "bridge").unlink(missing_ok=True)


def _terminate(pid: int, timeout: float) -> None:
    """SIGTERM, then SIGKILL once ``timeout`` has passed."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and pid_alive(pid):
            time.sleep(0.05)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def _unmount_under(root: Path) -> None:
    """Unmount what a stopped dockerd left mounted under ``root`` (its default network
    namespace, a killed one's layers), deepest first, so the directory can be removed."""
    umount = shutil.which("umount")
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return
    prefix = f"{root.resolve()}/"
    points = [m.split()[1] for m in mounts if len(m.split()) > 1]
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        if umount:
            subprocess.run([umount, "-l", point], capture_output=True)
