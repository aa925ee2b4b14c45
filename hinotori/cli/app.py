"""The `hinotori` command. Thin: parse, call the library or the controller API, render.

Reading commands (status, hosts, releases, history) read the state store directly, so they work
whether or not a controller runs; commands that change traffic (deploy, rollback, down) go
through the controller, the only owner of the router and the hosts.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer

from hinotori.cli import (
    auditcmd,
    chaoscmd,
    controlcmds,
    dashboardcmd,
    driftcmd,
    imagecmds,
    labcmds,
    logcmds,
    metricscmd,
    render,
    verifycmds,
)
from hinotori.cli.options import JsonOpt, SpecOpt
from hinotori.cli.render import console
from hinotori.errors import HinotoriError, SpecError
from hinotori.examples import example_dir
from hinotori.model import HostState
from hinotori.project import Project
from hinotori.releases import release_rows
from hinotori.spec import SPEC_FILE

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Immutable Infrastructure: bake, verify, deploy, observe, burn.")
app.command("up")(controlcmds.up)
app.command("down")(controlcmds.down)
app.command("deploy")(controlcmds.deploy)
app.command("rollback")(controlcmds.rollback)
app.command("status")(controlcmds.status)
app.command("drift")(driftcmd.drift)
app.command("chaos")(chaoscmd.chaos)
app.command("logs")(logcmds.logs)
app.command("metrics")(metricscmd.metrics)
app.command("dashboard")(dashboardcmd.dashboard)
app.command("audit")(auditcmd.audit)
app.command("history", hidden=True)(auditcmd.audit)  # the name before `audit`
app.command("images")(imagecmds.images)
app.command("gc")(imagecmds.gc)
image_app = typer.Typer(no_args_is_help=True, help="One image: inspect, diff.")
image_app.command("inspect")(imagecmds.image_inspect)
image_app.command("diff")(imagecmds.image_diff)
app.add_typer(image_app, name="image")
app.command("verify")(verifycmds.verify)
app.add_typer(verifycmds.checks_app, name="checks")
for _name in ("promote", "pause", "resume", "abort", "deployments", "phoenix", "ship"):
    app.command(_name)(getattr(controlcmds, _name))
deployment_app = typer.Typer(no_args_is_help=True, help="One deployment.")
deployment_app.command("show")(controlcmds.deployment_show)
app.add_typer(deployment_app, name="deployment")
app.add_typer(labcmds.lab_app, name="lab")


@app.command()
def init(directory: Annotated[Path, typer.Argument()] = Path("."),
         force: Annotated[bool, typer.Option(help="overwrite an existing spec")] = False) -> None:
    """Write a commented starter hinotori.toml and a small example app."""
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / SPEC_FILE).exists() and not force:
        raise SpecError("a spec already exists here", file=str(directory / SPEC_FILE),
                        hint="pass --force to overwrite it")
    source = example_dir("hello")
    written = []
    for item in sorted(source.iterdir()):
        if item.name.startswith("__") or item.suffix == ".pyc":
            continue
        shutil.copy2(item, directory / item.name)
        written.append(item.name)
    console.print(f"wrote {', '.join(written)} in {directory.resolve()}")
    console.print("next: [bold]hinotori up -d[/] && [bold]hinotori bake web[/] && "
                  "[bold]hinotori deploy web[/]")


@app.command()
def bake(service: Annotated[str | None, typer.Argument(help="default: every service")] = None,
         spec: SpecOpt = Path("."), json_out: JsonOpt = False,
         no_cache: Annotated[bool, typer.Option("--no-cache", help="run every step again, "
                                                "ignoring the build cache")] = False) -> None:
    """Bake the service's image from its recipe; make a release if anything changed."""
    from hinotori.releases import bake_service, bake_summary

    project = Project.load(spec)
    names = [service] if service else sorted(project.spec.services)
    results = []
    for name in names:
        project.service(name)
        with console.status(f"baking {name}…") as status:
            result, outcome = bake_service(
                project, name, on_progress=lambda m, s=status, n=name: s.update(f"{n}: {m}"),
                use_cache=not no_cache)
        release = outcome.release
        results.append(bake_summary(name, result, outcome))
        if not json_out:
            verb = "new release" if outcome.created else "no change, still"
            steps = result.cache_hits + result.cache_misses
            cache = (f" [dim]({result.cache_hits} of {steps} steps cached)[/]"
                     if steps else "")
            console.print(f"[bold]{name}[/]: image {render.short_digest(result.image.digest)}"
                          f"{' (already stored)' if result.reused else ''} — {verb} "
                          f"[bold]{release.name}[/]{cache}")
            if result.cached_steps is not None and steps:  # an OS image: say which layers
                built = [i for i in range(1, steps + 1) if i not in result.cached_steps]
                console.print(f"  [dim]{result.image.digest}; steps cached: "
                              f"{' '.join(map(str, result.cached_steps)) or 'none'}; built: "
                              f"{' '.join(map(str, built)) or 'none'}[/]", highlight=False)
    if json_out:
        render.print_json(results)


@app.command()
def hosts(service: Annotated[str | None, typer.Argument()] = None, spec: SpecOpt = Path("."),
          all_: Annotated[bool, typer.Option("--all", help="include destroyed hosts")] = False,
          json_out: JsonOpt = False) -> None:
    """Hosts and their state."""
    project = Project.load(spec)
    states = None if all_ else [s for s in HostState if s.alive]
    found = project.store.hosts(service, states)
    if json_out:
        render.print_json([h.view() for h in found])  # the shape GET /v1/hosts gives
        return
    render.table(None, ["host", "service", "release", "state", "address", "pid", "age"],
                 [(h.id, h.service, f"v{h.release}", h.state, h.address, h.pid,
                   render.age(h.born_at)) for h in found])


@app.command()
def releases(service: Annotated[str | None, typer.Argument()] = None, spec: SpecOpt = Path("."),
             json_out: JsonOpt = False) -> None:
    """Releases (never edited), newest last, with which one serves."""
    rows = release_rows(Project.load(spec).store, service)
    if json_out:
        render.print_json(rows)
        return
    render.table(None, ["service", "release", "image", "created", "reason", "env", ""],
                 [(r["service"], r["release_name"], render.short_digest(r["image"]),
                   render.when(r["created_at"]), r["reason"],
                   " ".join(f"{k}={v}" for k, v in r["config"]["env"].items()), r["role"])
                  for r in rows])


@app.command()
def demo(keep: Annotated[bool, typer.Option(help="keep the temporary project")] = False,
         clients: Annotated[int, typer.Option(help="concurrent keep-alive clients")] = 50,
         rate: Annotated[float, typer.Option(help="total requests/s")] = 400.0,
         json_out: JsonOpt = False) -> None:
    """Run the whole lifecycle under load in a temporary project; exit 0 only if no request
    failed."""
    from hinotori.cli.demo import run_demo

    raise typer.Exit(run_demo(keep=keep, clients=clients, rate=rate, json_out=json_out))


def main() -> None:
    try:
        # Without standalone mode click returns typer.Exit's code instead of exiting.
        code = app(standalone_mode=False)
    except HinotoriError as e:
        render.print_error(e)
        sys.exit(e.exit_code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        render.err_console.print("aborted")
        sys.exit(130)
    except Exception as e:  # click usage errors arrive here with standalone_mode off
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise
    sys.exit(code if isinstance(code, int) else 0)
