"""Membership events reach a real Serf cluster: two Serf agents on loopback; the controller
talks to agent A, and agent B's event handler receives hinotori's joins and leaves."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import free_port, make_project, teardown, wait_until

pytestmark = pytest.mark.integration


def require_serf() -> str:
    serf = shutil.which("serf")
    if serf is None:
        if os.environ.get("CI") == "true":
            pytest.fail("serf is not installed; .ci/run must apt-get install serf")
        pytest.skip("serf is not installed (apt-get install serf)")
    return serf


def test_member_events_reach_another_serf_agent(tmp_path: Path) -> None:
    serf = require_serf()
    seen = tmp_path / "seen.jsonl"
    handler = tmp_path / "handler.sh"
    handler.write_text(f"#!/bin/sh\ncat >> {seen}\necho >> {seen}\n")
    handler.chmod(0o755)
    bind_a, rpc_a, bind_b, rpc_b = (free_port() for _ in range(4))
    agents = [
        subprocess.Popen([serf, "agent", "-node=a", f"-bind=127.0.0.1:{bind_a}",
                          f"-rpc-addr=127.0.0.1:{rpc_a}"], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL),
        subprocess.Popen([serf, "agent", "-node=b", f"-bind=127.0.0.1:{bind_b}",
                          # -join exits when agent a is not listening yet; this retries
                          f"-rpc-addr=127.0.0.1:{rpc_b}", f"-retry-join=127.0.0.1:{bind_a}",
                          "-retry-interval=1s",
                          f"-event-handler=user:hinotori-member={handler}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    p = make_project(tmp_path, replicas=2)
    spec = p.path / "hinotori.toml"
    spec.write_text(spec.read_text().replace(
        "[project]", f'[membership]\nserf = "127.0.0.1:{rpc_a}"\n\n[project]'))
    try:
        def members() -> int:
            out = subprocess.run([serf, "members", f"-rpc-addr=127.0.0.1:{rpc_a}"],
                                 capture_output=True, text=True)
            return out.stdout.count("alive")
        assert wait_until(lambda: members() == 2, timeout=20)
        p.cli("up", "-d")
        p.cli("bake", "web")
        p.cli("deploy", "web")
        first = {h["id"] for h in p.serving()}
        p.set_version("2")
        p.cli("bake", "web")
        p.cli("deploy", "web")

        def events() -> list[dict]:
            if not seen.exists():
                return []
            return [json.loads(line) for line in seen.read_text().splitlines() if line.strip()]
        assert wait_until(lambda: len(events()) >= 6, timeout=20), events()
        joins = {e["host"] for e in events() if e["event"] == "join"}
        leaves = {e["host"] for e in events() if e["event"] == "leave"}
        assert first <= joins and leaves == first
        assert all(e["service"] == "web" for e in events())
    finally:
        teardown(p)
        for agent in agents:
            agent.terminate()
            agent.wait(10)
