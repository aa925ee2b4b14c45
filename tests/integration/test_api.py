"""The controller API: token required; metrics per service and release, also for a release
whose hosts are all gone, in JSON and the Prometheus text format."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from .conftest import Project

pytestmark = pytest.mark.integration


def call(p: Project, path: str, token: str | None) -> tuple[int, bytes]:
    info = json.loads((p.path / ".hinotori" / "controller.json").read_text())
    req = urllib.request.Request(f"http://{info['address']}{path}")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def hit(p: Project, n: int) -> None:
    for _ in range(n):
        with urllib.request.urlopen(f"http://{p.router}/", timeout=10) as r:
            r.read()


def test_token_is_required(running: Project) -> None:
    token = (running.path / ".hinotori" / "token").read_text().strip()
    assert call(running, "/v1/status", None)[0] == 401
    status, body = call(running, "/v1/status", token[:-1] + "x")
    assert status == 401 and b"wrong API token" in body
    assert call(running, "/metrics", None)[0] == 401
    assert call(running, "/v1/status", token)[0] == 200


def test_metrics_per_release_outlive_their_hosts(running: Project) -> None:
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
    assert not [h for h in p.json("hosts") if h["release"] == "v1"]  # type: ignore[union-attr]
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
