"""Images between controllers, for real: `hinotori image export` in one project, `image import`
in another (through a file and through a pipe), and the imported image deployed there and
answering. File-tree images with process hosts; an OS image through a real engine (Podman and
Docker), gone from the engine before the import brings it back, then deployed with container
hosts."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hinotori.engine_storage import retrying
from tests.support import (
    HELLO,
    CliProject,
    container_teardown,
    ensure_debian_base,
    make_project,
    teardown,
    write_container_project,
)

pytestmark = pytest.mark.integration



def get(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/", timeout=10) as r:
        return r.read().decode()


@pytest.fixture
def two(tmp_path: Path) -> Iterator[tuple[CliProject, CliProject]]:
    a, b = make_project(tmp_path / "a"), make_project(tmp_path / "b")
    yield a, b
    teardown(a)
    teardown(b)


def test_export_import_deploy_between_two_projects(two, tmp_path: Path) -> None:
    a, b = two
    a.set_version("from-a")
    b.set_version("never-baked-in-b")
    digest = json.loads(a.cli("bake", "web", "--json").stdout)[0]["image"]
    archive = tmp_path / "web.tar.zst"
    a.cli("image", "export", "web@latest", "-o", str(archive))
    again = tmp_path / "again.tar.zst"
    a.cli("image", "export", digest, "-o", str(again))
    assert archive.read_bytes() == again.read_bytes()

    b.cli("up", "-d")
    out = json.loads(b.cli("image", "import", str(archive), "--service", "web",
                           "--json").stdout)
    assert (out["digest"], out["imported"], out["release"]) == (digest, True, "v1")
    assert out["checked"]["files"] >= 3
    releases = b.json("releases")
    assert [(r["image"], r["reason"]) for r in releases] == [  # type: ignore[index]
        (digest, f"image import from {archive}")]
    assert "now serves v1" in b.cli("deploy", "web").stdout
    assert get(b.router).startswith("hello from vfrom-a ")  # A's bake answers in B

    inspect = b.cli("image", "inspect", digest).stdout
    assert f"imported:    from {archive} at " in inspect
    assert f"digest:      {digest}" in inspect
    assert "labels:      project=hello service=web" in inspect  # provenance travelled
    assert "already stored here; nothing imported" in b.cli("image", "import",
                                                            str(archive)).stdout


def test_a_pipe_carries_an_image_and_a_tampered_file_is_refused(two, tmp_path: Path) -> None:
    a, b = two
    digest = json.loads(a.cli("bake", "web", "--json").stdout)[0]["image"]
    plain = tmp_path / "web.tar"
    a.cli("image", "export", digest, "-o", str(plain))
    # A changed byte in app.py (same size) is refused, naming the file, and leaves nothing.
    tampered = tmp_path / "tampered.tar"
    data = bytearray(plain.read_bytes())
    with tarfile.open(plain) as tar:
        member = tar.getmember("rootfs/app.py")
    data[member.offset_data + 10] ^= 0x20
    tampered.write_bytes(bytes(data))
    refused = b.cli("image", "import", str(tampered), check=False)
    assert refused.returncode == 1
    assert "rootfs/app.py: content sha256" in refused.stderr and "Traceback" not in refused.stderr
    assert b.json("images") == []
    assert list((b.path / ".hinotori" / "images" / ".tmp").iterdir()) == []

    export = subprocess.Popen([sys.executable, "-m", "hinotori", "image", "export", digest,
                               "-o", "-", "--compress", "gzip", "--spec", str(a.path)],
                              stdout=subprocess.PIPE)
    imported = subprocess.run([sys.executable, "-m", "hinotori", "image", "import", "-",
                               "--json", "--spec", str(b.path)], stdin=export.stdout,
                              capture_output=True, text=True, timeout=120)
    assert export.wait(timeout=60) == 0
    assert imported.returncode == 0, imported.stderr
    result = json.loads(imported.stdout)
    assert (result["digest"], result["imported"], result["from"]) == (digest, True, "stdin")


# -- an OS image through a real engine ------------------------------------------------------


@pytest.fixture
def os_projects(tmp_path: Path, docker_client) -> Iterator[list[CliProject]]:
    ensure_debian_base(docker_client)
    made: list[tuple[CliProject, str]] = []
    version = f"os-{uuid.uuid4().hex[:8]}"  # new to every layer cache
    app = (HELLO / "app.py").read_text()
    for side in ("a", "b"):
        name = f"imgio{side}{uuid.uuid4().hex[:6]}"
        made.append((write_container_project(tmp_path / side, name, app, version), name))
    yield [p for p, _ in made]
    for project, name in made:
        container_teardown(project, docker_client, name)


@pytest.mark.parametrize("engine_url", ["podman", "docker"], indirect=True)
def test_an_os_image_round_trip_through_the_engine(os_projects, docker_client,
                                                   tmp_path: Path) -> None:
    import docker.errors

    a, b = os_projects
    digest = json.loads(a.cli("bake", "web", "--json", timeout=600).stdout)[0]["image"]
    archive = tmp_path / "os.tar.zst"
    a.cli("image", "export", digest, "-o", str(archive), timeout=300)
    plain, again = tmp_path / "os.tar", tmp_path / "again.tar"
    a.cli("image", "export", digest, "-o", str(plain), timeout=300)
    a.cli("image", "export", digest, "-o", str(again), timeout=300)
    assert plain.read_bytes() == again.read_bytes()  # the engine's save, re-written the same
    again.unlink()
    # Gone from the engine: only the import can bring it back.
    for tag in retrying(lambda: docker_client.images.get(digest)).tags:
        retrying(lambda tag=tag: docker_client.images.remove(tag))
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(digest)

    # A changed byte in the last layer is refused before the engine sees anything.
    data = bytearray(plain.read_bytes())
    with tarfile.open(plain) as tar:
        layer = [m for m in tar.getmembers() if m.name.startswith("layers/")][-1]
    data[layer.offset_data + layer.size // 2] ^= 1
    plain.write_bytes(bytes(data))
    refused = b.cli("image", "import", str(plain), check=False, timeout=300)
    assert refused.returncode == 1 and "does not match its name" in refused.stderr
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(digest)

    b.cli("up", "-d")
    out = json.loads(b.cli("image", "import", str(archive), "--service", "web", "--json",
                           timeout=300).stdout)
    assert (out["digest"], out["imported"], out["release"]) == (digest, True, "v1")
    assert retrying(lambda: docker_client.images.get(digest)).id == digest  # the same id, back
    inspect = b.cli("image", "inspect", digest, timeout=300).stdout  # reads the engine's files
    assert f"imported:    from {archive} at " in inspect and "base:" in inspect
    assert "now serves v1" in b.cli("deploy", "web", timeout=300).stdout
    assert get(b.router).startswith(f"hello from v{(a.path / 'VERSION').read_text().strip()}")
