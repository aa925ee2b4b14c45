"""`hinotori status`: what serves now, from the controller, else from the store (a running
controller usually answers hinotori.cli.statusquick before this module loads)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from hinotori.cli.options import EnvOpt, JsonOpt, SpecOpt
from hinotori.cli.statusview import show_status
from hinotori.errors import ControllerError

if TYPE_CHECKING:
    from hinotori.project import Project


def status(spec: SpecOpt = Path("."),
           environment: EnvOpt = None, json_out: JsonOpt = False) -> None:
    """What serves now: per service, current and previous release and its hosts."""
    from hinotori.controller.client import ControllerClient
    from hinotori.project import Project

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
    show_status(data, json_out)


def _offline_status(project: Project, name: str) -> dict[str, Any]:
    current, previous = project.store.service_releases(name)
    latest = project.store.latest_release(name)
    counts = project.store.host_counts(name)
    return {"name": name, "current": current, "previous": previous,
            "latest": latest.number if latest else None,
            "replicas": project.service(name).replicas, "hosts": counts, "locked_by": None,
            "maintenance": project.store.maintenance_all().get(name)}
