"""BatchProber.look: a slice of hosts probed as one batch gives, host by host and in order, what
a probe of each alone gives (health.probe), against real servers on 127.0.0.1: passing,
failing, refused, hung, closing every connection, named (the KeepAlive path), and TCP checks."""

from __future__ import annotations

import asyncio
import socket

from hinotori.controller.batchprobe import BatchProber
from hinotori.health import probe
from hinotori.model import HealthCheck, ProbeResult

CHECK = HealthCheck(path="/healthz", timeout=5.0)  # generous: a busy machine stalls


async def http_server(status: int, *, close: bool = False) -> tuple[asyncio.Server, str]:
    """Answers every request with ``status``; ``close``: one answer per connection, without
    a Connection header (as busybox httpd), so the client learns it only from the close."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                body = f"status {status}\n".encode()
                head = b"HTTP/1.0" if close else b"HTTP/1.1"
                writer.write(head + b" %d X\r\nContent-Length: %d\r\n\r\n%s"
                             % (status, len(body), body))
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, f"127.0.0.1:{server.sockets[0].getsockname()[1]}"


def refused_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"  # nothing listens once it is closed


def test_a_batch_answers_each_host_as_a_probe_of_it_alone_would() -> None:
    async def scenario() -> None:
        servers = [await http_server(200), await http_server(503), await http_server(200,
                                                                                      close=True)]
        hung_writers: list[asyncio.StreamWriter] = []

        async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            hung_writers.append(writer)

        hung = await asyncio.start_server(silent, "127.0.0.1", 0)
        hung_address = f"127.0.0.1:{hung.sockets[0].getsockname()[1]}"
        ok, failing, closing = (a for _, a in servers)
        named = "localhost:" + ok.rsplit(":", 1)[1]  # not an IP literal: the KeepAlive path
        addresses = [ok, failing, refused_address(), closing, named, ok]
        batch = BatchProber()
        for _ in range(3):  # fresh connections, then kept ones where the host keeps them
            found = await batch.look(addresses, CHECK)
            alone = [await probe(a, CHECK) for a in addresses]
            assert found == alone
            assert [r.ok for r in found] == [True, False, False, True, True, True]
        short = HealthCheck(path="/healthz", timeout=0.3)
        assert await batch.look([hung_address], short) == [await probe(hung_address, short)] \
            == [ProbeResult(False, "timed out after 0.3s")]
        # kept: ok (one, asked twice per look), failing and named; not closing nor hung
        assert len(batch) == 3
        batch.keep_only([failing])
        assert len(batch) == 1
        batch.close()
        assert len(batch) == 0
        for server, _ in servers:
            server.close()
        for w in hung_writers:
            w.close()
        hung.close()

    asyncio.run(scenario())


def test_a_tcp_check_only_connects() -> None:
    async def scenario() -> None:
        server, address = await http_server(500)
        batch = BatchProber()
        check = HealthCheck(path=None, timeout=5.0)
        found = await batch.look([address, refused_address()], check)
        assert found == [ProbeResult(True, "TCP connect ok"),
                         ProbeResult(False, "connection refused")]
        assert len(batch) == 0
        batch.close()
        server.close()

    asyncio.run(scenario())


def test_bytes_on_an_idle_kept_connection_close_it_and_the_next_look_is_fresh() -> None:
    async def scenario() -> None:
        accepted: list[asyncio.StreamWriter] = []

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(writer)
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
        batch = BatchProber()
        assert (await batch.look([address], CHECK))[0].ok
        assert len(batch) == 1
        accepted[0].write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nno\n")  # unasked
        for _ in range(1000):  # until the loop has seen the bytes (a busy machine: a while)
            await asyncio.sleep(0.01)
            if not len(batch):
                break
        assert len(batch) == 0  # never taken as the answer to the next look
        assert (await batch.look([address], CHECK))[0].ok and len(accepted) == 2
        batch.close()
        for w in accepted:
            w.close()
        server.close()

    asyncio.run(scenario())


def test_a_new_event_loop_starts_afresh() -> None:
    batch = BatchProber()

    async def once() -> ProbeResult:
        server, address = await http_server(200)
        try:
            return (await batch.look([address], CHECK))[0]
        finally:
            server.close()

    assert asyncio.run(once()).ok
    assert asyncio.run(once()).ok  # the first loop's epoll reader and sockets are let go
    batch.close()
