"""The load generator against the real hello app, and against servers that break connections,
stall, or close politely. Timing is asserted only with loose bounds."""

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

from hinotori.loadgen import BackgroundLoad, LoadGenerator

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
                            env={**os.environ, "PORT": str(port), "HINOTORI_HOST_ID": "lg-host",
                                 **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert "listening" in (proc.stdout.readline() if proc.stdout else "")
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def hello_addr() -> Iterator[str]:
    with hello() as addr:
        yield addr


@contextlib.asynccontextmanager
async def server(mode: str) -> AsyncIterator[str]:
    """``close``: answers with Connection: close; ``drop``: answers keep-alive, then closes the
    idle connection anyway; ``stall``: never answers."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            if mode == "stall":
                await asyncio.sleep(30)
            extra = b"Connection: close\r\n" if mode == "close" else b""
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + extra + b"\r\nok")
            await writer.drain()
            await asyncio.sleep(0.01)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{srv.sockets[0].getsockname()[1]}"
    finally:
        srv.close()


def test_counts_every_response_and_who_answered(hello_addr: str) -> None:
    async def main() -> None:
        async with LoadGenerator(hello_addr, clients=10) as lg:
            await asyncio.sleep(0.5)
        s = lg.stats()
        assert s.total > 10 and s.failed == 0 and s.failures == []
        assert s.statuses == {200: s.total}
        assert s.by_header == {"lg-host": s.total}
        assert len(s.latencies_ms) == s.total
        assert 0 < s.p50_ms <= s.p99_ms <= s.p(100)
        assert s.rps > 0 and s.error_rate == 0

    asyncio.run(main())


def test_server_errors_are_failures() -> None:
    with hello(HELLO_ERROR_RATE="1") as addr:
        async def main() -> None:
            async with LoadGenerator(addr, clients=4) as lg:
                await asyncio.sleep(0.3)
            s = lg.stats()
            assert s.total > 0 and s.failed == s.total
            assert s.statuses == {500: s.total}
            assert set(s.failures) == {"HTTP 500"} and len(s.failures) == min(s.total, 50)
            assert s.failure_kinds == {"HTTP 500": s.total}

        asyncio.run(main())


def test_rate_is_roughly_honoured(hello_addr: str) -> None:
    async def main() -> None:
        async with LoadGenerator(hello_addr, clients=5, rate=100) as lg:
            await asyncio.sleep(1.0)
        assert 40 <= lg.stats().total <= 160  # ~100 expected; loose on a shared machine

    asyncio.run(main())


def test_exit_waits_for_in_flight_requests(hello_addr: str) -> None:
    async def main() -> None:
        started = time.monotonic()
        async with LoadGenerator(hello_addr, clients=5, path="/sleep?ms=400") as lg:
            await asyncio.sleep(0.1)
        assert time.monotonic() - started >= 0.35
        s = lg.stats()
        assert s.total == 5 and s.failed == 0  # each client finished its one request

    asyncio.run(main())


def test_cancelled_requests_are_not_counted(hello_addr: str) -> None:
    async def main() -> LoadGenerator:
        lg = LoadGenerator(hello_addr, clients=5, path="/sleep?ms=2000")

        async def run() -> None:
            async with lg:
                await asyncio.sleep(30)

        task = asyncio.create_task(run())
        await asyncio.sleep(0.2)
        task.cancel()  # leaves the `async with`: stop() starts waiting for the requests
        await asyncio.sleep(0.05)
        task.cancel()  # and now cancels them
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return lg

    started = time.monotonic()
    s = asyncio.run(main()).stats()
    assert time.monotonic() - started < 1.5
    assert s.total == 0 and s.failed == 0


def test_connection_errors_and_timeouts_are_failures() -> None:
    async def main() -> None:
        async with LoadGenerator(f"127.0.0.1:{free_port()}", clients=2) as lg:
            await asyncio.sleep(0.2)
        s = lg.stats()
        assert s.total > 0 and s.failed == s.total and set(s.failures) == {"connection refused"}

        async with server("stall") as addr, LoadGenerator(addr, clients=2, timeout=0.2) as lg:
            await asyncio.sleep(0.5)
        s = lg.stats()
        assert s.failed >= 2 and set(s.failures) == {"timeout"}

    asyncio.run(main())


def test_idle_keepalive_close_is_a_failure_but_connection_close_is_not() -> None:
    async def main() -> None:
        async with server("drop") as addr, LoadGenerator(addr, clients=2, rate=20) as lg:
            await asyncio.sleep(0.6)
        s = lg.stats()
        assert s.statuses[200] > 0 and s.failed > 0
        assert set(s.failures) <= {"connection closed while idle", "connection closed",
                                   "connection reset"}

        async with server("close") as addr, LoadGenerator(addr, clients=2, rate=20) as lg:
            await asyncio.sleep(0.6)
        s = lg.stats()
        assert s.total > 2 and s.failed == 0

    asyncio.run(main())


def test_reset_starts_a_fresh_window(hello_addr: str) -> None:
    async def main() -> None:
        async with LoadGenerator(hello_addr, clients=2, rate=40) as lg:
            await asyncio.sleep(0.5)
            before = lg.stats().total
            lg.reset()
            assert lg.stats().total < before
        assert lg.stats().elapsed < 0.5

    asyncio.run(main())


def test_background_load_for_synchronous_callers(hello_addr: str) -> None:
    load = BackgroundLoad(hello_addr, clients=4, rate=100)
    load.start()
    time.sleep(0.4)
    assert load.stats().total > 0
    final = load.stop()
    assert final.total > 0 and final.failed == 0 and final.by_header == {"lg-host": final.total}
    time.sleep(0.1)
    assert load.stats().elapsed == final.elapsed  # frozen once stopped
