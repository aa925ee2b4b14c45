"""Maintenance mode in HAProxy: the three maps that hold it, per service.

Maintenance mode is runtime state like the release maps: three maps keyed by service (the
Retry-After seconds, and the two bodies base64-encoded so a message's spaces, quotes or
semicolons never meet the Runtime API's parser), read by rules every backend of a service
carries (config.py). Turning it on or off is `add map`/`del map`: no reload.
"""

from __future__ import annotations

import base64

from hinotori.model import RoutingTable
from hinotori.router import maintenance

MAINTENANCE_MAPS = ("maintenance", "maintenance-json", "maintenance-html")


def maintenance_maps(table: RoutingTable) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {name: {} for name in MAINTENANCE_MAPS}
    for route in table.routes:
        state = route.maintenance
        if state is None:
            continue
        if not isinstance(state.retry_after, int) or state.retry_after < 0:
            raise ValueError(f"route {route.service!r}: maintenance retry_after must be an "
                             f"integer >= 0, got {state.retry_after!r}")
        out["maintenance"][route.service] = str(state.retry_after)
        for name, body in (("maintenance-json", maintenance.json_body(route.service, state)),
                           ("maintenance-html", maintenance.html_body(route.service, state))):
            out[name][route.service] = base64.b64encode(body).decode()
    return out
