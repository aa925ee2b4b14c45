"""`hinotori deployments` and `hinotori deployment show N`: past and running deployments, read
from the state store (they work whether or not the controller runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hinotori.cli import holdview, render
from hinotori.cli.controlcmds import _print_step
from hinotori.cli.options import MAX_NUMBER, EnvOpt, JsonOpt, SpecOpt
from hinotori.cli.render import console
from hinotori.errors import NotFound


def deployments(service: Annotated[str | None, typer.Argument()] = None,
                spec: SpecOpt = Path("."), environment: EnvOpt = None,
                limit: Annotated[int, typer.Option(min=1, max=MAX_NUMBER, help="newest N")]
                = 20,
                json_out: JsonOpt = False) -> None:
    """Deployments, newest last: strategy, releases, outcome, duration."""
    from hinotori.model import deployment_view
    from hinotori.project import Project

    project = Project.load(spec, environment)
    rows = [deployment_view(d) for d in project.store.deployments(service, limit)]
    if json_out:
        render.print_json(rows)
        return
    render.table(None, ["id", "service", "kind", "strategy", "from", "to", "state", "started",
                        "took"],
                 [(d["id"], d["service"], d["kind"], d["strategy"],
                   render.release(d["from_release"]), render.release(d["to_release"]),
                   holdview.state_text(d), render.when(d["started_at"]),
                   render.seconds(d["ended_at"] - d["started_at"]) if d["ended_at"] else "")
                  for d in rows])


def deployment_show(number: Annotated[int, typer.Argument(min=1, max=MAX_NUMBER)],
                    spec: SpecOpt = Path("."),
                    environment: EnvOpt = None, json_out: JsonOpt = False) -> None:
    """One deployment's timeline: steps, weights, judged metrics and decisions."""
    from hinotori.model import deployment_view
    from hinotori.project import Project

    project = Project.load(spec, environment)
    if not 1 <= number <= MAX_NUMBER:  # the store cannot even look such a number up
        raise NotFound(f"no deployment {number}", hint="`hinotori deployments` lists them")
    d = deployment_view(project.store.deployment(number))
    if json_out:
        render.print_json(d)
        return
    console.print(f"deployment {d['id']}: {d['kind']} of {d['service']} "
                  f"{render.release(d['from_release'])} → {render.release(d['to_release'])} "
                  f"({d['strategy']}), "
                  f"[bold]{d['state']}[/]", highlight=False)
    for step in d["steps"]:
        console.print(f"[dim]{render.when(step['ts'])}[/] ", end="")
        _print_step(step)
    if d["state"] == "held":
        for line in holdview.held_lines(d["service"], d):
            console.print(line, highlight=False, soft_wrap=True)
    if d["error"]:
        render.err_console.print(f"[red]error:[/] {render.escape(d['error'])}")
