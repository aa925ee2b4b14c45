"""Placement spreads a service over machines and zones, and never uses a down or draining one."""

from __future__ import annotations

import pytest

from hinotori.deploy.placement import Seat, place
from hinotori.errors import DeployError

M3 = [Seat("m1", zone="a"), Seat("m2", zone="b"), Seat("m3", zone="c")]


@pytest.mark.parametrize(("seats", "running", "count", "expected"), [
    (M3, [], 3, ["m1", "m2", "m3"]),                       # one per machine
    (M3, [], 5, ["m1", "m2", "m3", "m1", "m2"]),           # then as evenly as possible
    (M3, ["m1", "m1"], 2, ["m2", "m3"]),                   # fill the emptiest first
    ([Seat("m1", "down"), *M3[1:]], [], 2, ["m2", "m3"]),  # a down machine takes nothing
    ([Seat("m1", "draining"), *M3[1:]], [], 3, ["m2", "m3", "m2"]),
    # Zones: with m1, m2 in zone a and m3 in b, the second host goes to the other zone.
    ([Seat("m1", zone="a"), Seat("m2", zone="a"), Seat("m3", zone="b")], [], 2, ["m1", "m3"]),
    (M3, ["m3"], 0, []),
])
def test_place(seats: list[Seat], running: list[str], count: int, expected: list[str]) -> None:
    assert place("web", seats, running, count) == expected


def test_no_usable_machine_is_a_clear_error() -> None:
    with pytest.raises(DeployError, match="no machine can take a host of web"):
        place("web", [Seat("m1", "down"), Seat("m2", "draining")], [], 1)
