"""Operating dashboard sessions (`hinotori dashboard --operate`): a change is accepted only
from an operating session, from the page's own origin, with the session's CSRF token; whatever
lacks one of them is refused with 403 before the route runs, and the route sees the session
as the actor."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

from hinotori.controller import dashboard
from hinotori.controller.dashboard.sessions import PRINCIPAL, DashboardSessions
from hinotori.controller.guard import (
    Credentials,
    RequestGuard,
    error_body,
    same_origin,
    session_id,
)
from hinotori.errors import Forbidden

ORIGIN = "http://testserver"  # what TestClient sends as Host: testserver


class App:
    def __init__(self) -> None:
        self.sessions = DashboardSessions()
        self.reached: list[str] = []
        app = FastAPI()
        app.add_middleware(RequestGuard, credentials=Credentials("master", self.sessions))
        api = APIRouter()

        @app.exception_handler(Forbidden)
        async def _refused(_: Request, exc: Forbidden) -> JSONResponse:
            return JSONResponse(error_body(exc), status_code=403)

        @api.post("/v1/act")
        async def act(request: Request) -> dict[str, Any]:
            self.reached.append(request.scope[PRINCIPAL])
            return {"actor": request.scope[PRINCIPAL]}

        dashboard.mount(app, api, self.sessions)
        app.include_router(api)
        self.client = TestClient(app)

    def sign_in(self, operate: bool) -> dict[str, Any]:
        ticket = self.client.post("/v1/dashboard/ticket", json={"operate": operate},
                                  headers={"Authorization": "Bearer master"}).json()
        assert ticket["operate"] is operate
        return self.client.post("/ui/session", json={"ticket": ticket["ticket"]}).json()


@pytest.fixture
def app() -> App:
    return App()


def act(app: App, session: dict[str, Any], **headers: str) -> Any:
    return app.client.post("/v1/act", json={}, headers={
        "Authorization": f"Bearer {session['token']}", **headers})


def test_an_operating_session_acts_from_its_page_with_its_token(app: App) -> None:
    s = app.sign_in(operate=True)
    assert s["operate"] is True and len(s["csrf"]) > 20 and s["csrf"] != s["token"]
    ok = act(app, s, Origin=ORIGIN, **{"X-Hinotori-CSRF": s["csrf"]})
    assert ok.status_code == 200
    assert ok.json() == {"actor": f"dashboard:{session_id(s['token'])}"}
    # No Origin, but a Referer of the page (what an old browser sends): same origin too.
    assert act(app, s, Referer=f"{ORIGIN}/", **{"X-Hinotori-CSRF": s["csrf"]}).status_code == 200


@pytest.mark.parametrize("headers, why", [
    ({"Origin": ORIGIN}, "CSRF token"),                                       # no token
    ({"Origin": ORIGIN, "X-Hinotori-CSRF": "guess"}, "CSRF token"),           # a wrong one
    ({"Origin": "http://evil.test", "X-Hinotori-CSRF": "<csrf>"}, "own page"),  # another site
    ({"Origin": "null", "X-Hinotori-CSRF": "<csrf>"}, "own page"),            # a sandboxed frame
    ({"Referer": "http://evil.test/x", "X-Hinotori-CSRF": "<csrf>"}, "own page"),
    ({"X-Hinotori-CSRF": "<csrf>"}, "own page"),                              # neither header
    ({"Origin": "https://testserver", "X-Hinotori-CSRF": "<csrf>"}, "own page"),  # scheme
])
def test_a_change_without_every_proof_is_refused_before_the_route(
        app: App, headers: dict[str, str], why: str) -> None:
    s = app.sign_in(operate=True)
    headers = {k: s["csrf"] if v == "<csrf>" else v for k, v in headers.items()}
    refused = act(app, s, **headers)
    assert refused.status_code == 403 and why in refused.json()["error"]
    assert refused.json()["type"] == "Forbidden"
    assert app.reached == []


def test_a_read_only_session_is_refused_even_with_every_proof(app: App) -> None:
    s = app.sign_in(operate=False)
    assert s["operate"] is False and s["csrf"] == ""
    refused = act(app, s, Origin=ORIGIN, **{"X-Hinotori-CSRF": ""})
    assert refused.status_code == 403 and "can only read" in refused.json()["error"]
    # An operating session's token does not lend a read-only one its rights.
    other = app.sign_in(operate=True)
    assert act(app, s, Origin=ORIGIN, **{"X-Hinotori-CSRF": other["csrf"]}).status_code == 403
    assert app.reached == []


def test_only_the_api_token_mints_sign_in_links(app: App) -> None:
    s = app.sign_in(operate=True)
    minted = app.client.post("/v1/dashboard/ticket", json={"operate": True}, headers={
        "Authorization": f"Bearer {s['token']}", "Origin": ORIGIN,
        "X-Hinotori-CSRF": s["csrf"]})
    assert minted.status_code == 403 and "only the API token" in minted.json()["error"]


def test_same_origin_reads_origin_then_referer() -> None:
    def h(**kv: str) -> list[tuple[bytes, bytes]]:
        return [(k.lower().encode(), v.encode()) for k, v in kv.items()]

    assert same_origin(h(Host="127.0.0.1:8123", Origin="http://127.0.0.1:8123"), "http")
    assert same_origin(h(Host="127.0.0.1:8123", Origin="HTTP://127.0.0.1:8123"), "http")
    assert not same_origin(h(Host="127.0.0.1:8123", Origin="http://127.0.0.1:9999"), "http")
    assert same_origin(h(Host="[::1]:80", Referer="http://[::1]:80/#x"), "http")
    assert not same_origin(h(Host="a:1"), "http")
    assert not same_origin(h(Origin="http://a:1"), "http")  # no Host: nothing to compare


def test_sessions_keep_their_mode_and_expire_alike() -> None:
    s = DashboardSessions()
    token = s.redeem(s.issue_ticket(operate=True))
    found = s.session(token)
    assert found is not None and found.operate and found.csrf
    assert s.authorise(token, "POST", csrf=found.csrf, same_origin=True)
    with pytest.raises(Forbidden):
        s.authorise(token, "POST", csrf=found.csrf, same_origin=False)
