"""`hinotori dashboard`: a one-time sign-in link for the controller's web dashboard."""

from __future__ import annotations

import webbrowser
from pathlib import Path
from typing import Annotated

import typer

from hinotori.cli import render
from hinotori.cli.options import EnvOpt, JsonOpt, SpecOpt
from hinotori.cli.render import console


def sign_in_url(address: str, ticket: str) -> str:
    """The page's address with the ticket in the fragment, which browsers never send to a
    server, so it shows up in no access log and no Referer."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    # A controller listening on every address is still reached by this machine on loopback.
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal
    return f"http://{host}:{port}/#ticket={ticket}"


def dashboard(spec: SpecOpt = Path("."), environment: EnvOpt = None, json_out: JsonOpt = False,
              open_: Annotated[bool, typer.Option("--open", help="open it in the default "
                                                  "browser too")] = False,
              operate: Annotated[bool, typer.Option(
                  "--operate", help="the sign-in may act too: deploy, roll back, steer a "
                  "canary, maintenance, burn a host (each confirmed, and audited)")] = False
              ) -> None:
    """Print a one-time sign-in link for the web dashboard.

    The link works once, within two minutes, and gives that browser tab a read-only view (with
    --operate: a view with action buttons) until the tab closes or the controller restarts."""
    from hinotori.controller.client import ControllerClient
    from hinotori.project import Project

    client = ControllerClient(Project.load(spec, environment), timeout=10.0)
    try:
        answer = client.call("POST", "/v1/dashboard/ticket", json={"operate": operate})
    finally:
        client.close()
    url = sign_in_url(client.info["address"], answer["ticket"])
    if json_out:
        render.print_json({"url": url, "expires_in": answer["expires_in"],
                           "operate": operate})
    else:
        kind = "dashboard (may operate)" if operate else "dashboard"
        console.print(f"{kind}: {url}", soft_wrap=True, highlight=False)
        console.print(f"[dim]the link works once, within "
                      f"{render.seconds(answer['expires_in'])}; run `hinotori dashboard` again "
                      "for another[/]")
    if open_:
        webbrowser.open(url)
