"""The web dashboard end to end: a real controller, real hosts and router, and the page in a
real headless Chromium (the Debian system browser, driven through Playwright).

The page must show a canary deployment as it happens (running at 50%, the split on the traffic
bar, the analysis verdicts), then the promoted release as current; show the newest log lines
as it opens and follow them; find a line an app printed; and without a sign-in show how to get
one while the API refuses it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import CliProject, make_project, teardown

pytestmark = pytest.mark.integration

VIEWPORT = {"width": 1280, "height": 800}

# A canary that holds its first step (50%) until an operator promotes it: the test looks at the
# page while the deployment runs, then lets it finish. Analysis with no traffic is
# inconclusive; the long pause keeps the step waiting rather than failing.
CANARY = """
[services.web.strategy]
kind = "canary"
steps = [50, 100]
pause = "10m"

[services.web.strategy.analysis]
interval = "300ms"
deadline = "10m"
inconclusive = "pass"

[metrics]
interval = "1s"
"""


@pytest.fixture
def canary_project(tmp_path: Path) -> Iterator[CliProject]:
    p = make_project(tmp_path, replicas=2, extra=CANARY)
    p.cli("up", "-d")
    p.cli("bake", "web")
    yield p
    teardown(p)


def api_address(p: CliProject) -> str:
    return json.loads((p.path / ".hinotori" / "controller.json").read_text())["address"]


def hit(p: CliProject, n: int) -> None:
    for _ in range(n):
        with urllib.request.urlopen(f"http://{p.router}/", timeout=10) as r:
            assert r.status == 200


def open_page(browser, url: str):  # type: ignore[no-untyped-def]
    """A fresh tab (own sessionStorage) that records every script error it meets."""
    page = browser.new_context(viewport=VIEWPORT).new_page()
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    # Chromium logs every non-2xx fetch as a console error; the 401s and 404s here are
    # expected answers, so only script errors count.
    page.on("console", lambda m: m.type == "error" and "Failed to load resource" not in m.text
            and page.errors.append(m.text))
    page.goto(url)
    return page


def test_the_page_shows_a_canary_as_it_happens(canary_project: CliProject, browser,
                                               tmp_path: Path) -> None:
    from playwright.sync_api import expect

    p = canary_project
    p.cli("deploy", "web")  # v1: nothing served yet, so blue-green
    hit(p, 30)  # traffic for the charts: v1 has latency points too
    link = p.json("dashboard")
    assert link["url"].startswith(f"http://{api_address(p)}/#ticket=")  # type: ignore[index]
    page = open_page(browser, link["url"])  # type: ignore[index]

    web = page.locator('[data-service="web"]')
    expect(web.locator(".current")).to_have_text("v1")
    expect(web.locator('.split .seg[data-release="v1"]')).to_have_attribute("data-share", "100")
    expect(page.locator('#hosts tr[data-state="serving"]')).to_have_count(2)
    assert "ticket" not in page.url  # the spent ticket is gone from the address bar

    # The log panel shows the newest lines on open, before any search (here the hosts' start
    # lines), and follows: a line printed now arrives without a search.
    shown = page.locator("#log-lines .logline")
    expect(shown.filter(has_text="listening on").first).to_be_visible(timeout=30_000)
    expect(page.locator("#log-status")).to_contain_text("following")
    early = f"open-{uuid.uuid4().hex[:10]}"
    with urllib.request.urlopen(f"http://{p.router}/print?n=2&tag={early}", timeout=10) as r:
        assert r.status == 200
    expect(shown.filter(has_text=f"{early} 1")).to_have_count(1, timeout=30_000)

    # v2 as a canary, started through the CLI; the page must show it while it runs.
    p.set_version("2")
    p.cli("bake", "web")
    deploy = subprocess.Popen([sys.executable, "-m", "hinotori", "deploy", "web",
                               "--spec", str(p.path)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        running = page.locator('.deployment[data-state="running"]')
        expect(running).to_be_visible(timeout=60_000)
        expect(web.locator(".badge.running")).to_contain_text("v1 → v2 (canary at 50%)",
                                                              timeout=30_000)
        expect(web.locator('.split .seg[data-release="v1"]')).to_have_attribute("data-share", "50")
        expect(web.locator('.split .seg[data-release="v2"]')).to_have_attribute("data-share", "50")
        expect(running.locator('[data-step="step"]')).to_contain_text("50%")
        expect(running.locator("[data-verdict]").first).to_be_visible()
        expect(web.locator(".current")).to_have_text("v1")  # not promoted yet
        hit(p, 40)  # split between stable and canary; the analysis counts them
        page.screenshot(path=str(tmp_path / "dashboard-canary.png"), full_page=True)

        p.cli("promote", "web")
        out, _ = deploy.communicate(timeout=120)
        assert deploy.returncode == 0, out
    finally:
        if deploy.poll() is None:
            deploy.kill()
            deploy.wait()

    expect(web.locator(".current")).to_have_text("v2")
    expect(web.locator(".previous")).to_have_text("v1")
    expect(web.locator('.split .seg[data-release="v2"]')).to_have_attribute("data-share", "100")
    expect(web.locator('.split .seg[data-release="v1"]')).to_have_count(0)
    done = page.locator('.deployment[data-state="succeeded"]').first
    expect(done.locator('[data-step="promoted"]')).to_contain_text("v2 promoted")
    expect(page.locator('#events li[data-action="deploy.succeeded"]').first).to_be_visible()
    first = page.locator('[data-deployment="1"]')  # closed: only the newest opens by itself
    expect(first.locator('[data-step="switched"]')).to_have_count(0)
    first.locator(".summary").click()
    expect(first.locator('[data-step="switched"]')).to_contain_text("all traffic to v1")
    hit(p, 30)

    # The log search finds a line the app printed (shipped to the central store by the
    # controller; searched through /v1/logs by the page).
    tag = f"dash-{uuid.uuid4().hex[:10]}"
    with urllib.request.urlopen(f"http://{p.router}/print?n=3&tag={tag}", timeout=10) as r:
        assert r.status == 200
    form = page.locator("#log-search")
    form.locator('[name="grep"]').fill(tag)
    form.locator('[name="service"]').select_option("web")
    lines = page.locator("#log-lines .logline")
    deadline = time.monotonic() + 30
    while True:  # shipping is continuous, not instant: search again until the line is in
        form.locator('button[type="submit"]').click()
        expect(page.locator("#log-status")).not_to_have_text(re.compile("^searching"))
        if lines.filter(has_text=f"{tag} 2").count() or time.monotonic() > deadline:
            break
        page.wait_for_timeout(300)
    expect(lines.filter(has_text=f"{tag} 2")).to_have_count(1)
    expect(lines).to_have_count(3)
    expect(lines.first.locator(".rel")).to_have_text("v2")
    # Following (on from the start): new matching lines arrive without another search.
    expect(form.locator('[name="follow"]')).to_be_checked()
    with urllib.request.urlopen(f"http://{p.router}/print?n=2&tag={tag}", timeout=10) as r:
        assert r.status == 200
    expect(lines).to_have_count(5, timeout=30_000)

    page.screenshot(path=str(tmp_path / "dashboard-promoted.png"), full_page=True)

    # Metric charts: a line per release from the history endpoint (GET /v1/metrics/history),
    # v1's from before the switch as well as v2's.
    for chart in ("rps", "p99_ms", "memory_bytes"):
        for release in ("v1", "v2"):
            expect(page.locator(f'svg[data-chart="{chart}"] path[data-release="{release}"]')
                   ).to_have_count(1, timeout=15_000)
    page.screenshot(path=str(tmp_path / "dashboard-charts.png"), full_page=True)
    assert page.errors == []


def test_without_a_sign_in_the_page_says_how_and_the_api_refuses(running: CliProject, browser,
                                                                  tmp_path: Path) -> None:
    from playwright.sync_api import expect

    address = api_address(running)
    page = open_page(browser, f"http://{address}/")
    expect(page.locator("#signin")).to_be_visible()
    expect(page.locator("#signin")).to_contain_text("hinotori dashboard")
    expect(page.locator("#board")).to_be_hidden()
    assert page.evaluate("fetch('/v1/status').then(r => r.status)") == 401
    assert page.evaluate("fetch('/v1/status', {headers: {Authorization: 'Bearer guess'}})"
                         ".then(r => r.status)") == 401

    printed = running.cli("dashboard").stdout  # what a person copies from the terminal
    found = re.search(r"http://\S+#ticket=\S+", printed)
    assert found, printed
    url = found.group(0)
    signed_in = open_page(browser, url)
    expect(signed_in.locator('[data-service="web"]')).to_be_visible()
    session = signed_in.evaluate("sessionStorage.getItem('hinotori.session')")
    token = (running.path / ".hinotori" / "token").read_text().strip()
    assert session and session != token  # the page never holds the API token
    # The session reads; it cannot change anything.
    assert signed_in.evaluate("(s) => fetch('/v1/hosts', {headers: {Authorization: "
                              "'Bearer ' + s}}).then(r => r.status)", session) == 200
    refused = signed_in.evaluate(
        "(s) => fetch('/v1/services/web/deploy', {method: 'POST', headers: {Authorization: "
        "'Bearer ' + s, 'Content-Type': 'application/json'}, body: '{}'})"
        ".then(async r => [r.status, await r.text()])", session)
    assert refused[0] == 403 and "can only read" in refused[1]

    # The page's own arithmetic, run in the browser on data of the test's choosing: a canary
    # at 5% with 3 stable hosts and 1 canary host (weights 95 each and 15: canary.weights).
    split = signed_in.evaluate("""async () => {
        const { trafficSplit } = await import('/ui/derive.js');
        const host = (release, weight, state = 'serving') =>
            ({ service: 'web', release, weight, state });
        return trafficSplit([host(1, 95), host(1, 95), host(1, 95), host(2, 15),
                             host(2, 100, 'booting'),
                             { service: 'api', release: 7, weight: 100, state: 'serving' }],
                            'web');
    }""")
    assert split == [{"release": 1, "share": 95}, {"release": 2, "share": 5}]
    collapsed = signed_in.evaluate("""async () => {
        const { collapseChecks } = await import('/ui/derive.js');
        const check = (weight, outcome) => ({ step: 'analysis', weight, outcome });
        return collapseChecks([{ step: 'step', weight: 5 }, check(5, 'inconclusive'),
                               check(5, 'inconclusive'), check(5, 'pass'), check(5, 'pass'),
                               check(5, 'pass'), { step: 'step', weight: 50 },
                               check(50, 'pass')]);
    }""")
    assert [(c["step"], c.get("outcome"), c.get("checks")) for c in collapsed] == [
        ("step", None, None), ("analysis", "inconclusive", 2), ("analysis", "pass", 3),
        ("step", None, None), ("analysis", "pass", None)]
    tops = signed_in.evaluate("""async () => {
        const { niceCeiling } = await import('/ui/charts.js');
        return [0, 0.003, 0.01, 37, 100, 101].map(niceCeiling);
    }""")
    assert tops == [1, 0.005, 0.01, 50, 100, 200]

    # The link was spent by the first tab: a second browser gets the sign-in message.
    again = open_page(browser, url)
    expect(again.locator("#signin")).to_be_visible()
    expect(again.locator("#signin-reason")).to_contain_text("already used")
    again.screenshot(path=str(tmp_path / "dashboard-signin.png"))
    assert signed_in.errors == [] and again.errors == []
