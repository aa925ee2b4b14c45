"""The `hinotori` command's entry point (``python -m hinotori`` and the installed script).

`hinotori bake SERVICE` first tries hinotori.cli.bakequick, which hands the bake to this
project's running controller without loading the full CLI (Typer, every command module, the
spec's models); everything else, and a bake it does not take, goes to hinotori.cli.app.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    if sys.argv[1:2] == ["bake"]:
        from hinotori.cli.bakequick import quick_bake

        try:
            code = quick_bake(sys.argv[2:], dict(os.environ))
        except KeyboardInterrupt:
            sys.stderr.write("aborted\n")  # as hinotori.cli.app.main says it
            sys.exit(130)
        if code is not None:
            sys.exit(code)
    from hinotori.cli.app import main as app_main

    app_main()
