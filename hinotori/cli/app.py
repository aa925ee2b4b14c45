"""The `hinotori` command. Thin: parse, call the library or the controller API, render.

Reading commands (status, hosts, releases, history) read the state store directly, so they work
whether or not a controller runs; commands that change traffic (deploy, rollback, down) go
through the controller, the only owner of the router and the hosts.
"""

from __future__ import annotations

import inspect
import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer
import typer.main
from rich.markup import escape

from hinotori.cli import (
    auditcmd,
    bakecmd,
    chaoscmd,
    controlcmds,
    dashboardcmd,
    deploymentcmds,
    driftcmd,
    holdview,
    imagecmds,
    imageiocmds,
    jobcmds,
    labcmds,
    logcmds,
    machinecmds,
    maintenancecmds,
    metricscmd,
    render,
    routercmds,
    statuscmd,
    verifycmds,
)
from hinotori.cli.options import EnvOpt, JsonOpt, SpecOpt
from hinotori.cli.render import console
from hinotori.errors import HinotoriError, SpecError
from hinotori.spec.read import SPEC_FILE

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  rich_markup_mode="rich",
                  help="Immutable Infrastructure: bake, verify, deploy, observe, burn.")
image_app = typer.Typer(no_args_is_help=True,
                        help="Inspect one image, diff two, export or import one.")
image_app.command("inspect")(imagecmds.image_inspect)
image_app.command("diff")(imagecmds.image_diff)
image_app.command("export")(imageiocmds.image_export)
image_app.command("import")(imageiocmds.image_import)
deployment_app = typer.Typer(no_args_is_help=True, help="One deployment's timeline.")
deployment_app.command("show")(deploymentcmds.deployment_show)


def init(directory: Annotated[Path, typer.Argument()] = Path("."),
         force: Annotated[bool, typer.Option(help="overwrite an existing spec")] = False) -> None:
    """Write a commented starter hinotori.toml and a small example app."""
    from hinotori.examples import example_dir

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


def hosts(service: Annotated[str | None, typer.Argument()] = None, spec: SpecOpt = Path("."),
          environment: EnvOpt = None,
          all_: Annotated[bool, typer.Option("--all", help="include destroyed hosts")] = False,
          json_out: JsonOpt = False) -> None:
    """Hosts and their state."""
    from hinotori.model import HostState
    from hinotori.project import Project

    project = Project.load(spec, environment)
    states = None if all_ else [s for s in HostState if s.alive]
    found = project.store.hosts(service, states)
    if json_out:
        render.print_json([h.view() for h in found])  # the shape GET /v1/hosts gives
        return
    # A fleet's hosts say which machine they are on; a one-machine project has no such column.
    fleet = any(h.data.get("machine") for h in found)
    render.table(None, ["host", "service", "release", "state", *(["machine"] if fleet else []),
                        "address", "pid", "age"],
                 [(h.id, h.service, f"v{h.release}", h.state,
                   *([h.data.get("machine") or ""] if fleet else []), h.address, h.pid,
                   render.age(h.born_at)) for h in found])


def releases(service: Annotated[str | None, typer.Argument()] = None, spec: SpecOpt = Path("."),
             environment: EnvOpt = None,
             json_out: JsonOpt = False) -> None:
    """Releases (never edited), newest last, with which one serves."""
    from hinotori.project import Project
    from hinotori.releases import release_rows

    rows = release_rows(Project.load(spec, environment).store, service)
    if json_out:
        render.print_json(rows)
        return
    promoted = any(r["origin"] for r in rows)  # a column only where promotions happen
    render.table(None, ["service", "release", "image", "created", "reason", "env",
                        *(["from"] if promoted else []), ""],
                 [(r["service"], r["release_name"], render.short_digest(r["image"]),
                   render.when(r["created_at"]), r["reason"],
                   " ".join(f"{k}={v}" for k, v in r["config"]["env"].items()),
                   *([_origin_text(r["origin"])] if promoted else []), r["role"])
                  for r in rows])


def _origin_text(origin: dict | None) -> str:
    return f"{origin['environment']} {origin['release_name']}" if origin else ""


def demo(keep: Annotated[bool, typer.Option(help="keep the temporary project")] = False,
         clients: Annotated[int, typer.Option(min=1, max=10000,
                                              help="concurrent keep-alive clients")] = 50,
         rate: Annotated[float, typer.Option(min=0.1, help="total requests/s")] = 400.0,
         json_out: JsonOpt = False) -> None:
    """Run the whole lifecycle under load in a temporary project.

    Exit 0 only if no request failed."""
    from hinotori.cli.demo import run_demo

    raise typer.Exit(run_demo(keep=keep, clients=clients, rate=rate, json_out=json_out))


LIFECYCLE, CANARY, VERIFY, OBSERVE, IMAGES, BURN, MACHINES = (
    "Lifecycle", "Canary", "Verify", "Observe", "Images", "Burn", "Machines")
# `hinotori --help` lists the panels in this order; a command's line is its docstring's first
# paragraph, whole (see whole_sentences).
for _panel, _commands in (
        (LIFECYCLE, {"init": init, "up": controlcmds.up, "down": controlcmds.down,
                     "status": statuscmd.status, "bake": bakecmd.bake, "deploy": controlcmds.deploy,
                     "ship": controlcmds.ship, "rollback": controlcmds.rollback,
                     "demo": demo}),
        (CANARY, {name: getattr(controlcmds, name)
                  for name in ("promote", "pause", "resume", "abort")}),
        (VERIFY, {"verify": verifycmds.verify}),
        (OBSERVE, {"logs": logcmds.logs, "metrics": metricscmd.metrics,
                   "audit": auditcmd.audit, "dashboard": dashboardcmd.dashboard,
                   "hosts": hosts, "releases": releases,
                   "deployments": deploymentcmds.deployments, "drift": driftcmd.drift}),
        (IMAGES, {"images": imagecmds.images, "gc": imagecmds.gc}),
        (BURN, {"chaos": chaoscmd.chaos, "phoenix": controlcmds.phoenix})):
    for _name, _function in _commands.items():
        app.command(_name, rich_help_panel=_panel)(_function)
app.command("history", hidden=True)(auditcmd.audit)  # the name before `audit`
app.add_typer(verifycmds.checks_app, name="checks", rich_help_panel=VERIFY)
app.add_typer(deployment_app, name="deployment", rich_help_panel=OBSERVE)
app.add_typer(routercmds.router_app, name="router", rich_help_panel=LIFECYCLE)
app.add_typer(image_app, name="image", rich_help_panel=IMAGES)
app.command("machines", rich_help_panel=MACHINES)(machinecmds.machines)
app.add_typer(machinecmds.machine_app, name="machine", rich_help_panel=MACHINES)
app.add_typer(labcmds.lab_app, name="lab", rich_help_panel=MACHINES)
app.add_typer(maintenancecmds.maintenance_app, name="maintenance", rich_help_panel=LIFECYCLE)
app.command("jobs", rich_help_panel=LIFECYCLE)(jobcmds.jobs)
app.add_typer(jobcmds.job_app, name="job", rich_help_panel=LIFECYCLE)


def paragraphs(text: str | None) -> list[str]:
    """A docstring's paragraphs, each in one line for the terminal to wrap (Rich would keep
    the docstring's line breaks; click's "\\b" marks a paragraph to keep as written)."""
    return [part if part.startswith("\b") else " ".join(part.split())
            for part in inspect.cleandoc(text or "").split("\n\n")]


def first_paragraph(text: str | None) -> str:
    """What a command list shows: the docstring's first paragraph, whole, in one line."""
    return paragraphs(text)[0]


def whole_sentences(typer_app: typer.Typer) -> None:
    """Give every command an explicit one-line help, its docstring's first paragraph joined:
    click cuts a help it has to shorten itself at ~45 characters ("Run the controller..."), and
    Rich keeps a docstring's line breaks."""
    for info in typer_app.registered_commands:
        doc = info.help or getattr(info.callback, "__doc__", None) or ""
        # Help is Rich markup (rich_markup_mode="rich"): a docstring's "[[services.web.checks]]"
        # is text to show, not a style to apply.
        info.help = escape("\n\n".join(paragraphs(doc)))
        if info.short_help is None:
            info.short_help = escape(first_paragraph(doc))
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            whole_sentences(group.typer_instance)


whole_sentences(app)


def main() -> None:
    try:
        # Without standalone mode click returns typer.Exit's code instead of exiting, and raises
        # its usage errors for us to print.
        if sys.argv[1:2] == ["deploy"]:  # `deploy --hold [DURATION]`; no other command has it
            sys.argv[1:] = holdview.optional_value(sys.argv[1:], holdview.HOLD)
        code = typer.main.get_group(app_for(sys.argv[1:2]))(standalone_mode=False)
    except HinotoriError as e:
        render.print_error(e)
        sys.exit(e.exit_code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        render.err_console.print("aborted")
        sys.exit(130)
    except Exception as e:
        if not is_click_error(e):
            raise
        if type(e).__name__ == "NoArgsIsHelpError":  # `hinotori`, `hinotori image`: the help
            text = e.format_message()  # type: ignore[attr-defined]
            if text.strip():  # Typer's Rich help has printed itself already
                sys.stdout.write(text.rstrip() + "\n")
            sys.exit(e.exit_code)  # type: ignore[attr-defined]
        sys.exit(render.print_usage_error(e))
    sys.exit(code if isinstance(code, int) else 0)


def app_for(first: list[str]) -> typer.Typer:
    """The app to parse a command line starting with ``first`` with: for a command (or group)
    named first, an app of that one alone, as the whole app's group would run it; else the
    whole app (`--help`, no command, a typo Typer suggests a name for). Typer reads the
    signature of every command it registers before it looks at which one runs: ~30 ms of CPU
    for the whole app, paid on every command."""
    name = first[0] if first else None
    commands = [c for c in app.registered_commands if c.name == name]
    groups = [g for g in app.registered_groups if g.name == name]
    if not commands and not groups:
        return app
    one = typer.Typer()
    one.info, one.rich_markup_mode = app.info, app.rich_markup_mode
    one.pretty_exceptions_short = app.pretty_exceptions_short
    one.suggest_commands = app.suggest_commands
    one.registered_commands, one.registered_groups = commands, groups
    return one


def is_click_error(error: BaseException) -> bool:
    """click's ClickException, whichever copy raised it: click's own (older Typer releases) or the
    one Typer bundles (typer._click). Both say how to show themselves and with which code; a
    version check or an import of either module would tie this to one flavour."""
    return callable(getattr(error, "format_message", None)) and \
        isinstance(getattr(error, "exit_code", None), int)
