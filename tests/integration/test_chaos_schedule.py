"""Opt-in chaos schedules in the spec: kills inside the schedule (healed, no failed request),
none outside it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from hinotori.loadgen import BackgroundLoad
from tests.support import make_project, teardown, wait_until

pytestmark = pytest.mark.integration

ALL_WEEK = '["mon", "tue", "wed", "thu", "fri", "sat", "sun"]'


@pytest.mark.parametrize("inside", [True, False])
def test_scheduled_chaos(tmp_path: Path, inside: bool) -> None:
    today = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")[time.localtime().tm_wday]
    days = ALL_WEEK if inside else f'["{"sun" if today != "sun" else "mon"}"]'
    p = make_project(tmp_path, replicas=3, extra=(
        f"\n[services.web.chaos]\ndays = {days}\nhours = [0, 24]\n"
        'mean_time_between_kills = "1s"\nmin_healthy = 2\n'))
    try:
        p.cli("up", "-d")
        p.cli("bake", "web")
        p.cli("deploy", "web")
        load = BackgroundLoad(p.router, clients=20, rate=200)
        load.start()
        try:
            if inside:
                assert wait_until(lambda: len(p.json("audit", "--action", "chaos.kill")) >= 2,
                                  timeout=30)
                assert wait_until(lambda: len(p.serving()) == 3, timeout=15)
            else:
                time.sleep(4)
        finally:
            stats = load.stop()
        kills = p.json("audit", "--action", "chaos.kill")
        assert (len(kills) >= 2) if inside else not kills  # type: ignore[arg-type]
        assert stats.failed == 0, stats.failures
    finally:
        teardown(p)
