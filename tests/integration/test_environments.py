"""Environments for real: two controllers and two routers (different ports) serving at once
from one spec, a promotion that deploys staging's digest into production with no bake and
records where it came from, each promote_only refusal, and a spec without environments
keeping today's layout."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import CliProject, free_port, make_project, teardown, wait_until

pytestmark = pytest.mark.integration

ENVS = ("staging", "production")


def environments(soak: str = "0s", promote_only: bool = True) -> str:
    return f"""
[environments.staging.router]
listen = "127.0.0.1:{free_port()}"

[environments.staging.services.web]
boot_timeout = "4s"

[environments.production]
promote_only = {str(promote_only).lower()}
promote_from = "staging"
soak = "{soak}"

[environments.production.router]
listen = "127.0.0.1:{free_port()}"

[environments.production.services.web]
replicas = 2
env = {{ HELLO_VERSION = "prod" }}
"""


def router_of(p: CliProject, env: str) -> str:
    info = json.loads((p.path / ".hinotori" / "env" / env / "controller.json").read_text())
    return info["router"]


def get(address: str, path: str = "/") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def env_teardown(p: CliProject) -> None:
    for env in ENVS:
        if (p.path / ".hinotori" / "env" / env).exists():
            p.cli("down", "-E", env, check=False, timeout=120)
        for hostjson in (p.path / ".hinotori" / "env" / env).glob("hosts/*/host.json"):
            pid = json.loads(hostjson.read_text()).get("pid")
            if pid:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)


@pytest.fixture
def envs(tmp_path: Path) -> Iterator[CliProject]:
    p = make_project(tmp_path, replicas=1, extra=environments())
    try:
        yield p
    finally:
        env_teardown(p)


def cache_entries(p: CliProject) -> set[str]:
    return {f.name for f in (p.path / ".hinotori" / "cache" / "steps").glob("*")}


def bake_events(p: CliProject, env: str) -> list[dict]:
    return [e for e in p.json("audit", "-E", env, "--limit", "1000")  # type: ignore[union-attr]
            if "bake" in e["action"] or e["action"] == "release.created"]


def test_two_environments_serve_at_once_and_promotion_never_bakes(envs: CliProject) -> None:
    p = envs
    p.cli("up", "-d", "-E", "staging")
    p.cli("up", "-d", "-E", "production")
    assert router_of(p, "staging") != router_of(p, "production")
    p.cli("bake", "web", "-E", "staging")
    assert "now serves v1" in p.cli("deploy", "web", "-E", "staging").stdout
    staged = p.json("releases", "web", "-E", "staging")[0]  # type: ignore[index]
    images_before = {i["digest"] for i in p.json("images")}  # type: ignore[union-attr]
    cache_before = cache_entries(p)
    out = p.cli("deploy", "web", "-E", "production", "--from", "staging").stdout
    assert "no bake" in out and "now serves v1" in out

    # The identical digest, no bake anywhere: no new image, no new cache entry, no bake event.
    prod = p.json("releases", "web", "-E", "production")
    assert len(prod) == 1  # type: ignore[arg-type]
    release = prod[0]  # type: ignore[index]
    assert release["image"] == staged["image"]
    assert release["origin"]["environment"] == "staging"
    assert release["origin"]["release"] == staged["release"]
    assert release["origin"]["image"] == staged["image"]
    assert release["config"]["env"] == {"HELLO_VERSION": "prod"}  # production's overlay
    assert {i["digest"] for i in p.json("images")} == images_before  # type: ignore[union-attr]
    assert cache_entries(p) == cache_before
    assert not [e for e in bake_events(p, "production") if "bake" in e["action"]]
    created = [e for e in p.json("audit", "-E", "production")  # type: ignore[union-attr]
               if e["action"] == "release.created"]
    assert created[-1]["detail"]["origin"]["environment"] == "staging"
    started = [e for e in p.json("audit", "-E", "production")  # type: ignore[union-attr]
               if e["action"] == "deploy.started"]
    assert "promoted from staging v1" in started[-1]["detail"]["reason"]
    assert "from" in p.cli("releases", "-E", "production").stdout

    # Both routers serve at once, each its own environment's hosts and config.
    status, body = get(router_of(p, "production"))
    assert status == 200 and "hello from vprod" in body
    status, body = get(router_of(p, "staging"))
    assert status == 200 and "vprod" not in body
    assert len(p.json("hosts", "-E", "production")) == 2  # type: ignore[arg-type]
    assert len(p.json("hosts", "-E", "staging")) == 1  # type: ignore[arg-type]
    # Each environment sees only its own hosts: the project names (and labels) differ.
    assert not ({h["id"] for h in p.json("hosts", "-E", "staging")}  # type: ignore[union-attr]
                & {h["id"] for h in p.json("hosts", "-E", "production")})  # type: ignore[union-attr]

    # gc keeps an image any environment uses, whichever environment asks.
    gc = p.json("gc", "--keep", "0")
    assert gc["removed"] == []  # type: ignore[index]
    assert any("production" in w for w in gc["kept"][staged["image"]])  # type: ignore[index]

    # Promoting the same image again reuses the release: nothing to deploy.
    again = p.cli("deploy", "web", "-E", "production", "--from", "staging").stdout
    assert "already serving" in again


def test_promote_only_refuses_each_unmet_condition(envs: CliProject,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    p = envs
    spec = p.path / "hinotori.toml"
    p.cli("up", "-d", "-E", "staging")
    p.cli("up", "-d", "-E", "production")

    # Nothing serves in staging yet.
    r = p.cli("deploy", "web", "-E", "production", "--from", "staging", check=False)
    assert r.returncode == 1 and "serves nothing in staging" in r.stderr

    # A deploy (or a bake-and-deploy) that is not a promotion.
    p.cli("bake", "web", "-E", "production")
    r = p.cli("deploy", "web", "-E", "production", check=False)
    assert r.returncode == 1 and "promote_only" in r.stderr and "--from staging" in r.stderr
    r = p.cli("ship", "web", "-E", "production", check=False)
    assert r.returncode == 1 and "promote_only" in r.stderr
    # ... nor through the API with --release: the controller refuses it too.
    r = p.cli("deploy", "web", "-E", "production", "--release", "v1", check=False)
    assert r.returncode == 1 and "made here" in r.stderr
    assert p.json("hosts", "-E", "production") == []

    # The soak: served less than production demands.
    p.cli("bake", "web", "-E", "staging")  # the same image: the store is shared
    p.cli("deploy", "web", "-E", "staging")
    spec.write_text(spec.read_text().replace('soak = "0s"', 'soak = "1h"'))
    r = p.cli("deploy", "web", "-E", "production", "--from", "staging", check=False)
    assert r.returncode == 1 and "less than the 60m soak" in r.stderr, r.stderr
    spec.write_text(spec.read_text().replace('soak = "1h"', 'soak = "1s"'))
    time.sleep(1.1)
    # Another source than promote_from is refused.
    r = p.cli("deploy", "web", "-E", "production", "--from", "production", check=False)
    assert r.returncode == 1 and "itself" in r.stderr

    # A failed deployment of the image in staging (a config that never gets healthy).
    r = p.cli("deploy", "web", "-E", "staging", "--env", "HELLO_HEALTHY=0", check=False)
    assert r.returncode == 1
    r = p.cli("deploy", "web", "-E", "production", "--from", "staging", check=False)
    assert r.returncode == 1 and "deployment failed in staging" in r.stderr, r.stderr
    assert p.json("hosts", "-E", "production") == []
    assert p.json("releases", "web", "-E", "production")[-1]["origin"] is None  # type: ignore[index]

    # A new image that served its soak cleanly is taken.
    p.set_version("7")
    p.cli("bake", "web", "-E", "staging")
    p.cli("deploy", "web", "-E", "staging")
    time.sleep(1.1)
    assert "now serves" in p.cli("deploy", "web", "-E", "production", "--from",
                                 "staging").stdout

    # A rollback away from an image in staging disqualifies it.
    p.set_version("8")
    p.cli("bake", "web", "-E", "staging")
    p.cli("deploy", "web", "-E", "staging")
    p.cli("rollback", "web", "-E", "staging")
    p.cli("deploy", "web", "-E", "staging")  # v8's image serves again, after its rollback
    time.sleep(1.1)
    r = p.cli("deploy", "web", "-E", "production", "--from", "staging", check=False)
    assert r.returncode == 1 and "rolled back in staging" in r.stderr, r.stderr

    # The image stops serving in staging: not serving now.
    p.cli("down", "-E", "staging")
    r = p.cli("deploy", "web", "-E", "production", "--from", "staging", check=False)
    assert r.returncode == 1 and "not serving in staging now" in r.stderr, r.stderr


def test_the_push_webhook_respects_promote_only(envs: CliProject,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    p = envs
    secret = "s3cret-for-tests"
    monkeypatch.setenv("HINOTORI_WEBHOOK_SECRET", secret)
    spec = p.path / "hinotori.toml"
    spec.write_text(spec.read_text().replace(
        'stop_grace = "10s"', 'stop_grace = "10s"\nship_on = { repository = "acme/hello" }'))
    p.cli("up", "-d", "-E", "production")
    info = json.loads((p.path / ".hinotori" / "env" / "production" / "controller.json")
                      .read_text())
    push = json.dumps({"ref": "refs/heads/main", "after": "abc123",
                       "repository": {"full_name": "acme/hello"}}).encode()
    signature = "sha256=" + hmac.new(secret.encode(), push, hashlib.sha256).hexdigest()
    req = urllib.request.Request(f"http://{info['address']}/v1/webhooks/push", data=push,
                                 method="POST", headers={"Content-Type": "application/json",
                                                         "X-Hub-Signature-256": signature})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=10)
    assert "promote_only" in json.loads(refused.value.read())["error"]
    assert wait_until(lambda: any(
        e["action"] == "webhook.refused"
        for e in p.json("audit", "-E", "production")), timeout=5)  # type: ignore[union-attr]
    assert p.json("images") == []  # nothing was baked


def test_without_environments_nothing_changes(tmp_path: Path) -> None:
    p = make_project(tmp_path, replicas=1)
    try:
        p.cli("up", "-d")
        assert "now serves v1" in p.cli("ship", "web").stdout
        state = p.path / ".hinotori"
        assert (state / "state.db").exists() and (state / "controller.json").exists()
        assert not (state / "env").exists()
        assert p.json("releases", "web")[0]["origin"] is None  # type: ignore[index]
        r = p.cli("hosts", "-E", "staging", check=False)
        assert r.returncode == 2 and "declares no environments" in r.stderr
        r = p.cli("deploy", "web", "--from", "staging", check=False)
        assert r.returncode == 1 and "--environment" in r.stderr
        assert get(p.router)[0] == 200
    finally:
        teardown(p)
