"""Secrets end to end on process hosts: each source kind and as_file reach the host, a rotation
makes a config-only release that rolls out, an unresolvable secret refuses the boot with
traffic where it was, and no value is found in any file under .hinotori/ (sqlite pages and WAL
included) or in any API answer, while lines the host logged with a value are stored masked."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from hinotori.providers.secretfiles import tmpfs_root
from tests.support import (
    CliProject,
    container_teardown,
    ensure_debian_base,
    make_project,
    teardown,
    wait_until,
    write_container_project,
)

pytestmark = pytest.mark.integration

APP = '''\
import hashlib, json, os, stat
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

def digest(value):
    return None if value is None else hashlib.sha256(value.encode()).hexdigest()

def state():
    got = {name: digest(os.environ.get(name)) for name in ("DB_PASSWORD", "API_KEY", "TOKEN")}
    path = os.environ.get("TLS_KEY_FILE")
    got.update(tls_path=path, tls_in_env="TLS_KEY" in os.environ,
               release=os.environ["HINOTORI_RELEASE"])
    if path:
        with open(path) as f:
            got["TLS_KEY"] = digest(f.read())
        got["tls_mode"] = stat.S_IMODE(os.stat(path).st_mode)
    return got

print("booting with API_KEY=" + os.environ.get("API_KEY", ""), flush=True)
with open(os.path.join(os.environ["HINOTORI_SCRATCH"], "app.log"), "a") as f:
    f.write("db password is " + os.environ.get("DB_PASSWORD", "") + "\\n")

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/log":
            print("request with token " + os.environ.get("TOKEN", "") + " and key "
                  + os.environ.get("API_KEY", ""), flush=True)
        body = b"ok" if self.path == "/healthz" else json.dumps(state()).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

ThreadingHTTPServer((os.environ.get("BIND", "127.0.0.1"), int(os.environ["PORT"])),
                    Handler).serve_forever()
'''

# verify checks run in the host with its env: secrets included (from /proc, not env.json)
CHECK = """
[[services.web.checks]]
command = ["{python}", "-c", "import os, sys; sys.exit(0 if os.environ['TOKEN'] else 1)"]
exit_status = 0
"""

SECRETS = """
[services.web.secrets]
DB_PASSWORD = { env = "HT_DB_PASS" }
API_KEY = { file = "../vault/api.key" }
TOKEN = { command = ["cat", "../vault/token.txt"], timeout = "5s" }
TLS_KEY = { file = "../vault/tls.key", as_file = true }
"""


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def get(p: CliProject, path: str) -> dict:
    with urllib.request.urlopen(f"http://{p.router}{path}", timeout=10) as r:
        return json.loads(r.read())


def api(p: CliProject, path: str) -> bytes:
    info = json.loads((p.path / ".hinotori" / "controller.json").read_text())
    token = (p.path / ".hinotori" / "token").read_text().strip()
    req = urllib.request.Request(f"http://{info['address']}{path}",
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read()


def files_holding(root: Path, values: dict[str, str], *, apps: bool = True) -> list[str]:
    """Every file under ``root`` (binary: sqlite pages, WAL) holding one of the values;
    without ``apps``, not the files live hosts wrote in their own view and scratch dir."""
    found = []
    for path in root.rglob("*"):
        own = path.relative_to(root).parts[:1] == ("hosts",) and len(path.parts) > 2 and \
            path.relative_to(root).parts[2:3] in (("root",), ("scratch",))
        if not apps and own:
            continue
        if path.is_file() and not path.is_symlink():
            try:
                data = path.read_bytes()
            except OSError:
                continue
            found += [f"{name} in {path}" for name, v in values.items() if v.encode() in data]
    return found


@pytest.fixture
def secret_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    p = make_project(tmp_path, replicas=2)
    (p.path / "secretapp.py").write_text(APP)
    spec = (p.path / "hinotori.toml").read_text()
    spec = spec.replace('"app.py"]', '"secretapp.py"]', 1)
    spec = spec.replace('stop_grace = "10s"', 'stop_grace = "10s"\nlog_files = ["app.log"]', 1)
    (p.path / "hinotori.toml").write_text(spec + CHECK.replace("{python}", sys.executable)
                                          + SECRETS)
    vault = tmp_path / "vault"
    vault.mkdir()
    values = {name: f"{name.lower()}-{secrets.token_hex(12)}"
              for name in ("db", "api1", "api2", "token", "tls")}
    (vault / "api.key").write_text(values["api1"] + "\n")
    (vault / "token.txt").write_text(values["token"] + "\n")
    (vault / "tls.key").write_text(values["tls"])
    monkeypatch.setenv("HT_DB_PASS", values["db"])
    yield p, vault, values
    teardown(p)


def test_secrets_reach_hosts_rotate_and_rest_nowhere(secret_project, monkeypatch) -> None:
    p, vault, values = secret_project
    p.cli("up", "-d")
    p.cli("bake", "web")
    p.cli("verify", "web")  # a throwaway host gets them too (its checks need TOKEN)
    p.cli("deploy", "web")
    state = get(p, "/state")
    assert state["DB_PASSWORD"] == sha(values["db"])  # env
    assert state["API_KEY"] == sha(values["api1"])  # file (its trailing newline dropped)
    assert state["TOKEN"] == sha(values["token"])  # command
    assert state["TLS_KEY"] == sha(values["tls"]) and not state["tls_in_env"]  # as_file
    assert state["tls_mode"] == 0o400
    tls_path = Path(state["tls_path"])
    assert tls_path.is_relative_to(tmpfs_root())
    assert not tls_path.is_relative_to(p.path)
    get(p, "/log")

    # Rotation: the file changed, so the next deploy makes a config-only release and rolls it.
    (vault / "api.key").write_text(values["api2"] + "\n")
    out = p.cli("deploy", "web").stdout
    assert "secret API_KEY changed: new release v2" in out
    v1, v2 = p.json("releases")  # type: ignore[misc]
    assert v2["reason"] == "secret API_KEY changed" and v2["image"] == v1["image"]
    fp1, fp2 = v1["config"]["secrets"], v2["config"]["secrets"]
    assert fp1["API_KEY"]["fingerprint"] != fp2["API_KEY"]["fingerprint"]
    assert fp1["TOKEN"] == fp2["TOKEN"] and fp1["DB_PASSWORD"] == fp2["DB_PASSWORD"]
    assert fp2["TOKEN"]["source"] == {"command": ["cat", "../vault/token.txt"], "timeout": 5.0}
    assert get(p, "/state")["API_KEY"] == sha(values["api2"])
    assert "nothing to deploy" in p.cli("deploy", "web").stdout  # unchanged: no release
    get(p, "/log")

    p.cli("rollback", "web")
    assert get(p, "/state")["release"] == "v1"
    p.cli("deploy", "web")  # forward again: v2 booted anew, the file read again
    again = get(p, "/state")
    assert again["release"] == "v2" and again["API_KEY"] == sha(values["api2"])
    assert again["TOKEN"] == state["TOKEN"] and again["TLS_KEY"] == state["TLS_KEY"]

    # A secret the CLI cannot resolve: refused before any release is made.
    (vault / "token.txt").rename(vault / "token.gone")
    refused = p.cli("deploy", "web", check=False)
    assert refused.returncode == 1
    assert "secret TOKEN (command cat ../vault/token.txt)" in refused.stderr
    assert "Traceback" not in refused.stderr and len(p.json("releases")) == 2  # type: ignore
    (vault / "token.gone").rename(vault / "token.txt")

    # A controller that cannot resolve one refuses the boot: traffic stays on v2.
    p.stop_controller()
    monkeypatch.delenv("HT_DB_PASS")
    p.cli("up", "-d")
    monkeypatch.setenv("HT_DB_PASS", values["db"])  # the CLI has it; the controller has not
    (vault / "api.key").write_text(values["api1"] + "\n")
    failed = p.cli("deploy", "web", check=False)
    assert failed.returncode == 1
    assert "secret DB_PASSWORD (env HT_DB_PASS): HT_DB_PASS is not set" in failed.stderr
    assert get(p, "/state")["release"] == "v2"
    assert {h["release"] for h in p.serving()} == {2}

    # Logged lines hold *** where the values were: output capture, declared file, logs.db.
    assert wait_until(lambda: len(json.loads(api(p, "/v1/logs?service=web&grep=token"))
                                  ["lines"]) >= 2, timeout=10)
    lines = [ln["line"] for ln in json.loads(api(p, "/v1/logs?service=web&limit=1000"))["lines"]]
    assert "request with token *** and key ***" in lines
    assert "booting with API_KEY=***" in lines and "db password is ***" in lines
    hosts = json.loads(api(p, "/v1/hosts?all=true"))
    web = next(h for h in hosts if h["state"] == "serving")
    output = Path(web["data"]["log"]).read_text()
    assert "booting with API_KEY=***" in output

    # Nowhere under .hinotori/, in no API answer, after all of that.
    answers = b"".join(api(p, path) for path in (
        "/v1/hosts?all=true", "/v1/releases", "/v1/deployments", "/v1/events?limit=1000",
        "/v1/logs?limit=1000", "/v1/status"))
    answers += b"".join(api(p, f"/v1/deployments/{d['id']}")
                        for d in json.loads(api(p, "/v1/deployments")))
    cli_out = "".join(p.cli(*c).stdout for c in (("releases", "--json"), ("audit", "--json"),
                                                  ("hosts", "--json"), ("logs", "web")))
    for name, value in values.items():
        assert value.encode() not in answers, name
        assert value not in cli_out, name
    # The app wrote one to its own scratch file (app.log): that is the host's own disk, gone
    # with it; everything hinotori wrote is checked now, everything at all after `down`.
    assert files_holding(p.path / ".hinotori", values, apps=False) == []

    # The as_file files go with their hosts.
    tmp_dirs = list(tmpfs_root().glob(f"hinotori-{os.getuid()}/*/web-*"))
    assert tmp_dirs
    p.cli("down")
    assert not [d for d in tmp_dirs if d.exists()]
    assert files_holding(p.path / ".hinotori", values) == []


def test_a_spec_naming_a_secret_file_inside_the_context_refuses_to_bake(
        tmp_path: Path) -> None:
    p = make_project(tmp_path, replicas=1)
    spec = p.path / "hinotori.toml"
    spec.write_text(spec.read_text() + '\n[services.web.secrets]\nKEY = { file = "key.txt" }\n')
    (p.path / "key.txt").write_text("inside-" + secrets.token_hex(8))
    try:
        refused = p.cli("bake", "web", check=False)
        assert refused.returncode == 1
        assert "secret KEY's file key.txt is inside web's image context" in refused.stderr
        (p.path / ".hinotoriignore").write_text("key.txt\n")
        p.cli("bake", "web")
    finally:
        teardown(p)


@pytest.fixture(scope="module")
def python_image(docker_client) -> str:
    """Debian bookworm minbase with python3 (the OS-image bake's cached base)."""
    return ensure_debian_base(docker_client)


@pytest.mark.parametrize("remote", [False, True], ids=["this-machine", "another-machine"])
def test_container_hosts_get_env_and_file_secrets(python_image: str, docker_client,
                                                  engine_url: str, tmp_path: Path,
                                                  remote: bool) -> None:
    """A container host gets env secrets and as_file ones at /run/hinotori/secrets (0400):
    on this machine a read-only mount of the tmpfs file, removed with the host; on another
    machine (here: a provider that believes so) put into the container before it starts."""
    import asyncio
    import time
    import uuid

    from hinotori.health import wait_healthy
    from hinotori.model import HealthCheck, Release, ReleaseConfig
    from hinotori.providers.base import BootRequest, ResolvedSecret
    from hinotori.providers.container import ContainerProvider
    from hinotori.providers.secretfiles import host_dir

    project = f"sec{uuid.uuid4().hex[:8]}"
    provider = (ContainerProvider(project, machine="m1", connect=lambda: docker_client)
                if remote else ContainerProvider(project, url=engine_url,
                                                 state_dir=tmp_path / ".hinotori"))
    env_value, file_value = "e-" + secrets.token_hex(10), "f-" + secrets.token_hex(10)
    rel = Release("web", 1, python_image, ReleaseConfig(
        command=("python3", "-m", "http.server", "8000")), time.time())
    read = ("import os, stat; p = os.environ['KEY_FILE']; print(os.environ['PASS'], p, "
            "open(p).read(), oct(stat.S_IMODE(os.stat(p).st_mode)), 'KEY' in os.environ)")

    async def scenario() -> None:
        host = await provider.boot(BootRequest(
            "web-s1", rel, tmp_path, tmp_path / "web-s1",
            secrets=(ResolvedSecret("PASS", env_value), ResolvedSecret("KEY", file_value,
                                                                       as_file=True))))
        try:
            ok = await wait_healthy(host.address or "", HealthCheck(path="/", interval=0.1),
                                    deadline=30)
            assert ok.ok, ok
            res = await provider.exec(host, ["python3", "-c", read])
            assert res.stdout.split() == [env_value, "/run/hinotori/secrets/KEY", file_value,
                                          "0o400", "False"], res
            mine = host_dir(str(tmp_path / ".hinotori"), "web-s1")
            assert mine.is_dir() != remote
            view = json.dumps(host.view())
            assert env_value not in view and file_value not in view
        finally:
            await provider.destroy(host, grace=2)
        assert not host_dir(str(tmp_path / ".hinotori"), "web-s1").exists()

    asyncio.run(scenario())


def test_container_deploy_with_secrets_end_to_end(tmp_path: Path, engine_url: str, docker_client,
                                                  python_image: str, monkeypatch) -> None:
    """The same through the controller with container hosts: values reach the containers, what
    they print is stored masked (the engine's log feed), nothing under .hinotori/ holds one."""
    import uuid

    path, vault = tmp_path / "proj", tmp_path / "vault"
    vault.mkdir()
    name = f"secct{uuid.uuid4().hex[:6]}"
    p = write_container_project(path, name, APP, "1", replicas=1, extra=SECRETS)
    values = {n: f"{n}-{secrets.token_hex(12)}" for n in ("db", "api", "token", "tls")}
    (vault / "api.key").write_text(values["api"])
    (vault / "token.txt").write_text(values["token"])
    (vault / "tls.key").write_text(values["tls"])
    monkeypatch.setenv("HT_DB_PASS", values["db"])
    try:
        p.cli("up", "-d")
        p.cli("bake", "web", timeout=300)
        p.cli("deploy", "web", timeout=300)
        state = get(p, "/state")
        assert state["DB_PASSWORD"] == sha(values["db"]) and state["TOKEN"] == sha(values["token"])
        assert state["API_KEY"] == sha(values["api"]) and state["TLS_KEY"] == sha(values["tls"])
        assert state["tls_path"] == "/run/hinotori/secrets/TLS_KEY" and state["tls_mode"] == 0o400
        get(p, "/log")
        assert wait_until(lambda: any(
            "request with token ***" in ln["line"] for ln in
            json.loads(api(p, "/v1/logs?service=web&limit=1000"))["lines"]), timeout=15)
        answers = b"".join(api(p, q) for q in ("/v1/hosts?all=true", "/v1/releases",
                                               "/v1/events?limit=1000", "/v1/logs?limit=1000"))
        for key, value in values.items():
            assert value.encode() not in answers, key
        assert files_holding(path / ".hinotori", values) == []
    finally:
        container_teardown(p, docker_client, name)
    assert files_holding(path / ".hinotori", values) == []
