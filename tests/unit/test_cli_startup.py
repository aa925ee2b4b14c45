"""Every command starts by importing hinotori.cli.app (Typer needs every command's signature),
so what that import pulls in is paid by `hinotori bake` as much as by `hinotori logs`. The heavy
stacks a command uses are imported inside it; this keeps them from creeping back to the top."""

from __future__ import annotations

import json
import subprocess
import sys

# Imported only by the commands that need them (see the comments at their lazy imports).
NOT_AT_START = ("httpx", "asyncio", "docker", "requests", "fastapi", "uvicorn",
                "hinotori.observe.logs", "hinotori.observe.metrics", "hinotori.observe.drift",
                "hinotori.controller.daemon", "hinotori.controller.serve", "hinotori.health",
                "hinotori.verify.survey")


def heavy_modules_loaded(*imports: str) -> list[str]:
    """Which of NOT_AT_START a fresh interpreter holds after importing ``imports``."""
    code = (f"import json, sys\nfor name in {list(imports)!r}: __import__(name)\n"
            f"print(json.dumps([m for m in {list(NOT_AT_START)!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out)


def test_cli_start_up_imports_no_heavy_stack() -> None:
    assert heavy_modules_loaded("hinotori.cli.app") == []


def test_the_probe_sees_a_heavy_import() -> None:
    # What `hinotori logs` imports when it runs: the probe must report it.
    loaded = heavy_modules_loaded("hinotori.cli.app", "hinotori.observe.logs")
    assert {"hinotori.observe.logs", "httpx"} <= set(loaded)
