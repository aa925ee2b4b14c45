"""The dashboard's Python side: one-time sign-in tickets, read-only sessions, the sign-in link,
and the static files served (and shipped) as they should be."""

from __future__ import annotations

import re

import pytest
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

from hinotori.cli.dashboardcmd import sign_in_url
from hinotori.controller import dashboard
from hinotori.controller.dashboard import sessions as sessions_mod
from hinotori.controller.dashboard.sessions import DashboardSessions
from hinotori.controller.guard import Credentials, RequestGuard
from hinotori.errors import Forbidden, HinotoriError, Unauthorised


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_ticket_works_once_and_gives_a_session_that_is_not_the_ticket() -> None:
    s = DashboardSessions()
    ticket = s.issue_ticket()
    session = s.redeem(ticket)
    assert session != ticket and s.is_session(session) and not s.is_session(ticket)
    with pytest.raises(Unauthorised, match="already used or has expired"):
        s.redeem(ticket)


def test_a_ticket_expires_and_so_does_a_session() -> None:
    clock = Clock()
    s = DashboardSessions(clock)
    late = s.issue_ticket()
    clock.now += sessions_mod.TICKET_TTL
    with pytest.raises(Unauthorised):
        s.redeem(late)
    session = s.redeem(s.issue_ticket())
    clock.now += sessions_mod.SESSION_TTL - 1
    assert s.is_session(session)
    clock.now += 1
    assert not s.is_session(session)


def test_a_session_reads_but_never_writes() -> None:
    s = DashboardSessions()
    session = s.redeem(s.issue_ticket())
    assert s.authorise(session, "GET") and s.authorise(session, "head")
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        with pytest.raises(Forbidden, match="can only read"):
            s.authorise(session, method, csrf="x", same_origin=True)
    assert not s.authorise("", "GET") and not s.authorise("made-up", "GET")


def test_unredeemed_tickets_and_sessions_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sessions_mod, "MAX_LIVE", 3)
    s = DashboardSessions()
    tickets = [s.issue_ticket() for _ in range(5)]
    with pytest.raises(Unauthorised):
        s.redeem(tickets[0])  # the oldest went first
    sessions = [s.redeem(t) for t in tickets[2:]]
    sessions.append(s.redeem(s.issue_ticket()))
    assert [s.is_session(x) for x in sessions] == [False, True, True, True]


def test_the_sign_in_link_carries_the_ticket_in_the_fragment() -> None:
    assert sign_in_url("127.0.0.1:8123", "abc") == "http://127.0.0.1:8123/#ticket=abc"
    assert sign_in_url("::1:8123", "abc") == "http://[::1]:8123/#ticket=abc"
    assert sign_in_url("[::1]:8123", "abc") == "http://[::1]:8123/#ticket=abc"
    assert sign_in_url("0.0.0.0:8123", "abc") == "http://127.0.0.1:8123/#ticket=abc"
    assert sign_in_url("[::]:8123", "abc") == "http://[::1]:8123/#ticket=abc"


@pytest.fixture
def client() -> TestClient:
    """The dashboard mounted the way create_app mounts it, behind the same guard (the master
    token, or a session for reads)."""
    s = DashboardSessions()
    app = FastAPI()
    app.add_middleware(RequestGuard, credentials=Credentials("master", s))
    api = APIRouter()

    @app.exception_handler(HinotoriError)
    async def _error(_: Request, exc: HinotoriError) -> JSONResponse:
        status = 403 if isinstance(exc, Forbidden) else 401
        return JSONResponse({"error": exc.message, "hint": exc.hint}, status_code=status)

    @api.get("/v1/status")
    async def status() -> dict[str, str]:
        return {"ok": "yes"}

    dashboard.mount(app, api, s)
    app.include_router(api)
    return TestClient(app)


def test_the_page_and_assets_are_public_with_a_strict_policy(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert page.headers["referrer-policy"] == "no-referrer"
    js = client.get("/ui/app.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    for bad in ("/ui/nope.js", "/ui/..%2f__init__.py", "/ui/sessions.py", "/ui/%2e%2e"):
        assert client.get(bad).status_code == 404, bad


def test_sign_in_end_to_end(client: TestClient) -> None:
    assert client.post("/v1/dashboard/ticket").status_code == 401
    ticket = client.post("/v1/dashboard/ticket", headers={"Authorization": "Bearer master"})
    assert ticket.status_code == 200
    answer = client.post("/ui/session", json={"ticket": ticket.json()["ticket"]})
    assert answer.status_code == 200
    bearer = {"Authorization": f"Bearer {answer.json()['token']}"}
    assert client.get("/v1/status", headers=bearer).json() == {"ok": "yes"}
    refused = client.post("/v1/dashboard/ticket", headers=bearer)  # a session mints nothing
    assert refused.status_code == 403 and "can only read" in refused.json()["error"]
    again = client.post("/ui/session", json={"ticket": ticket.json()["ticket"]})
    assert again.status_code == 401 and "already used" in again.json()["error"]


def test_every_file_the_page_loads_is_served() -> None:
    """index.html's links and the modules' imports all name assets in the served table, so
    a renamed file cannot leave the page half-loaded."""
    html = (dashboard.STATIC / "index.html").read_text()
    wanted = set(re.findall(r'(?:src|href)="/ui/([^"]+)"', html))
    for name in [n for n in dashboard.ASSETS if n.endswith(".js")]:
        text = (dashboard.STATIC / name).read_text()
        wanted |= set(re.findall(r'from "\./([^"]+)"', text))
    assert wanted and wanted <= set(dashboard.ASSETS), wanted - set(dashboard.ASSETS)
    assert {"app.js", "api.js", "charts.js", "dom.js", "style.css"} <= wanted


def test_the_page_loads_nothing_from_elsewhere() -> None:
    """No URL in the page's files points off this origin (the SVG namespace is a name, not a
    fetch); with the CSP's 'self', a third-party script could not run anyway."""
    for name, (path, _) in dashboard.ASSETS.items():
        text = path.read_text()
        found = set(re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s\"'`)]*", text))
        assert found <= {"http://www.w3.org/2000/svg"}, (name, found)
