"""Discovery files: who serves each service now, for other services and tools to read.

Rendered into .hinotori/discovery/ on every membership change (the role Serf's member-join and
member-leave handlers play when they rewrite hosts files):

    <service>.json   {"service", "release", "canary", "hosts": [{"id", "address", "release",
                      "weight"}]}
    hosts            hosts-file lines: "<ip> <host-id>.<service>.hinotori <service>.hinotori"

Every file is written to a temporary name and renamed, so a reader never sees half of one.
"""

from __future__ import annotations

import json
from pathlib import Path

from hinotori.deploy.fleet import Fleet
from hinotori.model import HostState
from hinotori.statefiles import private_dir, write_private


def _write(path: Path, text: str) -> None:
    write_private(path, text)


def render_discovery(directory: Path, fleet: Fleet) -> None:
    private_dir(directory)
    lines = ["# written by hinotori: hosts serving each service (do not edit)"]
    for name in sorted(fleet.spec.services):
        serving = fleet.hosts(name, HostState.SERVING)
        canary = fleet.store.canary(name)
        # What serves, not what the store will call current once the deployment ends.
        stable = max((h.release for h in serving if h.release != canary), default=None)
        _write(directory / f"{name}.json", json.dumps({
            "service": name, "release": f"v{stable}" if stable else None,
            "canary": f"v{canary}" if canary else None,
            "hosts": [{"id": h.id, "address": h.address, "release": f"v{h.release}",
                       "weight": h.weight} for h in serving]}, indent=2) + "\n")
        for h in serving:
            ip = (h.address or "127.0.0.1:0").rpartition(":")[0]
            lines.append(f"{ip} {h.id}.{name}.hinotori {name}.hinotori")
    _write(directory / "hosts", "\n".join(lines) + "\n")
