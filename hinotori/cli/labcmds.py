"""`hinotori lab`: N machines on this computer to rehearse a fleet and its failures.

Each machine is a network namespace with its own address, sshd and a container engine (Podman,
or Docker with --docker) with private storage; `lab up` prints the `[machines.NAME]` tables to
paste into a spec. `kill` is a power cut (everything on the machine dies), `cut` pulls its
network cable (everything keeps running, nothing reaches it), `mend` undoes either.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from hinotori.cli.options import JsonOpt
from hinotori.cli.render import console

lab_app = typer.Typer(no_args_is_help=True,
                      help="A lab of machines on this computer (needs root).")

LabDir = Annotated[Path, typer.Option(
    "--dir", envvar="HINOTORI_LAB", help="where the lab keeps its keys and state")]
DEFAULT = Path(".hinotori-lab")
Machine = Annotated[str, typer.Argument(help="a machine of the lab: m1, m2, …")]


@lab_app.command("up")
def up(count: Annotated[int, typer.Argument(min=1, max=9, help="how many machines")] = 3,
       docker: Annotated[list[str] | None, typer.Option(
           help="a machine that runs Docker instead of Podman (repeatable)")] = None,
       directory: LabDir = DEFAULT, json_out: JsonOpt = False) -> None:
    """Start COUNT machines, each with its own address, sshd and container engine."""
    from hinotori.lab.lab import Lab

    lab = Lab.up(directory.absolute(), count, set(docker or ()))
    if json_out:
        print(json.dumps({"dir": str(lab.dir), "machines": lab.status()}))
        return
    for row in lab.status():
        console.print(f"[green]up[/] {row['name']}  {row['address']}  {row['engine']}  "
                      f"zone {row['zone']}")
    # Plain print: the snippet is pasted, so it must not be wrapped to the terminal's width.
    print("\n# paste into hinotori.toml, and list the machines in a service's `machines`:")
    print(lab.snippet(), end="")


@lab_app.command("down")
def down(directory: LabDir = DEFAULT) -> None:
    """Stop every machine of the lab and remove it, keys and state included."""
    from hinotori.lab.lab import Lab

    Lab.load(directory.absolute()).down()
    console.print("lab removed")


@lab_app.command("status")
def status(directory: LabDir = DEFAULT, json_out: JsonOpt = False) -> None:
    """Each machine: address, engine, running, connected."""
    from hinotori.lab.lab import Lab

    rows = Lab.load(directory.absolute()).status()
    if json_out:
        print(json.dumps(rows))
        return
    for r in rows:
        state = ("up" if r["connected"] else "cut") if r["running"] else "killed"
        console.print(f"{r['name']}  {r['address']}  {r['engine']}  zone {r['zone']}  {state}")


@lab_app.command("snippet")
def snippet(directory: LabDir = DEFAULT) -> None:
    """Print the [machines.NAME] tables for this lab."""
    from hinotori.lab.lab import Lab

    print(Lab.load(directory.absolute()).snippet(), end="")


def _act(action: str, name: str, directory: Path) -> None:
    from hinotori.lab.lab import Lab

    getattr(Lab.load(directory.absolute()), action)(name)
    console.print(f"{name}: {action}")


@lab_app.command("kill")
def kill(name: Machine, directory: LabDir = DEFAULT) -> None:
    """Power cut: everything on the machine dies at once, containers included."""
    _act("kill", name, directory)


@lab_app.command("cut")
def cut(name: Machine, directory: LabDir = DEFAULT) -> None:
    """Pull the machine's network cable: it keeps running, nothing reaches it."""
    _act("cut", name, directory)


@lab_app.command("mend")
def mend(name: Machine, directory: LabDir = DEFAULT) -> None:
    """Reconnect a cut machine, or start a killed one again (empty)."""
    _act("mend", name, directory)



