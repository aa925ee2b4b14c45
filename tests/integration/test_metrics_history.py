"""Metrics that outlive hosts, end to end: the real CLI, a detached controller, router workers,
process hosts and the built-in load generator on 127.0.0.1; and a real Prometheus scraping the
controller's /metrics.

v1 serves a counted load, then v2 replaces it and v1's hosts are burned (keep_previous 1s):
v1's history is still there, with exactly the requests the load generator had answered,
through the API, through `hinotori metrics --json`, and from metrics.db alone once the
controller is down. A controller killed with SIGKILL while the router serves on neither loses
nor double-counts a request."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from hinotori.loadgen import BackgroundLoad
from tests.support import CliProject, free_port, make_project, require, teardown, wait_until

pytestmark = pytest.mark.integration

FAST = '\n[metrics]\ninterval = "1s"\n'


def fast_project(tmp_path: Path) -> CliProject:
    p = make_project(tmp_path, extra=FAST)
    spec = p.path / "hinotori.toml"
    spec.write_text(spec.read_text().replace('keep_previous = "10m"', 'keep_previous = "1s"'))
    return p


def api(p: CliProject, path: str) -> tuple[int, bytes]:
    info = json.loads((p.path / ".hinotori" / "controller.json").read_text())
    token = (p.path / ".hinotori" / "token").read_text().strip()
    req = urllib.request.Request(f"http://{info['address']}{path}",
                                 headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def load(p: CliProject, seconds: float) -> int:
    """Run a paced load for ``seconds``; every request must succeed; returns how many."""
    gen = BackgroundLoad(p.router, clients=4, rate=200)
    gen.start()
    time.sleep(seconds)
    stats = gen.stop()
    assert stats.failed == 0, stats.failures
    assert stats.total > 50
    return stats.total


def requests_by_release(history: dict) -> dict[int, int]:
    return {r["release"]: r["requests"] for r in history["releases"]}


@pytest.fixture
def fast(tmp_path: Path):  # type: ignore[no-untyped-def]
    p = fast_project(tmp_path)
    yield p
    teardown(p)


def test_history_of_a_release_outlives_its_hosts(fast: CliProject) -> None:
    p = fast
    p.cli("up", "-d")
    p.cli("bake", "web")
    p.cli("deploy", "web")
    sent_v1 = load(p, 2.0)
    p.set_version("2")
    p.cli("bake", "web")
    p.cli("deploy", "web")
    sent_v2 = load(p, 1.0)
    # keep_previous is 1s: the reaper burns v1's warm hosts.
    assert wait_until(lambda: not [h for h in p.json("hosts") if h["release_name"] == "v1"],
                      timeout=30, interval=0.5)
    gone = [h for h in p.json("hosts", "--all") if h["release_name"] == "v1"]
    assert gone and all(h["state"] == "destroyed" for h in gone)

    def history(query: str) -> dict:
        status, body = api(p, f"/v1/metrics/history?{query}")
        assert status == 200, body
        return json.loads(body)

    want = {1: sent_v1, 2: sent_v2}
    assert wait_until(lambda: requests_by_release(history("service=web&since=10m")) == want,
                      timeout=15, interval=0.5), history("service=web&since=10m")
    v1 = history("service=web&release=v1&since=10m&step=1s")
    assert sum(pt["requests"] for pt in v1["points"]) == sent_v1
    assert {pt["release"] for pt in v1["points"]} == {1}
    busy = [pt for pt in v1["points"] if pt["requests"]]
    assert busy and all(pt["p99_ms"] is not None and pt["error_rate"] == 0 for pt in busy)
    assert max(pt["hosts"] for pt in v1["points"]) == 2  # replicas while it served
    assert max(pt["memory_bytes"] for pt in v1["points"]) > 1 << 20
    assert api(p, "/v1/metrics/history?service=web&since=whenever")[0] == 400

    # The CLI reads the same history through the API ...
    assert requests_by_release(p.json("metrics", "web", "--since", "10m")) == want
    text = p.cli("metrics", "web", "--since", "10m").stdout
    for title in ("requests / s", "error rate", "p99 latency", "CPU", "memory", "v1", "v2"):
        assert title in text
    assert max(len(line) for line in text.splitlines()) <= 100
    # ... and the Prometheus counters are the history's totals: v1's survive its hosts.
    status, prom = api(p, "/metrics")
    assert status == 200
    assert (f'hinotori_requests_total{{code="2xx",release="v1",service="web"}} '
            f'{float(sent_v1)}').encode() in prom
    assert b'hinotori_memory_bytes{release="v2",service="web"}' in prom

    # With the controller gone, the CLI reads .hinotori/metrics.db directly.
    p.cli("down")
    assert not (p.path / ".hinotori" / "controller.json").exists()
    assert requests_by_release(p.json("metrics", "web", "--since", "10m")) == want
    assert requests_by_release(p.json("metrics", "web", "--release", "v1", "--since",
                                      "10m")) == {1: sent_v1}


def test_a_real_prometheus_scrapes_service_and_release_series(fast: CliProject,
                                                               tmp_path: Path) -> None:
    binary = shutil.which("prometheus")
    require(binary is not None, "prometheus is not installed (apt-get install prometheus)")
    p = fast
    p.cli("up", "-d")
    p.cli("bake", "web")
    p.cli("deploy", "web")
    for _ in range(25):
        with urllib.request.urlopen(f"http://{p.router}/", timeout=10) as r:
            r.read()
    controller = json.loads((p.path / ".hinotori" / "controller.json").read_text())["address"]
    port = free_port()
    config = tmp_path / "prometheus.yml"
    # /metrics needs the API token like every other call: Prometheus sends it as a bearer.
    config.write_text(f"""
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: hinotori
    metrics_path: /metrics
    authorization:
      type: Bearer
      credentials_file: {p.path / '.hinotori' / 'token'}
    static_configs:
      - targets: ["{controller}"]
""")
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([binary, f"--config.file={config}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT)

    def query(promql: str) -> list[dict]:
        url = (f"http://127.0.0.1:{port}/api/v1/query?"
               + urllib.parse.urlencode({"query": promql}))
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return json.loads(r.read())["data"]["result"]
        except OSError:
            return []

    try:
        series = 'hinotori_requests_total{service="web",release="v1",code="2xx"}'
        assert wait_until(lambda: [r["value"][1] for r in query(series)] == ["25"],
                          timeout=60, interval=0.5), \
            (query(series), query("up"), (tmp_path / "prometheus.log").read_text()[-2000:])
        (up,) = query('up{job="hinotori"}')
        assert up["value"][1] == "1"
        busy = 'hinotori_memory_bytes{service="web",release="v1"} > 0'
        assert wait_until(lambda: bool(query(busy)), timeout=30)
        assert "host" not in query(busy)[0]["metric"]
        labels = query(series)[0]["metric"]
        assert {k: labels[k] for k in ("service", "release", "code")} == \
            {"service": "web", "release": "v1", "code": "2xx"}
        assert not {"host", "host_id"} & set(labels)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_a_killed_controller_neither_loses_nor_double_counts(fast: CliProject) -> None:
    """The router keeps serving while no controller runs; the next controller goes on from
    the baseline saved with the last sample, so the counts stay exact."""
    p = fast
    p.cli("up", "-d")
    p.cli("bake", "web")
    p.cli("deploy", "web")
    before = load(p, 1.5)
    time.sleep(1.5)  # at least one sample stored the load above
    os.kill(p.controller_pid(), signal.SIGKILL)
    assert wait_until(lambda: not _alive_api(p), timeout=10)
    during = load(p, 1.5)  # no controller: nobody samples
    p.cli("up", "-d")
    assert wait_until(lambda: requests_by_release(json.loads(
        api(p, "/v1/metrics/history?service=web&since=10m")[1])) == {1: before + during},
        timeout=15, interval=0.5), api(p, "/v1/metrics/history?service=web&since=10m")


def _alive_api(p: CliProject) -> bool:
    try:
        return api(p, "/v1/status")[0] == 200
    except OSError:
        return False
