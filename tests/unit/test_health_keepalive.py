"""KeepAlive and the monitor's BatchProber: probes on kept-alive connections, against small
asyncio servers on 127.0.0.1 that count the connections they accept and can close them or die.
Both keep the same rules, so every test runs against both."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from hinotori.controller.batchprobe import BatchProber
from hinotori.health import KeepAlive, probe
from hinotori.model import HealthCheck

CHECK = HealthCheck(path="/healthz", timeout=5.0)  # generous: a busy machine stalls
Keeper = type[KeepAlive] | type[BatchProber]
KEEPERS = pytest.mark.parametrize("keeper", [KeepAlive, BatchProber])


@dataclass
class Server:
    """Answers each request with ``status``; ``close_after`` answers Connection: close;
    ``drop_idle`` closes a connection after each answer without saying so (as a server whose
    idle timeout fired between two probes)."""

    status: int = 200
    close_after: bool = False
    drop_idle: bool = False
    accepted: int = 0
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.writers.append(writer)
        try:
            while (await reader.readuntil(b"\r\n\r\n")):
                body = b"ok\n" if self.status == 200 else b"not yet\n"
                close = b"Connection: close\r\n" if self.close_after else b""
                writer.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n%s\r\n%s"
                             % (self.status, len(body), close, body))
                await writer.drain()
                if self.close_after or self.drop_idle:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.close()
        await self.server.wait_closed()


@KEEPERS
def test_one_connection_serves_every_probe_and_answers_as_a_fresh_one_would(keeper: Keeper) -> None:
    async def scenario() -> None:
        server = Server()
        address = await server.start()
        keep = keeper()
        for _ in range(5):
            assert await keep(address, CHECK) == await probe(address, CHECK)
        assert server.accepted == 5 + 1  # the five fresh probes, and one kept connection
        server.status = 503  # a failing answer is still an answer: the connection stays
        result = await keep(address, CHECK)
        assert (result.ok, result.detail) == (False, "HTTP 503: not yet")
        assert len(keep) == 1 and server.accepted == 6
        keep.close()
        await server.stop()

    asyncio.run(scenario())


@KEEPERS
def test_a_connection_the_host_closed_meanwhile_never_fails_a_check(keeper: Keeper) -> None:
    async def scenario() -> None:
        for server in (Server(drop_idle=True), Server(close_after=True)):
            address = await server.start()
            keep = keeper()
            for _ in range(4):
                assert (await keep(address, CHECK)).ok
                await asyncio.sleep(0.01)  # the host's close arrives before the next probe
            assert server.accepted == 4  # a fresh connection each time, none kept
            assert len(keep) == (0 if server.close_after else 1)
            keep.close()
            await server.stop()

    asyncio.run(scenario())


@KEEPERS
def test_a_dead_host_fails_on_its_kept_connection_and_others_are_let_go(keeper: Keeper) -> None:
    async def scenario() -> None:
        a, b = Server(), Server()
        addr_a, addr_b = await a.start(), await b.start()
        keep = keeper()
        assert (await keep(addr_a, CHECK)).ok and (await keep(addr_b, CHECK)).ok
        assert len(keep) == 2
        await a.stop()  # the host is gone: listener and connections
        dead = await keep(addr_a, CHECK)
        assert not dead.ok and dead.detail == "connection refused"
        keep.keep_only([addr_b])
        assert len(keep) == 1 and (await keep(addr_b, CHECK)).ok and b.accepted == 1
        keep.close()
        assert len(keep) == 0
        await b.stop()

    asyncio.run(scenario())


@KEEPERS
def test_a_hung_host_times_out_and_its_connection_is_not_kept(keeper: Keeper) -> None:
    async def scenario() -> None:
        hung: list[asyncio.StreamWriter] = []

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            hung.append(writer)  # reads nothing, answers nothing

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
        keep = keeper()
        result = await keep(address, HealthCheck(path="/healthz", timeout=0.2))
        assert (result.ok, result.detail) == (False, "timed out after 0.2s")
        assert len(keep) == 0
        server.close()
        for w in hung:
            w.close()
        await server.wait_closed()

    asyncio.run(scenario())
