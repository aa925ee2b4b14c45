"""`hinotori bake SERVICE` handed to a running controller, before the CLI has loaded.

A bake's own work after a one-line change is the engine's build (~1 s); starting the full CLI
costs about as much again (Typer and every command module, the spec's pydantic models, the
docker SDK, an engine connection). When a controller runs for this project, it is a warm
process that already has all of that, and POST /v1/services/{service}/bake runs the bake there
exactly as the CLI would: it reads the spec from disk again first. This is one of the quick
paths of hinotori.cli.quick (read it for which controller is trusted): one service named and
no option it does not know, or None and the full command (hinotori.cli.bakecmd) runs, which
uses the controller too when it can, or bakes in its own process.
"""

from __future__ import annotations

import getpass
import json
import re
import socket
import sys
from pathlib import Path
from typing import Any

from hinotori.cli import quick

BAKE_TIMEOUT = 3600.0  # as hinotori.controller.client.BAKE_TIMEOUT


def quick_bake(argv: list[str], environ: dict[str, str]) -> int | None:
    """The exit code of `hinotori bake <argv>` done through this project's controller, or None
    when the full command must run (nothing printed then, except why a controller that
    stopped mid-bake was left)."""
    args = _parse(argv, environ)
    if args is None:
        return None
    service, spec, environment, json_out, no_cache = args
    target = quick.controller(spec, environment)
    if target is None:
        return None
    address, token = target
    body = json.dumps({"no_cache": no_cache, "actor": f"cli:{_actor()}"}).encode()
    sent = quick.send(address, "POST", f"/v1/services/{service}/bake", token, body,
                      timeout=BAKE_TIMEOUT)
    if sent is None:
        return None  # nothing listened: a stale controller.json
    # Output not to a terminal is plain text, written here: Rich, ~40 % of this command's CPU,
    # is imported only for a terminal (colours, the spinner), while the controller bakes.
    width = quick.plain_width(environ)
    if width is None:
        from hinotori.cli.render import console

        with sent, console.status(f"baking {service}…"):
            status, payload = quick.receive(sent)
    else:
        with sent:
            status, payload = quick.receive(sent)
    if status is None:
        from hinotori.cli.render import err_console

        err_console.print(f"[yellow]note:[/] the controller at {address} stopped during the "
                          "bake; baking here instead", highlight=False)
        return None
    if status == 401:
        return None  # not this token's controller: the full command says so and bakes here
    if status >= 400:
        return quick.refused(status, payload)
    summary = json.loads(payload)
    if json_out:  # as hinotori.cli.render.print_json
        sys.stdout.write(json.dumps([summary], indent=2, default=str) + "\n")
    else:
        show(summary, width)
    return 0


def show(summary: dict[str, Any], plain_width: int | None = None) -> None:
    """One bake's lines, from its summary (``releases.bake_summary``): the same whether this
    process or a controller baked. Printed with Rich, or, given ``plain_width``, written as
    Rich writes them to a file that wide (quick.plain_wrap)."""
    name, steps = summary["service"], summary["cache_hits"] + summary["cache_misses"]
    verb = "new release" if summary["release_created"] else "no change, still"
    cache = f" [dim]({summary['cache_hits']} of {steps} steps cached)[/]" if steps else ""
    lines = [f"[bold]{name}[/]: image {summary['image'].removeprefix('sha256:')[:12]}"
             f"{' (already stored)' if summary['reused'] else ''} — {verb} "
             f"[bold]{summary['release']}[/]{cache}"]
    cached = summary.get("cached_steps")
    if cached is not None and steps:  # an OS image: say which layers
        built = [i for i in range(1, steps + 1) if i not in cached]
        lines.append(f"  [dim]{summary['image']}; steps cached: "
                     f"{' '.join(map(str, cached)) or 'none'}; built: "
                     f"{' '.join(map(str, built)) or 'none'}[/]")
    # Plain only for what Rich would print as it is: no markup or emoji code in the values
    # (service names, digests and release names have none).
    if plain_width is not None and not any(c in "[]:\\" for c in f"{name}{summary['release']}"):
        text = "\n".join(_MARKUP.sub("", line) for line in lines)
        sys.stdout.write(quick.plain_wrap(text, plain_width) + "\n")
        return
    from hinotori.cli.render import console

    for n, line in enumerate(lines):
        console.print(line, highlight=n == 0)


_MARKUP = re.compile(r"\[(?:bold|dim|/)\]")  # the only tags show() writes


def _parse(argv: list[str],
           environ: dict[str, str]) -> tuple[str, Path, str | None, bool, bool] | None:
    """(service, spec file, environment, --json, --no-cache), or None for anything else
    (--help, --local, no service or several, an unknown option, a bad value: the full
    command's)."""
    parsed = quick.parse(argv, environ, ("--json", "--no-cache"))
    if parsed is None or len(parsed[0]) != 1:
        return None
    (service,), spec, environment, given = parsed
    return service, spec, environment, "--json" in given, "--no-cache" in given


def _actor() -> str:
    """This user, as hinotori.store.default_actor names them (not imported: sqlite)."""
    try:
        user = getpass.getuser()
    except Exception:  # no user name in some containers
        import os

        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"
