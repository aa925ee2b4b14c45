"""Output helpers: Rich for people, JSON for scripts, one error format for both."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hinotori.errors import HinotoriError

console = Console()
err_console = Console(stderr=True)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    t = Table(title=title, title_justify="left", header_style="bold")
    for c in columns:
        t.add_column(c)
    for row in rows:
        t.add_row(*("" if v is None else str(v) for v in row))
    console.print(t)


def print_error(error: HinotoriError) -> None:
    # User text may hold brackets ("[router] listen") that Rich would take for markup.
    err_console.print(f"[bold red]error:[/] {escape(error.message)}", highlight=False,
                      soft_wrap=True)
    if error.hint:
        err_console.print(f"[yellow]hint:[/] {escape(error.hint)}", highlight=False,
                          soft_wrap=True)


def age(ts: float | None) -> str:
    if not ts:
        return ""
    s = max(0.0, time.time() - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s / size:.0f}{unit}"
    return f"{s:.0f}s"


def when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def short_digest(digest: str) -> str:
    return digest.removeprefix("sha256:")[:12]
