"""The push webhook's route (hinotori/controller/webhookapi.py) in front of a push that does
what each test needs: what is refused before the push runs, and that an error of ours is
recorded as ``webhook.failed`` (a refusal stays ``webhook.rejected``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from hinotori.controller.guard import WEBHOOK_PATH
from hinotori.controller.webhook import Webhook
from hinotori.controller.webhookapi import webhook_routes
from hinotori.errors import DeployError, Unauthorised
from hinotori.store import Store


class Route:
    def __init__(self, tmp_path: Path) -> None:
        self.store = Store(tmp_path / "state.db")
        self.gate = Webhook(self.store)
        self.calls: list[tuple[bytes, str | None, str | None]] = []
        self.raises: Exception | None = None
        app = FastAPI()
        app.include_router(webhook_routes(self.gate, self.push, self.store.record))
        self.client = TestClient(app, raise_server_exceptions=False)

    async def push(self, body: bytes, signature: str | None, *, delivery: str | None,
                   source: str) -> list[str]:
        self.calls.append((body, signature, delivery))
        if self.raises is not None:
            raise self.raises
        return ["web"]

    def actions(self) -> list[str]:
        return [e.action for e in self.store.events()]


@pytest.fixture
def route(tmp_path: Path) -> Route:
    return Route(tmp_path)


def test_a_push_gets_its_body_signature_and_delivery(route: Route) -> None:
    answer = route.client.post(WEBHOOK_PATH, content=b"{}", headers={
        "X-Hub-Signature-256": "sha256=ab", "X-GitHub-Delivery": "guid-1"})
    assert (answer.status_code, answer.json()) == (200, {"shipped": ["web"]})
    assert route.calls == [(b"{}", "sha256=ab", "guid-1")]


def test_an_error_of_ours_is_a_500_recorded_as_failed(route: Route) -> None:
    route.raises = KeyError("a bug")
    answer = route.client.post(WEBHOOK_PATH, content=b"{}")
    assert answer.status_code == 500
    assert "failed while handling this push" in answer.json()["error"]
    assert "webhook.failed" in answer.json()["hint"]
    assert route.actions() == ["webhook.failed"]
    assert route.store.events()[0].detail == {"error": "internal error: KeyError('a bug')"}


def test_the_senders_errors_are_4xx_and_no_failure(route: Route) -> None:
    for error, status in ((Unauthorised("push refused"), 401),
                          (DeployError("push payload is not a GitHub-style push event"), 400)):
        route.raises = error
        answer = route.client.post(WEBHOOK_PATH, content=b"{}")
        assert (answer.status_code, answer.json()["type"]) == (status, type(error).__name__)
    assert route.actions() == []


def test_a_signature_that_is_not_ascii_is_refused_before_the_body_is_read(
        route: Route) -> None:
    answer = route.client.post(WEBHOOK_PATH, content=b"{}",
                               headers={"X-Hub-Signature-256": "sha256=\u00e9".encode("latin-1")})
    assert answer.status_code == 401 and route.calls == []
    assert [e.detail["why"] for e in route.store.events()] == ["signature not ASCII"]


def test_a_source_past_its_bad_requests_gets_429_before_the_push_runs(route: Route) -> None:
    for _ in range(route.gate.bad_requests.per_minute):
        route.gate.reject("bad signature", "testclient")  # TestClient's address
    answer = route.client.post(WEBHOOK_PATH, content=b"{}")
    assert answer.status_code == 429 and answer.headers["retry-after"] == "60"
    assert "bad requests a minute from this address" in answer.json()["error"]
    assert route.calls == []
