"""Plans worked out once: a switch back to a table seen lately costs a lookup, not a plan.

``config.plan`` of a 1,000-backend table takes ~3 ms of Python, its haproxy.cfg ~1 ms and its
JSON for the state file ~1 ms; a blue-green switch, a rollback or the switch after a
``prepare`` applies a table planned moments or minutes before. A plan depends on the table's
routes and lost addresses and on the slots and shapes it starts from, so those are the key
(the routes found by hash, then compared: ~0.3 ms at 1,000 backends; the very routes of the
last lookup, as a switch after its prepare has, by identity). Plans are never changed
after they are made, so handing out the same object twice is safe.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hinotori.model import RoutingTable
from hinotori.router.haproxy import config

LIMIT = 8


@dataclass(eq=False)
class Entry:
    plan: config.Plan
    routes_text: str  # the table's routes as JSON (the state file's "table")
    cfg: str | None = None  # haproxy.cfg for the plan, rendered when first written


Key = tuple[object, ...]


class PlanCache:
    def __init__(self, limit: int = LIMIT) -> None:
        self.limit = limit
        self._entries: dict[Key, Entry] = {}
        # The last lookup: (routes, lost, rest of the key, entry). A switch after a prepare
        # (deploy, rollback) asks again for the very routes it prepared: found by identity,
        # without hashing and comparing every backend (~0.3 ms at 1,000) inside the switch.
        self._last: tuple[object, object, Key, Entry] | None = None

    def get(self, table: RoutingTable, slots: dict[str, dict[int, int]],
            shapes: tuple[config.Shape, ...]) -> Entry:
        """The plan of ``table`` from ``slots`` and ``shapes`` (ValueError: a bad table)."""
        rest: Key = (shapes,
                     tuple(sorted((svc, tuple(sorted(m.items()))) for svc, m in slots.items())))
        last = self._last
        if last is not None and last[0] is table.routes and last[1] is table.lost and \
                last[2] == rest:
            return last[3]  # (plans are never changed)
        key: Key = (table.routes, table.lost, *rest)
        entry = self._entries.get(key)
        if entry is None:
            entry = Entry(config.plan(table, slots, shapes),
                          json.dumps([r.to_dict() for r in table.routes]))
            if len(self._entries) >= self.limit:  # the oldest goes
                del self._entries[next(iter(self._entries))]
            self._entries[key] = entry
        self._last = (table.routes, table.lost, rest, entry)
        return entry

    @staticmethod
    def cfg(entry: Entry, render: Callable[[config.Plan], str]) -> str:
        if entry.cfg is None:
            entry.cfg = render(entry.plan)
        return entry.cfg


def table_text(table: RoutingTable, entry: Entry) -> str:
    """``json.dumps(table.to_dict())`` with the routes' JSON made once per plan."""
    lost = f', "lost": {json.dumps(list(table.lost))}' if table.lost else ""
    return f'{{"version": {int(table.version)}, "routes": {entry.routes_text}{lost}}}'


def json_of(table: RoutingTable | dict[str, Any] | None) -> str | None:
    """The state's "table" (the applied object, or a dict as read from the file) as JSON."""
    if table is None:
        return None
    return json.dumps(table.to_dict() if isinstance(table, RoutingTable) else table)


def state_text(state: dict[str, object], table: str | None) -> str:
    """The state file's JSON: ``state`` with its "table" given as JSON text ``table``."""
    parts = [f"{json.dumps(k)}: " + (_dumped(v) if k == "base" else json.dumps(v, sort_keys=True))
             for k, v in sorted(state.items()) if k != "table"]
    if table is not None:
        parts.append(f'"table": {table}')
    return "{" + ", ".join(parts) + "}"


# The last "base" dumped and its JSON. It holds the counters of every server ever deleted
# (a host each: 1,000 more per deploy of 1,000 hosts), and its dict is replaced, never
# changed (router.py): each switch saves the state, and dumping 3,000 hosts' counters
# again took ~2.5 ms of every switch.
_BASE: tuple[object, str] | None = None


def _dumped(base: object) -> str:
    global _BASE
    if _BASE is None or _BASE[0] is not base:
        _BASE = (base, json.dumps(base, sort_keys=True))
    return _BASE[1]


# The state file's parts (router.py) as a plan wants them.

def table_of(state: dict[str, Any]) -> RoutingTable | None:
    """The state's table: as an apply left it (the object), or as the file holds it."""
    table = state.get("table")
    if isinstance(table, RoutingTable):
        return table
    return RoutingTable.from_dict(table) if table else None


def slots_of(state: dict[str, Any]) -> dict[str, dict[int, int]]:
    return {svc: {int(r): int(s) for r, s in m.items()}
            for svc, m in (state.get("slots") or {}).items()}


def shapes_of(state: dict[str, Any]) -> tuple[config.Shape, ...]:
    return tuple(config.Shape.from_dict(s) for s in state.get("shapes") or ())
