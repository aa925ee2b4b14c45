"""Membership events: discovery files follow the serving hosts; on_join/on_leave hooks run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.support import make_project, teardown, wait_until

pytestmark = pytest.mark.integration

HOOK = ("import os; open('members.log', 'a').write(os.environ['HINOTORI_EVENT'] + ' ' + "
        "os.environ['HINOTORI_HOST_ID'] + ' ' + os.environ['HINOTORI_HOST_ADDRESS'] + '\\n')")


def test_discovery_files_and_member_hooks(tmp_path: Path) -> None:
    p = make_project(tmp_path, replicas=2)
    spec = p.path / "hinotori.toml"
    argv = json.dumps([sys.executable, "-c", HOOK])
    spec.write_text(spec.read_text() + f"\n[services.web.hooks]\non_join = {argv}\n"
                                       f"on_leave = {argv}\n")
    discovery = p.path / ".hinotori" / "discovery"
    log = p.path / "members.log"
    try:
        p.cli("up", "-d")
        p.cli("bake", "web")
        p.cli("deploy", "web")
        first = {h["id"]: h["address"] for h in p.serving()}
        data = json.loads((discovery / "web.json").read_text())
        assert data["release"] == "v1"
        assert {h["id"]: h["address"] for h in data["hosts"]} == first
        hosts_file = (discovery / "hosts").read_text()
        for host_id in first:
            assert f"{host_id}.web.hinotori web.hinotori" in hosts_file
        assert wait_until(lambda: log.exists() and len(log.read_text().splitlines()) == 2)
        p.set_version("2")
        p.cli("bake", "web")
        p.cli("deploy", "web")
        second = {h["id"] for h in p.serving()}
        assert wait_until(lambda: len(log.read_text().splitlines()) == 6)
        events = [line.split()[:2] for line in log.read_text().splitlines()]
        assert sorted(h for e, h in events if e == "join") == sorted([*first, *second])
        assert sorted(h for e, h in events if e == "leave") == sorted(first)
        data = json.loads((discovery / "web.json").read_text())
        assert data["release"] == "v2" and {h["id"] for h in data["hosts"]} == second
    finally:
        teardown(p)
