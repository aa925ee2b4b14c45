"""A stateful service keeps its volume across deploys, has one writer at a time, and is never
burned by chaos or phoenix."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest

from tests.support import make_project, teardown

pytestmark = pytest.mark.integration


def request(address: str, method: str = "GET", body: bytes | None = None) -> bytes:
    req = urllib.request.Request(f"http://{address}/notes", data=body, method=method)
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read()


def test_volume_data_survives_deploys_and_burning_is_refused(tmp_path: Path) -> None:
    p = make_project(tmp_path, replicas=1)
    spec = p.path / "hinotori.toml"
    spec.write_text(spec.read_text().replace(
        'stop_grace = "10s"', 'stop_grace = "10s"\nstateful = true\nvolumes = ["data"]'))
    try:
        p.cli("up", "-d")
        p.cli("bake", "web")
        p.cli("deploy", "web")
        request(p.router, "POST", b"written by v1")
        p.set_version("2")
        p.cli("bake", "web")
        out = p.cli("deploy", "web").stdout
        assert "now serves v2" in out
        assert request(p.router) == b"written by v1\n"
        request(p.router, "POST", b"written by v2")
        p.cli("rollback", "web")  # cold: the stateful v2 host was stopped, not kept warm
        assert request(p.router) == b"written by v1\nwritten by v2\n"
        assert len(p.json("hosts")) == 1  # type: ignore[arg-type]  never two writers
        chaos = p.cli("chaos", "web", "--duration", "1s", check=False)
        assert chaos.returncode == 1 and "stateful" in chaos.stderr
        phoenix = p.cli("phoenix", "web", check=False)
        assert phoenix.returncode == 1 and "stateful" in phoenix.stderr
    finally:
        teardown(p)


def test_stateful_needs_one_replica(tmp_path: Path) -> None:
    p = make_project(tmp_path, replicas=2)
    spec = p.path / "hinotori.toml"
    spec.write_text(spec.read_text().replace('stop_grace = "10s"',
                                             'stop_grace = "10s"\nstateful = true'))
    bad = p.cli("bake", "web", check=False)
    assert bad.returncode == 2 and "one writer per volume" in bad.stderr
