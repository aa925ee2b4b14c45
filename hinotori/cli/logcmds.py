"""`hinotori logs`: read the central log store, for live hosts and for hosts long gone.

It reads ``.hinotori/logs.db`` directly (SQLite WAL: safe while the controller writes), so it
needs no running controller and shows the lines of destroyed hosts like any other. Without
``--follow`` it prints the newest ``--limit`` matching lines, oldest first; with it, those and
then every new matching line until Ctrl-C. ``--json`` prints a JSON array, or with
``--follow`` one JSON object per line (a stream a script can read as it comes).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from hinotori.cli.options import MAX_NUMBER, EnvOpt, moment_option, release_option
from hinotori.cli.render import visible

if TYPE_CHECKING:
    from hinotori.observe.logs import LogLine, LogQuery, LogStore

# hinotori.observe.logs is imported inside the functions that use it, never at the top: every
# command's start-up imports this module (Typer reads the signatures), and the log pipeline
# (forwarders, httpx) costs ~0.1 s that only `hinotori logs` needs.

# --spec has no -f here: -f is --follow, as in `tail -f`, `docker logs -f`, `kubectl logs -f`.
SpecOpt = Annotated[Path, typer.Option("--spec", help="hinotori.toml or its directory")]


def _human(line: LogLine) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(line.ts))
    millis = int(line.ts * 1000) % 1000
    return (f"{stamp}.{millis:03d} {line.service} v{line.release} {line.host} {line.source} | "
            f"{line.line}")


def logs(service: Annotated[str | None, typer.Argument(help="default: every service")] = None,
         release: Annotated[int | None, release_option("--release", help="only this release, "
                                                       "e.g. v3")] = None,
         host: Annotated[str | None, typer.Option("--host", help="only this host id")] = None,
         since: Annotated[float | None, moment_option("--since", help="only lines stored "
                                                      "since …, e.g. 10m (ago)")] = None,
         grep: Annotated[str | None, typer.Option("--grep", help="only lines containing this "
                                                  "text (case-insensitive)")] = None,
         follow_: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new "
                                               "lines")] = False,
         limit: Annotated[int, typer.Option("--limit", min=1, max=MAX_NUMBER,
                                            help="the newest N lines")] = 100,
         spec: SpecOpt = Path("."), environment: EnvOpt = None,
         json_out: Annotated[bool, typer.Option("--json", help="machine-readable output")]
         = False) -> None:
    """Host logs from the central store: live hosts and destroyed ones alike."""
    from hinotori.observe.logs import (  # lazy: start-up time, see the top
        LogQuery,
        LogsError,
        LogStore,
        logs_db,
        search,
    )
    from hinotori.project import Project

    project = Project.load(spec, environment)
    path = logs_db(project.state_dir)
    if not path.exists() and not follow_:
        raise LogsError(f"no logs yet: {path} does not exist",
                        hint="the controller (`hinotori up`) ships every host's output there")
    query = LogQuery(service=service, release=release, host=host, since=since, grep=grep,
                     limit=limit)
    # Host output may hold terminal escapes: shown as text on a terminal, never obeyed.
    human = _human if not sys.stdout.isatty() else (lambda ln: visible(_human(ln)))
    store = LogStore(path)
    try:
        if follow_:
            _follow(store, query, json_out, human)
        elif json_out:
            sys.stdout.write(json.dumps([ln.to_dict() for ln in search(store, query)],
                                        indent=2) + "\n")
        else:
            sys.stdout.writelines(human(ln) + "\n" for ln in search(store, query))
    finally:
        store.close()


def _follow(store: LogStore, query: LogQuery, json_out: bool,
            human: Callable[[LogLine], str]) -> None:
    from hinotori.observe.logs import follow  # lazy: start-up time, see the top

    try:
        for line in follow(store, query):
            sys.stdout.write((json.dumps(line.to_dict()) if json_out else human(line)) + "\n")
            sys.stdout.flush()
    except (KeyboardInterrupt, BrokenPipeError):
        pass  # Ctrl-C or `| head`: following ends there, quietly
