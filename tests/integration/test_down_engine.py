"""`hinotori down` also stops the private Podman service the controller started under
.hinotori/ when no engine answered (real podman, real CLI)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hinotori.engine import WELL_KNOWN, try_connect
from hinotori.processes import pid_alive
from hinotori.store import Store
from tests.support import CONTAINER_SPEC, CliProject, free_port, require, teardown

pytestmark = pytest.mark.integration


def test_down_stops_the_private_podman_service(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    require(shutil.which("podman") is not None, "podman is not installed")
    for var in ("DOCKER_HOST", "CONTAINER_HOST"):
        monkeypatch.delenv(var, raising=False)
    if any(try_connect(url, timeout=2.0) for url in WELL_KNOWN):
        pytest.skip("an engine answers on a well-known socket: no private service starts")
    p = CliProject(tmp_path / "proj")
    p.path.mkdir()
    (p.path / "app.py").write_text("")
    (p.path / "VERSION").write_text("1\n")
    p.router = f"127.0.0.1:{free_port()}"
    (p.path / "hinotori.toml").write_text(CONTAINER_SPEC.format(name="engine-down",
                                                                listen=p.router))
    pidfile = p.path / ".hinotori" / "podman.pid"
    try:
        p.cli("up", "-d")  # adoption lists the engine's containers: the engine starts
        pid = int(pidfile.read_text())
        assert pid_alive(pid)
        p.cli("down")
        assert not pid_alive(pid) and not pidfile.exists()
        stopped = Store(p.path / ".hinotori" / "state.db").events(action="engine.stopped")
        assert [e.detail["pid"] for e in stopped] == [pid]
    finally:
        teardown(p)
