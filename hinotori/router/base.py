"""The Router protocol: the front door (the data plane), as the control plane sees it.

The control plane hands the router a whole RoutingTable; ``apply`` returns only when every
worker of the data plane has acknowledged that version, so "switched" means switched. A router
may also offer ``prepare(table)`` (see ``prepare`` below): the expensive part of a switch to
``table`` done ahead, while nothing is served differently, so that ``apply`` is O(changed). Requests
already in flight to a backend that the new table drops are allowed to finish (drain); new
requests only go to the new table's backends. The data plane runs apart from the controller and
keeps serving if the controller dies; a new controller adopts it with ``start``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from hinotori import gcheap
from hinotori.model import BackendStats, RoutingTable

# Client-side limits both data planes apply alike (HAProxy: ``timeout http-request`` and
# ``timeout http-keep-alive``). A request head must arrive whole within REQUEST_TIMEOUT of the
# connection being accepted, or of its first byte after a keep-alive wait; else 408 and close.
# A keep-alive connection may wait KEEP_ALIVE_TIMEOUT for its next request, longer than common
# client pools keep idle connections (60 s).
REQUEST_TIMEOUT = 10.0
KEEP_ALIVE_TIMEOUT = 75.0


@dataclass(frozen=True)
class RouterContext:
    """What any router is built from (``Router.create``, called by ``router/registry.py``)."""

    router_dir: Path  # .hinotori/router: the data plane's state (pids, sockets, config)
    # The spec's [router] table (spec.schema.RouterSpec: kind, listen, workers and the
    # kind's own keys); typed loosely because the spec sits above this layer.
    settings: Any
    root: Path | None = None  # the spec's directory: relative paths in settings (certificates)


@runtime_checkable
class Router(Protocol):
    kind: str

    @classmethod
    def create(cls, ctx: RouterContext) -> Router:
        """The router a project's spec asks for (how router/registry.py builds it)."""
        ...

    async def start(self) -> None:
        """Adopt the running data plane if there is one, else start it. Idempotent."""
        ...

    async def apply(self, table: RoutingTable) -> None:
        """Make ``table`` the live table on every worker; return once all acknowledged."""
        ...

    async def current(self) -> RoutingTable | None:
        """The table the data plane is serving now (None if it has none yet)."""
        ...

    async def stats(self) -> dict[str, BackendStats]:
        """Per-backend counters keyed by host id (summed over workers)."""
        ...

    async def stop(self) -> None:
        """Stop the data plane (closing the listener)."""
        ...


async def prepare(router: Router, table: RoutingTable) -> bool:
    """Have ``router`` get ready to serve ``table`` (both data planes here: compiled routes in
    each worker, a new release's servers readied in its slot), if it offers ``prepare``; a
    hint, never needed: ``apply`` gives the same table either way. False if it does not."""
    method = getattr(router, "prepare", None)
    if method is None:
        return False
    await method(table)
    # What the switch to come will use (plans, sent routes) is made now and lives long:
    # freeze it while a pause costs nothing, so no full collection scans it inside the switch.
    gcheap.settle()
    return True
