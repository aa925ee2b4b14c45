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
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from hinotori.durations import parse_duration
from hinotori.model import release_number
from hinotori.project import Project

if TYPE_CHECKING:
    from hinotori.observe.logs import LogLine, LogQuery, LogStore

# hinotori.observe.logs is imported inside the functions that use it, never at the top: every
# command's start-up imports this module (Typer reads the signatures), and the log pipeline
# (forwarders, httpx) costs ~0.1 s that only `hinotori logs` needs.

# --spec has no -f here: -f is --follow, as in `tail -f`, `docker logs -f`, `kubectl logs -f`.
# No -f here: it is --follow, as in tail -f.
SpecOpt = Annotated[Path, typer.Option("--spec", help="hinotori.toml or its directory")]


def parse_release(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return release_number(text)
    except ValueError:
        from hinotori.observe.logs import LogsError  # lazy: start-up time, see the top

        raise LogsError(f"--release {text!r} is not a release",
                        hint="write it as v3 (or 3)") from None


def parse_since(text: str | None, now: float | None = None) -> float | None:
    if text is None:
        return None
    try:
        return (time.time() if now is None else now) - parse_duration(text)
    except ValueError:
        from hinotori.observe.logs import LogsError  # lazy: start-up time, see the top

        raise LogsError(f"--since {text!r} is not a duration",
                        hint="how far back, e.g. 30s, 10m, 2h, 7d") from None


def _human(line: LogLine) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(line.ts))
    millis = int(line.ts * 1000) % 1000
    return (f"{stamp}.{millis:03d} {line.service} v{line.release} {line.host} {line.source} | "
            f"{line.line}")


def logs(service: Annotated[str | None, typer.Argument(help="default: every service")] = None,
         release: Annotated[str | None, typer.Option("--release", help="only this release, "
                                                     "e.g. v3")] = None,
         host: Annotated[str | None, typer.Option("--host", help="only this host id")] = None,
         since: Annotated[str | None, typer.Option("--since", help="only lines stored in the "
                                                   "last …, e.g. 10m")] = None,
         grep: Annotated[str | None, typer.Option("--grep", help="only lines containing this "
                                                  "text (case-insensitive)")] = None,
         follow_: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new "
                                               "lines")] = False,
         limit: Annotated[int, typer.Option("--limit", min=1, help="the newest N lines")] = 100,
         spec: SpecOpt = Path("."),
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

    project = Project.load(spec)
    path = logs_db(project.state_dir)
    if not path.exists() and not follow_:
        raise LogsError(f"no logs yet: {path} does not exist",
                        hint="the controller (`hinotori up`) ships every host's output there")
    query = LogQuery(service=service, release=parse_release(release), host=host,
                     since=parse_since(since), grep=grep, limit=limit)
    store = LogStore(path)
    try:
        if follow_:
            _follow(store, query, json_out)
        elif json_out:
            sys.stdout.write(json.dumps([ln.to_dict() for ln in search(store, query)],
                                        indent=2) + "\n")
        else:
            sys.stdout.writelines(_human(ln) + "\n" for ln in search(store, query))
    finally:
        store.close()


def _follow(store: LogStore, query: LogQuery, json_out: bool) -> None:
    from hinotori.observe.logs import follow  # lazy: start-up time, see the top

    try:
        for line in follow(store, query):
            sys.stdout.write((json.dumps(line.to_dict()) if json_out else _human(line)) + "\n")
            sys.stdout.flush()
    except (KeyboardInterrupt, BrokenPipeError):
        pass  # Ctrl-C or `| head`: following ends there, quietly
