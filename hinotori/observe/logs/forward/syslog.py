"""RFC 5424 syslog over TCP with octet-counting framing (RFC 6587 section 3.4.1).

Each line becomes one message::

    <PRI>1 TIMESTAMP HOST SERVICE vRELEASE MSGID
        [hinotori@32473 source="…" offset="…" id="…"] LINE        (on one line)

HOSTNAME is the hinotori host id, APP-NAME the service, PROCID the release, MSGID "stdout" or
"file"; the structured data names the exact source, byte offset and store rowid, so a
receiver can drop the duplicates that at-least-once delivery may cause. (32473 is the
private enterprise number RFC 5612 reserves for documentation and examples.) Octet counting
frames a message by its length, so no line content can break the framing.

Plain TCP syslog has no application acknowledgement, so "sent" cannot mean "received". After
writing a batch the sink waits until the kernel reports that the peer's TCP has acknowledged
every byte (SIOCOUTQ = 0) and the connection is still up; only then does the forward loop move
its cursor. A connection that broke with bytes unacknowledged makes the batch go again. What
this cannot see is a receiver that crashes after its kernel acknowledged the bytes but before
it read them (RELP exists for that); a receiver that stops in an orderly way loses nothing.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from hinotori.observe.logs.errors import ForwardError
from hinotori.observe.logs.records import STDOUT, LogLine

try:
    from termios import TIOCOUTQ  # Linux: same value as SIOCOUTQ for sockets
except ImportError:  # pragma: no cover - other systems: fall back to drain() only
    TIOCOUTQ = None

LOCAL0 = 16
INFO = 6
SD_ID = "hinotori@32473"


def _printable(text: str, limit: int) -> str:
    """RFC 5424 header fields are 1..limit printable US-ASCII characters, "-" when empty."""
    clean = "".join(c if "!" <= c <= "~" else "_" for c in text)[:limit]
    return clean or "-"


def _sd_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


class Formatter:
    """Lines to octet-counted RFC 5424 frames. Caches the timestamp: a batch shares few."""

    def __init__(self, facility: int = LOCAL0, severity: int = INFO) -> None:
        self.pri = facility * 8 + severity
        self._ts: tuple[float, str] = (-1.0, "")

    def timestamp(self, ts: float) -> str:
        if ts != self._ts[0]:
            text = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            self._ts = (ts, text)
        return self._ts[1]

    def message(self, line: LogLine) -> bytes:
        msgid = "stdout" if line.source == STDOUT else "file"
        sd = (f'[{SD_ID} source="{_sd_value(line.source)}" offset="{line.offset}" '
              f'id="{line.id}"]')
        return (f"<{self.pri}>1 {self.timestamp(line.ts)} {_printable(line.host, 255)} "
                f"{_printable(line.service, 48)} v{line.release} {msgid} {sd} "
                f"{line.line}").encode("utf-8", "replace")

    def frames(self, lines: Sequence[LogLine]) -> bytes:
        out = []
        for line in lines:
            msg = self.message(line)
            out.append(b"%d %b" % (len(msg), msg))
        return b"".join(out)


class SyslogSink:
    kind = "syslog"

    def __init__(self, address: str, *, facility: int = LOCAL0, ack_timeout: float = 10.0
                 ) -> None:
        host, _, port = address.rpartition(":")
        self.host, self.port = host.strip("[]"), int(port)
        self.formatter = Formatter(facility)
        self.ack_timeout = ack_timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def send(self, lines: Sequence[LogLine]) -> None:
        writer = await self._connection()
        writer.write(self.formatter.frames(lines))
        await writer.drain()
        await self._acknowledged(writer)

    async def _connection(self) -> asyncio.StreamWriter:
        reader, writer = self._reader, self._writer
        if writer is None or reader is None or writer.is_closing() or reader.at_eof():
            await self.close()  # a peer that closed on us: never write into a dead socket
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
            except OSError as e:
                raise ForwardError(f"syslog receiver {self.host}:{self.port} unreachable: "
                                   f"{e.strerror or e}") from e
            self._reader, self._writer = reader, writer
        return writer

    async def _acknowledged(self, writer: asyncio.StreamWriter) -> None:
        """Wait until the peer's TCP acknowledged every byte we wrote."""
        sock = writer.get_extra_info("socket")
        deadline = time.monotonic() + self.ack_timeout
        buf = array.array("i", [0])
        while TIOCOUTQ is not None and sock is not None:
            self._check_alive(writer)
            fcntl.ioctl(sock.fileno(), TIOCOUTQ, buf, True)
            if buf[0] == 0:
                break
            if time.monotonic() > deadline:
                raise ForwardError(f"syslog receiver {self.host}:{self.port} did not "
                                   f"acknowledge {buf[0]} bytes in {self.ack_timeout:.0f}s")
            await asyncio.sleep(0.001)
        await asyncio.sleep(0)  # let a pending reset or EOF be noticed before we say "sent"
        self._check_alive(writer)

    def _check_alive(self, writer: asyncio.StreamWriter) -> None:
        if writer.is_closing() or (self._reader is not None and
                                   (self._reader.at_eof() or self._reader.exception())):
            raise ForwardError(f"syslog receiver {self.host}:{self.port} closed the "
                               "connection; resending what it may not have read")

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
