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

# Modules by seconds of one worker's time, longest first (per-module sums of a
# `--durations=0` run); every module not named here follows in its collection order.
LONGEST_FIRST = (
    "tests/integration/test_fleet.py",
    "tests/integration/test_osimage.py",
    "tests/integration/test_provider_container.py",
    "tests/integration/test_router_haproxy.py",
    "tests/integration/test_crash_safety.py",
    "tests/integration/test_router_builtin.py",
    "tests/integration/test_kernel_container.py",
    "tests/integration/test_fleet_observe.py",
    "tests/integration/test_environments.py",
    "tests/integration/test_jobs.py",
    "tests/integration/test_lifecycle.py",
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
