"""The controller API: token required; metrics per service and release, also for a release
whose hosts are all gone, in JSON and the Prometheus text format."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

from tests.support import CliProject

pytestmark = pytest.mark.integration


def call(p: CliProject, path: str, token: str | None) -> tuple[int, bytes]:
    info = json.loads((p.path / ".hinotori" / "controller.json").read_text())
    req = urllib.request.Request(f"http://{info['address']}{path}")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def hit(p: CliProject, n: int) -> None:
    for _ in range(n):
        with urllib.request.urlopen(f"http://{p.router}/", timeout=10) as r:
            r.read()


def test_token_is_required(running: CliProject) -> None:
    token = (running.path / ".hinotori" / "token").read_text().strip()
    assert call(running, "/v1/status", None)[0] == 401
    status, body = call(running, "/v1/status", token[:-1] + "x")
    assert status == 401 and b"wrong API token" in body
    assert call(running, "/metrics", None)[0] == 401
    assert call(running, "/v1/status", token)[0] == 200


def test_metrics_per_release_outlive_their_hosts(running: CliProject) -> None:
    p = running
    token = (p.path / ".hinotori" / "token").read_text().strip()
    p.cli("deploy", "web")
    hit(p, 30)
    p.set_version("2")
    p.cli("bake", "web")
    p.cli("deploy", "web")
    hit(p, 20)
    # v1's hosts are warm now; burn them by moving on to v3, so v1 has no host left at all.
    p.cli("deploy", "web", "--env", "HELLO_LATENCY_MS=1")
    assert not [h for h in p.json("hosts") if h["release_name"] == "v1"]  # type: ignore[union-attr]
    status, body = call(p, "/v1/metrics?service=web", token)
    assert status == 200
    by_release = {m["release"]: m for m in json.loads(body)}
    assert by_release["v1"]["requests"] == 30 and by_release["v1"]["statuses"]["2xx"] == 30
    assert by_release["v2"]["requests"] == 20 and by_release["v1"]["p99_ms"] is not None
    per_host = json.loads(call(p, "/v1/metrics?by=host", token)[1])
    assert sum(h["requests"] for h in per_host if h["release"] == "v1") == 30
    status, text = call(p, "/metrics", token)
    assert status == 200
    assert b'hinotori_requests_total{code="2xx",release="v1",service="web"} 30.0' in text
    assert b'hinotori_request_duration_seconds_count{release="v2",service="web"} 20.0' in text
    assert b"hinotori_hosts{" in text


def test_events_logs_and_releases_are_served(running: CliProject) -> None:
    p = running
    token = (p.path / ".hinotori" / "token").read_text().strip()
    p.cli("deploy", "web")

    def get(path: str) -> object:
        status, body = call(p, path, token)
        assert status == 200, body
        return json.loads(body)

    events = get("/v1/events?action=deploy.&since=10m")["events"]  # type: ignore[index]
    assert [e["action"] for e in events][-1] == "deploy.succeeded"
    assert all(e["action"].startswith("deploy.") for e in events)
    assert get("/v1/events?actor=nobody-at-all")["events"] == []  # type: ignore[index]
    assert call(p, "/v1/events?since=yesterday-ish", token)[0] == 400

    host = p.serving()[0]
    urllib.request.urlopen(f"http://{host['address']}/print?n=3&tag=api-probe", timeout=10)
    found: list[dict] = []
    for _ in range(100):  # shipped within a ship interval or two
        found = get("/v1/logs?service=web&release=v1&grep=api-probe")["lines"]  # type: ignore
        if len(found) == 3:
            break
        time.sleep(0.1)
    assert [ln["line"] for ln in found] == ["api-probe 0", "api-probe 1", "api-probe 2"]
    assert {ln["host"] for ln in found} == {host["id"]}
    after = get(f"/v1/logs?service=web&grep=api-probe&after={found[1]['id']}")
    assert [ln["line"] for ln in after["lines"]] == ["api-probe 2"]  # type: ignore[index]

    releases = get("/v1/releases?service=web")
    assert [(r["release_name"], r["role"]) for r in releases] == [("v1", "current")]  # type: ignore

    spec = get("/openapi.json")
    for path in ("/v1/events", "/v1/logs", "/v1/releases", "/v1/services/{service}/deploy"):
        assert path in spec["paths"]  # type: ignore[index]
    assert call(p, "/v1/logs", None)[0] == 401


def test_audit_filters_who_what_when_why(running: CliProject) -> None:
    p = running
    p.cli("deploy", "web")
    p.set_version("2")
    p.cli("bake", "web")
    p.cli("deploy", "web")
    p.cli("rollback", "web")
    every = p.json("audit", "--limit", "1000")
    assert {"id", "ts", "actor", "action", "subject", "why", "detail"} <= set(every[0])  # type: ignore
    rollbacks = p.json("audit", "web", "--action", "rollback.")
    assert rollbacks and all(e["action"].startswith("rollback.") for e in rollbacks)  # type: ignore
    mine = p.json("audit", "--actor", every[-1]["actor"], "--limit", "1000")  # type: ignore
    assert mine and all(e["actor"] == every[-1]["actor"] for e in mine)  # type: ignore
    assert p.json("audit", "--since", "1s", "--until", "1s") == []
    assert p.json("audit", "--until", "1h") == []  # the project is minutes old
    served = [e for e in p.json("audit", "--action", "host.serving", "--limit", "1000")]  # type: ignore
    host = served[0]["subject"].split("/")[-1]  # type: ignore[index]
    grepped = p.json("audit", "--grep", host, "--limit", "1000")
    assert grepped and all(host in json.dumps(e) for e in grepped)  # type: ignore[union-attr]
    text = p.cli("audit", "--action", "rollback.").stdout
    assert "rollback" in text and "who" in text
    bad = p.cli("audit", "--since", "soon", check=False)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr


def test_bake_and_images_through_the_api(project: CliProject) -> None:
    p = project
    p.cli("up", "-d")
    token = (p.path / ".hinotori" / "token").read_text().strip()
    info = json.loads((p.path / ".hinotori" / "controller.json").read_text())

    def post(path: str, body: dict) -> tuple[int, dict]:
        req = urllib.request.Request(f"http://{info['address']}{path}", method="POST",
                                     data=json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {token}",
                                              "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    status, first = post("/v1/services/web/bake", {})
    assert status == 200 and first["release"] == "v1" and first["release_created"]
    status, again = post("/v1/services/web/bake", {})
    assert again["image"] == first["image"] and not again["release_created"]
    p.set_version("2")
    status, second = post("/v1/services/web/bake", {"no_cache": True})
    assert second["release"] == "v2" and second["cache_hits"] == 0
    assert post("/v1/services/nope/bake", {})[0] == 404
    images = json.loads(call(p, "/v1/images", token)[1])
    assert {i["digest"]: i["releases"] for i in images} == {
        first["image"]: ["web@v1"], second["image"]: ["web@v2"]}
    assert p.json("images") == images  # the CLI and the API say the same
    assert post("/v1/services/web/bake", {})[0] == 200
    assert call(p, "/v1/images", None)[0] == 401
