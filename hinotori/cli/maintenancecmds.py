"""`hinotori maintenance on|off|status`: the router answers a service's requests itself (503
with Retry-After and a message) while its hosts keep running, checked and deployable."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from hinotori.cli import render
from hinotori.cli.options import EnvOpt, JsonOpt, SpecOpt, duration_option
from hinotori.cli.render import console

maintenance_app = typer.Typer(
    no_args_is_help=True,
    help="Maintenance mode: the router answers a service's requests with 503 and a message.")
Service = Annotated[str, typer.Argument(help="a service of the spec")]
Reason = Annotated[str, typer.Option("--reason", help="why, for the audit log")]


def _call(spec: Path, environment: str | None, method: str, path: str,
          **kwargs: Any) -> Any:
    from hinotori.controller.client import ControllerClient
    from hinotori.project import Project
    from hinotori.store import default_actor

    project = Project.load(spec, environment)
    client = ControllerClient(project)
    try:
        if "json" in kwargs:
            kwargs["json"]["actor"] = f"cli:{default_actor()}"
        return client.call(method, path, **kwargs)
    finally:
        client.close()


@maintenance_app.command("on")
def on(service: Service, spec: SpecOpt = Path("."), environment: EnvOpt = None,
       message: Annotated[str | None, typer.Option(
           "--message", "-m", help="what clients are told (JSON, or HTML for browsers)")] = None,
       retry_after: Annotated[float, duration_option(
           "--retry-after", help="the Retry-After clients get, e.g. 5m")] = "5m",
       reason: Reason = "", json_out: JsonOpt = False) -> None:
    """Answer every request of the service with 503, Retry-After and a message; its hosts keep
    running, health-checked, and deployments go on. Returns once the router answers so."""
    body: dict[str, Any] = {"retry_after": math.ceil(retry_after), "reason": reason}
    if message is not None:
        body["message"] = message
    answer = _call(spec, environment, "POST", f"/v1/maintenance/{service}/on", json=body)
    if json_out:
        render.print_json(answer)
        return
    console.print(f"{service} is in maintenance: the router answers 503 (Retry-After "
                  f"{answer['retry_after']}s) with: {answer['message']}", markup=False,
                  highlight=False, soft_wrap=True)


@maintenance_app.command("off")
def off(service: Service, spec: SpecOpt = Path("."), environment: EnvOpt = None,
        reason: Reason = "", json_out: JsonOpt = False) -> None:
    """Serve the service's requests from its hosts again. Returns once the router does."""
    answer = _call(spec, environment, "POST", f"/v1/maintenance/{service}/off",
                   json={"reason": reason})
    if json_out:
        render.print_json(answer)
        return
    console.print(f"{service} serves again: the router sends its requests to its hosts")


@maintenance_app.command("status")
def status(spec: SpecOpt = Path("."), environment: EnvOpt = None,
           json_out: JsonOpt = False) -> None:
    """The services in maintenance: since when, by whom, the message and Retry-After."""
    from hinotori.project import Project

    # Read from the store: works with no controller running.
    project = Project.load(spec, environment)
    rows = project.store.maintenance_all()
    if json_out:
        render.print_json(rows)
        return
    if not rows:
        console.print("no service is in maintenance")
        return
    now = time.time()
    render.table(None, ["service", "since", "by", "retry-after", "message"],
                 [(name, f"{render.seconds(now - r['since'])} ago", r["actor"],
                   f"{r['retry_after']}s", r["message"]) for name, r in rows.items()])
