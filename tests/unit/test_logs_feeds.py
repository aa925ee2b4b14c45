"""Lines read through an engine's log API (hosts on other machines): their offsets from the
engine's stamps, de-duplication on re-read and across a restart, a new container, an engine
that fails; and the parsing of the engine's answer. Real engines are in
tests/integration/test_fleet_observe.py."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence
from pathlib import Path

import pytest

from hinotori.model import Host, HostState
from hinotori.observe.logs import LogQuery, LogStore, Shipper, search
from hinotori.observe.logs.feeds import RANK_BITS, UNIT_NS, positions, since_ns
from hinotori.providers.base import SourceFeed, SourceFile
from hinotori.providers.container_logs import parse_logs, stamp_ns

T0 = 1_796_000_000_000_000_000  # a unix time in ns


class Engine:
    """A container's log as an engine keeps it: (stamp ns, text), and what was asked."""

    def __init__(self, container: str = "c1") -> None:
        self.container = container
        self.lines: list[tuple[int, str]] = []
        self.asked: list[int] = []
        self.down = False

    def fetch(self, since: int) -> list[tuple[int, str]]:
        if self.down:
            raise ConnectionError("machine away")
        self.asked.append(since)
        return [ln for ln in self.lines if ln[0] >= since]


class FakeSource:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def files(self, host: Host, declared: Sequence[str]) -> list[SourceFile]:
        return []

    def feeds(self, host: Host) -> list[SourceFeed]:
        return [SourceFeed("stdout", self.engine.container, self.engine.fetch)]


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


@pytest.fixture
def store(tmp_path: Path) -> LogStore:
    return LogStore(tmp_path / "logs.db")


HOST = Host(id="web-1", service="web", release=1, provider="remote", state=HostState.SERVING,
            born_at=0.0, data={"machine": "m1", "container": "c1"})


def stored(store: LogStore) -> list[str]:
    return [ln.line for ln in search(store, LogQuery(host=HOST.id, limit=None))]


def test_lines_sharing_a_stamp_are_ranked_and_offsets_grow() -> None:
    ms = UNIT_NS
    lines = [(T0, "a"), (T0, "b"), (T0 + 400, "c"), (T0 + ms, "d"), (T0 + 2 * ms - 1, "e"),
             (T0 + 5 * ms, "f")]
    base = T0 // ms
    got = positions(lines, base)
    assert [t for _, t in got] == ["a", "b", "c", "d", "e", "f"]
    offs = [o for o, _ in got]
    step = 1 << RANK_BITS
    assert offs == [1, 2, 3, step + 1, step + 2, 5 * step + 1]
    # Each offset leads back to a `since` at or before its line, in its millisecond.
    for off, (stamp, _) in zip(offs, lines, strict=True):
        assert since_ns(off, base) <= stamp < since_ns(off, base) + ms
    assert positions([(T0 - ms, "before the stream")], base) == []
    # A line stamped a little before the one written ahead of it (stdout and stderr stamped
    # apart) keeps an offset of its own.
    raced = positions([(T0, "a"), (T0 + ms, "b"), (T0 + ms - 1, "raced"), (T0 + ms, "c")], base)
    assert [o for o, _ in raced] == [1, step + 1, 2, step + 2]
    # Podman 4 stamps whole seconds: a second of lines is one group, ranked in order.
    second = [(T0 // 10**9 * 10**9, f"l{i}") for i in range(100_000)]
    offs = [o for o, _ in positions(second, second[0][0] // ms)]
    assert offs == list(range(1, 100_001))


def test_every_line_is_stored_once_however_often_it_is_read(store: LogStore) -> None:
    engine = Engine()
    shipper = Shipper(store, sources={"remote": FakeSource(engine)})
    assert run(shipper.ship([HOST])) == 0  # nothing yet: no stream either
    assert store.stream(HOST.id, "stdout") is None
    engine.lines += [(T0, f"burst {i}") for i in range(100)]  # one read, one stamp (Podman)
    assert run(shipper.ship([HOST])) == 100
    assert run(shipper.ship([HOST])) == 0
    engine.lines += [(T0 + 10, "same millisecond"), (T0 + 5 * UNIT_NS, "later")]
    assert run(shipper.ship([HOST])) == 2
    assert engine.asked[-1] == T0  # asked again only from the last line's millisecond
    assert stored(store) == [f"burst {i}" for i in range(100)] + ["same millisecond", "later"]


def test_a_restarted_shipper_resumes_from_the_store(store: LogStore) -> None:
    engine = Engine()
    engine.lines += [(T0 + i * 300_000, f"line {i}") for i in range(20)]  # 3-4 per millisecond
    assert run(Shipper(store, sources={"remote": FakeSource(engine)}).ship([HOST])) == 20
    engine.lines += [(T0 + 20 * 300_000, "after the restart")]
    again = Shipper(store, sources={"remote": FakeSource(engine)})
    assert run(again.ship([HOST])) == 1
    assert engine.asked[-1] == (T0 + 19 * 300_000) // UNIT_NS * UNIT_NS
    assert stored(store) == [f"line {i}" for i in range(20)] + ["after the restart"]


def test_another_container_is_a_new_generation(store: LogStore) -> None:
    engine = Engine("c1")
    engine.lines.append((T0 + 5 * UNIT_NS, "old"))
    shipper = Shipper(store, sources={"remote": FakeSource(engine)})
    run(shipper.ship([HOST]))
    engine.container, engine.lines = "c2", [(T0, "new")]  # earlier stamps: its own base
    assert run(shipper.ship([HOST])) == 1
    assert store.stream(HOST.id, "stdout").gen == 1  # type: ignore[union-attr]
    assert stored(store) == ["old", "new"]


def test_an_engine_away_is_left_alone_for_a_while_but_a_flush_asks(store: LogStore) -> None:
    engine = Engine()
    engine.lines.append((T0, "one"))
    shipper = Shipper(store, sources={"remote": FakeSource(engine)})
    engine.down = True
    assert run(shipper.ship([HOST])) == 0
    assert shipper.stats.errors == 1 and "machine away" in (shipper.stats.last_error or "")
    engine.down = False
    assert run(shipper.ship([HOST])) == 0 and shipper.stats.errors == 1  # not asked yet
    assert run(shipper.flush(HOST)) == 1  # a flush before a destroy asks now
    assert stored(store) == ["one"]


def _frame(stream: int, payload: bytes) -> bytes:
    return bytes([stream, 0, 0, 0]) + struct.pack(">I", len(payload)) + payload


def test_an_engines_answer_is_parsed_exactly() -> None:
    assert stamp_ns("2026-11-25T10:20:51.226499416Z") == stamp_ns(
        "2026-11-25T10:20:51.226499416+00:00")
    assert stamp_ns("2026-11-25T10:20:51.226499416Z") % 1_000_000_000 == 226499416
    assert stamp_ns("2026-11-25T10:20:51Z") % 1_000_000_000 == 0
    assert stamp_ns("2026-11-25T10:20:51.5Z") - stamp_ns("2026-11-25T10:20:51Z") == 500_000_000
    body = (_frame(1, b"2026-11-25T10:20:51.000000001Z hello world\n")
            + _frame(2, b"2026-11-25T10:20:51.000000002Z oops\n")
            + _frame(1, b"2026-11-25T10:20:51.000000003Z a piece"))
    got = parse_logs(body)
    assert [t for _, t in got] == ["hello world", "oops", "a piece"]
    assert [s % 10 for s, _ in got] == [1, 2, 3]
    cr = _frame(1, b"2026-11-25T10:20:51.1Z progress\r50%\x0cpage\n")
    assert [t for _, t in parse_logs(cr)] == ["progress\r50%\x0cpage"]
    raw = b"2026-11-25T10:20:51.000000001Z tty output\n"  # no frames: a tty container
    assert [t for _, t in parse_logs(raw)] == ["tty output"]
