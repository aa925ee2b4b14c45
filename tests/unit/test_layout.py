"""The house rules the code keeps: small modules with one job each."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "hinotori"
MAX_LINES = 450
# Runs inside hosts as one standalone script (copied as a file), so it cannot be split.
ONE_SCRIPT = {ROOT / "verify" / "evaluator.py"}


def test_no_module_is_over_450_lines() -> None:
    big = {str(p.relative_to(ROOT)): n for p in ROOT.rglob("*.py") if p not in ONE_SCRIPT
           and (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert big == {}, f"split these by job: {big}"
