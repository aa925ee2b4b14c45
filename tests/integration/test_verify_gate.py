"""Deploys are gated by the service's verify checks: a release whose host fails a check is
refused with traffic untouched (expected versus got in the error)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hinotori.loadgen import BackgroundLoad
from tests.support import make_project, teardown

pytestmark = pytest.mark.integration


def test_failing_check_refuses_the_deploy(tmp_path: Path) -> None:
    p = make_project(tmp_path, replicas=2, extra=(
        '\n[[services.web.checks]]\nhttp = "/"\nstatus = 200\nbody = "hello from v1"\n'))
    try:
        p.cli("up", "-d")
        p.cli("bake", "web")
        p.cli("deploy", "web")
        p.set_version("2")  # v2 answers "hello from v2": the check expects v1
        p.cli("bake", "web")
        load = BackgroundLoad(p.router, clients=10, rate=100, record_header="x-hello-version")
        load.start()
        try:
            result = p.cli("deploy", "web", check=False)
        finally:
            stats = load.stop()
        assert result.returncode == 1 and "failed its verify checks" in result.stderr
        assert stats.failed == 0 and set(stats.by_header) == {"1"}
        assert {h["release_name"] for h in p.json("hosts")} == {"v1"}  # type: ignore[union-attr]
    finally:
        teardown(p)
