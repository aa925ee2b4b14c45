"""Health probes against the real hello app and small asyncio servers that misbehave on cue."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from hinotori.health import HealthMonitor, ProbeResult, probe, wait_healthy
from hinotori.model import HealthCheck

pytestmark = pytest.mark.integration

HELLO = Path(__file__).resolve().parents[2] / "examples" / "hello"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def hello(**env: str) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=HELLO, text=True,
                            env={**os.environ, "PORT": str(port), **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert "listening" in (proc.stdout.readline() if proc.stdout else "")
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.asynccontextmanager
async def scripted(statuses: list[int] | None = None, *, silent: bool = False
                   ) -> AsyncIterator[tuple[str, list[int]]]:
    """A server answering the n-th request with statuses[n] (the last one repeats), or never
    answering when ``silent``. Yields its address and the list of statuses it sent."""
    sent: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            if silent:
                await asyncio.sleep(30)
            status = (statuses or [200])[min(len(sent), len(statuses or [200]) - 1)]
            sent.append(status)
            body = b"fine" if status == 200 else b"x" * 300
            writer.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s"
                         % (status, len(body), body))
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}", sent
    finally:
        server.close()


def test_http_probe_against_hello() -> None:
    with hello() as ok_addr, hello(HELLO_HEALTHY="0") as sick_addr:
        async def main() -> None:
            assert await probe(ok_addr, HealthCheck()) == ProbeResult(True, "HTTP 200")
            assert await probe(sick_addr, HealthCheck()) == ProbeResult(False,
                                                                         "HTTP 503: unhealthy")
            missing = await probe(ok_addr, HealthCheck(path="/nope"))
            assert missing == ProbeResult(False, "HTTP 404: not found")
            assert (await probe(sick_addr, HealthCheck(status=503))).ok

        asyncio.run(main())


def test_failure_detail_keeps_200_chars_of_body() -> None:
    async def main() -> None:
        async with scripted([500]) as (addr, _):
            result = await probe(addr, HealthCheck())
        assert result == ProbeResult(False, "HTTP 500: " + "x" * 200)

    asyncio.run(main())


def test_timeout_and_refused() -> None:
    async def main() -> None:
        async with scripted(silent=True) as (addr, _):
            started = time.monotonic()
            result = await probe(addr, HealthCheck(timeout=0.3))
            assert result == ProbeResult(False, "timed out after 0.3s")
            assert time.monotonic() - started < 2
            # A TCP check only needs the connection.
            assert await probe(addr, HealthCheck(path=None)) == ProbeResult(True,
                                                                             "TCP connect ok")
        closed = f"127.0.0.1:{free_port()}"
        assert await probe(closed, HealthCheck()) == ProbeResult(False, "connection refused")
        assert await probe(closed, HealthCheck(path=None)) == ProbeResult(False,
                                                                          "connection refused")

    asyncio.run(main())


def test_wait_healthy_needs_consecutive_passes() -> None:
    async def main() -> None:
        async with scripted([503, 200, 503, 200, 200, 200]) as (addr, sent):
            check = HealthCheck(interval=0.01, healthy=3)
            assert await wait_healthy(addr, check, deadline=5) == ProbeResult(True, "HTTP 200")
        assert sent == [503, 200, 503, 200, 200, 200]

    asyncio.run(main())


def test_wait_healthy_gives_up_at_the_deadline() -> None:
    async def main() -> None:
        async with scripted([503]) as (addr, _):
            started = time.monotonic()
            result = await wait_healthy(addr, HealthCheck(interval=0.05), deadline=0.4)
        assert not result.ok
        assert result.detail.startswith("not healthy after 0.4s: HTTP 503")
        assert time.monotonic() - started < 3
        refused = await wait_healthy(f"127.0.0.1:{free_port()}", HealthCheck(interval=0.05),
                                     deadline=0.2)
        assert refused == ProbeResult(False, "not healthy after 0.2s: connection refused")

    asyncio.run(main())


def test_wait_healthy_stops_when_the_process_is_gone() -> None:
    calls = 0

    async def alive() -> bool:
        nonlocal calls
        calls += 1
        return calls < 3

    async def main() -> None:
        started = time.monotonic()
        result = await wait_healthy(f"127.0.0.1:{free_port()}", HealthCheck(interval=0.05),
                                    deadline=30, alive=alive)
        assert result == ProbeResult(False, "process exited")
        assert time.monotonic() - started < 5

    asyncio.run(main())


def test_monitor_reports_only_transitions() -> None:
    check = HealthCheck(healthy=2, unhealthy=3)
    bad, good = ProbeResult(False, "HTTP 500"), ProbeResult(True, "HTTP 200")
    m = HealthMonitor()
    assert m.healthy("h1")  # watched hosts start healthy: they passed wait_healthy
    flips = [m.record("h1", r, check) for r in (bad, bad, good, bad, bad, bad, bad, good, good)]
    assert flips == [False, False, False, False, False, True, False, False, True]
    assert m.healthy("h1") and m.status("h1").last == good
    m.forget("h1")
    assert m.status("h1").failures == 0


def test_monitor_observes_real_hosts() -> None:
    check = HealthCheck(unhealthy=2, healthy=1, timeout=1)

    async def main() -> None:
        m = HealthMonitor()
        async with scripted([200]) as (up, _):
            down = f"127.0.0.1:{free_port()}"
            targets = {"up": (up, check), "down": (down, check)}
            assert await m.observe_all(targets) == {}
            assert await m.observe_all(targets) == {"down": False}
            assert m.healthy("up") and not m.healthy("down")
            assert m.status("down").last == ProbeResult(False, "connection refused")
            assert not await m.observe("up", up, check)

    asyncio.run(main())
