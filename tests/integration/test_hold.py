"""Held deployments (`hinotori deploy web --hold`) end to end through the real CLI, controller,
router workers (built-in and HAProxy) and process hosts, under keep-alive load.

A held v2 answers on the router's preview listener and, on the main listener, to
`X-Hinotori-Release: v2 | preview`, while the live traffic gets v1 only and fails nothing; then
`promote` switches with zero failed requests, `abort` burns v2, an expired hold burns it (an
event says so), a failing pre_switch hook burns it, and a controller killed during a hold is
restarted into "aborted, traffic on v1, held hosts gone".
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from hinotori.loadgen import BackgroundLoad
from tests.support import (
    CliProject,
    free_port,
    make_project,
    require,
    serve_v1,
    teardown,
    wait_until,
)

pytestmark = pytest.mark.integration


def held_project(tmp_path: Path, kind: str = "builtin", extra: str = "") -> CliProject:
    if kind == "haproxy":
        require(shutil.which("haproxy") is not None,
                "haproxy is not installed (apt-get install haproxy)")
    p = make_project(tmp_path, extra=extra)
    spec = p.path / "hinotori.toml"
    preview = f"127.0.0.1:{free_port()}"
    spec.write_text(spec.read_text().replace(
        "[router]\n", f'[router]\nkind = "{kind}"\npreview_listen = "{preview}"\n', 1))
    p.preview = preview  # type: ignore[attr-defined]
    return p


def version(address: str, **headers: str) -> str:
    req = urllib.request.Request(f"http://{address}/", headers=headers)
    with urllib.request.urlopen(req, timeout=10) as r:
        r.read()
        return r.headers["X-Hello-Version"]


def versions(address: str, n: int = 20, **headers: str) -> set[str]:
    return {version(address, **headers) for _ in range(n)}


def deployment(p: CliProject, number: int) -> dict:
    return p.json("deployment", "show", str(number))  # type: ignore[return-value]


def last_deployment(p: CliProject) -> dict:
    return p.json("deployments")[-1]  # type: ignore[index]


@pytest.fixture
def v2_baked(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[CliProject]:
    """v1 serving, v2 baked; the router kind is the test's parameter (default builtin)."""
    kind = getattr(request, "param", "builtin")
    p = held_project(tmp_path, kind)
    try:
        yield serve_v1(p, bake="2")
    finally:
        teardown(p)


def assert_held(p: CliProject, out: str, table: bool = True) -> dict:
    dep = last_deployment(p)
    assert dep["state"] == "held", dep
    assert "web v2 is held" in out and p.preview in out, out  # type: ignore[attr-defined]
    hold = dep["hold"]
    assert hold["release"] == "v2" and hold["preview"] == f"http://{p.preview}/"  # type: ignore[attr-defined]
    assert hold["header"] == "X-Hinotori-Release: v2"
    if table:
        assert "held" in p.cli("deployments").stdout
    return dep


@pytest.mark.parametrize("v2_baked", ["builtin", "haproxy"], indirect=True)
def test_a_held_release_previews_under_load_then_promote_drops_nothing(
        v2_baked: CliProject) -> None:
    p = v2_baked
    load = BackgroundLoad(p.router, clients=30, rate=300, record_header="x-hello-version")
    load.start()
    try:
        out = p.cli("deploy", "web", "--hold").stdout
        dep = assert_held(p, out)
        assert dep["hold"]["expires_at"] is None
        # The preview answers v2; live traffic v1; the header reaches v2 on the main listener.
        assert versions(p.preview) == {"2"}  # type: ignore[attr-defined]
        assert versions(p.router) == {"1"}
        assert versions(p.router, **{"X-Hinotori-Release": "v2"}) == {"2"}
        assert versions(p.router, **{"X-Hinotori-Release": "preview"}) == {"2"}
        assert versions(p.router, **{"X-Hinotori-Release": "stable"}) == {"1"}
        # Another deployment of a held service is refused; traffic is untouched.
        refused = p.cli("deploy", "web", "--release", "v1", check=False)
        assert refused.returncode == 1 and "held deployment" in refused.stderr
        during = load.stats()
        assert set(during.by_header) == {"1"} and during.failed == 0, during.failures
        out = p.cli("promote", "web").stdout  # returns once switched
        assert "now serves v2" in out
        assert versions(p.router) == {"2"}
        assert deployment(p, dep["id"])["state"] == "succeeded"
    finally:
        stats = load.stop()
    assert stats.failed == 0, stats.failures
    assert stats.by_header["1"] > 100 and stats.by_header["2"] > 0
    assert {h["release"] for h in p.serving()} == {2}
    assert "deploy.held" in p.cli("audit", "--action", "deploy.held").stdout


def test_abort_burns_the_held_release_and_live_traffic_never_moves(
        v2_baked: CliProject) -> None:
    p = v2_baked
    live = {h["id"] for h in p.serving()}
    load = BackgroundLoad(p.router, clients=20, rate=200, record_header="x-hello-version")
    load.start()
    try:
        out = p.cli("deploy", "web", "--hold", "10m").stdout
        dep = assert_held(p, out)
        assert dep["hold"]["expires_at"] is not None
        held = set(dep["hold"]["hosts"])
        assert versions(p.preview) == {"2"}  # type: ignore[attr-defined]
        out = p.cli("abort", "web").stdout  # returns once burned
        assert "aborted" in out
        # Nothing held: the preview listener answers what is live.
        assert versions(p.preview) == {"1"}  # type: ignore[attr-defined]
    finally:
        stats = load.stop()
    assert stats.failed == 0 and set(stats.by_header) == {"1"}, stats
    assert deployment(p, dep["id"])["state"] == "aborted"
    hosts = {h["id"]: h["state"] for h in p.json("hosts", "--all")}  # type: ignore[union-attr]
    assert all(hosts[h] == "destroyed" for h in held), hosts
    assert {h["id"] for h in p.serving()} == live
    assert p.cli("abort", "web", check=False).returncode == 1  # nothing held any more


def test_the_live_release_heals_while_another_is_held(v2_baked: CliProject) -> None:
    """A hold gives the service's lock back: a live host that dies meanwhile is replaced (by
    v1), and promote takes the lock again."""
    p = v2_baked
    dep = assert_held(p, p.cli("deploy", "web", "--hold").stdout, table=False)
    victim = p.serving()[0]
    os.killpg(victim["pid"], signal.SIGKILL)
    def replaced() -> bool:  # one `hosts` call per look
        serving = {h["id"] for h in p.serving()}
        return len(serving) == 2 and victim["id"] not in serving

    assert wait_until(replaced, timeout=60), p.json("hosts")
    assert {h["release"] for h in p.serving()} == {1}
    assert "service.healed" in p.cli("audit", "--action", "service.healed").stdout
    assert deployment(p, dep["id"])["state"] == "held"
    assert "now serves v2" in p.cli("promote", "web").stdout
    assert {h["release"] for h in p.serving()} == {2}


def test_a_hold_that_expires_is_aborted_and_says_so(v2_baked: CliProject) -> None:
    p = v2_baked
    out = p.cli("deploy", "web", "--hold", "8s").stdout
    dep = assert_held(p, out, table=False)
    assert "s left)" in out, out
    assert wait_until(lambda: deployment(p, dep["id"])["state"] == "aborted", timeout=30)
    assert "expired" in deployment(p, dep["id"])["error"]
    assert "deploy.hold-expired" in p.cli("audit", "--action", "deploy.hold-expired").stdout
    assert versions(p.router) == {"1"} and versions(p.preview) == {"1"}  # type: ignore[attr-defined]
    assert {h["release"] for h in p.serving()} == {1}


HOOK = """
[services.web.hooks]
pre_switch = ["{python}", "-c", '''
import os, sys, urllib.request
with urllib.request.urlopen(os.environ["HINOTORI_PREVIEW_URL"], timeout=10) as r:
    seen = r.headers["X-Hello-Version"]
open("seen.txt", "w").write(seen + " " + os.environ["HINOTORI_PREVIEW_RELEASE"])
sys.exit(0 if seen == os.environ.get("WANT", "3") else 1)
''']
"""


def test_a_failing_pre_switch_hook_burns_the_held_release(tmp_path: Path) -> None:
    p = held_project(tmp_path, extra=HOOK.replace("{python}", sys.executable))
    try:
        p.cli("up", "-d")
        p.cli("bake", "web")
        p.cli("deploy", "web")  # no --hold: pre_switch hooks do not run
        assert not (p.path / "seen.txt").exists()
        p.set_version("2")
        p.cli("bake", "web")
        result = p.cli("deploy", "web", "--hold", check=False)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "pre-switch hook failed" in result.stderr
        # The hook reached the held v2 through the preview listener.
        assert (p.path / "seen.txt").read_text() == "2 v2"
        dep = last_deployment(p)
        assert dep["state"] == "failed" and dep["hold"] is None
        assert versions(p.router) == {"1"} and versions(p.preview) == {"1"}  # type: ignore[attr-defined]
        assert {h["release"] for h in p.serving()} == {1}
        assert not [h for h in p.json("hosts") if h["release"] == 2]  # type: ignore[union-attr]
    finally:
        teardown(p)


def test_a_controller_killed_during_a_hold_restarts_aborted_with_traffic_on_v1(
        v2_baked: CliProject) -> None:
    p = v2_baked
    load = BackgroundLoad(p.router, clients=20, rate=200, record_header="x-hello-version")
    load.start()
    try:
        out = p.cli("deploy", "web", "--hold").stdout
        dep = assert_held(p, out)
        os.kill(p.controller_pid(), signal.SIGKILL)
        # The data plane goes on serving both: live v1, the preview v2.
        assert versions(p.router) == {"1"} and versions(p.preview) == {"2"}  # type: ignore[attr-defined]
        p.cli("up", "-d")
        after = deployment(p, dep["id"])
        assert after["state"] == "aborted" and "during the hold" in after["error"]
        assert versions(p.preview) == {"1"}  # type: ignore[attr-defined]
    finally:
        stats = load.stop()
    assert stats.failed == 0 and set(stats.by_header) == {"1"}, stats
    hosts = {h["id"]: h["state"] for h in p.json("hosts", "--all")}  # type: ignore[union-attr]
    assert all(hosts[h] == "destroyed" for h in dep["hold"]["hosts"]), hosts
    # The service is free again: a new hold works.
    assert "is held" in p.cli("deploy", "web", "--hold").stdout
    assert "now serves v2" in p.cli("promote", "web").stdout


def test_hold_needs_blue_green(v2_baked: CliProject) -> None:
    p = v2_baked
    before = last_deployment(p)
    for argv in (["--hold", "--strategy", "canary"], ["--strategy", "rolling", "--hold", "5m"]):
        result = p.cli("deploy", "web", *argv, check=False)
        assert result.returncode == 2 and "blue-green" in result.stderr, result.stderr
    assert last_deployment(p) == before  # nothing started
    assert versions(p.router) == {"1"}


def test_the_dashboard_shows_a_held_deployment(v2_baked: CliProject, browser,
                                               tmp_path: Path) -> None:
    """In headless Chromium (as tests/integration/test_dashboard.py): the held badge on the
    service, the preview address and expiry on the deployment; gone once promoted."""
    from playwright.sync_api import expect  # installed: the browser fixture requires it

    p = v2_baked
    p.cli("deploy", "web", "--hold", "1h")
    link = p.json("dashboard")["url"]  # type: ignore[index]
    page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(link)
    web = page.locator('[data-service="web"]')
    expect(web.locator(".badge.held")).to_contain_text("held v2", timeout=30_000)
    expect(web.locator(".current")).to_have_text("v1")
    held = page.locator('.deployment[data-state="held"]')
    expect(held.locator(".hold .preview")).to_have_text(f"http://{p.preview}/")  # type: ignore[attr-defined]
    expect(held.locator(".hold")).to_contain_text("X-Hinotori-Release: v2")
    expect(held.locator(".hold .expiry")).to_contain_text("left")
    expect(held.locator('[data-step="held"]')).to_be_visible()
    page.screenshot(path=str(tmp_path / "dashboard-held.png"), full_page=True)
    p.cli("promote", "web")
    expect(web.locator(".current")).to_have_text("v2", timeout=30_000)
    expect(web.locator(".badge.held")).to_have_count(0)
    expect(page.locator('.deployment[data-state="held"]')).to_have_count(0)
    assert errors == []
