"""Continuous delivery: `hinotori ship`, and the signed push webhook that refuses what is not
signed with the secret."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support import CliProject, fetch, make_project, teardown, wait_until

pytestmark = pytest.mark.integration

SECRET = "s3cret-for-tests"
GUID = "72d3162e-cc78-11e3-81ab-4c9367dc0958"  # GitHub's X-GitHub-Delivery shape


def address(p: CliProject) -> str:
    return json.loads((p.path / ".hinotori" / "controller.json").read_text())["address"]


def post(p: CliProject, body: bytes, signature: str | None,
         delivery: str | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://{address(p)}/v1/webhooks/push", data=body,
                                 method="POST", headers={"Content-Type": "application/json"})
    if signature:
        req.add_header("X-Hub-Signature-256", signature)
    if delivery:
        req.add_header("X-GitHub-Delivery", delivery)
    status, _, body = fetch(req)
    return status, json.loads(body)


def test_ship_and_signed_push(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HINOTORI_WEBHOOK_SECRET", SECRET)
    p = make_project(tmp_path, replicas=1)
    spec = p.path / "hinotori.toml"
    spec.write_text(spec.read_text().replace(
        'stop_grace = "10s"', 'stop_grace = "10s"\nship_on = { repository = "acme/hello" }'))
    try:
        p.cli("up", "-d")
        assert "now serves v1" in p.cli("ship", "web").stdout
        p.set_version("2")
        push = json.dumps({"ref": "refs/heads/main", "after": "abc123",
                           "repository": {"full_name": "acme/hello"}}).encode()
        good = "sha256=" + hmac.new(SECRET.encode(), push, hashlib.sha256).hexdigest()
        assert post(p, push, None)[0] == 401
        assert post(p, push, "sha256=" + "0" * 64)[0] == 401
        assert post(p, push + b" ", good)[0] == 401  # the signature covers the exact body
        other = json.dumps({"ref": "refs/heads/dev", "repository": {"full_name": "acme/hello"}}
                           ).encode()
        signed = "sha256=" + hmac.new(SECRET.encode(), other, hashlib.sha256).hexdigest()
        assert post(p, other, signed) == (200, {"shipped": []})  # no service ships from dev
        assert post(p, push, good, GUID) == (200, {"shipped": ["web"]})
        assert wait_until(lambda: any(h["release_name"] == "v2" for h in p.serving()), timeout=30)
        # One event per reason a minute: the second bad signature is counted, recorded later.
        rejected = p.json("audit", "--action", "webhook.rejected")
        assert [(e["detail"]["why"], e["detail"]["count"]) for e in rejected  # type: ignore
                ] == [("unsigned", 1), ("bad signature", 1)]

        # A replay ships nothing: the same delivery (GitHub's Redeliver), the same body under
        # another id or none (the id is not signed), and again after a controller restart.
        status, answer = post(p, push, good, GUID)
        assert status == 409 and f"delivery '{GUID}' was already received" in answer["error"]
        assert "Redeliver works again in 10 min" in answer["hint"], answer
        assert post(p, push, good, "another-guid")[0] == 409
        assert post(p, push, good)[0] == 409
        p.stop_controller()  # the controller only: hosts stay
        p.cli("up", "-d")
        assert post(p, push, good, GUID)[0] == 409
        assert [e["detail"]["delivery"] for e in p.json("audit", "--action", "webhook.push")
                ] == [None, GUID]  # type: ignore  # the dev push, then the one that shipped
        shipped = [d for d in p.json("audit", "--action", "deploy.started")  # type: ignore
                   if d["actor"] == "webhook"]
        assert len(shipped) == 1, shipped
        replays = [e["detail"]["count"] for e in p.json("audit", "--action", "webhook.rejected")
                   if e["detail"]["why"] == "replayed delivery"]  # type: ignore
        assert sum(replays) == 4, replays  # the stop recorded those not recorded yet
    finally:
        teardown(p)


def test_a_flood_of_bad_pushes_is_throttled_and_counted(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HINOTORI_WEBHOOK_SECRET", SECRET)
    p = make_project(tmp_path, replicas=1)
    try:
        p.cli("up", "-d")
        host, _, port = address(p).rpartition(":")
        # Four pushes whose bodies are still on their way hold every reading slot: a fifth is
        # told to come back (503), before its body is read.
        slow = []
        for _ in range(4):
            s = socket.create_connection((host, int(port)), timeout=10)
            s.sendall(b"POST /v1/webhooks/push HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      b"Content-Length: 1000\r\n\r\n{")
            slow.append(s)
        nonce = iter(range(1_000_000))

        def signed() -> tuple[int, dict]:  # a push that ships nothing, never a replay
            body = json.dumps({"ref": "refs/heads/none", "repository": {"full_name": "a/b"},
                               "n": next(nonce)}).encode()
            return post(p, body, "sha256=" + hmac.new(SECRET.encode(), body,
                                                      hashlib.sha256).hexdigest())

        try:
            assert wait_until(lambda: signed()[0] == 503, timeout=10)
            status, answer = post(p, b"{}", None)
            assert status == 503 and "4 pushes are being read already" in answer["error"]
        finally:
            for s in slow:
                s.close()
        assert wait_until(lambda: signed()[0] == 200, timeout=10)
        assert post(p, b"{}", None)[0] == 401
        started = time.monotonic()
        answers = [post(p, b"{}", None)[0] for _ in range(199)]
        took = time.monotonic() - started
        # 20 bad requests a minute from one address, then 429 without any HMAC work. The
        # bucket refills a token every 3 s: a slow machine earns a 401 back per 3 s it took.
        assert answers[:19] == [401] * 19 and set(answers) == {401, 429}, answers
        assert answers.count(401) <= 19 + took / 3 + 1, (took, answers)
        events = p.json("audit", "--action", "webhook.rejected")
        assert [(e["detail"]["why"], e["detail"]["count"]) for e in events  # type: ignore
                ] == [("unsigned", 1), ("too many bad requests", 1)]
        p.stop_controller()  # the stop records the rest
        events = p.json("audit", "--action", "webhook.rejected")
        counts: dict[str, int] = {}
        for e in events:  # type: ignore[union-attr]
            counts[e["detail"]["why"]] = counts.get(e["detail"]["why"], 0) + e["detail"]["count"]
        assert len(events) == 4, events  # type: ignore[arg-type]
        assert counts == {"unsigned": 20, "too many bad requests": 180}
    finally:
        teardown(p)
