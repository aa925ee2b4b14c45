"""The controller's half of prepared routes (prepared.py): route ids, and what each worker holds.

A route gets an id the first time this object sees it (equal routes, the same id: a route is
found again by its hash and compared, ~0.2 ms at 1,000 backends) and its JSON text once. A
``switch`` line names the table's routes by id and carries the text only of those a worker is
not known to hold, so switching between routes a worker holds costs a line of ids however many
backends they have. What a worker holds is only trusted as far as it is: a worker that
restarted (or dropped a route) answers with the ids it lacks, and they are sent again.
"""

from __future__ import annotations

import json
import secrets
from collections import OrderedDict
from collections.abc import Iterable, Sequence

from hinotori.model import ServiceRoute
from hinotori.router.builtin.prepared import LIMIT

KNOWN = 256  # routes this object keeps an id and a text for


class Sent:
    def __init__(self, workers: int) -> None:
        self.tag = secrets.token_hex(4)  # ids of another controller never match ours
        self._count = 0
        self._ids: dict[ServiceRoute, str] = {}  # one hash per route a switch (no LRU moves)
        self._texts: dict[str, str] = {}
        # Per worker, the ids it holds, most recently used last: at most half of what a
        # worker keeps, so one it evicted is rarely still thought held here.
        self._held: list[OrderedDict[str, None]] = [OrderedDict() for _ in range(workers)]
        # The last ids asked for, and of which routes: a switch after its prepare asks again
        # for the very routes (the same tuple), found by identity without hashing and
        # comparing every backend (~0.2 ms at 1,000) inside the switch; while they are known.
        self._last: tuple[tuple[ServiceRoute, ...], list[str]] | None = None

    def ids(self, routes: tuple[ServiceRoute, ...]) -> list[str]:
        last = self._last
        if last is not None and last[0] is routes and all(r in self._texts for r in last[1]):
            return list(last[1])  # a switch after its prepare: the very routes (see __init__)
        out = self._find(routes)
        self._last = (routes, out)
        return out

    def _find(self, routes: Iterable[ServiceRoute]) -> list[str]:
        out = []
        for route in routes:
            rid = self._ids.get(route)
            if rid is None:
                self._count += 1
                rid = self._ids[route] = f"{self.tag}.{self._count}"
                self._texts[rid] = json.dumps(route.to_dict())
                if len(self._ids) > KNOWN:  # the oldest; if it comes again, it gets a new id
                    old = self._ids.pop(next(iter(self._ids)))
                    del self._texts[old]
            out.append(rid)
        return out

    def line(self, worker: int, op: str, ids: Sequence[str], version: int | None = None,
             lost: Sequence[str] = ()) -> bytes:
        """The ``prepare`` or ``switch`` line for ``worker``: ids, and the text of the routes
        it is not known to hold."""
        held = self._held[worker]
        define = ", ".join(f'"{rid}": {self._texts[rid]}' for rid in dict.fromkeys(ids)
                           if rid not in held)
        head = f'{{"op": "{op}", '
        if op == "switch":
            head += (f'"version": {int(version or 0)}, "routes": {json.dumps(list(ids))}, '
                     f'"lost": {json.dumps(list(lost))}, ')
        return (head + f'"define": {{{define}}}}}\n').encode()

    def holds(self, worker: int, ids: Iterable[str]) -> None:
        held = self._held[worker]
        for rid in ids:
            held[rid] = None
            held.move_to_end(rid)
        while len(held) > LIMIT // 2:
            held.popitem(last=False)

    def forget(self, worker: int) -> None:
        """``worker`` holds nothing we know of (it restarted, or answered with ids missing)."""
        self._held[worker].clear()
