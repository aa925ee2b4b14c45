"""The `hinotori` command's entry point (``python -m hinotori`` and the installed script).

`hinotori bake SERVICE` and `hinotori status` first try their quick paths (hinotori.cli.quick),
which have this project's running controller do the work without loading the full CLI (Typer,
every command module, the spec's models); everything else, and what a quick path does not
take, goes to hinotori.cli.app.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import NoReturn

# command -> (module, function) of its quick path: (argv after the command, environ) -> the exit
# code, or None when the full command must run
QUICK_PATHS = {"bake": ("hinotori.cli.bakequick", "quick_bake"),
               "status": ("hinotori.cli.statusquick", "quick_status")}


def main() -> None:
    if quick := QUICK_PATHS.get(sys.argv[1] if len(sys.argv) > 1 else ""):
        module, function = quick
        try:
            code = getattr(importlib.import_module(module), function)(sys.argv[2:],
                                                                     dict(os.environ))
        except KeyboardInterrupt:
            sys.stderr.write("aborted\n")  # as hinotori.cli.app.main says it
            sys.exit(130)
        if code is not None:
            done(code)
    from hinotori.cli.app import main as app_main

    app_main()


def done(code: int) -> NoReturn:
    """End a quick path's process without the interpreter's teardown: its work is done and
    its output is flushed here, and freeing every imported module's objects (Rich's tables
    among them) is ~7 ms of CPU after the answer was printed, paid on every quick command.
    Nothing of a quick path's needs an exit handler: its connection is closed and Rich's
    spinner thread stopped before it returns."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed pipe: Python's own exit reports it as it does
        sys.exit(code)
    os._exit(code)
