"""Shipping an image to machines through the project's loopback registry and each machine's SSH
tunnel: the first ship moves the image, a second release moves only its new layer, both engines
end up with exactly the baked image id.

Needs root (the lab), podman, docker.io, docker-registry and busybox-static (.ci/run installs
them)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hinotori.lab.images import busybox_image, one_more_layer
from hinotori.lab.lab import Lab
from hinotori.providers.shipping import (
    LocalRegistry,
    has_image,
    machine_ref,
    pull,
    push,
    repository,
)
from hinotori.providers.tunnel import EngineTunnel, SshTarget, engine_client
from tests.support import require, up_lab

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lab = up_lab(tmp_path_factory, 2, {"m2"},
                 ("ip", "/usr/sbin/sshd", "podman", "dockerd", "docker-registry"))
    yield lab
    lab.down()


def test_a_second_release_ships_only_its_new_layer(lab: Lab, engine_url: str,
                                                   docker_client: Any, tmp_path: Path) -> None:
    registry = LocalRegistry(tmp_path / "registry")
    port = registry.ensure()
    tunnels = [EngineTunnel(SshTarget(m.name, m.address, key=lab.key,
                                      known_hosts=lab.known_hosts),
                            m.engine_socket, tmp_path, reverse_ports=(port,))
               for m in lab.machines]
    try:
        machines = {t.target.machine: engine_client(t) for t in tunnels}
        require(shutil.which("busybox") is not None, "busybox-static is not installed")
        v1 = busybox_image(docker_client)
        v2 = one_more_layer(docker_client, v1, "VERSION", "2\n")
        moved = {}
        repo = repository("shop", "web")
        for name, image in (("v1", v1), ("v2", v2)):
            push(docker_client, image, port, repo)
            start = registry.log_offset()
            for t in tunnels:
                machine = machines[t.target.machine]
                pull(machine, machine_ref(repo, image, t.remote_port(port)), image,
                     t.target.machine)
                assert has_image(machine, image)
            moved[name], _ = registry.blob_bytes_served(start)
        # The whole busybox went out once per machine; v2 is one file more.
        assert moved["v1"] > 2 * 500_000
        assert moved["v2"] * 50 < moved["v1"], moved
    finally:
        for t in tunnels:
            t.close()
        registry.stop()
