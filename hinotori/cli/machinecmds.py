"""`hinotori machines` and `hinotori machine drain|undrain NAME`: the machines of a fleet.

`machines` reads the state the controller last recorded (it works without one); drain and
undrain go through the controller, which owns traffic: drain moves a machine's hosts elsewhere
with zero failed requests and keeps new hosts off it, undrain lets it take hosts again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hinotori.cli import render
from hinotori.cli.options import EnvOpt, JsonOpt, SpecOpt
from hinotori.cli.render import console

machine_app = typer.Typer(no_args_is_help=True, help="One machine of the fleet: drain, undrain.")
Name = Annotated[str, typer.Argument(help="a [machines.NAME] of the spec")]


def machines(spec: SpecOpt = Path("."), environment: EnvOpt = None,
             json_out: JsonOpt = False) -> None:
    """The machines of the fleet: state (up, down, draining), hosts, engine, last seen."""
    from hinotori.controller.machines import machine_rows
    from hinotori.project import Project

    project = Project.load(spec, environment)
    rows = machine_rows(sorted(project.spec.machines), project.store)
    if json_out:
        render.print_json(rows)
        return
    render.table(None, ["machine", "address", "state", "hosts", "engine", "last seen", ""],
                 [(r["name"], project.spec.machines[r["name"]].address, r["state"], r["hosts"],
                   r["engine"] or "", render.when(r["last_seen"]) if r["last_seen"] else "",
                   r["detail"][:60]) for r in rows])


@machine_app.command("drain")
def drain(name: Name, spec: SpecOpt = Path("."), environment: EnvOpt = None) -> None:
    """Move the machine's hosts elsewhere (zero failed requests) and keep new hosts off it."""
    from hinotori.controller.client import ControllerClient
    from hinotori.project import Project

    answer = ControllerClient(Project.load(spec, environment)).call(
        "POST", f"/v1/machines/{name}/drain")
    moving = answer["deployments"]
    console.print(f"{name} drained: no new hosts; "
                  + (f"moving its hosts in deployment(s) {', '.join(map(str, moving))} "
                     "(`hinotori deployments` follows them)" if moving else "it serves nothing"))


@machine_app.command("undrain")
def undrain(name: Name, spec: SpecOpt = Path("."), environment: EnvOpt = None) -> None:
    """Let the machine take new hosts again."""
    from hinotori.controller.client import ControllerClient
    from hinotori.project import Project

    ControllerClient(Project.load(spec, environment)).call("POST", f"/v1/machines/{name}/undrain")
    console.print(f"{name} takes new hosts again")
