"""The private Docker Engine the tests (and a lab machine) start with ensure_docker_service: two
side by side on one machine, each on a bridge of its own and publishing ports on 127.0.0.1
through docker-proxy (no iptables rules), and one stopped leaves no process, bridge or mount.
"""

from __future__ import annotations

import shutil
import urllib.request
from pathlib import Path

import pytest

from hinotori.engine import BRIDGE_PREFIX, ensure_docker_service, stop_docker_service
from hinotori.lab.images import busybox_image
from hinotori.processes import pid_alive
from tests.support import free_port, require, wait_until

pytestmark = pytest.mark.integration


def serve_one_file(url: str, text: str) -> tuple[object, int]:
    """A busybox httpd container on ``url``'s engine, published on 127.0.0.1; its port."""
    import docker

    client = docker.DockerClient(base_url=url, timeout=60)
    image = busybox_image(client, extra={"www/index.html": text.encode()})
    port = free_port()
    container = client.containers.run(image, ["httpd", "-f", "-p", "8000", "-h", "/www"],
                                      detach=True, ports={"8000/tcp": ("127.0.0.1", port)})
    return container, port


def fetch(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
            return r.read().decode()
    except OSError:
        return None


def test_two_private_dockerds_side_by_side(dockerd_url: str, tmp_path: Path) -> None:
    require(shutil.which("busybox") is not None, "busybox-static is not installed")
    first = Path(dockerd_url.removeprefix("unix://")).parent
    second = tmp_path / "d2"
    url = ensure_docker_service(second)
    pid = int((second / "dockerd.pid").read_text())
    try:
        assert ensure_docker_service(second) == url  # answers already: nothing more started
        assert int((second / "dockerd.pid").read_text()) == pid
        bridges = [(root / "bridge").read_text().strip() for root in (first, second)]
        assert bridges[0] != bridges[1] and all(b.startswith(BRIDGE_PREFIX) for b in bridges)
        assert all(Path(f"/sys/class/net/{b}").exists() for b in bridges)
        a, port_a = serve_one_file(dockerd_url, "from the first\n")
        _, port_b = serve_one_file(url, "from the second\n")
        try:
            assert wait_until(lambda: fetch(port_a) == "from the first\n", timeout=20)
            assert wait_until(lambda: fetch(port_b) == "from the second\n", timeout=20)
        finally:
            a.remove(force=True)  # type: ignore[attr-defined]
    finally:
        stop_docker_service(second)
    assert not pid_alive(pid)
    assert not Path(f"/sys/class/net/{bridges[1]}").exists()
    assert not any(f" {second.resolve()}/" in line
                   for line in Path("/proc/self/mounts").read_text().splitlines())
    assert fetch(port_b) is None
    assert Path(f"/sys/class/net/{bridges[0]}").exists()  # the other one's is untouched
