"""The figures a bench reports, for bench/all.py's RESULTS.md (not a test).

A bench prints what it measured as it always has, and also calls ``record()`` for each figure
that has a goal or that a reader should see at a glance. ``record()`` appends one JSON line to
the file named by $HINOTORI_BENCH_RESULTS (bench/all.py sets it per bench) and does nothing
when the variable is unset, so a bench run by hand behaves exactly as before.

    from results import record          # bench/ is on sys.path when a bench runs
    record("router", "builtin/haproxy req/s, 1 worker vs 1 thread", 0.81, unit="x", goal=">= 0.75")

``goal`` is a comparison and a number (``>= 0.75``, ``< 5``, ``<= 1.5``, ``== 0``); ``met`` is
worked out from it, so every bench states its goals the same way.
"""

from __future__ import annotations

import json
import operator
import os
import re
from pathlib import Path

RESULTS_ENV = "HINOTORI_BENCH_RESULTS"

_COMPARISONS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt,
                "==": operator.eq}
_GOAL = re.compile(r"^\s*(>=|<=|==|>|<)\s*(-?[0-9.]+)\s*$")


def goal_met(value: float, goal: str) -> bool:
    """Whether ``value`` meets ``goal`` (``">= 0.75"``); a malformed goal is a bench's bug."""
    match = _GOAL.match(goal)
    if match is None:
        raise ValueError(f"goal {goal!r} is not '<comparison> <number>', e.g. '>= 0.75'")
    return _COMPARISONS[match.group(1)](value, float(match.group(2)))


def record(bench: str, figure: str, value: float, *, unit: str = "", goal: str | None = None,
           detail: str = "") -> None:
    """Append one figure to $HINOTORI_BENCH_RESULTS, if set (see the module's docstring)."""
    path = os.environ.get(RESULTS_ENV)
    if not path:
        return
    entry = {"bench": bench, "figure": figure, "value": float(value), "unit": unit,
             "goal": goal, "met": None if goal is None else goal_met(float(value), goal),
             "detail": detail}
    with Path(path).open("a", encoding="utf-8") as out:
        out.write(json.dumps(entry) + "\n")
