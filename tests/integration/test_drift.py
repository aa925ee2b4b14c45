"""Drift of live hosts: found through the CLI, and cleared by --replace without a failed request."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hinotori.loadgen import BackgroundLoad
from tests.support import CliProject

pytestmark = pytest.mark.integration


def test_drift_is_found_and_replaced_under_load(running: CliProject) -> None:
    p = running
    p.cli("deploy", "web")
    clean = p.cli("drift", check=False)
    assert clean.returncode == 0 and "no drift" in clean.stdout
    victim = p.serving()[0]
    root = Path(victim["root"])
    (root / "app.py").chmod(0o644)
    (root / "app.py").write_text((root / "app.py").read_text() + "# hotfix by hand\n")
    (root / "VERSION").chmod(0o600)
    (root / "backdoor.sh").write_text("#!/bin/sh\n")
    found = json.loads(p.cli("drift", "--json", check=False).stdout)
    report = next(r for r in found if r["host"] == victim["id"])  # type: ignore[union-attr]
    assert report["drifted"] and report["added"] == ["backdoor.sh"]
    assert {"path": "app.py", "what": "content"} in report["changed"]
    assert {"path": "VERSION", "what": "mode 0444 -> 0600"} in report["changed"]
    others = [r for r in found if r["host"] != victim["id"]]  # type: ignore[union-attr]
    assert others and not any(r["drifted"] for r in others)

    load = BackgroundLoad(p.router, clients=30, rate=200)
    load.start()
    try:
        replaced = p.cli("drift", "--replace", check=False)
    finally:
        stats = load.stop()
    assert replaced.returncode == 1  # drift was found: the command says so
    assert f"drift on {victim['id']}" in replaced.stdout
    assert stats.failed == 0, stats.failures
    assert victim["id"] not in {h["id"] for h in p.serving()}
    assert p.cli("drift", check=False).returncode == 0
    events = p.json("audit", "--action", "deploy.started")
    assert any(victim["id"] in e["detail"].get("reason", "") for e in events)  # type: ignore[union-attr]
    assert not os.path.exists(root)  # the drifted host is burned, not kept warm
