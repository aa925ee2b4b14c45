"""Burn it down safely: killed hosts are replaced by the self-healing loop, phoenix rotations
(on demand and by max_age) replace every host, and no client request fails."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hinotori.loadgen import BackgroundLoad
from tests.support import CliProject, make_project, teardown, wait_until

pytestmark = pytest.mark.integration


def test_chaos_kills_are_healed_and_nobody_notices(three: CliProject) -> None:
    p = three
    before = {h["id"] for h in p.serving()}
    load = BackgroundLoad(p.router, clients=30, rate=300)
    load.start()
    try:
        result = p.cli("chaos", "web", "--interval", "1s", "--duration", "6s", "--seed", "7",
                       "--json", check=False)
    finally:
        stats = load.stop()
    report = json.loads(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert report["kills"] >= 2 and report["not_recovered"] == 0
    assert report["recover_max_s"] < 10
    assert stats.failed == 0, stats.failures
    after = {h["id"] for h in p.serving()}
    victims = {v["host"] for v in report["victims"]}
    assert len(after) == 3 and not victims & after and before - after
    kills = p.json("audit", "--action", "chaos.kill")
    heals = p.json("audit", "--action", "service.healed")
    assert len(kills) == report["kills"] and heals  # type: ignore[arg-type]


def test_phoenix_rotates_every_host_without_a_failed_request(three: CliProject) -> None:
    p = three
    before = {h["id"] for h in p.serving()}
    load = BackgroundLoad(p.router, clients=30, rate=300)
    load.start()
    try:
        out = p.cli("phoenix", "web").stdout
    finally:
        stats = load.stop()
    assert "now serves v1" in out
    assert stats.failed == 0, stats.failures
    after = {h["id"] for h in p.serving()}
    assert len(after) == 3 and not before & after
    assert p.json("status")["services"][0]["current"] == 1  # type: ignore[index]


def test_max_age_rotates_hosts_by_itself(tmp_path: Path) -> None:
    p = make_project(tmp_path, replicas=2)
    spec = p.path / "hinotori.toml"
    spec.write_text(spec.read_text().replace('stop_grace = "10s"',
                                             'stop_grace = "10s"\nmax_age = "3s"'))
    try:
        p.cli("up", "-d")
        p.cli("bake", "web")
        p.cli("deploy", "web")
        first = {h["id"] for h in p.serving()}
        load = BackgroundLoad(p.router, clients=10, rate=100)
        load.start()
        try:
            assert wait_until(lambda: not first & {h["id"] for h in p.serving()}, timeout=30)
        finally:
            stats = load.stop()
        assert stats.failed == 0, stats.failures
        phoenix = [d for d in p.json("deployments") if d["kind"] == "phoenix"]  # type: ignore[union-attr]
        assert phoenix and phoenix[0]["state"] == "succeeded"
    finally:
        teardown(p)
