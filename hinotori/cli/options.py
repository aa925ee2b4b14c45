"""Options every command shares, declared once so they read the same everywhere.

Values a person writes (durations, moments, release names, strategy names) are parsed while the
command line is read, by Typer's ``parser=``: a bad one is a usage error (exit 2) that names its
option, raised before the command has loaded, written or started anything. A parser raises
ValueError; Typer turns that into its BadParameter under either of its flavours (click's
exceptions, or the copy of click newer Typer releases bundle), and ``app.main`` prints it in
one line.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import typer

from hinotori.durations import parse_duration, parse_moment

SpecOpt = Annotated[Path, typer.Option("--spec", "-f", help="hinotori.toml or its directory")]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]


def environment_name(text: str) -> str:
    """An environment name as the spec's [environments.NAME] writes them."""
    if not re.fullmatch(r"[a-z][a-z0-9-]{0,39}", text):
        raise ValueError(f"{text!r} is not an environment name: lowercase letters, digits and "
                         "'-', starting with a letter")
    return text


# Which [environments.NAME] overlay of the spec, and whose state (.hinotori/env/NAME/).
EnvOpt = Annotated[str | None, typer.Option(
    "--environment", "-E", envvar="HINOTORI_ENVIRONMENT", parser=environment_name,
    metavar="ENVIRONMENT", help="the [environments.NAME] to act on (also $HINOTORI_ENVIRONMENT)")]

# The strategies `--strategy` accepts: the one list the CLI checks, so a strategy registry can
# replace it in this one place.
STRATEGIES = ("blue-green", "canary", "rolling")

# SQLite's INTEGER: a release or deployment number beyond it cannot exist, and binding it
# would raise OverflowError deep in the store.
MAX_NUMBER = 2**63 - 1


def duration(text: Any) -> float:
    """Seconds in "500ms", "10s", "1m30s"…; a number passes through (a default given as one)."""
    if isinstance(text, int | float):
        return float(text)
    return parse_duration(text)


def moment(text: Any) -> float:
    """Epoch seconds: a duration ago ("10m") or epoch seconds (1764000000)."""
    if isinstance(text, int | float):
        return float(text)
    try:
        return parse_moment(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration ago (e.g. 30s, 10m, 2h, 7d) nor "
                         "epoch seconds (e.g. 1764000000)") from None


def moment_text(text: str) -> str:
    """A moment checked here and kept as written (the controller's API takes the text)."""
    moment(text)
    return text


def step_text(text: str) -> str:
    """A bucket width: a duration or plain seconds, kept as written."""
    if not text.replace(".", "", 1).isdigit():
        duration(text)
    return text


def release(text: Any) -> int:
    """A release number from "v3" or "3"."""
    from hinotori.model import release_number

    if isinstance(text, int):
        return text
    number = release_number(text)
    if number > MAX_NUMBER:
        raise ValueError(f"{text!r} is not a release: no release has a number that large")
    return number


def release_text(text: str) -> str:
    """A release checked here and kept as written (the controller's API takes the text)."""
    release(text)
    return text


def strategy(text: str) -> str:
    if text not in STRATEGIES:
        raise ValueError(f"{text!r} is not a strategy: use one of {', '.join(STRATEGIES)}")
    return text


def duration_option(*decls: str, help: str) -> Any:
    return typer.Option(*decls, parser=duration, metavar="DURATION", help=help)


def moment_option(*decls: str, help: str, keep_text: bool = False) -> Any:
    return typer.Option(*decls, parser=moment_text if keep_text else moment, metavar="MOMENT",
                        help=help)


def release_option(*decls: str, help: str, keep_text: bool = False) -> Any:
    return typer.Option(*decls, parser=release_text if keep_text else release, metavar="RELEASE",
                        help=help)


LockWait = Annotated[float, duration_option("--lock-wait", help="wait this long for another "
                                            "deployment of the service, e.g. 30s")]
