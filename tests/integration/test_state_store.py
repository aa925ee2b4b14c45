"""The state store under real load from several threads, and the state directory's modes.

Bakes through the API write state.db from the controller's worker thread while a deployment,
chaos kills and self-healing write it from the event loop: not one write may fail. And after a
real run, nothing under .hinotori/ is readable by another user, except what an image decides.
"""

from __future__ import annotations

import json
import os
import stat
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from hinotori.loadgen import BackgroundLoad
from tests.support import CliProject, make_project, teardown

pytestmark = pytest.mark.integration


def post(p: CliProject, path: str, token: str) -> tuple[int, bytes]:
    info = json.loads((p.path / ".hinotori" / "controller.json").read_text())
    req = urllib.request.Request(f"http://{info['address']}{path}", data=b"{}", method="POST",
                                 headers={"Authorization": f"Bearer {token}",
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def around_first(text: str, words: tuple[str, ...], before: int = 10, after: int = 40) -> str:
    """The lines around the first line naming one of ``words``: a failure shows what went wrong,
    not a whole log cut short in its middle."""
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if any(w in line for w in words))
    return "\n".join(lines[max(0, at - before):at + after])


def test_api_bakes_during_a_deploy_and_chaos_lose_no_write(three: CliProject) -> None:
    p = three
    token = (p.path / ".hinotori" / "token").read_text().strip()
    stop = threading.Event()
    answers: list[tuple[int, bytes]] = []

    def baker() -> None:  # each bake changes VERSION: a new release written from the thread
        version = 100
        while not stop.is_set():
            p.set_version(str(version))
            answers.append(post(p, "/v1/services/web/bake", token))
            version += 1

    chaos: dict[str, object] = {}

    def burn() -> None:
        # Chances every 0.5 s: a kill needs the steady state back (no heal, no deployment),
        # and on a loaded machine the deploy holds the service for seconds.
        chaos["result"] = p.cli("chaos", "web", "--interval", "0.5s", "--duration", "10s",
                                "--seed", "11", "--json", check=False)

    bakes, chaoser = threading.Thread(target=baker), threading.Thread(target=burn)
    bakes.start()
    chaoser.start()
    try:
        time.sleep(2)
        # Chaos kills a host a second and each kill is healed under the service's lock: the
        # deploy queues behind a heal, as an operator deploying during chaos would.
        deployed = p.cli("deploy", "web", "--lock-wait", "60s", check=False)
        chaoser.join()
    finally:
        stop.set()
        bakes.join()
        chaoser.join()

    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert "now serves" in deployed.stdout
    result = chaos["result"]
    assert result.returncode == 0, result.stdout + result.stderr  # type: ignore[attr-defined]
    assert json.loads(result.stdout)["kills"] >= 2, result.stdout  # type: ignore[attr-defined]
    assert len(answers) >= 3 and all(status == 200 for status, _ in answers), answers
    releases = p.json("releases", "web")
    assert len(releases) >= 1 + len(answers)  # type: ignore[arg-type]
    events = p.json("audit", "--limit", "100000")
    failed = [e for e in events  # type: ignore[union-attr]
              if e["action"].endswith("failed") and e["action"] != "host.failed"]
    assert failed == []
    log = (p.path / ".hinotori" / "controller.log").read_text()
    assert "Traceback" not in log and "transaction" not in log, around_first(
        log, ("Traceback", "transaction"))
    assert len(p.serving()) == 3


# What is not hinotori's to make private: the image store and its build cache (modes are part of
# an image's digest), each host's view of its image (a copy keeping those modes) and what the
# host itself writes (its scratch dir's contents).
EXCLUDED = ("images/*", "cache/*", "hosts/*/root", "hosts/*/scratch/*")


def excluded(rel: Path) -> bool:
    return any(_match(rel.parts, tuple(pattern.split("/"))) for pattern in EXCLUDED)


def _match(parts: tuple[str, ...], pattern: tuple[str, ...]) -> bool:
    """``pattern``'s parts match the first parts of ``parts`` ("*": any one name)."""
    return len(parts) >= len(pattern) and all(
        q == "*" or q == p for p, q in zip(parts, pattern, strict=False))


def test_state_dir_is_readable_by_nobody_else(tmp_path: Path) -> None:
    p = make_project(tmp_path)
    old = os.umask(0o022)  # the usual umask: what hinotori creates must not depend on it
    try:
        p.cli("up", "-d")
        p.cli("bake", "web")
        p.cli("deploy", "web")
        load = BackgroundLoad(p.router, clients=5, rate=100)
        load.start()
        time.sleep(2)
        assert load.stop().failed == 0
        p.cli("logs", "web")
        p.cli("metrics", "web", check=False)
        state = p.path / ".hinotori"
        checked: dict[str, int] = {}
        for top, dirs, files in os.walk(state):
            for name in (*dirs, *files):
                path = Path(top, name)
                rel = path.relative_to(state)
                if excluded(rel) or path.is_symlink():
                    continue
                checked[str(rel)] = stat.S_IMODE(path.lstat().st_mode)
        checked["."] = stat.S_IMODE(state.stat().st_mode)
    finally:
        os.umask(old)
        teardown(p)
    assert checked["."] == 0o700
    open_to_others = {rel: oct(m) for rel, m in checked.items() if m & 0o077}
    assert open_to_others == {}
    # Not a vacuous walk: the state that matters was there and was checked.
    names = set(checked)
    for must in ("state.db", "state.db-wal", "logs.db", "metrics.db", "token", "controller.json",
                 "controller.log", "hosts", "router", "images", "cache", "discovery"):
        assert must in names, must
    assert any(n.endswith("/output.log") for n in names)
    assert any(n.endswith("/host.json") for n in names)
    assert any(n.startswith("router/") and n.endswith(".pid") for n in names)
