"""Reference receivers for the Loki push API and the Fluentd forward protocol.

Neither Loki nor Fluentd can be installed on the machines this is developed and tested on, so
the tests and bench/logs.py send to these instead: small servers written from the published
protocol documents (Loki: "POST /loki/api/v1/push", JSON; Fluentd: "Forward Protocol
Specification v1": Message, Forward, PackedForward and CompressedPackedForward modes, and
``{"ack": chunk}`` answers). They keep what they receive in memory, can be stopped and started
again on the same port (an outage), and can be told to answer with an error status.

    python -m hinotori.observe.logs.forward.receivers loki|fluentd [PORT]

runs one in its own process and prints ``listening PORT``, then ``count N`` as lines arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import io
import json
import random
import socket
import struct
import sys
from pathlib import Path
from typing import Any

import msgpack


def steady_port(host: str, attempts: int = 50) -> int:
    """A free port below the kernel's ephemeral range, or 0 (let the kernel choose) when none
    is found. A receiver is started again on its port after an outage; a port from the
    ephemeral range can meanwhile become the local end of any outgoing connection on the
    machine (a CI run lost one that way), one below it only another listener's."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0
    for _ in range(attempts):
        port = random.randrange(10_000, low) if low > 10_001 else 0
        if port == 0:
            return 0
        with socket.socket() as s, contextlib.suppress(OSError):
            s.bind((host, port))
            return port
    return 0


class _Server:
    """A TCP server that can be stopped (closing every connection) and started again."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host, self.port = host, port
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self) -> None:
        if self.port == 0:
            self.port = steady_port(self.host)
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._conns):
                writer.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns.add(writer)
        try:
            await self.handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._conns.discard(writer)
            writer.close()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


class LokiReceiver(_Server):
    """``POST /loki/api/v1/push`` (JSON, optionally gzip): 204, like Loki."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self.entries: list[tuple[dict[str, str], str, str]] = []  # (labels, ns, line)
        self.tenants: set[str | None] = set()
        self.status = 204  # set to 500 or 400 to make it refuse

    @property
    def count(self) -> int:
        return len(self.entries)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            request, *lines = head.decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in
                       (h.partition(":") for h in lines if h)}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            if headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            status = 404
            if request.startswith("POST /loki/api/v1/push "):
                status = self.status
                if status < 300:
                    self._take(json.loads(body), headers.get("x-scope-orgid"))
            reason = {204: "No Content", 404: "Not Found"}.get(status, "Error")
            writer.write(f"HTTP/1.1 {status} {reason}\r\ncontent-length: 0\r\n\r\n".encode())
            await writer.drain()

    def _take(self, payload: dict[str, Any], tenant: str | None) -> None:
        self.tenants.add(tenant)
        for stream in payload["streams"]:
            for ns, line, *_ in stream["values"]:
                self.entries.append((stream["stream"], ns, line))


def _ext(code: int, data: bytes) -> Any:
    if code == 0:  # Fluentd EventTime
        sec, nsec = struct.unpack(">II", data)
        return sec + nsec / 1e9
    return msgpack.ExtType(code, data)


class FluentdReceiver(_Server):
    """The forward protocol's four modes; acks every chunk it is given."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self.events: list[tuple[str, float, dict[str, Any]]] = []  # (tag, time, record)
        self.ack = True  # False: take events but never acknowledge them

    @property
    def count(self) -> int:
        return len(self.events)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        unpacker = msgpack.Unpacker(raw=False, ext_hook=_ext)
        while True:
            data = await reader.read(65536)
            if not data:
                return
            unpacker.feed(data)
            for message in unpacker:
                option = self._take(message)
                if self.ack and isinstance(option, dict) and "chunk" in option:
                    writer.write(msgpack.packb({"ack": option["chunk"]}))
            await writer.drain()

    def _take(self, message: list[Any]) -> Any:
        tag, second = message[0], message[1]
        if isinstance(second, int | float):  # Message mode: [tag, time, record, option?]
            self.events.append((tag, float(second), message[2]))
            return message[3] if len(message) > 3 else None
        option = message[2] if len(message) > 2 else None
        if isinstance(second, list):  # Forward mode
            entries = second
        else:  # PackedForward, maybe compressed
            raw = bytes(second)
            if isinstance(option, dict) and option.get("compressed") == "gzip":
                raw = gzip.GzipFile(fileobj=io.BytesIO(raw)).read()
            entries = list(msgpack.Unpacker(io.BytesIO(raw), raw=False, ext_hook=_ext))
        for time_, rec in entries:
            self.events.append((tag, float(time_), rec))
        return option


async def _main(kind: str, port: int) -> None:
    receiver: LokiReceiver | FluentdReceiver = (LokiReceiver(port=port) if kind == "loki"
                                                else FluentdReceiver(port=port))
    await receiver.start()
    print(f"listening {receiver.port}", flush=True)
    last = -1
    while True:
        if receiver.count != last:
            last = receiver.count
            print(f"count {last}", flush=True)
        await asyncio.sleep(0.05)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0))
