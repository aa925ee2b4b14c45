"""Crash-safe deployments: the controller is SIGKILLed at every step boundary of blue-green and
canary deployments (HINOTORI_FAULT, see hinotori/faults.py), restarted, and must find a
consistent state every time: traffic only on live, healthy hosts of known releases, the router
serving what the store says, the deployment rolled back (failed), and no leaked hosts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.support import CliProject, make_project, teardown, wait_until

pytestmark = pytest.mark.integration

BLUE_GREEN_POINTS = ["host.ready", "switch.before-apply", "switch.after-apply",
                     "bluegreen.switched", "bluegreen.recorded", "retire.drained",
                     "bluegreen.retired"]
CANARY_POINTS = ["host.ready", "canary.step", "canary.judged", "canary.promoted"]
CANARY = """
[services.web.strategy]
kind = "canary"
steps = [50, 100]
pause = "200ms"

[services.web.strategy.analysis]
interval = "100ms"
inconclusive = "pass"
deadline = "200ms"
"""


def up(p: CliProject, fault: str | None) -> None:
    env = {k: v for k, v in os.environ.items() if k != "HINOTORI_FAULT"}
    if fault:
        env["HINOTORI_FAULT"] = fault
    subprocess.run([sys.executable, "-m", "hinotori", "up", "-d", "--spec", str(p.path)],
                   env=env, check=True, capture_output=True, timeout=60)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False


def get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as r:
        r.read()
        return r.status, r.headers.get("X-Hello-Host", "")


def assert_consistent(p: CliProject, point: str) -> None:
    state = p.path / ".hinotori"
    hosts = p.json("hosts")
    serving = {h["id"]: h for h in hosts if h["state"] == "serving"}  # type: ignore[union-attr]
    known = {r["release"] for r in p.json("releases")}  # type: ignore[union-attr]
    assert serving, point
    for h in serving.values():
        assert h["release"] in known, point
        assert get(f"http://{h['address']}/healthz")[0] == 200, (point, h)
    live_ids = {h["id"] for h in hosts}  # type: ignore[union-attr]
    for hostjson in state.glob("hosts/*/host.json"):  # no process the store does not know
        h = json.loads(hostjson.read_text())
        if h.get("pid") and alive(h["pid"]) and h["state"] != "destroyed":
            assert h["id"] in live_ids, (point, h["id"])
    # The router serves exactly the store's serving hosts (the table file trails by 50 ms).
    def table_matches() -> bool:
        table = json.loads((state / "router" / "router-table.json").read_text())
        routed = {b["host_id"] for r in table["routes"] for b in r["backends"]}
        return routed == set(serving)
    assert wait_until(table_matches, timeout=3), point
    answered = {get(f"http://{p.router}/")[1] for _ in range(10)}
    assert answered <= set(serving), point
    deployments = p.json("deployments")
    assert all(d["state"] != "running" for d in deployments), point  # type: ignore[union-attr]


def crash_at_every_point(p: CliProject, points: list[str]) -> None:
    for i, point in enumerate(points):
        up(p, point)
        pid = p.controller_pid()
        result = p.cli("deploy", "web", "--env", f"ROUND={i}", check=False, timeout=60)
        assert wait_until(lambda pid=pid: not alive(pid), timeout=20), point
        assert result.returncode != 0, point  # the deploy lost its controller mid-way
        up(p, None)
        assert_consistent(p, point)
        p.stop_controller()  # stop the controller only: hosts stay


@pytest.mark.parametrize("strategy", ["blue-green", "canary"])
def test_controller_killed_at_every_step_boundary(tmp_path: Path, strategy: str) -> None:
    p = make_project(tmp_path, replicas=2, extra=CANARY if strategy == "canary" else "")
    try:
        up(p, None)
        p.cli("bake", "web")
        p.cli("deploy", "web")
        p.stop_controller()
        crash_at_every_point(p, BLUE_GREEN_POINTS if strategy == "blue-green"
                             else CANARY_POINTS)
        up(p, None)
    finally:
        teardown(p)
