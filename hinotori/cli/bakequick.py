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
import socket
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
    # Rich (the output) is imported while the controller bakes, not before the request.
    from hinotori.cli.render import console, err_console

    with sent, console.status(f"baking {service}…"):
        answer = quick.receive(sent)
    status, payload = answer
    if status is None:
        err_console.print(f"[yellow]note:[/] the controller at {address} stopped during the "
                          "bake; baking here instead", highlight=False)
        return None
    if status == 401:
        return None  # not this token's controller: the full command says so and bakes here
    if status >= 400:
        return quick.refused(status, payload)
    summary = json.loads(payload)
    if json_out:
        from hinotori.cli.render import print_json

        print_json([summary])
    else:
        show(summary)
    return 0


def show(summary: dict[str, Any]) -> None:
    """One bake's lines, from its summary (``releases.bake_summary``): the same whether this
    process or a controller baked."""
    from hinotori.cli.render import console, short_digest

    name, steps = summary["service"], summary["cache_hits"] + summary["cache_misses"]
    verb = "new release" if summary["release_created"] else "no change, still"
    cache = f" [dim]({summary['cache_hits']} of {steps} steps cached)[/]" if steps else ""
    console.print(f"[bold]{name}[/]: image {short_digest(summary['image'])}"
                  f"{' (already stored)' if summary['reused'] else ''} — {verb} "
                  f"[bold]{summary['release']}[/]{cache}")
    cached = summary.get("cached_steps")
    if cached is not None and steps:  # an OS image: say which layers
        built = [i for i in range(1, steps + 1) if i not in cached]
        console.print(f"  [dim]{summary['image']}; steps cached: "
                      f"{' '.join(map(str, cached)) or 'none'}; built: "
                      f"{' '.join(map(str, built)) or 'none'}[/]", highlight=False)


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
