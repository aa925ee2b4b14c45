"""Maintenance mode through the real CLI and controller, on both data planes, under load:
`maintenance on` returns with the router already answering 503 (Retry-After, the message);
a deploy during maintenance goes on (hosts booted, health-checked, switched) and keeps it on;
a controller restart keeps it on (the router serves it throughout, the store remembers it);
`maintenance off` returns with the hosts answering. Every answer the load got is the
service's 200 or a proper 503 with the Retry-After asked for: nothing else failed.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from hinotori.loadgen import BackgroundLoad
from tests.support import CliProject, make_project, require, teardown, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(params=["builtin", "haproxy"])
def deployed(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CliProject]:
    if request.param == "haproxy":
        import shutil

        require(shutil.which("haproxy") is not None, "haproxy is not installed")
    p = make_project(tmp_path, replicas=2)
    spec = p.path / "hinotori.toml"
    spec.write_text(spec.read_text().replace("[router]\n", f'[router]\nkind = "{request.param}"\n',
                                             1))
    p.cli("up", "-d")
    p.cli("bake", "web")
    p.cli("deploy", "web")
    yield p
    teardown(p)


def fetch(p: CliProject, accept: str = "application/json") -> tuple[int, str | None, bytes]:
    request = urllib.request.Request(f"http://{p.router}/", headers={"Accept": accept})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, r.headers.get("Retry-After"), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Retry-After"), e.read()


def test_maintenance_on_through_a_deploy_and_a_restart_then_off(deployed: CliProject) -> None:
    p = deployed
    load = BackgroundLoad(p.router, clients=6, rate=300, record_header="retry-after")
    load.start()
    try:
        answer = p.json("maintenance", "on", "web", "--message", "Moving to a new database",
                        "--retry-after", "2m", "--reason", "db migration")
        assert answer["maintenance"] is True and answer["retry_after"] == 120  # type: ignore[index]
        status, retry, body = fetch(p)  # the CLI returned: the router already answers so
        assert (status, retry) == (503, "120")
        assert json.loads(body)["message"] == "Moving to a new database"
        status, retry, body = fetch(p, accept="text/html")
        assert status == 503 and b"Moving to a new database" in body and b"<h1>" in body

        shown = p.json("status")["services"][0]  # type: ignore[index]
        assert shown["maintenance"]["message"] == "Moving to a new database"
        assert "in maintenance" in p.cli("status").stdout

        # A deploy goes on behind the 503s: v2's hosts boot, pass their health checks, serve.
        p.set_version("2")
        p.cli("bake", "web")
        p.cli("deploy", "web")
        assert {h["release"] for h in p.serving()} == {2}
        assert fetch(p)[:2] == (503, "120")  # and maintenance stayed on

        # The controller restarts: the router kept answering 503; the new controller's first
        # table has it again (from the store), and so does `status`.
        p.stop_controller()
        assert fetch(p)[:2] == (503, "120")
        p.cli("up", "-d")
        assert fetch(p)[:2] == (503, "120")
        assert p.json("maintenance", "status")["web"]["retry_after"] == 120  # type: ignore[index]

        p.cli("maintenance", "off", "web")
        status, retry, body = fetch(p)
        assert (status, retry) == (200, None) and b"2" in body
        assert wait_until(lambda: load.stats().statuses[200] > 20, timeout=10)
    finally:
        stats = load.stop()
    assert stats.statuses[503] > 50 and stats.statuses[200] > 20, stats.statuses
    assert set(stats.statuses) == {200, 503}, stats.statuses
    assert stats.failed == stats.statuses[503], stats.failure_kinds  # no other failure
    assert stats.by_header == {"120": stats.statuses[503]}  # every 503 said when to retry

    events = p.json("audit", "web", "--action", "service.maintenance")
    assert [(e["action"], e["actor"]) for e in events] == [  # type: ignore[union-attr, index]
        ("service.maintenance-on", "token"), ("service.maintenance-off", "token")]
    assert "db migration" in events[0]["detail"]["why"]  # type: ignore[index]
    assert p.json("maintenance", "status") == {}
