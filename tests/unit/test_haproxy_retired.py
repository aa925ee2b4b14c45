"""The HAProxy router's base (counters of servers HAProxy no longer has): a deleted host's
counts are kept for retired.KEPT_FOR, never those of a host that still has a server or that a
reload reset while serving."""

from __future__ import annotations

from hinotori.router.haproxy import retired
from hinotori.router.haproxy.stats import Counts

T = 1_000_000.0


def counts(n: int) -> Counts:
    return Counts(requests=n, statuses={"2xx": n} if n else {})


def test_deleted_counts_add_up_and_are_forgotten_after_kept_for() -> None:
    base = retired.updated(None, {"a": counts(5)}, T, lambda: set())
    assert base == {"a": {"requests": 5, "errors": 0, "statuses": {"2xx": 5}, "gone": T}}
    base = retired.updated(base, {"a": counts(2)}, T + 1, lambda: set())  # its other server
    assert base is not None and base["a"]["requests"] == 7 and base["a"]["gone"] == T + 1
    assert retired.updated(base, {}, T + retired.KEPT_FOR, lambda: set()) is None  # unchanged
    assert retired.updated(base, {}, T + 2 + retired.KEPT_FOR, lambda: set()) == {}


def test_a_host_with_a_server_or_reset_by_a_reload_is_kept() -> None:
    base = retired.added(None, {"serving": counts(3)}, gone_at=None)  # a reload's reset
    base = retired.added(base, {"back": counts(4)}, gone_at=T)  # deleted, then added again
    later = T + 10 * retired.KEPT_FOR
    asked: list[int] = []

    def present() -> set[str]:
        asked.append(1)
        return {"back"}

    assert retired.updated(base, {}, later, present) is None
    assert asked == [1]
    assert retired.updated(base, {}, later, lambda: set()) == {
        "serving": {"requests": 3, "errors": 0, "statuses": {"2xx": 3}}}


def test_the_servers_are_listed_only_when_some_host_is_old_enough() -> None:
    base = retired.added(None, {"a": counts(1)}, gone_at=T)

    def present() -> set[str]:
        raise AssertionError("not needed: nobody is old enough")

    assert retired.updated(base, {}, T + 1, present) is None
