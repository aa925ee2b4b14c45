"""The immutable lifecycle end to end, through the real CLI, controller, router and hosts.

Each test pins an invariant of docs/DESIGN.md: no dropped request across deploys and rollbacks
(1), traffic only on hosts that passed health checks (2), a failed step leaves traffic where it
was and no leaked hosts (3), a killed controller finds the same truth (4), every change is an
event (7).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import urllib.request
from pathlib import Path

import pytest

from hinotori.loadgen import BackgroundLoad
from tests.support import CliProject, wait_until

pytestmark = pytest.mark.integration


def get(address: str, path: str = "/", timeout: float = 10) -> tuple[int, dict[str, str], str]:
    with urllib.request.urlopen(f"http://{address}{path}", timeout=timeout) as r:
        return r.status, dict(r.headers), r.read().decode()


def ever_served(project: CliProject) -> set[str]:
    events = project.json("audit", "--action", "host.serving", "--limit", "10000")
    return {e["subject"].split("/", 1)[1] for e in events}  # type: ignore[union-attr]


def test_deploy_rollback_rounds_under_load_drop_nothing(running: CliProject) -> None:
    p = running
    p.cli("deploy", "web")  # v1
    p.set_version("2")
    assert "new release v2" in p.cli("bake", "web").stdout
    load = BackgroundLoad(p.router, clients=50, rate=300, record_header="x-hello-host")
    load.start()
    try:
        for _ in range(10):
            out = p.cli("deploy", "web", "--release", "v2").stdout
            assert "now serves v2" in out
            out = p.cli("rollback", "web").stdout
            assert "now serves v1" in out and "instantly from warm hosts" in out
    finally:
        stats = load.stop()
    assert stats.total > 1000
    assert stats.failed == 0, stats.failures
    # Every response came from a host that had passed its checks and been switched in.
    assert set(stats.by_header) <= ever_served(p)
    status = p.json("status")["services"][0]  # type: ignore[index]
    assert (status["current"], status["previous"]) == (1, 2)
    deployments = p.json("audit", "--action", "deploy.succeeded", "--limit", "100")
    rollbacks = p.json("audit", "--action", "rollback.succeeded", "--limit", "100")
    assert len(deployments) == 11 and len(rollbacks) == 10  # type: ignore[arg-type]


def test_failing_health_check_is_refused_and_traffic_stays(running: CliProject) -> None:
    p = running
    p.cli("deploy", "web")
    spec = p.path / "hinotori.toml"  # the controller reads the spec afresh for each deploy
    spec.write_text(spec.read_text().replace('boot_timeout = "30s"', 'boot_timeout = "3s"'))
    before = {h["id"] for h in p.serving()}
    load = BackgroundLoad(p.router, clients=20, rate=200, record_header="x-hello-version")
    load.start()
    try:
        result = p.cli("deploy", "web", "--env", "HELLO_HEALTHY=0", check=False)
    finally:
        stats = load.stop()
    assert result.returncode == 1
    assert "failed its health check" in result.stderr and "HTTP 503" in result.stderr
    assert "last log lines" in result.stderr and "listening on" in result.stderr
    assert "Traceback" not in result.stderr
    assert stats.failed == 0 and set(stats.by_header) == {"1"}
    assert {h["id"] for h in p.serving()} == before
    hosts = p.json("hosts")
    assert all(h["release_name"] == "v1" for h in hosts)  # type: ignore[union-attr]  no leaked v2 hosts
    assert get(p.router)[1]["X-Hello-Version"] == "1"


def test_controller_sigkill_and_restart_loses_nothing(running: CliProject) -> None:
    p = running
    p.cli("deploy", "web")
    hosts_before = {(h["id"], h["pid"]) for h in p.serving()}
    router_pids = {f.read_text() for f in (p.path / ".hinotori" / "router").glob("*.pid")}
    slow: dict[str, object] = {}

    def slow_request() -> None:
        slow["result"] = get(p.router, "/sleep?ms=3000")

    load = BackgroundLoad(p.router, clients=20, rate=200)
    load.start()
    in_flight = threading.Thread(target=slow_request)
    in_flight.start()
    try:
        os.kill(p.controller_pid(), signal.SIGKILL)
        p.cli("up", "-d")
        in_flight.join(timeout=15)
        assert slow["result"][0] == 200  # type: ignore[index]
        assert {(h["id"], h["pid"]) for h in p.serving()} == hosts_before
        assert {f.read_text() for f in (p.path / ".hinotori" / "router").glob("*.pid")} == \
            router_pids
        # The restarted controller still deploys.
        p.set_version("2")
        p.cli("bake", "web")
        assert "now serves v2" in p.cli("deploy", "web").stdout
    finally:
        stats = load.stop()
    assert stats.failed == 0, stats.failures
    assert get(p.router)[1]["X-Hello-Version"] == "2"


def test_orphans_and_interrupted_deployments_are_swept_at_restart(running: CliProject) -> None:
    p = running
    p.cli("deploy", "web")
    # Kill the controller in the middle of a deployment whose hosts boot slowly.
    (p.path / "app.py").write_text("import time\ntime.sleep(30)\n")
    p.cli("bake", "web")
    proc = __import__("subprocess").Popen(
        [__import__("sys").executable, "-m", "hinotori", "deploy", "web", "--spec", str(p.path)],
        stdout=-1, stderr=-1)
    assert wait_until(lambda: any(h["release_name"] == "v2" for h in p.json("hosts")), timeout=20)
    os.kill(p.controller_pid(), signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode != 0
    p.cli("up", "-d")
    hosts = p.json("hosts")
    assert {h["release_name"] for h in hosts} == {"v1"}  # type: ignore[union-attr]
    deployments = p.json("audit", "--action", "deploy.failed")
    assert any("interrupted" in e["detail"].get("error", "") for e in deployments)  # type: ignore[union-attr]
    assert get(p.router)[1]["X-Hello-Version"] == "1"


def test_deploy_lock_refuses_then_waits(running: CliProject) -> None:
    p = running
    p.cli("deploy", "web")
    (p.path / "hinotori.toml").write_text(
        (p.path / "hinotori.toml").read_text().replace('boot_timeout = "30s"',
                                                       'boot_timeout = "4s"'))
    import subprocess
    import sys

    slow = subprocess.Popen([sys.executable, "-m", "hinotori", "deploy", "web", "--env",
                             "HELLO_HEALTHY=0", "--spec", str(p.path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert wait_until(lambda: any(s["locked_by"] for s in p.json("status")["services"]),
                      timeout=20)
    refused = p.cli("rollback", "web", check=False)
    assert refused.returncode == 1 and "locked by a deploy" in refused.stderr
    assert "--lock-wait" in refused.stderr
    waited = p.cli("deploy", "web", "--release", "v1", "--lock-wait", "30s", check=False)
    slow.communicate(timeout=60)
    assert slow.returncode == 1
    # It queued behind the failed deploy, then found v1 already serving.
    assert waited.returncode == 0 and "already serving" in waited.stdout


def test_bake_makes_releases_only_on_change_and_hosts_cannot_touch_the_image(
        running: CliProject) -> None:
    p = running
    again = p.json("bake", "web")[0]  # type: ignore[index]
    assert again["reused"] and not again["release_created"] and again["release"] == "v1"
    p.cli("deploy", "web")
    hosts = p.json("hosts")
    assert {"id", "release", "state", "address", "pid", "born_at", "root"} <= set(hosts[0])  # type: ignore[index]
    image = p.json("releases")[0]["image"]  # type: ignore[index]
    rootfs = p.path / ".hinotori" / "images" / image.replace(":", "-") / "rootfs"
    a, b = (Path(h["root"]) for h in hosts)  # type: ignore[union-attr]
    original = (rootfs / "app.py").read_bytes()
    target = a / "app.py"
    target.chmod(0o644)
    target.write_text("# changed inside host a\n")
    assert (rootfs / "app.py").read_bytes() == original
    assert (b / "app.py").read_bytes() == original
    # A config change in the spec is a new release at the next deploy, never an edit.
    (p.path / "hinotori.toml").write_text(
        (p.path / "hinotori.toml").read_text().replace("env = {}", 'env = { HELLO_VERSION = "9" }'))
    assert "new release v2" in p.cli("deploy", "web").stdout
    releases = p.json("releases")
    assert [r["release_name"] for r in releases] == ["v1", "v2"]  # type: ignore[union-attr]
    assert releases[0]["image"] == releases[1]["image"]  # type: ignore[index]
    assert get(p.router)[1]["X-Hello-Version"] == "9"


def test_cli_errors_are_clear_without_tracebacks(project: CliProject) -> None:
    spec = project.path / "hinotori.toml"
    spec.write_text(spec.read_text().replace('drain = "10s"', 'drain = "ten seconds"'))
    bad = project.cli("bake", "web", check=False)
    assert bad.returncode == 2
    assert "hinotori.toml:" in bad.stderr and "services.web.drain" in bad.stderr
    assert "invalid duration" in bad.stderr and "Traceback" not in bad.stderr
    spec.write_text(spec.read_text().replace('drain = "ten seconds"', 'drain = "10s"'))
    unbaked = project.cli("deploy", "web", check=False)
    assert unbaked.returncode == 1 and "hinotori bake web" in unbaked.stderr
    project.cli("bake", "web")
    no_ctl = project.cli("deploy", "web", check=False)
    assert no_ctl.returncode == 1 and "hinotori up -d" in no_ctl.stderr
    unknown = project.cli("bake", "nope", check=False)
    assert unknown.returncode == 1 and "services in the spec: web" in unknown.stderr
    assert json.loads(project.cli("status", "--json").stdout)["controller"] == "not running"
