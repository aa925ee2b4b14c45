"""The soak run (10 minutes): `python -m pytest -m soak`. Not in the default suite."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "soak.py"


@pytest.mark.soak
@pytest.mark.timeout(1200)
def test_soak_chaos_and_phoenix_under_load() -> None:
    result = subprocess.run([sys.executable, str(BENCH), "--minutes", "10"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
