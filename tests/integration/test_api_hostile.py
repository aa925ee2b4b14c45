"""The controller's API against hostile input, over raw sockets to a real controller: bodies
refused before they are read (and the controller's memory with them), numbers the store cannot
hold, LIKE wildcards, bare tokens, broken webhook payloads: all 4xx, never 500. And who did
what is what the token proves, not what the body says; and one JSON shape per noun, whether
the CLI or the API gives it."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import CliProject, make_project, teardown

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
SECRET = "hostile-webhook-secret"
BIG = 2**63  # one past the largest integer SQLite holds
HUGE = 99999999999999999999999


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliProject]:
    """One controller for the module (with a webhook secret), v1 deployed."""
    mp = pytest.MonkeyPatch()
    mp.setenv("HINOTORI_WEBHOOK_SECRET", SECRET)
    p = make_project(tmp_path_factory.mktemp("hostile"), replicas=1)
    try:
        p.cli("up", "-d")
        p.cli("bake", "web")
        p.cli("deploy", "web")
        yield p
    finally:
        teardown(p)
        mp.undo()


def address(p: CliProject) -> tuple[str, int]:
    host, _, port = json.loads((p.path / ".hinotori" / "controller.json").read_text()
                               )["address"].rpartition(":")
    return host, int(port)


def token(p: CliProject) -> str:
    return (p.path / ".hinotori" / "token").read_text().strip()


def vm_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def read_answer(s: socket.socket) -> tuple[int, dict]:
    """Status and JSON body of the one response on ``s``."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, f"connection closed before an answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    while len(body) < int(headers.get("content-length", 0)):
        chunk = s.recv(65536)
        assert chunk
        body += chunk
    return int(lines[0].split()[1]), json.loads(body)


def request_head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def chunked(n: int, size: int = 64 * 1024) -> bytes:
    """``n`` bytes of body in chunked transfer coding (without the closing chunk)."""
    piece = f"{size:x}\r\n".encode() + b"x" * size + b"\r\n"
    return piece * (n // size)


def test_bodies_are_refused_before_they_are_read(served: CliProject) -> None:
    p = served
    where, pid = address(p), p.controller_pid()
    json_type = {"Content-Type": "application/json"}
    before = peak = vm_rss_kib(pid)

    # 200 MB without a token: the 401 comes after the headers and 4 MB, not after 200 MB.
    total, block = 200 * MiB, b"x" * MiB
    with socket.create_connection(where, timeout=30) as s:
        s.sendall(request_head("POST", "/v1/services/web/deploy",
                               {**json_type, "Content-Length": str(total)}))
        for _ in range(4):
            s.sendall(block)
        status, answer = read_answer(s)  # a timeout here: the body was being read first
        assert status == 401 and answer["type"] == "Unauthorised", answer
        sent = 4 * MiB
        try:  # the rest: the controller discards it as it comes, keeping nothing
            while sent < total:
                s.sendall(block)
                sent += MiB
                if sent % (8 * MiB) == 0:
                    peak = max(peak, vm_rss_kib(pid))
        except (BrokenPipeError, ConnectionResetError):
            pass
    peak = max(peak, vm_rss_kib(pid))
    assert (peak - before) < 50 * 1024, f"RSS grew {(peak - before) / 1024:.0f} MiB"
    print(f"controller RSS {before / 1024:.0f} MiB, peak over a 200 MB unauthenticated "
          f"body {peak / 1024:.0f} MiB")

    auth = {"Authorization": f"Bearer {token(p)}", **json_type}
    # An authorised 10 MB body with its length declared: 413 at once.
    with socket.create_connection(where, timeout=30) as s:
        s.sendall(request_head("POST", "/v1/services/web/deploy",
                               {**auth, "Content-Length": str(10 * MiB)}))
        s.sendall(block)
        status, answer = read_answer(s)
        assert status == 413 and "over 1 MiB" in answer["error"], answer
    # The same without a length (chunked): 413 once 1 MiB has come, before the other 9.
    with socket.create_connection(where, timeout=30) as s:
        s.sendall(request_head("POST", "/v1/services/web/deploy",
                               {**auth, "Transfer-Encoding": "chunked"}))
        s.sendall(chunked(2 * MiB))
        status, answer = read_answer(s)
        assert status == 413 and "over 1 MiB" in answer["error"], answer
    # The push webhook (no token: it is signed) has its own cap, 25 MiB like GitHub's.
    with socket.create_connection(where, timeout=30) as s:
        s.sendall(request_head("POST", "/v1/webhooks/push",
                               {**json_type, "Content-Length": str(26 * MiB)}))
        s.sendall(block)
        status, answer = read_answer(s)
        assert status == 413 and "push payload over 25 MiB" in answer["error"], answer
    with socket.create_connection(where, timeout=30) as s:
        s.sendall(request_head("POST", "/v1/webhooks/push",
                               {**json_type, "Transfer-Encoding": "chunked"}))
        s.sendall(chunked(26 * MiB))
        status, answer = read_answer(s)
        assert status == 413, answer
    print(f"controller RSS after the capped bodies {vm_rss_kib(pid) / 1024:.0f} MiB")
    assert p.cli("status").returncode == 0  # and it still answers


def call(p: CliProject, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None, auth: bool = True) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(*address(p), timeout=30)
    try:
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        if auth:
            hdrs["Authorization"] = f"Bearer {token(p)}"
        conn.request(method, path, body=body, headers=hdrs)
        r = conn.getresponse()
        data = r.read()
        try:
            return r.status, json.loads(data) if data else {}
        except ValueError:
            return r.status, {"not_json": data.decode("latin-1")[:200]}
    finally:
        conn.close()


def test_numbers_the_store_cannot_hold_are_4xx(served: CliProject) -> None:
    p = served
    for path in (f"/v1/deployments/{HUGE}", f"/v1/deployments/{BIG}", "/v1/deployments/0",
                 "/v1/deployments/-1", f"/v1/deployments?limit={HUGE}",
                 "/v1/deployments?limit=0", f"/v1/events?limit={HUGE}",
                 f"/v1/logs?after={HUGE}", "/v1/logs?after=-1", f"/v1/logs?limit={BIG}"):
        status, answer = call(p, "GET", path)
        assert status == 422, (path, status, answer)
        assert answer["error"] and answer["type"] == "HinotoriError", (path, answer)
    status, answer = call(p, "GET", f"/v1/deployments/{HUGE}")
    assert "number" in answer["error"] and str(BIG - 1) in answer["error"], answer
    assert call(p, "GET", f"/v1/deployments/{BIG - 1}")[0] == 404  # in range, not there
    for path in (f"/v1/logs?release=v{HUGE}", "/v1/logs?release=v0", "/v1/logs?since=1e400",
                 "/v1/events?until=nan", f"/v1/metrics/history?service=web&release={HUGE}",
                 "/v1/metrics/history?service=web&since=1e400",
                 "/v1/metrics/history?service=web&until=1e400",
                 "/v1/metrics/history?service=web&step=1e400"):
        status, answer = call(p, "GET", path)
        assert 400 <= status < 500 and answer.get("error"), (path, status, answer)
    # A step wider than any history is no error: one bucket, or none.
    assert call(p, "GET", f"/v1/metrics/history?service=web&step={HUGE}")[0] == 200
    for body in ({"release": HUGE}, {"release": BIG}, {"release": 0}, {"lock_wait": 1e300},
                 {"lock_wait": -1}, {"actor": "x" * 1000}):
        status, answer = call(p, "POST", "/v1/services/web/deploy", json.dumps(body).encode())
        assert status == 422, (body, status, answer)
    status, answer = call(p, "POST", "/v1/services/web/deploy", b'{"lock_wait": Infinity}')
    assert status == 422, answer
    assert call(p, "POST", "/v1/hosts/nope/kill", b"{}")[0] == 404
    bad = p.cli("deploy", "web", "--release", f"v{HUGE}", check=False)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr, bad.stderr
    bad = p.cli("deployment", "show", str(HUGE), check=False)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr, bad.stderr


def test_event_filters_take_wildcards_literally(served: CliProject) -> None:
    p = served
    every = call(p, "GET", "/v1/events?limit=1000")[1]["events"]
    assert every
    for pattern in ("%25", "_", "%25%25", "w%25", "we_"):  # %25: a % in the query string
        status, answer = call(p, "GET", f"/v1/events?subject={pattern}")
        assert status == 200 and answer["events"] == [], pattern
    assert call(p, "GET", "/v1/events?subject=web&limit=1000")[1]["events"]
    assert p.json("audit", "%") == [] and p.json("audit", "--actor", "%") == []


def test_the_token_needs_its_scheme_and_docs_load_nothing_from_elsewhere(
        served: CliProject) -> None:
    p = served
    status, answer = call(p, "GET", "/v1/status", auth=False,
                          headers={"Authorization": token(p)})
    assert status == 401 and "Bearer" in answer["error"]
    for scheme in ("bearer", "BEARER"):
        assert call(p, "GET", "/v1/status", auth=False,
                    headers={"Authorization": f"{scheme} {token(p)}"})[0] == 200
    for path in ("/docs", "/redoc", "/openapi.json", "/no/such/path"):
        assert call(p, "GET", path, auth=False)[0] == 401, path  # nothing open but the page
    assert call(p, "GET", "/docs")[0] == 404 and call(p, "GET", "/redoc")[0] == 404
    status, schema = call(p, "GET", "/openapi.json")
    assert status == 200 and "/v1/hosts" in schema["paths"]
    assert call(p, "GET", "/", auth=False)[0] == 200  # the dashboard's page stays open


def sign(body: bytes) -> str:
    return "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()


def test_webhook_errors_are_4xx(served: CliProject) -> None:
    p = served

    def push(body: bytes, signature: str | None) -> tuple[int, dict]:
        headers = {"X-Hub-Signature-256": signature} if signature is not None else {}
        return call(p, "POST", "/v1/webhooks/push", body, headers, auth=False)

    ok = json.dumps({"ref": "refs/heads/dev", "repository": {"full_name": "acme/x"}}).encode()
    assert push(ok, sign(ok)) == (200, {"shipped": []})
    status, answer = push(ok, "sha256=\u00e9\u00e9")  # sent as latin-1 bytes
    assert status == 401 and answer["type"] == "Unauthorised", answer
    for payload in (
            {"ref": "refs/heads/main", "repository": {"full_name": ["acme", "x"]}},
            {"ref": "refs/heads/main", "repository": {"full_name": {"a": 1}}},
            {"ref": ["main"], "repository": {"full_name": "acme/x"}},
            {"ref": "refs/heads/main", "repository": ["acme/x"]},
            ["not", "an", "object"]):
        body = json.dumps(payload).encode()
        status, answer = push(body, sign(body))
        assert status == 400 and "GitHub-style push" in answer["error"], (payload, answer)
    for body in (b"\xff\xfe not json", b"[" * 100_000 + b"]" * 100_000):
        status, answer = push(body, sign(body))
        assert status == 400, (body[:20], status, answer)
    rejected = p.json("audit", "--action", "webhook.rejected")
    assert any(e["detail"].get("why") == "signature not ASCII" for e in rejected)  # type: ignore


def test_the_actor_is_what_the_token_proves(served: CliProject) -> None:
    p = served
    p.cli("rollback", "web", check=False)  # no previous release: refused, nothing recorded
    p.set_version("2")
    p.cli("bake", "web")
    p.cli("deploy", "web")
    started = p.json("audit", "--action", "deploy.started", "--limit", "1")[-1]  # type: ignore
    assert started["actor"] == "token"
    assert started["detail"]["claimed_actor"].startswith("cli:")
    body = json.dumps({"actor": "ceo@example.com", "reason": "trust me"}).encode()
    status, answer = call(p, "POST", "/v1/services/web/rollback", body)
    assert status == 200, answer
    rollback = p.json("audit", "--action", "rollback.started", "--limit", "1")[-1]  # type: ignore
    assert rollback["actor"] == "token"
    assert rollback["detail"]["claimed_actor"] == "ceo@example.com"
    text = p.cli("audit", "--action", "rollback.started").stdout
    assert "token (says ceo@example.com)" in text


def test_one_shape_per_noun(served: CliProject) -> None:
    p = served
    for cli, path in ((("hosts",), "/v1/hosts"), (("hosts", "--all"), "/v1/hosts?all=true"),
                      (("releases",), "/v1/releases"),
                      (("deployments",), "/v1/deployments?limit=20"),
                      (("deployment", "show", "1"), "/v1/deployments/1")):
        status, served_json = call(p, "GET", path)
        assert status == 200
        assert p.json(*cli) == served_json, cli
    hosts = p.json("hosts")
    assert hosts and {"release", "release_name", "weight", "data"} <= set(hosts[0])  # type: ignore
    host = hosts[0]  # type: ignore[index]
    assert isinstance(host["release"], int) and host["release_name"] == f"v{host['release']}"
    release = p.json("releases")[0]  # type: ignore[index]
    assert (release["release"], release["release_name"]) == (1, "v1")
