"""Fluentd's forward protocol (v1) with acknowledgements, over TCP with msgpack.

Each batch is sent in PackedForward mode, one message per service (the tag is
``<prefix>.<service>``)::

    [tag, bin(msgpack stream of [EventTime, record] ...), {"chunk": id, "size": n}]

and the server answers ``{"ack": id}`` for each chunk once it has taken the events; the batch
counts as delivered only when every chunk is acknowledged. EventTime is msgpack extension 0
(seconds and nanoseconds, big-endian uint32 each). The record carries the line as ``log`` (as
Fluent Bit's tail input does) plus service, release, host, source and offset.

Not implemented: the optional HELO/PING/PONG handshake (shared_key authentication) and TLS;
put a local Fluentd or Fluent Bit beside hinotori for those.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import struct
from collections.abc import Sequence
from typing import Any

import msgpack

from hinotori.observe.logs.errors import ForwardError
from hinotori.observe.logs.records import LogLine

DEFAULT_TAG = "hinotori"


def event_time(ts: float) -> msgpack.ExtType:
    sec = int(ts)
    return msgpack.ExtType(0, struct.pack(">II", sec, int((ts - sec) * 1e9)))


def record(line: LogLine) -> dict[str, Any]:
    return {"log": line.line, "service": line.service, "release": line.release,
            "host": line.host, "source": line.source, "offset": line.offset}


def messages(lines: Sequence[LogLine], prefix: str) -> list[tuple[str, bytes]]:
    """(chunk id, packed message) per tag, in the order the tags first appear."""
    packer = msgpack.Packer(use_bin_type=True)
    groups: dict[str, list[bytes]] = {}
    for line in lines:
        groups.setdefault(line.service, []).append(
            packer.pack([event_time(line.ts), record(line)]))
    out = []
    for service, events in groups.items():
        chunk = base64.b64encode(os.urandom(16)).decode()
        out.append((chunk, packer.pack([f"{prefix}.{service}", b"".join(events),
                                        {"chunk": chunk, "size": len(events)}])))
    return out


class FluentdSink:
    kind = "fluentd"

    def __init__(self, address: str, *, tag: str = DEFAULT_TAG) -> None:
        host, _, port = address.rpartition(":")
        self.host, self.port = host.strip("[]"), int(port)
        self.prefix = tag
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._unpacker = msgpack.Unpacker(raw=False)

    async def send(self, lines: Sequence[LogLine]) -> None:
        reader, writer = await self._connection()
        sent = messages(lines, self.prefix)
        for _, message in sent:
            writer.write(message)
        await writer.drain()
        for chunk, _ in sent:  # acks come back in order, one per chunk
            answer = await self._next(reader)
            if not isinstance(answer, dict) or answer.get("ack") != chunk:
                raise ForwardError(f"fluentd at {self.host}:{self.port} answered {answer!r} "
                                   f"instead of the ack for chunk {chunk}")

    async def _next(self, reader: asyncio.StreamReader) -> Any:
        while True:
            for obj in self._unpacker:
                return obj
            data = await reader.read(65536)
            if not data:
                raise ForwardError(f"fluentd at {self.host}:{self.port} closed the "
                                   "connection before acknowledging")
            self._unpacker.feed(data)

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._writer is None or self._reader is None or self._writer.is_closing():
            await self.close()
            try:
                self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
            except OSError as e:
                raise ForwardError(f"fluentd at {self.host}:{self.port} unreachable: "
                                   f"{e.strerror or e}") from e
        return self._reader, self._writer

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        self._unpacker = msgpack.Unpacker(raw=False)  # never read a stale ack
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
