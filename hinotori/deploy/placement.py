"""Placement: which machine each new host of a service goes to.

Spread first, then balance: a new host goes to the usable machine with the fewest live hosts of
its service, ties broken by the zone (the `zone` label) with the fewest, then by name, so no two
hosts share a machine while replicas <= machines, and zones fill evenly. Machines that are down or
draining take no new host. Pure: the caller says what runs where.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from hinotori.errors import DeployError

USABLE, DOWN, DRAINING = "up", "down", "draining"  # a machine's states


@dataclass(frozen=True)
class Seat:
    """A machine as placement sees it."""

    name: str
    state: str = USABLE  # up | down | draining
    zone: str = ""


def place(service: str, seats: Sequence[Seat], running: Sequence[str], count: int) -> list[str]:
    """Machines for ``count`` new hosts of ``service``, given the machines its live hosts run
    on now (``running``, one entry per host). Raises DeployError if no machine is usable."""
    usable = [s for s in seats if s.state == USABLE]
    if count and not usable:
        states = ", ".join(f"{s.name} {s.state}" for s in seats) or "none"
        raise DeployError(f"no machine can take a host of {service} (machines: {states})",
                          hint="`hinotori machines` shows why; `hinotori machine undrain NAME` "
                               "brings a drained one back")
    per_machine = Counter(running)
    zone_of = {s.name: s.zone for s in seats}
    per_zone = Counter(zone_of.get(m, "") for m in running)
    chosen = []
    for _ in range(count):
        best = min(usable, key=lambda s: (per_machine[s.name], per_zone[s.zone], s.name))
        chosen.append(best.name)
        per_machine[best.name] += 1
        per_zone[best.zone] += 1
    return chosen
