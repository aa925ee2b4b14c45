"""The suite's order: longest modules first (tests/conftest.py applies it).

The suite runs on xdist workers a module at a time (``--dist loadfile``, so a module's
module-scoped lab, engine or router is made once). xdist hands modules out in collection order
(``--no-loadscope-reorder``: its default, most tests first, started the few-but-long modules
last, where one of them was the run's tail while the other workers sat idle). Handing the
longest out first (longest-processing-time-first) leaves the short ones to fill the gaps.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Modules by seconds of one worker's time, longest first: every module over 150 s in a
# `--durations=0 --junitxml` run of tests/integration on this 2-core machine under load (sum of
# setup, call and teardown per module, 2026-12-07: test_fleet 694 s ... test_logs_controller
# 162 s). Every module not named here follows in its collection order.
LONGEST_FIRST = (
    "tests/integration/test_fleet.py",
    "tests/integration/test_crash_safety.py",
    "tests/integration/test_hold.py",
    "tests/integration/test_matrix.py",
    "tests/integration/test_image_transfer.py",
    "tests/integration/test_environments.py",
    "tests/integration/test_jobs.py",
    "tests/integration/test_lifecycle.py",
    "tests/integration/test_osimage.py",
    "tests/integration/test_tls.py",
    "tests/integration/test_canary.py",
    "tests/integration/test_rolling.py",
    "tests/integration/test_api.py",
    "tests/integration/test_metrics_history.py",
    "tests/integration/test_maintenance.py",
    "tests/integration/test_secrets.py",
    "tests/integration/test_verify_cli.py",
    "tests/integration/test_router_haproxy.py",
    "tests/integration/test_burn.py",
    "tests/integration/test_api_hostile.py",
    "tests/integration/test_controller_reload.py",
    "tests/integration/test_dashboard_operate.py",
    "tests/integration/test_status_quick.py",
    "tests/integration/test_fleet_observe.py",
    "tests/integration/test_bake_controller.py",
    "tests/integration/test_dashboard.py",
    "tests/integration/test_logs_controller.py",
)


def module_rank(nodeid: str) -> int:
    """Where a test's module goes in the run: its place in LONGEST_FIRST, else after them."""
    module = nodeid.split("::", 1)[0]
    try:
        return LONGEST_FIRST.index(module)
    except ValueError:
        return len(LONGEST_FIRST)


def longest_first(nodeids: list[str]) -> list[str]:
    """``nodeids`` in the run's order: a stable sort, so a module's tests keep their order
    (e.g. its tests on one engine before those on the other, each engine started once)."""
    return sorted(nodeids, key=module_rank)
