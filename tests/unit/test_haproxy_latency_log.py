"""HAProxy's latency log read in dumps of its ring (hinotori.router.haproxy.stats.LatencyLog):
each line counted once however the dumps overlap, none lost when the ring no longer holds the
last line taken (a new worker, a ring that wrapped), and a worker that does not answer leaves
the counts as they were. A small Unix-socket server plays HAProxy's stats socket (the real one
runs in tests/integration/test_router_haproxy_latency.py)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from hinotori.router.haproxy.stats import (
    ADAPT_EVERY,
    DUMP_EVERY,
    DUMP_LINES,
    GIL_LINES,
    LatencyLog,
    request_counter,
)


def lines(pid: int, numbers: range, server: str = "v1_a") -> bytes:
    """Request lines as HAProxy logs them: ``<pid> <line number> <server> <Ta>``."""
    return b"".join(b"%d %d %s 3\n" % (pid, i, server.encode()) for i in numbers)


_markers = iter(range(10**6))


def marker(pid: int, n: int, before: int) -> bytes:
    """The line the marker frontend logs when N changed from ``before`` to ``n``."""
    return b"%d M%d %d /%d\n" % (pid, next(_markers), n, before)


class FakeStatsSocket:
    """Answers ``show events <ring>`` with ``self.ring`` as HAProxy does (each line, then an
    empty one) and ``show info`` with ``pid`` and ``requests`` (CumReq), one command per
    connection; counts the dumps it served."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ring = b""
        self.pid = 7
        self.requests = 0
        self.sample = 1  # N in the latency map (``show map``)
        self.dumps = 0
        self.commands: list[bytes] = []
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                command = b""
                while not command.endswith(b"\n"):
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    command += chunk
                self.commands.append(command)
                if command.startswith(b"show map"):
                    conn.sendall(b"0x55d0 0:%d %d\n\n" % ((1 << 30) // self.sample - 1,
                                                           self.sample))
                    continue
                if command.startswith(b"show info"):
                    conn.sendall(b"Name: HAProxy\nPid: %d\nCumConns: 3\nCumReq: %d\n\n"
                                 % (self.pid, self.requests))
                    continue
                self.dumps += 1
                conn.sendall(self.ring + b"\n")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_RDWR)
        self.server.close()


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeStatsSocket]:
    f = FakeStatsSocket(tmp_path / "haproxy.sock")
    yield f
    f.close()


def test_each_line_is_counted_once_however_the_dumps_overlap() -> None:
    log = LatencyLog(Path("/nonexistent"), "ring")
    parsed: list[bytes] = []  # what is parsed: only what follows the last line taken
    record = log.record
    log.record = lambda data: (parsed.append(data), record(data))  # type: ignore[method-assign]
    log.take(lines(7, range(1, 4)) + b"\n")
    assert (log.lines, log._last) == (3, b"7 3 v1_a 3\n")
    log.take(lines(7, range(1, 4)) + b"\n")  # nothing new
    log.take(lines(7, range(2, 6)) + b"\n")  # the oldest overwritten, two new
    assert log.lines == 5
    assert parsed == [lines(7, range(1, 4)), lines(7, range(4, 6))]
    log.take(lines(7, range(5, 7)) + b"\n")  # the last line taken is the first one here
    assert log.lines == 6
    log.take(b"\n")  # an empty ring (a fresh worker): nothing, and the mark is kept
    log.take(b"")
    log.take(lines(7, range(6, 8)) + b"\n")
    assert log.lines == 7 and sum(log.latency["a"]) == 7


def test_counting_a_long_dump_lets_other_threads_in_between_and_counts_the_same(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The event loop's thread must not wait for the GIL while a whole dump is counted.
    import hinotori.router.haproxy.stats as stats

    dump = marker(7, 3, 1) + lines(7, range(1, 10 * GIL_LINES))
    whole = LatencyLog(Path("/nowhere"), "r")
    monkeypatch.setattr(stats, "GIL_LINES", 10**9)
    whole.take(dump)
    monkeypatch.setattr(stats, "GIL_LINES", GIL_LINES)
    yields: list[None] = []
    monkeypatch.setattr(stats, "_let_others_in", lambda: yields.append(None))
    chunked = LatencyLog(Path("/nowhere"), "r")
    chunked.take(dump)
    assert len(yields) == 10  # 10 * GIL_LINES lines and the empty one after the last newline
    assert (whole.lines, whole.counted) == (10 * GIL_LINES - 1, 30 * GIL_LINES - 3)
    assert (chunked.lines, chunked.counted, chunked.latency, chunked.latency_sum_ms) == \
        (whole.lines, whole.counted, whole.latency, whole.latency_sum_ms)


def test_a_ring_that_no_longer_holds_the_last_line_is_all_new() -> None:
    log = LatencyLog(Path("/nonexistent"), "ring")
    log.take(lines(7, range(1, 11)))
    log.take(lines(7, range(50, 60)))  # more was logged than the ring holds: lines 11-49 lost
    assert log.lines == 20
    log.take(marker(9, 5, 1) + lines(9, range(1, 4)))  # a new worker (a reload): its own ring
    assert (log.lines, log.counted) == (23, 35)
    # A line that only looks like the last one taken (a prefix of it) is not taken for it.
    log.take(b"19 3 v1_a 3\n" + lines(9, range(4, 5)))
    assert log.lines == 25


def test_polls_count_what_haproxy_logged_since_the_last_one(fake: FakeStatsSocket) -> None:
    log = LatencyLog(fake.path, "hinotori-latency")

    async def scenario() -> None:
        fake.ring = lines(7, range(1, 4))
        await log.attach()  # what the ring holds: counted before attach returns
        assert log.lines == 3
        fake.ring = lines(7, range(2, 9))
        await log.poll()
        assert log.lines == 8
        log.close()

    asyncio.run(scenario())
    # Dumps of the ring, never a waiting stream (`-w`: HAProxy sent each line on its own).
    assert set(fake.commands) == {b"show info\n", b"show events hinotori-latency\n"}


def test_concurrent_polls_from_other_threads_never_count_a_line_twice(
        fake: FakeStatsSocket) -> None:
    log = LatencyLog(fake.path, "ring")
    fake.ring = lines(7, range(1, 2001))

    def reader() -> None:
        async def polls() -> None:
            for _ in range(10):
                await log.poll()
        asyncio.run(polls())

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    for number in range(2001, 2401):  # lines keep coming while they read
        fake.ring += lines(7, range(number, number + 1))
    for t in threads:
        t.join(30)
    asyncio.run(log.poll())
    assert (log.lines, log.counted) == (2400, 2400)
    assert fake.dumps == 41 and len(fake.commands) == 82


def test_a_worker_that_does_not_answer_changes_nothing(tmp_path: Path,
                                                       fake: FakeStatsSocket) -> None:
    absent = LatencyLog(tmp_path / "nothing-here.sock", "ring")
    asyncio.run(absent.poll())  # no HAProxy: no error, nothing counted
    assert absent.lines == 0

    log = LatencyLog(fake.path, "ring")
    fake.ring = lines(7, range(1, 4))
    asyncio.run(log.poll())
    fake.close()  # HAProxy gone (stopped, or between two workers)
    asyncio.run(log.poll())
    assert (log.lines, log._last) == (3, b"7 3 v1_a 3\n")


def test_the_ring_is_dumped_only_when_lines_may_wait_and_n_follows_haproxy_s_count(
        fake: FakeStatsSocket) -> None:
    chosen: list[int] = []

    async def set_sample(n: int) -> None:
        chosen.append(n)

    log = LatencyLog(fake.path, "ring", max_rate=100, set_sample=set_sample)
    fake.requests, fake.ring = 5_000_000, lines(7, range(1, 4))  # a long-running worker
    log._read(dump=False)  # the first reading dumps what the ring holds
    assert (fake.dumps, log.lines, log.requests) == (1, 3, 0)  # its past is no rate
    log._read(dump=False)  # no request since: no dump, however long ago the last one was
    log._dumped -= 10 * DUMP_EVERY
    log._read(dump=False)
    assert fake.dumps == 1
    fake.requests += 10  # a few: dumped once DUMP_EVERY has passed since the last dump
    log._read(dump=False)
    assert fake.dumps == 2
    log._read(dump=False)
    assert fake.dumps == 2  # and once more DUMP_EVERY later: they may have been in flight
    log._dumped -= DUMP_EVERY
    log._read(dump=False)
    log._dumped -= DUMP_EVERY
    log._read(dump=False)
    assert fake.dumps == 3  # then no more
    log._dumped += DUMP_EVERY
    fake.requests += 10
    log._read(dump=False)
    assert fake.dumps == 3 and log._logged == 10
    fake.requests += DUMP_LINES  # enough lines to dump at once
    log._read(dump=False)
    assert fake.dumps == 4 and log.requests == 20 + DUMP_LINES

    async def rate() -> None:  # N from HAProxy's count, whatever the lines say
        t = log._window[0] + ADAPT_EVERY
        await log.adapt(t)  # 4,020 requests in ADAPT_EVERY: 16,080/s
        fake.requests += 400  # then 1,600/s: 16 wanted, down by half at most
        log._read(dump=False)
        await log.adapt(t + ADAPT_EVERY)
    asyncio.run(rate())
    assert chosen == [161, 80] and log.lines == 3
    fake.pid, fake.requests = 8, 2  # a new worker (a reload): its ring is dumped at once
    fake.ring = lines(8, range(1, 3))
    log._read(dump=False)
    assert (fake.dumps, log.lines, log.requests) == (5, 5, 20 + DUMP_LINES + 400 + 2)


def test_request_counter_reads_show_info(fake: FakeStatsSocket, tmp_path: Path) -> None:
    fake.requests = 42
    assert request_counter(fake.path) == (b"7", 42)
    (tmp_path / "x").touch()
    with pytest.raises(OSError):
        request_counter(tmp_path / "x")  # not a socket


def test_a_dump_that_failed_is_due_again(fake: FakeStatsSocket) -> None:
    log = LatencyLog(fake.path, "ring")
    fake.ring = lines(7, range(1, 4))
    real = log.take

    def broken(data: bytes) -> None:
        raise OSError("cut mid-dump")
    log.take = broken  # type: ignore[method-assign]
    asyncio.run(log.poll())  # the first reading's dump fails: nothing counted, no error
    log.take = real  # type: ignore[method-assign]
    assert log.lines == 0
    log._read(dump=False)  # no request since, yet the next reading dumps (none succeeded)
    assert log.lines == 3


def test_n_changing_between_two_dumps_counts_each_line_for_the_n_it_was_logged_under() -> None:
    # HAProxy's lines carry no N (a sample expression in the log format costs every request):
    # the marker the router has HAProxy log right after it changed N says where it changed.
    log = LatencyLog(Path("/nowhere"), "ring")
    first = marker(7, 1, 1) + lines(7, range(1, 4))
    log.take(first)
    assert (log.lines, log.counted) == (3, 3)
    second = first + marker(7, 5, 1) + lines(7, range(4, 7))
    log.take(second)  # overlapping the first: only the new lines, each for 5 requests
    assert (log.lines, log.counted) == (6, 3 + 15)
    log.take(second + lines(7, range(7, 9)))  # N unchanged since the last marker
    assert (log.lines, log.counted) == (8, 3 + 15 + 10)
    # The ring wrapped past the last line taken: every line is looked at again, none is
    # counted twice, and the markers among them leave N where the last one set it.
    wrapped = second[len(first):] + lines(7, range(9, 10))  # lines 7 and 8 overwritten
    log.take(wrapped + marker(7, 2, 5) + lines(7, range(10, 12)))
    assert (log.lines, log.counted) == (11, 3 + 15 + 10 + 5 + 4)
    assert sum(log.latency["a"]) == log.counted


def test_a_new_reader_counts_the_lines_before_the_first_marker_for_the_n_before_it() -> None:
    log = LatencyLog(Path("/nowhere"), "ring")  # a restarted controller, say
    log.take(lines(7, range(1, 3)) + marker(7, 4, 2) + lines(7, range(3, 4)))
    assert (log.lines, log.counted) == (3, 2 * 2 + 4)


def test_a_new_reader_with_no_marker_in_the_ring_asks_haproxy_for_n(
        fake: FakeStatsSocket, tmp_path: Path) -> None:
    fake.sample, fake.ring = 6, lines(7, range(1, 4))
    log = LatencyLog(fake.path, "ring", sample_map=tmp_path / "latency.map")
    asyncio.run(log.poll())
    assert (log.lines, log.counted) == (3, 18)
    assert b"show map %s\n" % str(tmp_path / "latency.map").encode() in fake.commands
    fake.sample = 2  # asked once: from now on the markers say
    fake.ring += marker(7, 3, 6) + lines(7, range(4, 5))
    log._read(dump=True)
    assert (log.lines, log.counted) == (4, 21)


def test_a_new_worker_counts_for_the_last_n_and_its_old_ring_is_not_counted_twice() -> None:
    log = LatencyLog(Path("/nowhere"), "ring")
    old = marker(7, 3, 1) + lines(7, range(1, 5))
    log.take(old)
    assert log.counted == 12
    log.take(lines(8, range(1, 3)))  # a reload: the new worker loaded the map as it was
    assert (log.lines, log.counted) == (6, 18)
    log.take(old + lines(7, range(5, 6)))  # the old worker's ring again: only its new line
    assert (log.lines, log.counted) == (7, 21)
    log.take(lines(8, range(1, 4)))  # and the new worker's N was not its to change
    assert (log.lines, log.counted) == (8, 24)


def test_two_threads_may_log_the_same_line_number_and_both_lines_count() -> None:
    # %lc is read, not taken, while a line is built: two threads can write the same number.
    log = LatencyLog(Path("/nowhere"), "ring")
    log.take(b"7 1 v1_a 3\n7 1 v1_b 3\n7 2 v1_a 4\n")
    assert (log.lines, sorted(log.latency)) == (3, ["a", "b"])
    log.take(b"7 1 v1_b 3\n7 2 v1_a 4\n")  # a ring that no longer holds the last line taken
    assert log.lines == 3


def test_an_older_workers_lines_still_count_for_the_n_they_carry() -> None:
    # A worker started by the previous version logs <pid> <request#> <server> <Ta> <N>.
    log = LatencyLog(Path("/nowhere"), "ring")
    log.take(b"7 10 v1_a 3 4\n7 11 v1_a 3 4\n")
    assert (log.lines, log.counted) == (2, 8)
