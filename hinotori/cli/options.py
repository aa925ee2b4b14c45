"""Options every command shares, declared once so they read the same everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

SpecOpt = Annotated[Path, typer.Option("--spec", "-f", help="hinotori.toml or its directory")]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]
