"""Release slots: which slot backend a release takes, and which backend ordinary requests use.

See config.py: a release keeps its slot while it serves, a new one takes the lowest free slot;
ordinary requests go to the main backend, or to the slot of the one release taking all traffic.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol


class Weighted(Protocol):
    @property
    def weight(self) -> int: ...


def slot_backend(service: str, slot: int) -> str:
    return f"{service}.r{slot}"


def assign_slots(releases: list[int], previous: dict[int, int], count: int) -> dict[int, int]:
    """Release -> slot: releases keep the slot they had; a new one takes a free slot among the
    first ``count`` (the shape's), one the previous table did not use if there is one: a
    release that just left keeps its servers in its slot, so switching back to it (a
    rollback, a blue-green back and forth) changes one map entry; only then a recent one,
    and beyond ``count`` only when all are taken (the shape grows: a reload)."""
    kept = {r: s for r, s in previous.items() if r in releases}
    taken = set(kept.values())
    recent = set(previous.values())
    free = iter([*(s for s in range(1, count + 1) if s not in taken | recent),
                 *(s for s in range(1, count + 1) if s in recent - taken),
                 *range(count + 1, count + len(releases) + 1)])
    for r in sorted(releases):
        if r not in kept:
            kept[r] = next(free)
    return kept


def live_backend(svc: str, main: Mapping[str, Weighted], sticky: bool,
                 slots: dict[int, int]) -> str:
    """The backend ordinary requests of ``svc`` go to: the slot of the one release that takes
    all the traffic, if every member of it is weighted (so the slot's weights are the main
    backend's) and no cookie must be set; else the main backend. ``main``: the main
    backend's servers by name (``v<release>_<host id>``), ``slots``: release -> slot."""
    weighted = {name.split("_", 1)[0] for name, srv in main.items() if srv.weight > 0}
    if sticky or len(weighted) != 1:
        return svc
    (release,) = weighted
    if any(srv.weight == 0 for name, srv in main.items() if name.startswith(release + "_")):
        return svc
    slot = slots.get(int(release[1:]))
    return svc if slot is None else slot_backend(svc, slot)
