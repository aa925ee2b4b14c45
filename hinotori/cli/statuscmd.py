"""`hinotori status`: what serves now, from the controller, else from the store."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from hinotori.cli import render
from hinotori.cli.options import EnvOpt, JsonOpt, SpecOpt
from hinotori.cli.render import console
from hinotori.controller.client import ControllerClient
from hinotori.errors import ControllerError
from hinotori.project import Project


def status(spec: SpecOpt = Path("."),
           environment: EnvOpt = None, json_out: JsonOpt = False) -> None:
    """What serves now: per service, current and previous release and its hosts."""
    project = Project.load(spec, environment)
    try:
        client = ControllerClient(project, timeout=5.0)
        data = client.status()
        client.close()
        data["controller"] = "running"
    except ControllerError:
        data = {"controller": "not running", "router": project.spec.router.listen,
                "services": [_offline_status(project, name) for name in
                             sorted(project.spec.services)]}
    if json_out:
        render.print_json(data)
        return
    pid = f" (pid {data['pid']}, up {render.seconds(data['uptime_s'])})" if "pid" in data \
        else ""
    console.print(f"controller: {data['controller']}{pid}; router: {data['router']}")
    render.table(None, ["service", "current", "previous", "latest", "replicas", "hosts", "lock"],
                 [(s["name"], render.release(s["current"]), render.release(s["previous"]),
                   render.release(s["latest"]),
                   s["replicas"], " ".join(f"{k}={v}" for k, v in sorted(s["hosts"].items())),
                   s["locked_by"] or "") for s in data["services"]])
    for s in data["services"]:
        if m := s.get("maintenance"):
            console.print(f"{s['name']}: in maintenance (503, Retry-After {m['retry_after']}s) "
                          f"since {render.seconds(time.time() - m['since'])} ago, by "
                          f"{m['actor']}: {m['message']}", markup=False, highlight=False,
                          soft_wrap=True)


def _offline_status(project: Project, name: str) -> dict[str, Any]:
    current, previous = project.store.service_releases(name)
    latest = project.store.latest_release(name)
    counts = project.store.host_counts(name)
    return {"name": name, "current": current, "previous": previous,
            "latest": latest.number if latest else None,
            "replicas": project.service(name).replicas, "hosts": counts, "locked_by": None,
            "maintenance": project.store.maintenance_all().get(name)}
