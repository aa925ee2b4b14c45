"""`hinotori router reload-certs`: the front door's TLS certificates, read again and served.

The controller also does it by itself within seconds of the files changing (certwatch.py);
this is for a renewal hook that wants to know it is done, or to see what is served.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import typer

from hinotori.cli import render
from hinotori.cli.options import EnvOpt, JsonOpt, SpecOpt
from hinotori.cli.render import console

router_app = typer.Typer(no_args_is_help=True, help="The router (front door): certificates.")


@router_app.command("reload-certs")
def reload_certs(spec: SpecOpt = Path("."), environment: EnvOpt = None,
                 json_out: JsonOpt = False) -> None:
    """Read the TLS certificate files again and serve them to new connections (no connection
    dropped); a bad file is refused and the previous certificates keep serving."""
    from hinotori.controller.client import ControllerClient
    from hinotori.project import Project

    client = ControllerClient(Project.load(spec, environment))
    try:
        answer = client.call("POST", "/v1/router/reload-certs")
    finally:
        client.close()
    if json_out:
        render.print_json(answer)
        return
    rows = []
    for c in answer["certs"]:
        end = datetime.datetime.fromtimestamp(c["not_after"], datetime.UTC)
        rows.append((", ".join(c["names"]), c["cert"], end.strftime("%Y-%m-%d %H:%M UTC"),
                     "EXPIRED" if c["expired"] else "", c["fingerprint"][:16]))
    render.table(None, ["names", "certificate", "not after", "", "sha256"], rows)
    console.print(f"{len(rows)} certificate(s) served; the first is the default")
