"""Canary deployments judged by router metrics, end to end under load (real CLI, controller,
router and hosts)."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from hinotori.loadgen import BackgroundLoad
from tests.support import CANARY_SPEC, CliProject, make_project, serve_v1, wait_until

pytestmark = pytest.mark.integration

@pytest.fixture
def canary_project(tmp_path: Path, request: pytest.FixtureRequest) -> CliProject:
    steps, pause, deadline = getattr(request, "param", ("[10, 50, 100]", "1s", "3s"))
    p = make_project(tmp_path, replicas=2)
    spec = p.path / "hinotori.toml"
    spec.write_text(spec.read_text() + CANARY_SPEC.format(steps=steps, pause=pause,
                                                     deadline=deadline))
    p.cli("up", "-d")
    p.cli("bake", "web")
    p.cli("deploy", "web")  # v1: nothing to compare with yet, so this one goes blue-green
    yield p
    from tests.support import teardown

    teardown(p)


def get(address: str, headers: dict[str, str] | None = None) -> tuple[str, dict[str, str]]:
    req = urllib.request.Request(f"http://{address}/", headers=headers or {})
    with urllib.request.urlopen(req, timeout=10) as r:
        r.read()
        return r.headers["X-Hello-Version"], dict(r.headers)


def test_failing_canary_rolls_back_at_its_first_step(canary_project: CliProject) -> None:
    p = canary_project
    load = BackgroundLoad(p.router, clients=20, rate=300, record_header="x-hello-version")
    load.start()
    try:
        time.sleep(0.5)
        started = time.monotonic()
        result = p.cli("deploy", "web", "--env", "HELLO_ERROR_RATE=0.5", "--env",
                       "HELLO_VERSION=2", check=False)
        during = time.monotonic() - started
        time.sleep(0.5)
    finally:
        stats = load.stop()
    assert result.returncode == 1
    assert "failed its canary analysis at 10%" in result.stderr
    assert "rolled back to stable" in result.stdout
    # Clients saw about weight x error rate of the traffic while the step ran, no more.
    expected = 0.10 * 0.5 * 300 * during
    assert 0 < stats.failed <= 3 * expected + 10, (stats.failed, expected)
    assert stats.by_header["2"] < stats.by_header["1"]
    assert all(h["release_name"] == "v1" for h in p.json("hosts"))  # type: ignore[union-attr]
    assert get(p.router)[0] == "1"
    dep = p.json("deployments")[-1]  # type: ignore[index]
    shown = p.cli("deployment", "show", str(dep["id"])).stdout
    assert "canary weight 10%" in shown and "fail" in shown


@pytest.mark.parametrize("canary_project", [("[20, 50, 100]", "1s", "5s")], indirect=True)
def test_healthy_canary_is_promoted_through_every_step(canary_project: CliProject) -> None:
    p = canary_project
    p.set_version("2")
    p.cli("bake", "web")
    load = BackgroundLoad(p.router, clients=20, rate=300, record_header="x-hello-version")
    load.start()
    try:
        out = p.cli("deploy", "web").stdout
        time.sleep(0.3)
    finally:
        stats = load.stop()
    assert stats.failed == 0, stats.failures
    assert "canary weight 20%" in out and "canary weight 50%" in out and "promoted v2" in out
    dep = p.json("deployments")[-1]  # type: ignore[index]
    assert dep["strategy"] == "canary" and dep["state"] == "succeeded"
    assert [s["outcome"] for s in dep["summary"]["steps"]] == ["pass", "pass"]
    assert get(p.router)[0] == "2"
    assert {h["release_name"] for h in p.serving()} == {"v2"}


@pytest.mark.parametrize("canary_project", [("[50, 100]", "500ms", "2s")], indirect=True)
def test_canary_without_traffic_is_not_promoted(canary_project: CliProject) -> None:
    p = canary_project
    p.set_version("2")
    p.cli("bake", "web")
    result = p.cli("deploy", "web", check=False)
    assert result.returncode == 1 and "inconclusive" in result.stderr
    assert get(p.router)[0] == "1"


@pytest.mark.parametrize("canary_project", [("[50, 100]", "60s", "120s")], indirect=True)
def test_override_header_stickiness_pause_and_abort(canary_project: CliProject) -> None:
    p = canary_project
    p.set_version("2")
    p.cli("bake", "web")
    deploying = subprocess.Popen([sys.executable, "-m", "hinotori", "deploy", "web", "--spec",
                                  str(p.path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
    try:
        assert wait_until(lambda: any(h["release_name"] == "v2" and h["state"] == "serving"
                                      for h in p.json("hosts")), timeout=30)
        p.cli("pause", "web")
        assert {get(p.router, {"X-Hinotori-Release": "canary"})[0] for _ in range(20)} == {"2"}
        assert {get(p.router, {"X-Hinotori-Release": "stable"})[0] for _ in range(20)} == {"1"}
        assert {get(p.router, {"X-Hinotori-Release": "v1"})[0] for _ in range(5)} == {"1"}
        # Sticky: the first answer sets a cookie; with it, a client keeps its release.
        version, headers = get(p.router)
        cookie = headers["Set-Cookie"].split(";")[0]
        assert cookie == f"hinotori-web=v{version}"
        assert {get(p.router, {"Cookie": cookie})[0] for _ in range(30)} == {version}
        seen = {get(p.router)[0] for _ in range(60)}
        assert seen == {"1", "2"}  # without a cookie, both sides get traffic at 50%
        p.cli("abort", "web")
        _, err = deploying.communicate(timeout=60)
    finally:
        if deploying.poll() is None:
            deploying.kill()
    assert deploying.returncode == 1 and "aborted by an operator" in err
    assert {get(p.router)[0] for _ in range(10)} == {"1"}
    assert p.cli("promote", "web", check=False).returncode == 1  # nothing running now


def test_custom_analysis_webhook_can_fail_a_healthy_looking_canary(tmp_path: Path) -> None:
    import http.server
    import json
    import threading

    asked: list[dict] = []

    class Judge(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            asked.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            body = json.dumps({"result": "fail", "reason": "business metric dropped"}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    judge = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Judge)
    threading.Thread(target=judge.serve_forever, daemon=True).start()
    p = make_project(tmp_path, replicas=1)
    spec = p.path / "hinotori.toml"
    spec.write_text(spec.read_text() + CANARY_SPEC.format(steps="[50, 100]", pause="1s",
                                                     deadline="5s")
                    + f'webhook = "http://127.0.0.1:{judge.server_address[1]}/judge"\n')
    try:
        serve_v1(p, bake="2")
        load = BackgroundLoad(p.router, clients=10, rate=200)
        load.start()
        try:
            result = p.cli("deploy", "web", check=False)
        finally:
            stats = load.stop()
        assert result.returncode == 1 and "business metric dropped" in result.stderr
        assert asked and asked[0]["release"] == "v2" and asked[0]["weight"] == 50
        assert stats.failed == 0 and get(p.router)[0] == "1"
    finally:
        from tests.support import teardown

        teardown(p)
        judge.shutdown()
