"""BatchProber.look: a slice of hosts probed as one batch gives, host by host and in order, what
a probe of each alone gives (health.probe), against real servers on 127.0.0.1: passing,
failing, refused, hung, closing every connection, named (the KeepAlive path), and TCP checks."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from hinotori.controller.batchprobe import LET_GO_AT_ONCE, BatchProber
from hinotori.health import probe
from hinotori.model import HealthCheck, ProbeResult

CHECK = HealthCheck(path="/healthz", timeout=5.0)  # generous: a busy machine stalls


async def http_server(status: int, *, close: bool = False) -> tuple[asyncio.Server, str]:
    """Answers every request with ``status``; ``close``: one answer per connection, without
    a Connection header (as busybox httpd), so the client learns it only from the close."""
    body = f"status {status}\n".encode()
    head = b"HTTP/1.0" if close else b"HTTP/1.1"
    return await raw_server([head + b" %d X\r\nContent-Length: %d\r\n\r\n%s"
                             % (status, len(body), body)], close=close)


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


async def raw_server(answers: list[bytes], *, close: bool) -> tuple[asyncio.Server, str]:
    """Answers each request with ``answers[0]`` (the test changes it), as is, in one write;
    ``close``: then closes the connection (as busybox httpd)."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(answers[0])
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, f"127.0.0.1:{server.sockets[0].getsockname()[1]}"


SHORT = HealthCheck(path="/healthz", timeout=1.0)  # an answer cut short waits it out
OK_CLOSE = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 3\r\n\r\nok\n"
DOWN_CLOSE = b"HTTP/1.1 503 Unavailable\r\nConnection: close\r\nContent-Length: 5\r\n\r\ndown\n"


def test_a_changed_answer_after_many_identical_ones_is_seen() -> None:
    """Answers whose bytes were parsed before reuse that parse: the first different byte
    (here the status, then only the body of a failing answer) is a new parse."""
    async def scenario() -> None:
        answers = [OK_CLOSE]
        server, address = await raw_server(answers, close=True)
        batch = BatchProber()
        for _ in range(20):
            found = await batch.look([address, address], CHECK)
            assert found == [ProbeResult(True, "HTTP 200")] * 2
        assert batch._answers.hits >= 38  # the same bytes were parsed once (or twice: a race)
        answers[0] = DOWN_CLOSE
        assert await batch.look([address], CHECK) == [ProbeResult(False, "HTTP 503: down")]
        answers[0] = DOWN_CLOSE.replace(b"down", b"gone")
        assert await batch.look([address], CHECK) == [ProbeResult(False, "HTTP 503: gone")]
        answers[0] = OK_CLOSE
        assert await batch.look([address], CHECK) == [ProbeResult(True, "HTTP 200")]
        assert len(batch) == 0  # none kept: every answer said close
        batch.close()
        server.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n",  # kept
    OK_CLOSE, DOWN_CLOSE,
    b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n",  # 1.0: not kept
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\nHTTP/1.1 200 OK\r\n",  # a 2nd begun
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nok\n\r\n0\r\n\r\n",
    b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nok\n",  # cut short: the close decides
    b"NOT HTTP\r\n\r\n",  # a parse error: never remembered
])
def test_a_remembered_answer_gives_what_a_parse_gives(answer: bytes) -> None:
    """Each answer twice on fresh connections, then on a kept one if there is one: every look
    answers as a probe alone does, and keeps the connection exactly when the parse would."""
    cut = b"Content-Length: 10" in answer
    check = SHORT if cut else CHECK

    async def scenario() -> None:
        for close in (True, False):
            server, address = await raw_server([answer], close=close)
            alone = await probe(address, check)
            batch = BatchProber()
            found = [await batch.look([address], check) for _ in range(3)]
            kept = len(batch)
            fresh = BatchProber()  # remembers nothing yet: its one look is a parse
            parsed = await fresh.look([address], check)
            assert fresh._answers.hits == 0
            assert found == [[alone]] * 3 and parsed == [alone], (close, found, alone)
            assert kept == len(fresh)  # kept exactly when the parse keeps it
            if alone.ok and not cut:
                assert batch._answers.hits == 2  # looks 2 and 3 reused look 1's parse
            batch.close()
            fresh.close()
            server.close()

    asyncio.run(scenario())


def time_wait_on(port: int) -> int:
    """Sockets in TIME_WAIT with ``port`` at either end (/proc/net/tcp, state 06)."""
    count = 0
    with open("/proc/net/tcp") as table:
        for line in list(table)[1:]:
            local, remote, state = line.split()[1:4]
            if state == "06" and port in (int(local.split(":")[1], 16),
                                          int(remote.split(":")[1], 16)):
                count += 1
    return count


def test_a_look_ends_with_a_reset_and_a_let_go_kept_connection_with_a_fin() -> None:
    """A host that closes after each answer (as busybox httpd) is looked at many times a
    second by a big fleet's monitor: no look may leave a connection in TIME_WAIT (with NAT
    rules, conntrack keeps each one 120 s and, full, drops new connections). A kept
    connection let go while its host still serves ends gracefully: the host reads an end."""
    async def scenario() -> None:
        server, address = await raw_server([OK_CLOSE], close=True)
        port = int(address.rsplit(":", 1)[1])
        batch = BatchProber()
        for _ in range(5):
            assert await batch.look([address, address], CHECK) == [ProbeResult(True,
                                                                               "HTTP 200")] * 2
        assert time_wait_on(port) == 0
        server.close()

        endings: list[str] = []

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
                endings.append("eof" if await reader.read(1) == b"" else "bytes")
            except ConnectionResetError:
                endings.append("reset")
            finally:
                writer.close()

        kept = await asyncio.start_server(serve, "127.0.0.1", 0)
        kept_address = f"127.0.0.1:{kept.sockets[0].getsockname()[1]}"
        assert await batch.look([kept_address], CHECK) == [ProbeResult(True, "HTTP 200")]
        assert len(batch) == 1
        batch.keep_only([])
        for _ in range(100):
            if endings:
                break
            await asyncio.sleep(0.01)
        assert endings == ["eof"]
        batch.close()
        kept.close()

    asyncio.run(scenario())


def test_kept_connections_let_go_together_close_a_few_at_a_time() -> None:
    """A blue-green switch of a thousand keep-alive hosts lets go of a thousand kept
    connections at once: closed in one callback, they stopped the event loop for 60-70 ms,
    inside the next switch. None is used again from keep_only on, each host still reads a
    graceful end, and close() ends the ones still waiting at once."""
    async def scenario() -> None:
        endings: list[str] = []

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while (await reader.readuntil(b"\r\n\r\n")):
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
            except asyncio.IncompleteReadError as e:
                endings.append("eof" if not e.partial else "bytes")
            except ConnectionResetError:
                endings.append("reset")
            finally:
                writer.close()

        hosts = LET_GO_AT_ONCE * 3 + 5
        servers = [await asyncio.start_server(serve, "127.0.0.1", 0) for _ in range(hosts)]
        addresses = [f"127.0.0.1:{s.sockets[0].getsockname()[1]}" for s in servers]
        batch = BatchProber()
        assert await batch.look(addresses, CHECK) == [ProbeResult(True, "HTTP 200")] * hosts
        assert len(batch) == hosts

        def open_fds() -> int:
            return len(os.listdir("/proc/self/fd"))

        before = open_fds()
        batch.keep_only(addresses[:1])
        assert len(batch) == 1  # none of the others is used again
        # Closed in this callback: a first handful; the hosts cannot have answered yet.
        assert before - open_fds() == LET_GO_AT_ONCE
        # One let go a moment ago is looked at again: a fresh connection, not the old one.
        assert await batch.look(addresses[1:2], CHECK) == [ProbeResult(True, "HTTP 200")]
        for _ in range(300):
            if len(endings) == hosts - 1:
                break
            await asyncio.sleep(0.01)
        assert endings == ["eof"] * (hosts - 1)

        # All kept again, let go again, and close() before most of them had their turn.
        assert await batch.look(addresses, CHECK) == [ProbeResult(True, "HTTP 200")] * hosts
        endings.clear()
        before = open_fds()
        batch.keep_only([])
        batch.keep_only(addresses[:1])  # a second call while the first goes on: no change
        assert before - open_fds() == LET_GO_AT_ONCE
        batch.close()
        # The rest at once, nothing left for later (and the prober's own epoll).
        assert before - open_fds() == hosts + 1
        for _ in range(300):
            if len(endings) == hosts:
                break
            await asyncio.sleep(0.01)
        assert endings == ["eof"] * hosts
        for s in servers:
            s.close()

    asyncio.run(scenario())
