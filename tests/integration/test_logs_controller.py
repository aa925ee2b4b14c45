"""The controller ships every host's output: logs of destroyed and SIGKILLed hosts are complete
in the central store (every line, exactly once), and `hinotori logs` shows them after the hosts
are gone. Real controller, router and process hosts of examples/hello (its ``GET /print`` writes
numbered lines to stdout).
"""

from __future__ import annotations

import os
import signal
from collections import Counter

import httpx

from tests.support import CliProject, wait_until

LINES = 2000


def _print_on(host: dict, tag: str, n: int = LINES) -> None:
    r = httpx.get(f"http://{host['address']}/print", params={"n": n, "tag": tag}, timeout=30)
    assert r.status_code == 200


def _lines(project: CliProject, *args: str) -> list[dict]:
    return project.json("logs", "web", "--limit", "100000", *args)  # type: ignore[return-value]


def test_logs_of_destroyed_and_killed_hosts_are_complete(running: CliProject) -> None:
    p = running
    p.cli("deploy", "web")
    first, second = p.serving()

    # One host is SIGKILLed right after writing; the other is destroyed by the next deploy.
    _print_on(first, f"killed-{first['id']}")
    os.kill(first["pid"], signal.SIGKILL)
    _print_on(second, f"drained-{second['id']}")
    def replaced() -> bool:  # one `hosts` call per look
        serving = {h["id"] for h in p.serving()}
        return first["id"] not in serving and len(serving) == 2

    assert wait_until(replaced, timeout=30), "the killed host was not replaced"

    for version in ("2", "3"):  # v1 goes warm after v2, and is destroyed after v3
        p.set_version(version)
        p.cli("bake", "web")
        p.cli("deploy", "web")
    assert {h["release_name"] for h in p.serving()} == {"v3"}
    gone = {h["id"] for h in p.json("hosts", "--all") if h["release_name"] == "v1"  # type: ignore
            and h["state"] == "destroyed"}
    assert {first["id"], second["id"]} <= gone

    v1 = _lines(p, "--release", "v1")
    for host, tag in ((first, f"killed-{first['id']}"), (second, f"drained-{second['id']}")):
        mine = Counter(ln["line"] for ln in v1 if ln["host"] == host["id"]
                       and ln["line"].startswith(tag))
        assert sorted(mine) == sorted(f"{tag} {i}" for i in range(LINES)), \
            f"{host['id']}: {LINES - len(mine)} lines missing"
        assert set(mine.values()) == {1}, "a line was stored twice"
    # What the drained host printed while it stopped was flushed after its destroy.
    assert any(ln["host"] == second["id"] and "stopped (drained)" in ln["line"] for ln in v1)

    # Filters work for hosts long gone: one host, a text search.
    only = _lines(p, "--host", first["id"], "--grep", f"killed-{first['id']} 1999")
    assert [ln["line"] for ln in only] == [f"killed-{first['id']} 1999"]


def test_down_flushes_every_host(running: CliProject) -> None:
    p = running
    p.cli("deploy", "web")
    hosts = p.serving()
    for host in hosts:
        _print_on(host, f"last-words-{host['id']}", n=500)
    p.cli("down")
    for host in hosts:
        got = [ln for ln in _lines(p, "--host", host["id"])
               if ln["line"].startswith(f"last-words-{host['id']}")]
        assert len(got) == 500
        assert any("stopped" in ln["line"] for ln in _lines(p, "--host", host["id"]))
