"""A reloaded spec, end to end (real CLI, controller, router and hosts): a running deployment
keeps the spec it started with while the next one uses the new one; changes to [logs] and
[metrics] are applied in the running controller and recorded."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from hinotori.controller.client import ControllerClient
from hinotori.project import Project
from tests.support import CANARY_SPEC, CliProject, make_project, teardown, wait_until

pytestmark = pytest.mark.integration

OTHER = """
[services.other]
replicas = 1
command = ["{python}", "app.py"]
path_prefix = "/other"
health = {{ path = "/healthz", status = 200, interval = "200ms", timeout = "2s", healthy = 2 }}
"""


def web_hosts(p: CliProject, service: str = "web") -> list[dict[str, Any]]:
    return [h for h in p.json("hosts") if h["service"] == service]  # type: ignore[union-attr]


def events(p: CliProject, action: str) -> list[dict[str, Any]]:
    client = ControllerClient(Project.load(p.path))
    try:
        return client.call("GET", "/v1/events", params={"action": action})["events"]
    finally:
        client.close()


def test_a_running_deployment_keeps_its_spec_and_the_next_one_takes_the_new(
        tmp_path: Path) -> None:
    p = make_project(tmp_path, replicas=2, extra=CANARY_SPEC.format(
        steps="[50, 100]", pause="600s", deadline="600s") + OTHER.format(python=sys.executable))
    spec = p.path / "hinotori.toml"
    try:
        p.cli("up", "-d")
        p.cli("bake")
        p.cli("deploy", "web")  # v1: blue-green, nothing to compare with yet
        canary = subprocess.Popen(
            [sys.executable, "-m", "hinotori", "deploy", "web", "--env", "HELLO_VERSION=2",
             "--spec", str(p.path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)
        # The canary waits at 50%: 2 stable + 2 canary hosts serve.
        assert wait_until(lambda: len([h for h in web_hosts(p) if h["state"] == "serving"])
                          == 4, timeout=60)
        # The spec changes under it: more replicas, no warm hosts kept, one-step canary; and
        # the other service gets two replicas.
        text = spec.read_text().replace("steps = [50, 100]", "steps = [100]")
        text = text.replace('keep_previous = "10m"', 'keep_previous = "0s"')
        text = text.replace("replicas = 2", "replicas = 3")
        spec.write_text(text.replace("replicas = 1", "replicas = 2"))
        p.cli("deploy", "other")  # reloads the spec: the other service runs the new one
        assert len([h for h in web_hosts(p, "other") if h["state"] == "serving"]) == 2
        p.cli("promote", "web")
        out, _ = canary.communicate(timeout=120)
        assert canary.returncode == 0, out
        # The running canary kept its spec: the stable v1 hosts stay warm (keep_previous 10m,
        # not 0s), its one step was judged. (Then the monitor may heal web up to 3 replicas.)
        hosts = web_hosts(p)
        v1 = [(h["release_name"], h["state"]) for h in hosts if h["release_name"] == "v1"]
        assert sorted(v1) == [("v1", "warm"), ("v1", "warm")]
        assert len([h for h in hosts if h["release_name"] == "v2" and h["state"] == "serving"]) >= 2
        first = p.json("deployments", "web")[-1]  # type: ignore[index]
        assert [s["weight"] for s in first["summary"]["steps"]] == [50]
        # The next deployment takes the spec as it is now: 3 hosts, straight to 100%, and
        # nothing kept warm.
        p.cli("deploy", "web", "--env", "HELLO_VERSION=3", "--lock-wait", "60s")
        hosts = web_hosts(p)
        assert sorted((h["release_name"], h["state"]) for h in hosts) == [("v3", "serving")] * 3
        assert p.json("deployments", "web")[-1]["summary"]["steps"] == []  # type: ignore[index]
    finally:
        teardown(p)


def test_logs_and_metrics_changes_apply_on_reload(tmp_path: Path) -> None:
    p = make_project(tmp_path, replicas=1)
    receiver = subprocess.Popen(
        [sys.executable, "-m", "hinotori.observe.logs.forward.receivers", "loki"],
        stdout=subprocess.PIPE, text=True)
    seen: list[str] = []
    assert receiver.stdout is not None
    port = receiver.stdout.readline().split()[1]
    lines = receiver.stdout
    threading.Thread(target=lambda: seen.extend(lines), daemon=True).start()
    try:
        p.cli("up", "-d")
        p.cli("bake", "web")
        p.cli("deploy", "web")
        client = ControllerClient(Project.load(p.path))
        history = {"service": "web", "since": "10m"}
        assert client.call("GET", "/v1/metrics/history", params=history)["resolution"] == "10s"
        spec = p.path / "hinotori.toml"
        spec.write_text(spec.read_text() + f"""
[logs]
retention = "2d"
ship_interval = "100ms"

[[logs.forward]]
kind = "loki"
address = "http://127.0.0.1:{port}"

[metrics]
interval = "2s"
""")
        # Any deployment reloads the spec, even one with nothing to do.
        assert "already serving" in p.cli("deploy", "web").stdout
        applied = {e["detail"]["table"]: e["detail"]["keys"]
                   for e in events(p, "spec.applied")}
        assert applied == {"logs": ["retention", "ship_interval", "forward"],
                           "metrics": ["interval"]}
        assert events(p, "spec.restart-needed") == []
        # The new forwarder runs: the host's lines reach the receiver.
        assert wait_until(lambda: any(line.split()[:1] == ["count"] and int(line.split()[1]) > 0
                                      for line in seen), timeout=30)
        # The recorder samples at the new interval (its history's raw resolution says so).
        assert client.call("GET", "/v1/metrics/history", params=history)["resolution"] == "2s"
        client.close()
    finally:
        teardown(p)
        receiver.kill()
        receiver.wait()
