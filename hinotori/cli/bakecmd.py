"""`hinotori bake`: through this project's running controller when one runs (a warm process:
see hinotori.cli.bakequick, which usually takes the command before this module loads), else
in this process. ``--local`` always bakes here. The output, ``--json``, exit codes and errors
are the same either way; the ``image.baked`` event says which ("via").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from hinotori import __version__
from hinotori.cli import render
from hinotori.cli.bakequick import show
from hinotori.cli.options import EnvOpt, JsonOpt, SpecOpt
from hinotori.cli.render import console, err_console
from hinotori.errors import ControllerUnreachable, Unauthorised

if TYPE_CHECKING:
    from hinotori.controller.client import ControllerClient
    from hinotori.project import Project

NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="run every step again, ignoring "
                                          "the build cache")]
LocalOpt = Annotated[bool, typer.Option("--local", help="bake in this process even when a "
                                        "controller runs for the project")]


def bake(service: Annotated[str | None, typer.Argument(help="default: every service")] = None,
         spec: SpecOpt = Path("."), environment: EnvOpt = None, json_out: JsonOpt = False,
         no_cache: NoCacheOpt = False, local: LocalOpt = False) -> None:
    """Bake the service's image from its recipe; make a release if anything changed.
    A running controller of the project bakes it (a warm process), else this one does."""
    from hinotori.project import Project

    project = Project.load(spec, environment)
    names = [service] if service else sorted(project.spec.services)
    controller = None if local else _controller(project)
    results = []
    try:
        for name in names:
            project.service(name)
            summary = None
            if controller is not None:
                summary = _through(controller, name, no_cache)
                if summary is None:  # gone or not ours: the rest are baked here too
                    controller.close()
                    controller = None
            if summary is None:
                summary = _here(project, name, no_cache)
            results.append(summary)
            if not json_out:
                show(summary)
    finally:
        if controller is not None:
            controller.close()
    if json_out:
        render.print_json(results)


def _here(project: Project, name: str, no_cache: bool) -> dict[str, Any]:
    from hinotori.releases import bake_service, bake_summary

    with console.status(f"baking {name}…") as status:
        result, outcome = bake_service(
            project, name, on_progress=lambda m, s=status, n=name: s.update(f"{n}: {m}"),
            use_cache=not no_cache)
    return bake_summary(name, result, outcome)


def _controller(project: Project) -> ControllerClient | None:
    """A client of the project's controller if one says it runs this hinotori with this spec
    file and environment, and the token is on disk (none is made for it); else None."""
    try:
        info = json.loads(project.controller_file.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or (info.get("version"), info.get("spec"),
                                      info.get("environment")) != (
            __version__, str(project.loaded.path), project.environment):
        return None
    if not (project.state_dir / "token").exists():
        return None
    from hinotori.controller.client import ControllerClient

    return ControllerClient(project)


def _through(controller: ControllerClient, name: str, no_cache: bool) -> dict[str, Any] | None:
    """The controller's bake of ``name``; None when it cannot be used (nothing listens, it
    stopped mid-bake, it refuses this token) and this process must bake instead."""
    from hinotori.store import default_actor

    address = controller.info.get("address")
    try:
        with console.status(f"baking {name}…"):
            return controller.bake(name, no_cache=no_cache, actor=f"cli:{default_actor()}")
    except ControllerUnreachable as e:
        if e.sent and e.timed_out:  # it may still be baking: do not bake twice
            raise
        if e.sent:
            err_console.print(f"[yellow]note:[/] the controller at {address} stopped during "
                              "the bake; baking here instead", highlight=False)
        return None
    except Unauthorised:
        err_console.print(f"[yellow]note:[/] the controller at {address} does not take this "
                          "project's token; baking here instead", highlight=False)
        return None
