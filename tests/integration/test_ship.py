"""Continuous delivery: `hinotori ship`, and the signed push webhook that refuses what is not
signed with the secret."""

from __future__ import annotations

import hashlib
import hmac
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support import CliProject, make_project, teardown, wait_until

pytestmark = pytest.mark.integration

SECRET = "s3cret-for-tests"


def post(p: CliProject, body: bytes, signature: str | None) -> tuple[int, dict]:
    info = json.loads((p.path / ".hinotori" / "controller.json").read_text())
    req = urllib.request.Request(f"http://{info['address']}/v1/webhooks/push", data=body,
                                 method="POST", headers={"Content-Type": "application/json"})
    if signature:
        req.add_header("X-Hub-Signature-256", signature)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


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
        assert post(p, push, good) == (200, {"shipped": ["web"]})
        assert wait_until(lambda: any(h["release_name"] == "v2" for h in p.serving()), timeout=30)
        rejected = p.json("audit", "--action", "webhook.rejected")
        assert len(rejected) == 3  # type: ignore[arg-type]
    finally:
        teardown(p)
