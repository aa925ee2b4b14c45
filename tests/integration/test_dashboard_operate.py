"""Actions from the dashboard, in a real headless Chromium against a real controller: a tab
signed in with `hinotori dashboard --operate` rolls a release back and puts a service in
maintenance by clicking and confirming, recorded in the audit log under its session; a
read-only tab has no buttons and its forged POST is refused (403); a stolen operating session
used from another origin, or without its CSRF token, changes nothing.
"""

from __future__ import annotations

import http.server
import json
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import CliProject, fetch, make_project, serve_v1, teardown

pytestmark = pytest.mark.integration

VIEWPORT = {"width": 1280, "height": 900}


@pytest.fixture
def two_releases(tmp_path: Path) -> Iterator[CliProject]:
    """v1 then v2 deployed: v2 serves, v1 is warm (a rollback is possible)."""
    p = serve_v1(make_project(tmp_path, replicas=2), bake="2")
    p.cli("deploy", "web")
    yield p
    teardown(p)


def open_page(browser, url: str):  # type: ignore[no-untyped-def]
    page = browser.new_context(viewport=VIEWPORT).new_page()
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    # Refused fetches (401/403, CORS) are what this test provokes: only script errors count.
    page.on("console", lambda m: m.type == "error" and "Failed to load resource" not in m.text
            and "CORS" not in m.text and page.errors.append(m.text))
    page.goto(url)
    return page


def api_address(p: CliProject) -> str:
    return json.loads((p.path / ".hinotori" / "controller.json").read_text())["address"]


def post(url: str, headers: dict[str, str]) -> tuple[int, str]:
    request = urllib.request.Request(url, data=b"{}", method="POST", headers={
        "Content-Type": "application/json", **headers})
    status, _, body = fetch(request)
    return status, body.decode()


def router_status(p: CliProject) -> int:
    return fetch(f"http://{p.router}/")[0]


def test_an_operating_tab_rolls_back_by_clicking_and_others_cannot(
        two_releases: CliProject, browser, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    p = two_releases
    link = p.json("dashboard", "--operate")
    assert link["operate"] is True  # type: ignore[index]
    page = open_page(browser, link["url"])  # type: ignore[index]
    web = page.locator('[data-service="web"]')
    expect(web.locator(".current")).to_have_text("v2")

    # Roll back: the button asks first; Cancel sends nothing.
    page.locator('[data-actions="web"] [data-action="rollback"]').click()
    dialog = page.locator("dialog#confirm")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("roll web back from v2 to v1")
    page.screenshot(path=str(tmp_path / "dashboard-confirm.png"))
    page.locator("#confirm-cancel").click()
    expect(dialog).to_be_hidden()
    assert p.json("deployments")[-1]["kind"] == "deploy"  # type: ignore[index]

    page.locator('[data-actions="web"] [data-action="rollback"]').click()
    page.locator("#confirm-ok").click()
    expect(page.locator("#action-status")).to_contain_text("rollback of web started")
    expect(web.locator(".current")).to_have_text("v1", timeout=60_000)
    assert {h["release"] for h in p.serving()} == {1}

    # Maintenance on, with a message typed into the confirmation, then off.
    page.locator('[data-actions="web"] [data-action="maintenance-on"]').click()
    page.locator("#confirm-message").fill("Back in five minutes")
    page.locator("#confirm-ok").click()
    expect(web.locator('[data-maintenance="on"]')).to_be_visible(timeout=15_000)
    assert router_status(p) == 503
    page.locator('[data-actions="web"] [data-action="maintenance-off"]').click()
    page.locator("#confirm-ok").click()
    expect(web.locator('[data-maintenance="on"]')).to_have_count(0, timeout=15_000)
    assert router_status(p) == 200

    # Deploy a release picked in the confirmation (the newest is preselected): v2 again.
    page.locator('[data-actions="web"] [data-action="deploy"]').click()
    expect(page.locator("#confirm-release option")).to_have_count(2)
    expect(page.locator("#confirm-release")).to_have_value("2")
    page.locator("#confirm-release").select_option("2")
    page.locator("#confirm-ok").click()
    expect(page.locator("#action-status")).to_contain_text("deployment #")
    expect(web.locator(".current")).to_have_text("v2", timeout=60_000)

    # The audit log names this tab's session as the actor of each change.
    session = page.evaluate("sessionStorage.getItem('hinotori.session')")
    csrf = page.evaluate("sessionStorage.getItem('hinotori.csrf')")
    events = p.json("audit", "web", "--actor", "dashboard:")
    actions = {e["action"] for e in events}  # type: ignore[union-attr]
    assert {"rollback.started", "deploy.started", "service.maintenance-on",
            "service.maintenance-off"} <= actions, actions
    assert len({e["actor"] for e in events}) == 1  # type: ignore[union-attr]
    page.screenshot(path=str(tmp_path / "dashboard-operate.png"), full_page=True)
    assert page.errors == []

    # A read-only tab: no buttons at all, and its forged POST is refused by the API.
    plain = open_page(browser, p.json("dashboard")["url"])  # type: ignore[index]
    expect(plain.locator('[data-service="web"] .current')).to_have_text("v2")
    expect(plain.locator("button[data-action], button.act")).to_have_count(0)
    expect(plain.locator(".actions")).to_have_count(0)
    forged = plain.evaluate("""() => fetch('/v1/services/web/rollback', {method: 'POST',
        headers: {Authorization: 'Bearer ' + sessionStorage.getItem('hinotori.session'),
                  'X-Hinotori-CSRF': 'x', 'Content-Type': 'application/json'}, body: '{}'})
        .then(async r => [r.status, await r.text()])""")
    assert forged[0] == 403 and "can only read" in forged[1]
    assert plain.errors == []

    # The operating session stolen: from another origin's page the browser will not even send
    # it (no CORS for the API), and a hand-made request without the CSRF token, or from
    # another Origin, is refused.
    before = len(p.json("deployments"))  # type: ignore[arg-type]
    api = f"http://{api_address(p)}"
    evil_dir = tmp_path / "evil"
    evil_dir.mkdir()
    (evil_dir / "index.html").write_text("<!doctype html><title>elsewhere</title>")
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(  # noqa: E731
        *a, directory=str(evil_dir))
    evil = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    try:
        elsewhere = open_page(browser, f"http://127.0.0.1:{evil.server_address[1]}/")
        outcome = elsewhere.evaluate("""([api, s]) => fetch(api + '/v1/services/web/rollback',
            {method: 'POST', headers: {Authorization: 'Bearer ' + s,
             'Content-Type': 'application/json'}, body: '{}'})
            .then(r => r.status, () => 'blocked')""", [api, session])
        assert outcome == "blocked"
        blind = elsewhere.evaluate("""(api) => fetch(api + '/v1/services/web/rollback',
            {method: 'POST', mode: 'no-cors', body: '{}'}).then(r => r.type)""", api)
        assert blind == "opaque"  # sent without the session: refused unseen (401)
    finally:
        evil.shutdown()
    rollback = f"{api}/v1/services/web/rollback"
    stolen = {"Authorization": f"Bearer {session}"}
    status, body = post(rollback, {**stolen, "Origin": "http://evil.test"})
    assert status == 403, body
    status, body = post(rollback, {**stolen, "Origin": "http://evil.test",
                                   "X-Hinotori-CSRF": csrf})
    assert status == 403 and "own page" in body
    status, body = post(rollback, {**stolen, "Origin": api})
    assert status == 403 and "CSRF" in body
    assert len(p.json("deployments")) == before  # type: ignore[arg-type]
    assert re.fullmatch(r"dashboard:[0-9a-f]{12}", events[0]["actor"])  # type: ignore[index]
