"""Deployment hooks run with the deployment's context; a failing pre-deploy hook aborts cleanly;
webhook notifications arrive, and a dead or slow receiver never blocks a deployment."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from hinotori.processes import pid_alive
from tests.support import free_port, make_project, teardown, wait_until

pytestmark = pytest.mark.integration

RECORD = ("import os; open(os.environ['HINOTORI_SERVICE'] + '.hooks', 'a').write("
          "'{name} ' + os.environ['HINOTORI_FROM_RELEASE'] + ' ' + "
          "os.environ['HINOTORI_TO_RELEASE'] + ' ' + os.environ['HINOTORI_STRATEGY'] + '\\n')")


class Receiver(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.server.slow:  # type: ignore[attr-defined]
            time.sleep(5)
        self.server.events.append(json.loads(body))  # type: ignore[attr-defined]
        self.send_response(204)
        self.end_headers()


def receiver(slow: bool = False) -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    server.daemon_threads = True
    server.events, server.slow = [], slow  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_hooks_and_notifications(tmp_path: Path) -> None:
    good, slow = receiver(), receiver(slow=True)
    dead = f"http://127.0.0.1:{free_port()}/"
    hooks = "\n".join(
        f"{name} = [{json.dumps(sys.executable)}, \"-c\", {json.dumps(RECORD.format(name=name))}]"
        for name in ("pre_deploy", "post_switch", "post_deploy"))
    p = make_project(tmp_path, replicas=1)
    spec = p.path / "hinotori.toml"
    urls = [f"http://127.0.0.1:{good.server_address[1]}/",
            f"http://127.0.0.1:{slow.server_address[1]}/", dead]
    text = spec.read_text().replace("[project]", f"[notify]\nwebhooks = {json.dumps(urls)}\n\n"
                                    "[project]")
    spec.write_text(text + f"\n[services.web.hooks]\n{hooks}\n")
    try:
        p.cli("up", "-d")
        p.cli("bake", "web")
        started = time.monotonic()
        p.cli("deploy", "web")
        assert time.monotonic() - started < 5  # the slow and the dead receiver did not block
        assert (p.path / "web.hooks").read_text().splitlines() == [
            "pre_deploy  v1 blue-green", "post_switch  v1 blue-green",
            "post_deploy  v1 blue-green"]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(
                e["event"] == "succeeded" for e in good.events):  # type: ignore[attr-defined]
            time.sleep(0.1)
        events = [e["event"] for e in good.events]  # type: ignore[attr-defined]
        assert events[0] == "started" and events[-1] == "succeeded" and "step" in events
        assert good.events[0]["to"] == "v1"  # type: ignore[attr-defined]

        # A failing pre-deploy hook aborts before anything boots.
        spec.write_text(spec.read_text().replace(
            f"pre_deploy = [{json.dumps(sys.executable)}",
            f"pre_deploy = [{json.dumps(sys.executable)}, \"-c\", \"import sys; "
            "print('migration failed'); sys.exit(3)\", \"--\"", 1))
        result = p.cli("deploy", "web", "--env", "HELLO_VERSION=2", check=False)
        assert result.returncode == 1 and "pre-deploy hook failed" in result.stderr
        assert "migration failed" in result.stderr
        assert {h["release_name"] for h in p.json("hosts")} == {"v1"}  # type: ignore[union-attr]
    finally:
        teardown(p)
        good.shutdown()
        slow.shutdown()


def test_down_kills_a_hook_that_is_still_running(tmp_path: Path) -> None:
    # An on_join hook (a background task of the controller) and its grandchild, both asleep.
    hook = ["sh", "-c", "sleep 300 & echo $! > hook.child; echo $$ > hook.main; wait"]
    p = make_project(tmp_path, replicas=1)
    spec = p.path / "hinotori.toml"
    spec.write_text(spec.read_text() + "\n[services.web.hooks]\n"
                    f"on_join = {json.dumps(hook)}\ntimeout = \"10m\"\n")
    pidfiles = [p.path / "hook.main", p.path / "hook.child"]
    try:
        p.cli("up", "-d")
        p.cli("bake", "web")
        p.cli("deploy", "web")
        assert wait_until(lambda: all(f.exists() and f.read_text().strip() for f in pidfiles))
        pids = [int(f.read_text()) for f in pidfiles]
        assert all(pid_alive(pid) for pid in pids)
        p.cli("down")
        assert [pid for pid in pids if pid_alive(pid)] == []
    finally:
        teardown(p)
        for f in pidfiles:  # never leave the sleepers behind, whatever failed
            with contextlib.suppress(ValueError, OSError):
                os.kill(int(f.read_text()), signal.SIGKILL)
