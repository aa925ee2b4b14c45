"""Maintenance mode: the router answers a service's requests itself (503, ``Retry-After``,
the operator's message) while its hosts keep running untouched.

Only the routing table changes: the state is a row in the store (``store/maintenance.py``),
and ``Fleet.routing_table`` puts it on the service's route, so every table from then on
carries it, whoever builds it: a deployment's switches, a heal, a restarted controller's first
sync. Hence health checks and deployments go on, and a deploy during maintenance keeps it on.

``on``/``off`` return once every router worker acknowledged the new table (the same
``sync_router`` a controller start uses), so when the command returns the router answers the
new way. If the router refuses the table, the store goes back to what it was and the error is
raised: state and traffic never disagree for longer than the call.
"""

from __future__ import annotations

import time
from typing import Any

from hinotori.deploy.fleet import Fleet
from hinotori.errors import MaintenanceError
from hinotori.model import Maintenance

DEFAULT_RETRY_AFTER = 300  # seconds, when the operator names none
MAX_RETRY_AFTER = 7 * 86400  # a longer promise is a mistake, not a plan
MAX_MESSAGE = 500  # characters: a sentence or two, shown to every client
DEFAULT_MESSAGE = Maintenance().message


def check(message: str, retry_after: int) -> None:
    """Refuse what the router could not say faithfully (raises MaintenanceError)."""
    if not 0 <= retry_after <= MAX_RETRY_AFTER:
        raise MaintenanceError(f"retry-after must be between 0s and {MAX_RETRY_AFTER // 86400}d, "
                               f"got {retry_after}s", hint="e.g. --retry-after 5m")
    if len(message) > MAX_MESSAGE:
        raise MaintenanceError(f"the message has {len(message)} characters; at most "
                               f"{MAX_MESSAGE}", hint="say it in a sentence or two")
    if any(ord(c) < 32 and c not in "\n\t" for c in message):
        raise MaintenanceError("the message has control characters",
                               hint="plain text only (newlines are fine)")


class MaintenanceMode:
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.store = fleet.store

    def status(self) -> dict[str, dict[str, Any]]:
        """service -> {message, retry_after, since, actor} for the services in maintenance."""
        return self.store.maintenance_all()

    async def on(self, service: str, *, message: str = DEFAULT_MESSAGE,
                 retry_after: int = DEFAULT_RETRY_AFTER, actor: str,
                 reason: str = "") -> dict[str, Any]:
        self.fleet.service(service)  # an unknown service: UnknownName naming the known ones
        check(message, retry_after)
        await self._switch(service, Maintenance(message, retry_after), actor, reason)
        return self.view(service)

    async def off(self, service: str, *, actor: str, reason: str = "") -> dict[str, Any]:
        self.fleet.service(service)
        if self.store.maintenance(service) is not None:
            await self._switch(service, None, actor, reason)
        return self.view(service)

    def view(self, service: str) -> dict[str, Any]:
        row = self.store.maintenance_all().get(service)
        return {"service": service, "maintenance": row is not None, **(row or {})}

    async def _switch(self, service: str, state: Maintenance | None, actor: str,
                      reason: str) -> None:
        before = self.store.maintenance(service)
        before_row = self.store.maintenance_all().get(service)
        self.store.set_maintenance(service, state, actor=actor, why=reason)
        started = time.perf_counter()
        try:
            await self.fleet.sync_router()
        except BaseException:
            # The router did not take it: the store says again what the router serves.
            self.store.set_maintenance(
                service, before, actor=before_row["actor"] if before_row else actor,
                why="the router did not acknowledge the change; undone")
            raise
        took = round((time.perf_counter() - started) * 1000, 1)
        self.store.record(actor, "router.maintenance-applied", service,
                          {"maintenance": state is not None, "ack_ms": took})
