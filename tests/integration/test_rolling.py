"""Rolling updates never go below replicas - max_unavailable, and drop no request."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from hinotori.loadgen import BackgroundLoad
from tests.support import CliProject, make_project, serve_v1, teardown

pytestmark = pytest.mark.integration

ROLLING = """
[services.web.strategy]
kind = "rolling"
max_surge = {surge}
max_unavailable = {unavailable}
"""


def rolling_project(tmp_path: Path, surge: int, unavailable: int) -> CliProject:
    p = make_project(tmp_path, replicas=3)
    spec = p.path / "hinotori.toml"
    spec.write_text(spec.read_text() + ROLLING.format(surge=surge, unavailable=unavailable))
    return p


def watch_serving(p: CliProject, stop: threading.Event, counts: list[int]) -> None:
    from hinotori.model import HostState
    from hinotori.store import Store

    store = Store(p.path / ".hinotori" / "state.db")
    while not stop.is_set():
        counts.append(len(store.hosts("web", [HostState.SERVING])))
        time.sleep(0.01)


@pytest.mark.parametrize(("surge", "unavailable"), [(1, 0), (0, 1)])
def test_rolling_keeps_capacity_and_drops_nothing(tmp_path: Path, surge: int,
                                                  unavailable: int) -> None:
    p = rolling_project(tmp_path, surge, unavailable)
    try:
        serve_v1(p, bake="2")
        counts: list[int] = []
        stop = threading.Event()
        watcher = threading.Thread(target=watch_serving, args=(p, stop, counts))
        load = BackgroundLoad(p.router, clients=20, rate=200, record_header="x-hello-version")
        load.start()
        watcher.start()
        try:
            out = p.cli("deploy", "web").stdout
        finally:
            stop.set()
            watcher.join()
            stats = load.stop()
        assert stats.failed == 0, stats.failures
        assert "rolling batch" in out and "now serves v2" in out
        assert min(counts) >= 3 - unavailable and max(counts) <= 3 + surge
        assert {h["release_name"] for h in p.json("hosts")} == {"v2"}  # type: ignore[union-attr]
        assert len(p.json("hosts")) == 3  # type: ignore[arg-type]
    finally:
        teardown(p)


def test_failed_batch_rolls_the_previous_release_back_in(tmp_path: Path) -> None:
    p = rolling_project(tmp_path, 1, 0)
    try:
        p.cli("up", "-d")
        p.cli("bake", "web")
        p.cli("deploy", "web")
        spec = p.path / "hinotori.toml"
        spec.write_text(spec.read_text().replace('boot_timeout = "30s"', 'boot_timeout = "3s"'))
        result = p.cli("deploy", "web", "--env", "HELLO_HEALTHY=0", check=False)
        assert result.returncode == 1 and "failed its health check" in result.stderr
        hosts = p.json("hosts")
        assert {h["release_name"] for h in hosts} == {"v1"} and len(hosts) == 3  # type: ignore[union-attr]
    finally:
        teardown(p)
