"""Per-host counters from HAProxy: ``show stat`` for counts, its log ring for latencies.

``show stat`` gives every server's requests by status class, errors and sessions in flight,
but only an average response time. The latency histogram the canary analysis needs comes from
HAProxy's own per-request log (``LatencyLog``): the frontend logs ``<pid> <request#> <server>
<Ta> <N>`` (Ta: total active time, ms) into an in-memory ring that the router object streams
over the stats socket. Writing a line per request costs HAProxy much of its req/s under load,
so it logs 1 request in N, and the reader sets N four times a second to keep near
``max_rate`` lines a second: every request while traffic is below it, a uniform sample above
it (a random draw against the latency map's range, config.py; ``set_sample`` replaces it). A
line counts for its N requests, so the histogram stays an estimate of all requests (its counts
and sum), and the counts by status stay exact (they come from ``show stat``). N is read back
when the line is written: a line logged across a change of N counts for the new one.

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
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hinotori.errors import HinotoriError
from hinotori.model import LATENCY_BUCKETS_MS, BackendStats
from hinotori.router.haproxy import runtime
from hinotori.router.haproxy.config import FRONTEND, NO_ROUTE, host_of, sample_entries

ADAPT_EVERY = 0.25   # seconds between two choices of N: a burst is logged whole this long
# Pause after each read so that lines are read in batches: HAProxy pushes every line as it is
# logged, and waking up for each one cost the reader more than parsing the line.
READ_PAUSE = 0.05
MAX_SAMPLE = 10_000  # log at least 1 request in this many

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
        if not sv or sv in ("FRONTEND", "BACKEND") or px in (FRONTEND, NO_ROUTE):
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


async def set_sample(stats_socket: Path, sample_map: Path, n: int) -> None:
    """Have HAProxy log 1 request in ``n`` from now on: the latency map's one entry replaced
    atomically (a new version of the map, filled, then committed; its key is a range, which
    ``set map`` cannot change)."""
    (answer,) = await runtime.run(stats_socket, [f"prepare map {sample_map}"])
    version = answer.rpartition(":")[2].strip()
    if not answer.startswith("New version created:") or not version.isdigit():
        raise runtime.RuntimeApiError(f"HAProxy refused `prepare map {sample_map}`: {answer}")
    await runtime.run_checked(stats_socket, [
        *(f"add map @{version} {sample_map} {k} {v}" for k, v in sample_entries(n).items()),
        f"commit map @{version} {sample_map}"])


class LatencyLog:
    """Reads HAProxy's per-request ``<pid> <request#> <server> <Ta> <N>`` log lines from its
    ring buffer into a histogram per host, and keeps their rate near ``max_rate`` a second
    through ``set_sample(N)`` (the router changes HAProxy's latency map).

    HAProxy logs into an in-memory ring (``ring`` section, ``log ring@...``): writing costs it a
    memory copy, and when nobody reads (the controller is down) old lines are overwritten, never
    queued. The router object reads the ring over the stats socket: first a dump (so a caller
    sees every line already logged), then ``show events <ring> -w``, which streams new lines as
    they come. The stream starts with the ring's content again, so lines are de-duplicated by
    (worker pid, request number). After a reload the reader reconnects to the new worker."""

    def __init__(self, stats_socket: Path, ring: str, *, max_rate: int = 0,
                 set_sample: Callable[[int], Awaitable[None]] | None = None) -> None:
        self.stats_socket = stats_socket
        self.ring = ring
        self.max_rate = max_rate
        self.set_sample = set_sample
        self.latency: dict[str, list[int]] = {}
        self.latency_sum_ms: dict[str, float] = {}
        self.lines = 0     # lines read
        self.counted = 0   # requests they stand for (each line counts for its N)
        self.sample: int | None = None  # the N last set; None: not set by this reader yet
        self._window = (time.monotonic(), 0)  # (since, counted then): the rate N follows
        self._seen: dict[bytes, set[int]] = {}  # worker pid -> request numbers counted
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stream: socket.socket | None = None  # the streaming read of the ring
        self._caught_up = asyncio.Event()

    async def attach(self, wait: float = 2.0) -> None:
        """Have the running loop read the ring; on a (re)start, return once what the ring
        already holds has been counted."""
        loop = asyncio.get_running_loop()
        if self._task is not None and not self._task.done() and self._loop is loop:
            return
        self._loop = loop
        self._caught_up = asyncio.Event()
        self._task = loop.create_task(self._run(), name="haproxy-latency-log")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await self._caught_up.wait()

    def reconnect(self) -> None:
        """The worker changed (reload): read the new one's ring."""
        if self._stream is not None:
            with contextlib.suppress(OSError):  # the pending read ends; _run reconnects
                self._stream.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.reconnect()
        if self._task is not None and self._loop is not None and not self._loop.is_closed():
            self._task.cancel()
        self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(str(self.stats_socket))
                writer.write(f"show events {self.ring}\n".encode())
                writer.write_eof()
                async with asyncio.timeout(10):
                    self.record(await reader.read())
                writer.close()
                self._caught_up.set()
                # A plain socket, read only when this loop asks (an asyncio stream would wake
                # up for every line HAProxy pushes): lines wait in the socket between reads.
                self._stream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self._stream.setblocking(False)
                await loop.sock_connect(self._stream, str(self.stats_socket))
                await loop.sock_sendall(self._stream, f"show events {self.ring} -w\n".encode())
                pending = b""
                while True:
                    try:  # whole chunks: far cheaper per line
                        async with asyncio.timeout(ADAPT_EVERY):
                            data = await loop.sock_recv(self._stream, 1 << 18)
                    except TimeoutError:  # no line for a while: the rate fell, N may too
                        await self.adapt()
                        continue  # nothing to batch: no pause
                    if not data:
                        break
                    pending += data
                    end = pending.rfind(b"\n") + 1
                    if end:
                        self.record(pending[:end])
                        pending = pending[end:]
                    await self.adapt()
                    await asyncio.sleep(READ_PAUSE)
            except (OSError, TimeoutError, asyncio.IncompleteReadError):
                pass
            finally:
                if self._stream is not None:
                    self._stream.close()
                    self._stream = None
            self._caught_up.set()
            await asyncio.sleep(0.1)

    def record(self, data: bytes) -> None:
        for line in data.split(b"\n"):
            fields = line.split()
            if len(fields) == 4:  # written before sampling was configured: every request
                fields.append(b"1")
            if len(fields) != 5:
                continue
            pid, number, name, ta, n_text = fields
            if not (number.isdigit() and ta.isdigit()) or name == b"<NOSRV>":
                continue  # Ta is -1 for a request nobody answered
            weight = int(n_text) if n_text.isdigit() and n_text != b"0" else 1
            seen = self._seen.get(pid)
            if seen is None:
                seen = self._seen[pid] = set()
            n = int(number)
            if n in seen:
                continue
            seen.add(n)
            if len(seen) > 200_000:  # keep the recent half: the ring never holds that many
                cut = sorted(seen)[100_000]
                self._seen[pid] = {x for x in seen if x >= cut}
            ms = int(ta)
            host = host_of(name.decode("ascii", "replace"))
            buckets = self.latency.get(host)
            if buckets is None:
                buckets = self.latency[host] = [0] * (len(LATENCY_BUCKETS_MS) + 1)
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
        since, counted = self._window
        if now - since < ADAPT_EVERY:
            return
        self._window = (now, self.counted)
        n = next_sample(self.sample,
                        sample_for((self.counted - counted) / (now - since), self.max_rate))
        if n != self.sample:
            with contextlib.suppress(HinotoriError, OSError):  # the next choice tries again
                await self.set_sample(n)
                self.sample = n


def combine(counts: dict[str, Counts], log: LatencyLog | None) -> dict[str, BackendStats]:
    out = {}
    for host, c in counts.items():
        latency = tuple(log.latency.get(host, ())) if log is not None else ()
        out[host] = BackendStats(
            host_id=host, active=c.active, requests=c.requests, errors=c.errors,
            statuses=dict(c.statuses), latency=latency or (0,) * (len(LATENCY_BUCKETS_MS) + 1),
            latency_sum_ms=round(log.latency_sum_ms.get(host, 0.0), 3) if log else 0.0)
    return out
