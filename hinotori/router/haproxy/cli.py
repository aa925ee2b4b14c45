"""A kept-open interactive connection to HAProxy's worker socket, for the commands of a switch.

Opening the socket costs a connect and an accept in HAProxy, which took 5-6 ms here on a
loaded machine: more than the rest of a switch. ``Cli`` keeps one connection in prompt mode
per event loop and sends each batch down it (in chunks of runtime.CHUNK, each chunk's answers
read before the next is written). The router drops it whenever HAProxy may have changed
under it (a reload: the old worker would still answer on it), and a connection HAProxy closed
while idle (``stats timeout``) is replaced once, if it answered nothing of the batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from pathlib import Path

from hinotori.errors import RuntimeApiError
from hinotori.router.haproxy.runtime import CALL_TIMEOUT, CHUNK, read_prompts, refuse_separators


class Cli:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: tuple[asyncio.AbstractEventLoop, asyncio.StreamReader,
                          asyncio.StreamWriter] | None = None

    def close(self) -> None:
        if self._conn is None:
            return
        writer = self._conn[2]
        self._conn = None
        # Shut the connection down on a duplicate of its descriptor: a connection made in an
        # event loop that has ended (a CLI command or a test runs one per call) cannot be
        # closed through it, and an open CLI session keeps a soft-stopping HAProxy worker
        # alive until its timeout (a stop then waited 15 s for SIGTERM). The transport closes
        # its own descriptor when it is collected.
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError), \
                    socket.socket(fileno=os.dup(sock.fileno())) as dup:
                dup.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(Exception):
            writer.close()

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bool]:
        """The connection (reader, writer, whether it is a kept one)."""
        loop = asyncio.get_running_loop()
        if self._conn is not None:
            if self._conn[0] is loop and not self._conn[2].is_closing():
                return self._conn[1], self._conn[2], True
            self.close()
        try:
            reader, writer = await asyncio.open_unix_connection(str(self.path))
            writer.write(b"prompt\n")
            if await read_prompts(reader, [], 0, 1) < 1:
                raise ConnectionResetError("closed before its first prompt")
        except OSError as exc:
            raise RuntimeApiError(f"HAProxy's runtime socket {self.path} does not answer: {exc}",
                                  hint="is HAProxy running? `hinotori up` starts it") from None
        self._conn = (loop, reader, writer)
        return reader, writer, False

    async def run(self, commands: list[str], timeout: float = CALL_TIMEOUT) -> list[str]:
        """Run ``commands`` in order; their answers, one string each."""
        if not commands:
            return []
        refuse_separators(commands)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    reader, writer, kept = await self._open()
                    received: list[bytes] = []
                    prompts = sent = 0
                    while sent < len(commands):
                        chunk = commands[sent:sent + CHUNK]
                        sent += len(chunk)
                        writer.write("".join(c + "\n" for c in chunk).encode())
                        await writer.drain()
                        prompts = await read_prompts(reader, received, prompts, sent)
                        if prompts < sent:
                            break
                    if prompts == len(commands):
                        break
                    self.close()
                    if not (kept and not received):  # a kept one closed while idle: again
                        raise RuntimeApiError(
                            f"HAProxy answered {prompts} of {len(commands)} runtime commands",
                            hint="the worker may have been reloading; apply again")
        except (TimeoutError, OSError) as exc:
            self.close()
            raise RuntimeApiError(f"HAProxy's runtime socket {self.path} failed mid-call: "
                                  f"{exc!r}", hint="retry; if it persists, restart the "
                                  "router") from None
        text = b"".join(received).decode("utf-8", "replace")
        return [p.strip("\n") for p in text.split("\n> ")[:len(commands)]]
