"""How `hinotori status` shows what serves now, whichever path fetched it (the full command or
the quick one, hinotori.cli.statusquick): Rich and the standard library only."""

from __future__ import annotations

import time
from typing import Any

from hinotori.cli import render
from hinotori.cli.render import console


def show_status(data: dict[str, Any], json_out: bool) -> None:
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
