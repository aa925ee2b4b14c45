"""Lines a host's engine serves through its log API, positioned like a file's (stream, offset).

A host on another machine has no log file here (providers.base.SourceFeed): its engine is asked
for the lines stamped since a time. The store keeps each line once by (stream, offset) and a
stream's ``shipped`` offset says where to resume, so an API line needs an offset that is

- **the same every time the line is read** (dedup of an at-least-once transport), and
- **decodable back into a ``since``** for the next request, also by a restarted controller.

The engine stamps every line, but several lines may share one stamp: Podman's conmon stamps a
whole read of up to 8 KiB once, and Podman 4's API truncates stamps to whole seconds (its
``since`` is exact), so the stamp alone is not a key. A line's offset is its stamp in
milliseconds since the stream's base (the first line's millisecond, saved with the stream) and
its rank among the lines of that millisecond, plus one (0 is "none shipped")::

    offset = ((stamp_ms - base_ms) << 24 | rank) + 1

A rank counts the lines of its millisecond before it in the answer, not only the adjacent
ones: Docker stamps stdout and stderr in two goroutines, so a line may be stamped a little
before the one written ahead of it. Resuming from ``shipped`` asks since the start of its
millisecond, and every answer from a millisecond's start holds all of that millisecond's lines
in the same order, so the ranks come out the same: lines at or below ``shipped`` are the ones
stored. 2^39 ms after the base is 17 years; a millisecond (a second, on Podman 4) holds
up to 16.7 million ranks; further lines would share the last rank and be dropped as duplicates.
A line written after the line shipped last but stamped before its millisecond (a clock
stepped back, or that race across a millisecond's edge at the very end of an answer) is taken
as already shipped: the engine would not return it since that time anyway. Each request
re-reads at most the last millisecond (second, on Podman 4) it saw.

The stream's ``inode`` column names what is read: ``api:<container id>@<base_ms>``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from hinotori.model import Host
from hinotori.observe.logs.store import Batch, LogStore, Row
from hinotori.providers.base import SourceFeed

UNIT_NS = 1_000_000  # a millisecond: the time part of an offset
RANK_BITS = 24
RANK_MAX = (1 << RANK_BITS) - 1
RETRY_AFTER = 5.0  # seconds before asking again an engine that failed (a machine away)


def positions(lines: Iterable[tuple[int, str]], base: int) -> list[tuple[int, str]]:
    """(offset, text) of engine lines given oldest first as (stamp ns, text); lines stamped
    before the base are left out (they belong before this stream)."""
    out = []
    ranks: dict[int, int] = {}
    for stamp, text in lines:
        unit = stamp // UNIT_NS
        rank = ranks[unit] = ranks.get(unit, -1) + 1
        if unit >= base:
            out.append((((unit - base) << RANK_BITS | min(rank, RANK_MAX)) + 1, text))
    return out


def since_ns(shipped: int, base: int) -> int:
    """Where to ask from so that the line at offset ``shipped`` and its millisecond come back
    (``base`` in milliseconds, as ``positions`` takes it)."""
    return (base + (max(shipped - 1, 0) >> RANK_BITS)) * UNIT_NS


def ident(container: str, base: int) -> str:
    return f"api:{container}@{base}"


def parse_ident(text: str | None) -> tuple[str, int] | None:
    if not text or not text.startswith("api:") or "@" not in text:
        return None
    container, _, base = text[4:].rpartition("@")
    return (container, int(base)) if base.isdigit() else None


@dataclass
class _State:
    stream: int
    container: str
    base: int  # in milliseconds
    shipped: int


class FeedReader:
    """The shipper's side of API feeds: one position per (host, feed), kept in the store."""

    def __init__(self, store: LogStore) -> None:
        self.store = store
        self._state: dict[tuple[str, str], _State] = {}
        self._retry: dict[tuple[str, str], float] = {}  # when a failing feed is asked again

    def read(self, host: Host, feed: SourceFeed, ts: float, *, force: bool = False
             ) -> tuple[Batch | None, str | None]:
        """The new lines of ``feed`` as one batch (None if none), and an error if the engine
        could not be asked (then it is left alone for a while unless ``force``)."""
        key = (host.id, feed.name)
        if not force and self._retry.get(key, 0.0) > time.monotonic():
            return None, None
        state = self._state.get(key)
        if state is None or state.container != feed.ident:
            state = self._resume(host, feed)
        try:
            lines = feed.fetch(0 if state is None else since_ns(state.shipped, state.base))
        except Exception as e:  # the SDK's, requests', a tunnel's: all mean "not now"
            self._retry[key] = time.monotonic() + RETRY_AFTER
            return None, f"cannot read {feed.name} of {host.id} from its engine: {e}"
        self._retry.pop(key, None)
        if state is None:
            if not lines:
                return None, None
            state = self._open(host, feed, lines[0][0] // UNIT_NS)
        self._state[key] = state
        rows: list[Row] = [(state.stream, off, ts, text)
                           for off, text in positions(lines, state.base) if off > state.shipped]
        if not rows:
            return None, None
        return Batch(state.stream, rows, max(r[1] for r in rows)), None

    def stored(self, batches: Sequence[Batch]) -> None:
        """The batches are in the store: move their feeds' positions."""
        by_stream = {s.stream: s for s in self._state.values()}
        for batch in batches:
            state = by_stream.get(batch.stream)
            if state is not None:
                state.shipped = max(state.shipped, batch.shipped)

    def forget(self, host: str) -> None:
        for key in [k for k in self._state if k[0] == host]:
            del self._state[key]
        for key in [k for k in self._retry if k[0] == host]:
            del self._retry[key]

    def hosts(self) -> set[str]:
        return {k[0] for k in self._state}

    def _resume(self, host: Host, feed: SourceFeed) -> _State | None:
        known = self.store.stream(host.id, feed.name)
        parsed = parse_ident(known.inode) if known else None
        if known is None or parsed is None or parsed[0] != feed.ident:
            return None
        return _State(known.id, parsed[0], parsed[1], known.shipped)

    def _open(self, host: Host, feed: SourceFeed, base: int) -> _State:
        known = self.store.stream(host.id, feed.name)
        stream = self.store.open_stream(host=host.id, service=host.service,
                                        release=host.release, source=feed.name,
                                        inode=ident(feed.ident, base),
                                        gen=0 if known is None else known.gen + 1)
        return _State(stream.id, feed.ident, base, stream.shipped)
