"""The controller's end of one worker's control socket: a persistent JSON-lines connection.

Switch latency is the reason it persists: connecting a Unix socket per ``apply`` costs more
than the apply itself. The connection belongs to the event loop that opened it; used from
another loop (``asyncio.run`` called again by a synchronous caller) it is silently reopened.
A broken connection is reopened once per request. After a timeout or cancellation the
connection is dropped, because a late answer would otherwise be read as the next one's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

LINE_LIMIT = 64 * 1024 * 1024


class ControlError(Exception):
    """The worker could not be reached or gave no usable answer."""


class ControlClient:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None

    async def request(self, message: dict[str, Any] | bytes, timeout: float) -> dict[str, Any]:
        """Send one request (a dict, or an encoded line) and return the worker's answer."""
        line = message if isinstance(message, bytes) else json.dumps(message).encode() + b"\n"
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self.close()  # opened by a loop that has finished; best effort, errors ignored
            self._loop = loop
            self._lock = asyncio.Lock()
        assert self._lock is not None
        async with self._lock:
            try:
                async with asyncio.timeout(timeout):
                    return await self._exchange(line)
            except TimeoutError:
                self.close()
                raise ControlError(f"no answer from {self.path} within {timeout:g}s") from None
            except BaseException:
                self.close()
                raise

    async def _exchange(self, line: bytes) -> dict[str, Any]:
        for attempt in (1, 2):
            try:
                if self._writer is None:
                    self._reader, self._writer = await asyncio.open_unix_connection(
                        str(self.path), limit=LINE_LIMIT)
                assert self._reader is not None
                self._writer.write(line)
                await self._writer.drain()
                answer = await self._reader.readline()
                if not answer.endswith(b"\n"):
                    raise ConnectionResetError("the worker closed the control connection")
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
                self.close()
                if attempt == 2 or isinstance(exc, FileNotFoundError | ConnectionRefusedError):
                    raise ControlError(f"cannot talk to {self.path}: {exc}") from None
                continue  # a stale persistent connection: reconnect once
            try:
                parsed = json.loads(answer)
            except ValueError:
                self.close()
                raise ControlError(f"unreadable answer from {self.path}: {answer[:200]!r}") \
                    from None
            if not isinstance(parsed, dict):
                raise ControlError(f"unexpected answer from {self.path}: {parsed!r}")
            return parsed
        raise AssertionError("unreachable")

    def close(self) -> None:
        writer = self._writer
        self._reader = self._writer = None
        if writer is not None:
            with contextlib.suppress(Exception):  # its loop may be closed already
                writer.close()
