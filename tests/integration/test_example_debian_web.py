"""examples/debian-web exactly as shipped (only its router port changed, and HAProxy switched
on as its comment says): baked as an OS image with its apt package and user, its package, user,
service and process checks gate the deploy, and it serves through HAProxy from containers.
"""

from __future__ import annotations

import shutil
import urllib.request
from pathlib import Path

import pytest

from tests.support import CliProject, free_port, require, teardown

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "debian-web"


def test_debian_web_example_deploys_behind_haproxy(tmp_path: Path, engine_url: str,
                                                   docker_client) -> None:
    require(shutil.which("mmdebstrap") is not None, "mmdebstrap is not installed")
    require(shutil.which("haproxy") is not None, "haproxy is not installed")
    path = tmp_path / "debian-web"
    shutil.copytree(EXAMPLE, path, ignore=shutil.ignore_patterns("__pycache__", ".hinotori"))
    spec = path / "hinotori.toml"
    listen = f"127.0.0.1:{free_port()}"
    text = spec.read_text()
    shipped = text
    text = text.replace('listen = "127.0.0.1:8080"', f'listen = "{listen}"')
    text = text.replace('# kind = "haproxy"', 'kind = "haproxy"  #')
    assert text.count(listen) == 1 and 'kind = "haproxy"  #' in text and text != shipped
    spec.write_text(text)
    project = CliProject(path)
    project.router = listen
    try:
        project.cli("up", "-d")
        project.cli("bake", "web", timeout=600)
        out = project.cli("deploy", "web", timeout=300).stdout
        assert "now serves v1" in out
        # Every host passed the example's checks before it took traffic (the deploy is gated).
        passed = project.json("audit", "--action", "host.ready", "--limit", "100")
        assert len(passed) == 2 and all("passed its checks" in str(e) for e in passed)  # type: ignore
        seen = set()
        for _ in range(20):
            with urllib.request.urlopen(f"http://{listen}/", timeout=10) as r:
                body = r.read().decode()
                assert body.startswith("debian-web v1")
                seen.add(r.headers["X-Hello-Host"])
        assert seen == {h["id"] for h in project.serving()}
        report = project.json("verify", "web")
        assert report["ok"] and report["failed"] == 0 and report["total"] >= 5  # type: ignore
    finally:
        teardown(project)
        for c in docker_client.containers.list(all=True,
                                               filters={"label": "hinotori.project=debian-web"}):
            c.remove(force=True, v=True)
