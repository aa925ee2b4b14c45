"""What a container is to hinotori: its name, and the Host its labels and inspect data
describe (also how the fleet's machines and a restarted controller find hosts again)."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from hinotori.model import Host, HostState

CONTAINER_PORT = 8000  # where the app listens inside its container (its own network namespace)
LABEL = "hinotori."


def container_name(project: str, host_id: str) -> str:
    return f"hinotori-{project}-{host_id}"


def host_from_inspect(info: dict[str, Any], machine: str | None = None,
                      publish: str = "127.0.0.1") -> Host | None:
    """The Host a container describes by its labels and state, or None if it is not one of ours.
    On a machine of the fleet (``machine``), its address is the machine's (``publish``)."""
    labels = info.get("Config", {}).get("Labels") or {}
    try:
        host_id, service = labels[LABEL + "host"], labels[LABEL + "service"]
        release, port = int(labels[LABEL + "release"]), int(labels[LABEL + "port"])
    except (KeyError, ValueError):
        return None
    state = info.get("State") or {}
    merged = ((info.get("GraphDriver") or {}).get("Data") or {}).get("MergedDir")
    return Host(id=host_id, service=service, release=release, provider="container",
                state=HostState.BOOTING, born_at=_created(info), address=f"{publish}:{port}",
                # Pids, the merged view and the log file are the engine's machine's: here only
                # for a host on this one.
                pid=(state.get("Pid") or None) if machine is None else None,
                root=(merged or None) if machine is None else None,
                data={"container": info["Id"], "name": info.get("Name", "").lstrip("/"),
                      "port": port, "image": info.get("Image"), "machine": machine,
                      "log": (info.get("LogPath") or None) if machine is None else None,
                      **({"job": labels[LABEL + "job"]} if LABEL + "job" in labels else {})})


def _created(info: dict[str, Any]) -> float:
    """The container's creation time as a unix timestamp (RFC 3339, nanoseconds)."""
    try:
        return datetime.fromisoformat(str(info.get("Created"))).timestamp()
    except ValueError:
        return time.time()
