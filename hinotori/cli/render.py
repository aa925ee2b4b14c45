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


def print_usage_error(error: Exception) -> int:
    """A command-line mistake (click's UsageError or BadParameter, from click itself or from the
    copy Typer bundles): one line on stderr, no traceback. Returns the exit code (2)."""
    message = " ".join(error.format_message().split())  # type: ignore[attr-defined]
    # Typer's pydantic coercion prefixes a parser's ValueError with this; it says nothing.
    message = message.replace("Value error, ", "")
    ctx = getattr(error, "ctx", None)
    see = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    err_console.print(f"[bold red]error:[/] {escape(message)}{escape(see)}", highlight=False,
                      soft_wrap=True)
    code = getattr(error, "exit_code", 2)
    return code if isinstance(code, int) else 2


# C0 controls but tab, DEL and C1 controls, each as its visible \xNN escape.
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0)) if c != 0x09}


def visible(text: str) -> str:
    """``text`` with control characters shown, not obeyed: a host's output must not move the
    cursor, retitle or recolour the terminal of whoever reads its logs."""
    return text.translate(_CONTROLS)


def seconds(value: float | None) -> str:
    """A duration for people: 0.49s, 2s, 12.3s, 1m30s, 2h05m, 3d04h ("-" for none). Raw
    seconds stay in --json."""
    if value is None:
        return "-"
    if round(value, 2) < 10:
        return f"{value:.2f}".rstrip("0").rstrip(".") + "s"
    if round(value, 1) < 60:
        return f"{value:.1f}".rstrip("0").rstrip(".") + "s"
    whole = round(value)
    for big, small, unit, sub in ((86400, 3600, "d", "h"), (3600, 60, "h", "m"),
                                  (60, 1, "m", "s")):
        if whole >= big:
            return f"{whole // big}{unit}{(whole % big) // small:02d}{sub}"
    return f"{whole}s"


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


def release(n: int | None) -> str:
    """A release number as people write it (v3), or "-" for none."""
    return f"v{n}" if n else "-"
