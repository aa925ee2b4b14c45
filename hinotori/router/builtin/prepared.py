"""Routes compiled ahead of their switch: the worker's half of a switch in O(changed).

The controller names every distinct route it sends with an id of its own (``<controller
tag>.<n>``: a restarted controller never reuses one) and sends a route's body once, with
``prepare`` while the new hosts warm or inside the ``switch`` that first needs it. The worker
compiles it then (the expensive part at 1,000 backends: parsing, schedule, targets, pools) and
keeps it here; a switch to routes it holds is a short list of ids, whatever their size: the
compiled routes are linked to the live pools and swapped in (table.link, table.assemble).

Bounded: the least recently used beyond ``LIMIT`` are dropped, never one the live table uses.
A worker that restarted holds none: a switch naming an id it lacks is refused with the ids
missing, and the controller sends them again (supervisor.py). The table file is composed from
each route's JSON text kept here, so persisting a switch costs no serialisation either.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hinotori.model import RoutingTable, ServiceRoute
from hinotori.router.builtin.table import CompiledRoute, Counters, compile_route

if TYPE_CHECKING:
    from hinotori.router.builtin.upstream import Pool

LIMIT = 16  # routes kept besides the live ones (the controller assumes at most half of it)


@dataclass(eq=False, slots=True)
class Entry:
    route: ServiceRoute
    compiled: CompiledRoute
    text: str  # the route's JSON, as the table file holds it


class Missing(KeyError):
    """A switch named routes this worker does not hold (``ids``)."""

    def __init__(self, ids: list[str]) -> None:
        super().__init__(ids)
        self.ids = ids


class Prepared:
    def __init__(self, limit: int = LIMIT) -> None:
        self.limit = limit
        self.entries: OrderedDict[str, Entry] = OrderedDict()
        self.live: tuple[str, ...] = ()  # the ids the live table is made of

    def define(self, routes: dict[str, Any], pool_for: Callable[[str], Pool],
               counters_for: Callable[[str], Counters]) -> None:
        """Compile ``routes`` (id -> wire form) and keep them. ValueError (or KeyError,
        TypeError) on a bad one; then none of them is kept."""
        made: dict[str, Entry] = {}
        for rid, wire in routes.items():
            if not isinstance(rid, str) or not isinstance(wire, dict):
                raise TypeError(f"a prepared route is an id and an object, got {rid!r}")
            route = ServiceRoute.from_dict(wire)
            # pool_for: the live pool of an address, else a new one (table.link, at the switch)
            made[rid] = Entry(route, compile_route(route, {}, pool_for, counters_for),
                              json.dumps(wire))
        for rid, entry in made.items():
            self.entries[rid] = entry
            self.entries.move_to_end(rid)
        self._trim()

    def table(self, version: int, ids: list[str], lost: Iterable[str]
              ) -> tuple[RoutingTable, list[CompiledRoute], bytes]:
        """The table made of the prepared routes ``ids`` (Missing if any is not held), their
        compiled forms, and the table file's bytes."""
        missing = [rid for rid in ids if rid not in self.entries]
        if missing:
            raise Missing(missing)
        entries = [self.entries[rid] for rid in ids]
        for rid in ids:
            self.entries.move_to_end(rid)
        lost = tuple(str(a) for a in lost)
        table = RoutingTable(version=version, routes=tuple(e.route for e in entries), lost=lost)
        text = (f'{{"version": {int(version)}, "routes": ['
                + ", ".join(e.text for e in entries) + "]"
                + (f', "lost": {json.dumps(list(lost))}' if lost else "") + "}")
        return table, [e.compiled for e in entries], text.encode()

    def serving(self, ids: Iterable[str]) -> None:
        """The live table is now made of ``ids`` (none: a table applied whole)."""
        self.live = tuple(ids)
        self._trim()

    def _trim(self) -> None:
        keep = set(self.live)
        spare = len(self.entries) - len(keep & self.entries.keys())
        for rid in list(self.entries):
            if spare <= self.limit:
                break
            if rid not in keep:
                del self.entries[rid]
                spare -= 1
