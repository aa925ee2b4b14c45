"""The API's guard (hinotori/controller/guard.py): the Bearer scheme, what credentials prove,
and bodies capped before and while they are read, in front of a small FastAPI app.

The end-to-end figures (a 200 MB body against a real controller, its RSS) are in
tests/integration/test_api.py; here every rule is pinned one by one."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from hinotori.controller import guard
from hinotori.controller.dashboard.sessions import DashboardSessions
from hinotori.controller.guard import PRINCIPAL, WEBHOOK_PATH, Credentials, RequestGuard

TOKEN = "s3cret-token"


class App:
    def __init__(self) -> None:
        self.sessions = DashboardSessions()
        self.reached: list[str] = []  # paths whose route ran
        self.read: list[int] = []  # body sizes routes read whole
        app = FastAPI()
        app.add_middleware(RequestGuard, credentials=Credentials(TOKEN, self.sessions))

        @app.get("/v1/who")
        async def who(request: Request) -> dict[str, Any]:
            self.reached.append("/v1/who")
            return {"principal": request.scope[PRINCIPAL]}

        @app.post("/v1/echo")
        async def echo(request: Request) -> dict[str, Any]:
            self.reached.append("/v1/echo")
            body = await request.body()
            self.read.append(len(body))
            return {"size": len(body)}

        @app.post(WEBHOOK_PATH)
        async def push(request: Request) -> dict[str, Any]:
            self.reached.append(WEBHOOK_PATH)
            return {"size": len(await request.body())}

        @app.get("/")
        async def page() -> dict[str, str]:
            return {"page": "public"}

        self.client = TestClient(app)


@pytest.fixture
def app() -> App:
    return App()


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": value}


def chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        n = min(size, total - sent)
        sent += n
        yield b"x" * n


def test_the_bearer_scheme_is_required_in_any_case(app: App) -> None:
    c = app.client
    assert c.get("/v1/who").status_code == 401
    bare = c.get("/v1/who", headers=bearer(TOKEN))  # the token alone, no scheme
    assert bare.status_code == 401 and "Bearer <token>" in bare.json()["error"]
    assert bare.headers["www-authenticate"] == "Bearer"
    assert c.get("/v1/who", headers=bearer(f"Basic {TOKEN}")).status_code == 401
    assert c.get("/v1/who", headers=bearer("Bearer")).status_code == 401
    wrong = c.get("/v1/who", headers=bearer("Bearer nope"))
    assert wrong.status_code == 401 and wrong.json()["type"] == "Unauthorised"
    for scheme in ("Bearer", "bearer", "BEARER", "bEaReR"):  # RFC 7235: case-insensitive
        ok = c.get("/v1/who", headers=bearer(f"{scheme}  {TOKEN}"))
        assert ok.status_code == 200 and ok.json() == {"principal": "token"}, scheme
    assert app.reached == ["/v1/who"] * 4  # refused requests never reached the route
    assert c.get("/").json() == {"page": "public"}  # the dashboard's page is open


def test_a_dashboard_session_reads_under_its_own_name_and_never_writes(app: App) -> None:
    session = app.sessions.redeem(app.sessions.issue_ticket())
    answer = app.client.get("/v1/who", headers=bearer(f"Bearer {session}"))
    principal = answer.json()["principal"]
    assert principal.startswith("dashboard:") and session not in principal
    assert principal == f"dashboard:{guard.session_id(session)}"
    refused = app.client.post("/v1/echo", content=b"{}", headers=bearer(f"Bearer {session}"))
    assert refused.status_code == 403 and "can only read" in refused.json()["error"]
    assert "/v1/echo" not in app.reached


def test_a_declared_length_over_the_cap_is_refused_before_the_route(app: App) -> None:
    cap = guard.API_BODY_CAP
    ok = app.client.post("/v1/echo", content=b"x" * cap, headers=bearer(f"Bearer {TOKEN}"))
    assert ok.status_code == 200 and ok.json() == {"size": cap}
    over = app.client.post("/v1/echo", content=b"x" * (cap + 1),
                           headers=bearer(f"Bearer {TOKEN}"))
    assert over.status_code == 413 and over.json()["type"] == "ControllerError"
    assert "1 MiB" in over.json()["error"]
    assert app.reached == ["/v1/echo"]  # the second one never reached the route
    # Unauthenticated and too big: who asks is decided first.
    assert app.client.post("/v1/echo", content=b"x" * (cap + 1)).status_code == 401


def test_a_chunked_body_is_cut_off_as_soon_as_it_passes_the_cap(app: App) -> None:
    cap = guard.API_BODY_CAP
    fits = app.client.post("/v1/echo", content=chunks(cap), headers=bearer(f"Bearer {TOKEN}"))
    assert fits.status_code == 200 and fits.json() == {"size": cap}
    over = app.client.post("/v1/echo", content=chunks(10 * cap),
                           headers=bearer(f"Bearer {TOKEN}"))
    assert over.status_code == 413 and "over 1 MiB" in over.json()["error"]
    assert app.read == [cap]  # the route never got the oversized body


def test_the_webhook_needs_no_token_and_has_its_own_cap(app: App,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    big = guard.API_BODY_CAP * 2  # over the API's cap, well under the webhook's
    assert app.client.post(WEBHOOK_PATH, content=b"x" * big).json() == {"size": big}
    monkeypatch.setattr(guard, "WEBHOOK_BODY_CAP", 3 * guard.API_BODY_CAP)
    over = app.client.post(WEBHOOK_PATH, content=b"x" * (3 * guard.API_BODY_CAP + 1))
    assert over.status_code == 413 and "push payload over 3 MiB" in over.json()["error"]
    chunked = app.client.post(WEBHOOK_PATH, content=chunks(4 * guard.API_BODY_CAP))
    assert chunked.status_code == 413
    assert app.reached.count(WEBHOOK_PATH) == 2  # the chunked one reached it, then was cut


def test_what_credentials_prove() -> None:
    sessions = DashboardSessions()
    creds = Credentials(TOKEN, sessions)
    assert creds.principal(f"Bearer {TOKEN}", "POST") == "token"
    with pytest.raises(guard.Unauthorised, match="missing API token"):
        creds.principal(None, "GET")
    with pytest.raises(guard.Unauthorised, match="wrong API token"):
        creds.principal("Bearer t\u00e9ken", "GET")  # a non-ASCII guess is only wrong
