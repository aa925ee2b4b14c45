"""Per-host counters from HAProxy: ``show stat`` for counts, its log ring for latencies.

``show stat`` gives every server's requests by status class, errors and sessions in flight,
but only an average response time. The latency histogram the canary analysis needs comes from
HAProxy's own per-request log (``LatencyLog``): the frontend logs ``<pid> <line#> <server>
<Ta>`` (Ta: total active time, ms) into an in-memory ring that the router object reads over
the stats socket. Writing a line per request costs HAProxy much of its req/s under load,
so it logs 1 request in N, and the reader sets N four times a second to keep near
``max_rate`` lines a second: every request while traffic is below it, a uniform sample above
it (a random draw against the latency map's range, config.py; ``set_sample`` replaces it). A
line counts for its N requests, so the histogram stays an estimate of all requests (its counts
and sum), and the counts by status stay exact (they come from ``show stat``). The lines do
not carry N (a sample expression in the frontend's log format would make HAProxy copy every
request's URI, logged or not): whoever changes N has HAProxy log a marker ``<pid> M<k> <N>
/<N before>`` into the same ring right after (``mark``), so every reader, this process or
another, counts each line for the N of the last marker before it. A request decided before a
change and logged after its marker counts for the new N, as when N was read back per line.

A host's servers in the main backend and in its release slot add up to one host. Counters
restart when HAProxy's worker is replaced (a reload) or a server is deleted; the router keeps
what it read before either (the "base" in its state file) and adds it back, so counts only grow.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import csv
import io
import math
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hinotori.errors import HinotoriError
from hinotori.model import LATENCY_BUCKETS_MS, BackendStats
from hinotori.router.haproxy import runtime
from hinotori.router.haproxy.config import (
    FRONTEND,
    MARK,
    NO_ROUTE,
    host_of,
    sample_entries,
    sample_value,
)
from hinotori.router.haproxy.flags import LIVE_FLAGS

ADAPT_EVERY = 0.25   # seconds between two choices of N: a burst is logged whole this long
# The ring is read (dumped whole: ~0.5 ms of HAProxy's time when full) at most this often
# while lines come, or once about DUMP_LINES were logged since (it holds 25-33k); every
# ADAPT_EVERY only HAProxy's request counter is read (``show info``: ~20 us).
DUMP_EVERY = 1.0
DUMP_LINES = 4000
DUMP_TIMEOUT = 5.0   # seconds a read may take before it is given up
# Lines counted between two yields of the GIL. Counting holds it ~1 us a line, and the event
# loop's thread (a switch's apply) waits for it up to the interpreter's switch interval (5 ms)
# each time it comes back from an await: a dump of 4,000 lines could hold an apply that long.
GIL_LINES = 200
MAX_SAMPLE = 10_000  # log at least 1 request in this many

_MARK = MARK.encode()
_STATUS = (("hrsp_1xx", "2xx"), ("hrsp_2xx", "2xx"), ("hrsp_3xx", "3xx"), ("hrsp_4xx", "4xx"),
           ("hrsp_5xx", "5xx"), ("hrsp_other", "5xx"))


@dataclass
class Counts:
    active: int = 0
    requests: int = 0
    errors: int = 0
    statuses: dict[str, int] = field(default_factory=dict)

    def add(self, other: Counts, *, active: bool = True) -> None:
        if active:
            self.active += other.active
        self.requests += other.requests
        self.errors += other.errors
        for k, v in other.statuses.items():
            self.statuses[k] = self.statuses.get(k, 0) + v

    def to_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors, "statuses": self.statuses}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Counts:
        return cls(requests=int(d.get("requests", 0)), errors=int(d.get("errors", 0)),
                   statuses={k: int(v) for k, v in (d.get("statuses") or {}).items()})


def _int(row: dict[str, str], key: str) -> int:
    value = row.get(key) or "0"
    return int(value) if value.isdigit() else 0


def parse_servers(csv_text: str) -> dict[tuple[str, str], Counts]:
    """``show stat`` CSV -> {(backend, server): Counts} for every server row."""
    text = csv_text.lstrip()
    text = text[2:] if text.startswith("# ") else text
    out = {}
    for row in csv.DictReader(io.StringIO(text)):
        px, sv = row.get("pxname") or "", row.get("svname") or ""
        if not sv or sv in ("FRONTEND", "BACKEND") or px in (FRONTEND, NO_ROUTE, LIVE_FLAGS):
            continue
        statuses: dict[str, int] = {}
        for column, cls in _STATUS:
            n = _int(row, column)
            if n:
                statuses[cls] = statuses.get(cls, 0) + n
        out[(px, sv)] = Counts(active=_int(row, "scur") + _int(row, "qcur"),
                               requests=sum(statuses.values()),
                               errors=_int(row, "econ") + _int(row, "eresp"),
                               statuses=statuses)
    return out


def by_host(servers: dict[tuple[str, str], Counts]) -> dict[str, Counts]:
    out: dict[str, Counts] = {}
    for (_, name), c in servers.items():
        out.setdefault(host_of(name), Counts()).add(c)
    return out


def sample_for(rate: float, max_rate: int) -> int:
    """N such that logging 1 request in N writes about ``max_rate`` lines a second at ``rate``
    requests a second; 1 (every request) below it, or when ``max_rate`` is 0 (no cap)."""
    if max_rate <= 0 or rate <= max_rate:
        return 1
    return min(MAX_SAMPLE, math.ceil(rate / max_rate))


def next_sample(current: int | None, wanted: int) -> int:
    """The N to set: up at once (a burst must not flood the log), down by half at most per
    choice (traffic pausing between bursts keeps most of it), and unchanged within a quarter
    (no runtime command for the noise of the rate)."""
    if current is None:
        return wanted
    if abs(wanted - current) <= current // 4:
        return current
    return wanted if wanted > current else max(wanted, current // 2)


async def set_sample(stats_socket: Path, sample_map: Path, n: int,
                     mark_socket: Path | None = None) -> None:
    """Have HAProxy log 1 request in ``n`` from now on: the latency map's one entry replaced
    atomically (a new version of the map, filled, then committed; its key is a range, which
    ``set map`` cannot change), then the change marked in the ring (``mark``) with the N the
    map file held before (the caller writes it after)."""
    before = sample_value(sample_map)
    (answer,) = await runtime.run(stats_socket, [f"prepare map {sample_map}"])
    version = answer.rpartition(":")[2].strip()
    if not answer.startswith("New version created:") or not version.isdigit():
        raise runtime.RuntimeApiError(f"HAProxy refused `prepare map {sample_map}`: {answer}")
    await runtime.run_checked(stats_socket, [
        *(f"add map @{version} {sample_map} {k} {v}" for k, v in sample_entries(n).items()),
        f"commit map @{version} {sample_map}"])
    if mark_socket is not None:
        await mark(mark_socket, before)


async def mark(mark_socket: Path, previous: int) -> None:
    """Have HAProxy write a marker into the latency ring: ``<pid> M<k> <N> /<previous>``, N as
    its latency map holds it now (config.rules.mark_frontend). Lines logged after it count for
    N, those before it for ``previous``. Raises OSError if HAProxy does not answer."""
    async with asyncio.timeout(DUMP_TIMEOUT):
        reader, writer = await asyncio.open_unix_connection(str(mark_socket))
        try:
            writer.write(f"GET /{previous} HTTP/1.0\r\n\r\n".encode())
            answer = await reader.read()  # HTTP/1.0: HAProxy closes once it answered
        finally:
            writer.close()
    if not answer.startswith(b"HTTP/1.0 200") and not answer.startswith(b"HTTP/1.1 200"):
        raise OSError(f"HAProxy's latency marker answered {answer[:40]!r}")


class LatencyLog:
    """Reads HaproxyRouter's per-request ``<pid> <line#> <server> <Ta>`` log lines from
    HAProxy's ring buffer into a histogram per host, and keeps their rate near ``max_rate`` a
    second through ``set_sample(N)`` (the router changes HAProxy's latency map).

    HAProxy logs into an in-memory ring (``ring`` section, ``log ring@...``): writing costs it a
    memory copy, and when nobody reads (the controller is down) old lines are overwritten, never
    queued. Every ADAPT_EVERY the reader reads HAProxy's request counter (``show info``:
    CumReq), which gives the rate N follows and tells whether anything can have been logged;
    when so, at most every DUMP_EVERY (sooner after about DUMP_LINES lines) it dumps the ring
    over the stats socket (``show events <ring>``) and takes the lines after the last one it
    took. It keeps no stream open (``show events -w``): HAProxy woke that stream's applet for
    every line logged and sent each line on its own, ~7 us of its CPU per line with 1 thread
    and ~45 us with 2, where a dump of the whole 1 MB ring (25-33k lines) costs it ~0.5 ms,
    and ``show info`` ~20 us. Every ring holds what one worker logged: after a reload the next
    dump is the new worker's (the router dumps the old one just before). Any number of
    readers may read (a dump consumes nothing)."""

    def __init__(self, stats_socket: Path, ring: str, *, max_rate: int = 0,
                 set_sample: Callable[[int], Awaitable[None]] | None = None,
                 sample_map: Path | None = None) -> None:
        self.stats_socket = stats_socket
        self.sample_map = sample_map  # HAProxy's latency map: N before the first marker
        self.ring = ring
        self.max_rate = max_rate
        self.set_sample = set_sample
        self.latency: dict[str, list[int]] = {}
        self.latency_sum_ms: dict[str, float] = {}
        self.lines = 0     # lines read
        self.counted = 0   # requests they stand for (each line counts for its N)
        self.sample: int | None = None  # the N last set; None: not set by this reader yet
        self._window = (time.monotonic(), 0)  # (since, requests then): the rate N follows
        self._seen: dict[bytes, set[tuple[int, bytes, bytes]]] = {}  # pid -> lines counted
        self._n: dict[bytes, int] = {}  # worker pid -> what its lines count for now
        self._latest: int | None = None  # the N the last marker said
        self._before: int | None = None  # the N the first marker of the dump followed
        self._last = b""  # the last line taken (with its newline): a dump is new after it
        self._mutex = threading.Lock()  # one read at a time, whichever loop or thread
        self.requests = 0  # requests HAProxy received since this reader first asked (CumReq)
        self._counter: tuple[bytes, int] | None = None  # (worker pid, CumReq) last read
        self._logged = 0.0  # lines HAProxy logged since the last dump, about
        self._dumped = 0.0  # when (monotonic)
        self._hosts: dict[bytes, tuple[str, list[int]]] = {}  # server name -> host, buckets
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def attach(self, wait: float = 2.0) -> None:
        """Have the running loop read the ring from now on, and return once what the ring
        holds has been counted (or after ``wait`` seconds)."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._loop is not loop:
            self._loop = loop
            self._task = loop.create_task(self._run(), name="haproxy-latency-log")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await self.poll()

    def close(self) -> None:
        if self._task is not None and self._loop is not None and not self._loop.is_closed():
            self._task.cancel()
        self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(ADAPT_EVERY)
            await self.poll(dump=False)

    async def poll(self, dump: bool = True) -> None:
        """Count what HAProxy logged since the last read (``dump`` False: only if a dump is
        due), then choose N (``adapt``). A worker that does not answer is left for the next
        read."""
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.to_thread(self._read, dump)
        await self.adapt()

    def _read(self, dump: bool) -> None:
        with self._mutex:
            pid, total = request_counter(self.stats_socket)
            if self._counter is None:  # the first reading: what came before is no rate
                new, dump = 0, True
            elif pid != self._counter[0] or total < self._counter[1]:  # a new worker
                new, dump = total, True
            else:
                new = total - self._counter[1]
            self._counter = (pid, total)
            self.requests += new
            # Lines logged since the last dump, about; a dump asked for stays due until one
            # is read whole (a failed one raises out of here).
            self._logged += new / (self.sample or 1) + (0.5 if dump else 0.0)
            now = time.monotonic()
            if dump or self._logged >= DUMP_LINES or (
                    self._logged and now - self._dumped >= DUMP_EVERY):
                self.take(dump_ring(self.stats_socket, self.ring))
                # A request counted as it came is logged as it ends: after requests came
                # since the last reading, one more dump is due (DUMP_EVERY later).
                self._logged, self._dumped = 0.5 if new else 0.0, now

    def take(self, data: bytes) -> None:
        """Count the lines of a dump of the ring that follow the last line taken: all of them
        when the ring no longer holds that line (another worker's ring, or more was logged
        since than the ring holds)."""
        end = len(data)
        while end and data[end - 1] == 0x0A:  # a dump ends with an empty line
            end -= 1
        if not end:
            return
        end += 1  # through the last line's newline
        last, start = self._last, 0
        if last:
            at = data.rfind(b"\n" + last, 0, end)
            if at >= 0:
                start = at + 1 + len(last)
            elif data.startswith(last):
                start = len(last)
        self._last = data[data.rfind(b"\n", 0, end - 1) + 1:end]
        if start < end:
            self.record(data[start:end])

    def record(self, data: bytes) -> None:
        # A worker's lines before the first marker here count for the N the marker says it
        # followed (a dump holds one worker's ring).
        previous = b""
        if (at := data.find(b" " + _MARK)) >= 0:
            end = data.find(b"\n", at)
            previous = data[at:end if end >= 0 else len(data)].rpartition(b"/")[2]
        self._before = int(previous) if previous.isdigit() and previous != b"0" else None
        lines = data.split(b"\n")
        for start in range(0, len(lines), GIL_LINES):
            if start:
                _let_others_in()
            self._count(lines[start:start + GIL_LINES])

    def current_sample(self) -> int:
        """The N HAProxy's latency map holds now (``show map``), else the last one this
        reader set, else 1."""
        if self.sample_map is not None:
            with contextlib.suppress(OSError):
                text = _ask(self.stats_socket, f"show map {self.sample_map}").split()
                if text and text[-1].isdigit() and text[-1] != b"0":
                    return int(text[-1])
        return self.sample or 1

    def _first_n(self, pid: bytes) -> int:
        """What a worker's first lines count for: the N its first marker followed, else the
        last N any marker said (a new worker loads the latency map as it was), else HAProxy's
        (a reader that saw no marker yet)."""
        n = self._n[pid] = self._before or self._latest or self.current_sample()
        return n

    def _count(self, lines: list[bytes]) -> None:
        for line in lines:
            fields = line.split()
            if len(fields) == 4:  # <pid> <line number> <server> <Ta>, or a marker
                pid, number, name, ta = fields
                if number.startswith(_MARK):  # <pid> M<k> <N> /<N before>: N from here on
                    n = int(name) if name.isdigit() and name != b"0" else 1
                    self._n[pid] = self._latest = n
                    continue
                weight = self._n.get(pid) or self._first_n(pid)
            elif len(fields) == 5:  # an older worker's <pid> <request#> <server> <Ta> <N>
                pid, number, name, ta, n_text = fields
                weight = int(n_text) if n_text.isdigit() and n_text != b"0" else 1
            else:
                continue
            if not (number.isdigit() and ta.isdigit()) or name == b"<NOSRV>":
                continue  # Ta is -1 for a request nobody answered
            seen = self._seen.get(pid)
            if seen is None:
                seen = self._seen[pid] = set()
            # The line number is read, not taken, as a line is built: two threads may write
            # the same one, so the key is the whole line.
            key = (int(number), name, ta)
            if key in seen:
                continue
            seen.add(key)
            if len(seen) > 200_000:  # keep the recent half: the ring never holds that many
                cut = sorted(k[0] for k in seen)[100_000]
                self._seen[pid] = {k for k in seen if k[0] >= cut}
            ms = int(ta)
            known = self._hosts.get(name)
            if known is None:
                host = host_of(name.decode("ascii", "replace"))
                buckets = self.latency.setdefault(host, [0] * (len(LATENCY_BUCKETS_MS) + 1))
                known = self._hosts[name] = (host, buckets)
            host, buckets = known
            buckets[bisect.bisect_left(LATENCY_BUCKETS_MS, ms)] += weight
            self.latency_sum_ms[host] = self.latency_sum_ms.get(host, 0.0) + ms * weight
            self.lines += 1
            self.counted += weight

    async def adapt(self, now: float | None = None) -> None:
        """Once every ADAPT_EVERY: choose N for the request rate seen since the last choice,
        and have the router set it if it changed."""
        if self.set_sample is None:
            return
        now = time.monotonic() if now is None else now
        since, seen = self._window
        if now - since < ADAPT_EVERY:
            return
        # HAProxy's own count when read, else what the lines stand for
        requests = self.requests if self._counter is not None else self.counted
        self._window = (now, requests)
        n = next_sample(self.sample, sample_for(max(0, requests - seen) / (now - since),
                                                self.max_rate))
        if n != self.sample:
            with contextlib.suppress(HinotoriError, OSError):  # the next choice tries again
                await self.set_sample(n)
                self.sample = n


def _let_others_in() -> None:
    """Release the GIL for a moment: a thread waiting for it runs now (see GIL_LINES)."""
    time.sleep(0)


def _ask(stats_socket: Path, command: str) -> bytes:
    """One command's whole answer, with blocking calls (the reader's thread)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(DUMP_TIMEOUT)
        s.connect(str(stats_socket))
        s.sendall(f"{command}\n".encode())
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(1 << 18):
            chunks.append(chunk)
    return b"".join(chunks)


def dump_ring(stats_socket: Path, ring: str) -> bytes:
    """What HAProxy's ``ring`` holds (``show events``, oldest first; a full ring is 1 MB)."""
    return _ask(stats_socket, f"show events {ring}")


def request_counter(stats_socket: Path) -> tuple[bytes, int]:
    """(the worker's pid, the HTTP requests it has received: ``show info``'s CumReq)."""
    fields = runtime.parse_info(_ask(stats_socket, "show info").decode("ascii", "replace"))
    pid, total = fields.get("Pid", ""), fields.get("CumReq", "")
    if not (pid.isdigit() and total.isdigit()):
        raise OSError(f"HAProxy's `show info` has no Pid and CumReq: {sorted(fields)[:5]}")
    return pid.encode(), int(total)


def combine(counts: dict[str, Counts], log: LatencyLog | None) -> dict[str, BackendStats]:
    out = {}
    for host, c in counts.items():
        latency = tuple(log.latency.get(host, ())) if log is not None else ()
        out[host] = BackendStats(
            host_id=host, active=c.active, requests=c.requests, errors=c.errors,
            statuses=dict(c.statuses), latency=latency or (0,) * (len(LATENCY_BUCKETS_MS) + 1),
            latency_sum_ms=round(log.latency_sum_ms.get(host, 0.0), 3) if log else 0.0)
    return out
