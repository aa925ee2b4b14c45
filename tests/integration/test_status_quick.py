"""`hinotori status` answered by a running controller before the full CLI loads
(hinotori.cli.statusquick), and the same output as the full command on every path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support import CliProject, make_project, teardown

FULL_CLI = "from hinotori.cli.app import main; main()"  # the full command, never the quick path


def status(p: CliProject, *args: str, full: bool = False) -> subprocess.CompletedProcess[str]:
    """`hinotori status` with -X importtime, so stderr says which modules were loaded."""
    launch = ["-c", FULL_CLI] if full else ["-m", "hinotori"]
    return subprocess.run([sys.executable, "-X", "importtime", *launch, "status", *args,
                           "--spec", str(p.path)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"})


def loaded_full_cli(result: subprocess.CompletedProcess[str]) -> bool:
    return "hinotori.cli.app" in result.stderr


def without_uptime(text: str) -> str:
    """The status lines, but the controller's uptime (it moves between two calls)."""
    return "\n".join(line.split(", up ")[0] if line.startswith("controller:") else line
                     for line in text.splitlines())


def test_a_running_controller_answers_status_without_the_full_cli(tmp_path: Path) -> None:
    p = make_project(tmp_path)
    try:
        offline = status(p)
        assert offline.returncode == 0, offline.stderr
        assert loaded_full_cli(offline)  # no controller: the full command shows the store
        assert "controller: not running" in offline.stdout

        p.cli("up", "-d")
        p.cli("bake", "web")
        p.cli("deploy", "web")
        quick, full = status(p), status(p, full=True)
        assert quick.returncode == full.returncode == 0, quick.stderr + full.stderr
        assert not loaded_full_cli(quick)
        assert loaded_full_cli(full)
        assert without_uptime(quick.stdout) == without_uptime(full.stdout)
        assert "web" in quick.stdout and "serving=2" in quick.stdout  # make_project: 2 replicas

        quick_json = json.loads(status(p, "--json").stdout)
        full_json = json.loads(status(p, "--json", full=True).stdout)
        for answer in (quick_json, full_json):
            answer.pop("uptime_s")
            # The controller's collector moves on between two asks (it settles its heap).
            assert set(answer.pop("gc")) == {"collections", "frozen"}
        assert quick_json == full_json
        assert quick_json["controller"] == "running"

        # A token the controller refuses: the full command runs (and says what it can).
        token = p.path / ".hinotori" / "token"
        real = token.read_text()
        token.write_text("not-the-token\n")
        refused = status(p)
        token.write_text(real)
        assert loaded_full_cli(refused)

        # Options the quick path does not know go to the full command, which judges them.
        wrong = status(p, "--bogus")
        assert wrong.returncode == 2 and loaded_full_cli(wrong)
    finally:
        teardown(p)
